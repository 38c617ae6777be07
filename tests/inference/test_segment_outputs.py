"""``medsemgan segment`` on folders as they come and the outputs a user gets: multi-series DICOM
folders (real files linked from ../shared/data), linked study folders and link cycles, ``--series``,
``-o FILE``, ``--continue``, ``--preview``, ``--threads``, ``_0000``, liver volume, ``--method unet``,
and no partial output when a case fails. Tiny random models: fast, no trained weights."""

import json
import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from medsemgan.cli import main
from medsemgan.inference.segment import find_cases, find_studies

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from test_dicom_folders import CT_3SLICE, SEG, TOTALSEG, link_series  # noqa: E402


def _segment(bundle, inp, out, *extra, capsys=None):
    code = main(["segment", "-i", str(inp), "-o", str(out), "--bundle", str(bundle), "--no-progress",
                 "--encoder-only", *extra])
    summary = json.loads(capsys.readouterr().out) if capsys is not None else None
    return code, summary


def _files(folder):
    return sorted(p.name for p in Path(folder).iterdir()) if Path(folder).exists() else []


def test_a_multi_series_folder_gives_one_case_per_volume_series(shared_data, bundle, tmp_path, capsys):
    study = link_series(tmp_path / "in" / "study", shared_data, CT_3SLICE, TOTALSEG, SEG)
    code, summary = _segment(bundle, study, tmp_path / "out", capsys=capsys)
    assert code == 0
    assert sorted(d["case"] for d in summary["segmented"]) == ["study_CT_Body_3_0", "study_s2"]
    assert [s["reason"].split(": ")[-1] for s in summary["skipped"]] == ["modality 'SEG' is not CT or MR"]
    for case, slices, uid in (("study_CT_Body_3_0", 20, ""), ("study_s2", 3, "1.2.392.")):
        assert nib.load(tmp_path / "out" / f"{case}.nii.gz").shape == (512, 512, slices)
        record = json.loads((tmp_path / "out" / f"{case}.json").read_text())
        assert record["series_uid"].startswith(uid) and (uid or record["series_uid"] == "")
    assert json.loads((tmp_path / "out" / "study_s2.json").read_text())["series_number"] == 2


def test_series_option_picks_one_series_by_number_or_none(shared_data, bundle, tmp_path, capsys):
    study = link_series(tmp_path / "study", shared_data, CT_3SLICE, TOTALSEG)
    code, summary = _segment(bundle, study, tmp_path / "a", "--series", "none", capsys=capsys)
    assert code == 0 and [d["case"] for d in summary["segmented"]] == ["study"]
    assert nib.load(tmp_path / "a" / "study.nii.gz").shape == (512, 512, 20)
    code, summary = _segment(bundle, study, tmp_path / "b", "--series", "2", capsys=capsys)
    assert code == 0 and nib.load(tmp_path / "b" / "study.nii.gz").shape == (512, 512, 3)
    code = main(["segment", "-i", str(study), "-o", str(tmp_path / "c"), "--bundle", str(bundle),
                 "--series", "9", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "nothing to segment" in err and "holds no series '9'" in err
    assert not (tmp_path / "c").exists()


def test_a_single_volume_series_beside_a_seg_keeps_the_study_name(shared_data, tmp_path):
    study = link_series(tmp_path / "ct_with_seg", shared_data, CT_3SLICE, SEG)
    cases, skipped = find_cases(study)
    assert [(c.name, c.series) for c in cases] == [("ct_with_seg", cases[0].series)]
    assert cases[0].series.startswith("1.2.392.") and len(skipped) == 1


def test_linked_study_folders_are_found_once_and_link_cycles_end(shared_data, tmp_path):
    root = tmp_path / "studies"
    root.mkdir()
    (root / "ct3").symlink_to(shared_data / CT_3SLICE, target_is_directory=True)
    (root / "ct3_again").symlink_to(shared_data / CT_3SLICE, target_is_directory=True)
    nested = root / "nested"
    nested.mkdir()
    (nested / "loop").symlink_to(root, target_is_directory=True)  # a cycle back to the root
    (nested / "case_0000.nii.gz").symlink_to(shared_data / "ct" / "totalseg" / "example_ct.nii.gz")
    found = find_studies(root)
    assert [(case, path.name) for case, path in found] == [("ct3", "ct3"), ("nested_case", "case_0000.nii.gz")]


def test_one_input_to_a_mask_file_name_writes_that_file(bundle, small_nifti, tmp_path, capsys):
    target = tmp_path / "results" / "liver.nii.gz"
    code, summary = _segment(bundle, small_nifti, target, "--save-prob", "--preview", capsys=capsys)
    assert code == 0 and summary["segmented"][0]["output"] == str(target)
    assert _files(target.parent) == ["liver.json", "liver.nii.gz", "liver_overlay.png", "liver_prob.nii.gz"]
    assert np.array_equal(nib.load(target).affine, nib.load(small_nifti).affine)
    two = small_nifti.parent / "second.nii.gz"
    two.write_bytes(small_nifti.read_bytes())
    code = main(["segment", "-i", str(small_nifti.parent), "-o", str(tmp_path / "x.nii.gz"),
                 "--bundle", str(bundle), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "x.nii.gz: names one mask file, but the input holds 2 cases" in err
    assert not (tmp_path / "x.nii.gz").exists()


def test_case_json_gives_the_liver_volume_in_ml_and_the_preview_shows_the_mask(bundle, small_nifti, tmp_path, capsys):
    code, summary = _segment(bundle, small_nifti, tmp_path, "--preview", capsys=capsys)
    assert code == 0
    mask = nib.load(tmp_path / "phantom.nii.gz")
    record = json.loads((tmp_path / "phantom.json").read_text())
    voxel_ml = abs(np.linalg.det(mask.affine[:3, :3])) / 1000  # 0.8 x 0.8 x 2.5 mm
    assert voxel_ml == pytest.approx(0.0016)
    assert record["liver_volume_ml"] == pytest.approx(np.asarray(mask.dataobj).sum() * voxel_ml, abs=1e-3)
    assert summary["segmented"][0]["liver_volume_ml"] == record["liver_volume_ml"]
    png = np.asarray(Image.open(tmp_path / "phantom_overlay.png").convert("RGB"))
    assert png.shape[0] > 200 and png.shape[1] > 200
    red = (png[..., 0] == 255) & (png[..., 1] == 64) & (png[..., 2] == 64)
    assert np.asarray(mask.dataobj).any() and red.any()  # the mask's contour is drawn in red


def test_continue_skips_cases_whose_outputs_exist(bundle, small_nifti, tmp_path, capsys):
    nnunet = small_nifti.parent / "liver_007_0000.nii.gz"
    nnunet.write_bytes(small_nifti.read_bytes())
    code, summary = _segment(bundle, small_nifti.parent, tmp_path, capsys=capsys)
    assert code == 0 and sorted(d["case"] for d in summary["segmented"]) == ["liver_007", "phantom"]
    stamp = (tmp_path / "phantom.nii.gz").stat().st_mtime_ns
    (tmp_path / "liver_007.json").unlink()  # an incomplete case is done again
    code, summary = _segment(bundle, small_nifti.parent, tmp_path, "--continue", capsys=capsys)
    assert code == 0 and [d["case"] for d in summary["segmented"]] == ["liver_007"]
    assert [s["case"] for s in summary["skipped"]] == ["phantom"]
    assert (tmp_path / "phantom.nii.gz").stat().st_mtime_ns == stamp
    assert (tmp_path / "liver_007.json").is_file()


def test_threads_option_sets_torch_threads(bundle, small_nifti, tmp_path, capsys, monkeypatch):
    seen = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: seen.append(n))
    code, _ = _segment(bundle, small_nifti, tmp_path, "--threads", "1", capsys=capsys)
    assert code == 0 and seen == [1]
    code = main(["segment", "-i", str(small_nifti), "-o", str(tmp_path), "--threads", "0"])
    assert code == 2 and "--threads must be >= 1" in capsys.readouterr().err


def test_a_failing_step_leaves_no_partial_output_and_the_batch_goes_on(bundle, small_nifti, tmp_path,
                                                                      capsys, monkeypatch):
    import medsemgan.inference.overlay as overlay

    (small_nifti.parent / "other.nii.gz").write_bytes(small_nifti.read_bytes())
    real = overlay.overlay_png

    def flaky(image, modality, pred, path, **kw):
        if "other" in str(path):
            raise OSError("disk full")
        return real(image, modality, pred, path, **kw)

    monkeypatch.setattr(overlay, "overlay_png", flaky)
    code, summary = _segment(bundle, small_nifti.parent, tmp_path / "out", "--preview", capsys=capsys)
    assert code == 1
    assert [d["case"] for d in summary["segmented"]] == ["phantom"]
    assert "other.nii.gz: OSError: disk full" in summary["failed"][0]["error"]
    assert _files(tmp_path / "out") == ["phantom.json", "phantom.nii.gz", "phantom_overlay.png"]


def _tiny_unet(folder):
    from medsemgan.training.unet import build_unet

    arch = {"channels": [4, 8], "strides": [2], "num_res_units": 0}
    torch.manual_seed(0)
    weights = folder / "unet.pt"
    torch.save(build_unet(arch).state_dict(), weights)
    weights.with_suffix(".json").write_text(json.dumps({"architecture": arch, "resolution": 32}))
    return weights


def test_method_unet_runs_the_baseline_through_the_same_geometry(small_nifti, tmp_path, capsys):
    weights = _tiny_unet(tmp_path)
    code = main(["segment", "-i", str(small_nifti), "-o", str(tmp_path / "out"), "--method", "unet",
                 "--unet-weights", str(weights), "--save-prob", "--no-progress"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["method"] == "unet"
    written = nib.load(tmp_path / "out" / "phantom.nii.gz")
    assert written.shape == (40, 36, 5) and np.array_equal(written.affine, nib.load(small_nifti).affine)
    prob = nib.load(tmp_path / "out" / "phantom_prob.nii.gz").get_fdata()
    assert np.array_equal(np.asarray(written.dataobj), (prob > 0.5).astype(np.uint8))
    code = main(["segment", "-i", str(small_nifti), "-o", str(tmp_path / "o2"), "--method", "unet"])
    assert code == 2 and "--method unet needs --unet-weights" in capsys.readouterr().err


def test_a_folder_without_any_volume_series_is_one_clear_failure(shared_data, bundle, tmp_path, capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
    from data_fixtures import write_ct_series

    study = link_series(tmp_path / "in" / "no_volume", shared_data, SEG)
    write_ct_series(study, "1.2.826.0.9.1", n=2, prefix="scout")  # 2 slices: not a volume
    code, summary = _segment(bundle, study.parent, tmp_path / "out", capsys=capsys)
    assert code == 1 and summary["segmented"] == []
    error = summary["failed"][0]["error"]
    assert error.startswith(f"{study}: holds 2 DICOM series and none is a CT/MR volume")
    assert "--series" in error and "'Liver Segmentation' SEG" in error
    assert len(summary["skipped"]) == 2 and not (tmp_path / "out").exists()
