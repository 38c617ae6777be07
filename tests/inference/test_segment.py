"""Segmentation end to end with a tiny random model saved as a bundle (fast, no trained weights)."""

import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch

from medsemgan.cli import main
from medsemgan.errors import InputError
from medsemgan.inference.inferer import TTOInferer
from medsemgan.inference.model import SegmentationModel
from medsemgan.inference.segment import SegmentOptions, find_studies, segment_volume
from medsemgan.inference.tto import TTOOptions

def _segment(bundle, inp, out, *extra):
    return main(["segment", "-i", str(inp), "-o", str(out), "--bundle", str(bundle), "--no-progress", *extra])


def _check_same_grid(out_file, shape, affine):
    written = nib.load(out_file)
    assert written.shape == tuple(shape)
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_allclose(written.affine, affine, rtol=0, atol=1e-4)
    values = np.unique(np.asarray(written.dataobj))
    assert set(values.tolist()) <= {0, 1}


def test_nifti_mask_has_the_input_shape_and_exact_affine(shared_data, bundle, tmp_path):
    src = shared_data / "mr" / "chaos_t2" / "image_2.nii.gz"
    assert _segment(bundle, src, tmp_path, "--save-prob") == 0
    original = nib.load(src)
    written = nib.load(tmp_path / "image_2.nii.gz")
    _check_same_grid(tmp_path / "image_2.nii.gz", original.shape, original.affine)
    assert np.array_equal(written.affine, original.affine)  # NIfTI -> NIfTI: bit-exact
    prob = nib.load(tmp_path / "image_2_prob.nii.gz")
    assert prob.shape == original.shape and prob.get_data_dtype() == np.float32
    report = json.loads((tmp_path / "image_2.json").read_text())
    assert report["modality"] == "MR" and len(report["recon_mse"]) == original.shape[2]
    assert len(report["objective"]) == original.shape[2]
    assert report["mean_objective"] == pytest.approx(np.mean(report["objective"]), abs=1e-5)
    assert report["mean_objective"] > 0


def _itk_affine(folder):
    """Shape and RAS affine of the series as SimpleITK reports it (computed here, not by the
    data layer): index -> LPS world is origin + direction @ diag(spacing); RAS flips x and y."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    reader.MetaDataDictionaryArrayUpdateOff()
    image = reader.Execute()
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    return tuple(image.GetSize()), np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


@pytest.mark.parametrize("folder", ["ct/ircadb_1/PATIENT_DICOM", "ct/totalseg/example_ct_dicom"])
def test_dicom_series_mask_has_the_series_shape_and_affine(shared_data, bundle, tmp_path, folder):
    src = shared_data / folder
    assert _segment(bundle, src, tmp_path, "--encoder-only") == 0
    shape, affine = _itk_affine(src)
    _check_same_grid(tmp_path / f"{src.name}.nii.gz", shape, affine)
    assert json.loads((tmp_path / f"{src.name}.json").read_text())["modality"] == "CT"


def test_a_bad_study_is_reported_and_the_others_are_written(bundle, small_nifti, tmp_path, capsys):
    folder = small_nifti.parent
    (folder / "broken.nii.gz").write_text("not a NIfTI file")
    (folder / "series").mkdir()
    out = tmp_path / "out"
    assert _segment(bundle, folder, out) == 1
    summary = json.loads(capsys.readouterr().out)
    assert [d["case"] for d in summary["segmented"]] == ["phantom"]
    assert [f["case"] for f in summary["failed"]] == ["broken"]
    assert "broken.nii.gz" in summary["failed"][0]["error"]
    assert sorted(p.name for p in out.iterdir()) == ["phantom.json", "phantom.nii.gz"]
    _check_same_grid(out / "phantom.nii.gz", (40, 36, 5), nib.load(small_nifti).affine)


def test_same_input_and_seed_give_an_identical_mask(bundle, small_nifti):
    model = SegmentationModel.from_bundle(bundle)
    options = SegmentOptions(steps=3, seed=5, batch_size=2)
    first, _ = segment_volume(small_nifti, model, options)
    second, extras = segment_volume(small_nifti, model, SegmentOptions(steps=3, seed=5, batch_size=5))
    assert torch.equal(first, second)  # also independent of the slice batch size
    assert extras["modality"] == "CT" and extras["modality_from"] == "guessed from intensities"


def test_missing_weights_give_a_clear_error(tmp_path, small_nifti, capsys):
    assert main(["segment", "-i", str(small_nifti), "-o", str(tmp_path / "o"), "--bundle", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "generator.pt" in err and "no trained generator weights" in err
    assert not (tmp_path / "o").exists()


def test_inferer_optimises_inside_no_grad_and_keeps_slices_apart(bundle):
    model = SegmentationModel.from_bundle(bundle)
    torch.manual_seed(0)
    with torch.no_grad():  # slices the generator can explain, so optimisation has room to help
        images, _ = model.generator(torch.randn(6, 32), noise_mode="const")
    volume = images.reshape(2, 3, 1, 32, 32).permute(0, 2, 3, 4, 1).contiguous()
    with torch.no_grad():
        optimised = TTOInferer(TTOOptions(steps=4, lr=0.05), batch_size=2)
        logits = optimised(volume, model)
        encoder_only = TTOInferer(TTOOptions(steps=0))
        encoder_only(volume, model)
    assert logits.shape == (2, 1, 32, 32, 3)
    assert optimised.last_extras["steps_run"].eq(4).all()
    assert (optimised.last_extras["loss"] < encoder_only.last_extras["loss"]).all()
    # Slice 1 of volume 0 alone gives the same logits as inside its volume.
    single = TTOInferer(TTOOptions(steps=4, lr=0.05))(volume[:1, ..., 1:2], model)
    torch.testing.assert_close(single[0, ..., 0], logits[0, ..., 1], atol=1e-4, rtol=1e-4)


def test_find_studies_names_files_and_dicom_folders(tmp_path, small_nifti):
    root = small_nifti.parent
    (root / "sub" / "dicomstudy").mkdir(parents=True)
    (root / "sub" / "dicomstudy" / "x.dcm").write_bytes(b"\0" * 132)
    (root / "notes.txt").write_text("ignored")
    assert [(c, p.name) for c, p in find_studies(root)] == [("phantom", "phantom.nii.gz"),
                                                            ("sub_dicomstudy", "dicomstudy")]
    assert find_studies(small_nifti) == [("phantom", small_nifti)]
    with pytest.raises(InputError, match="no studies"):
        find_studies(_empty(tmp_path))
    with pytest.raises(InputError, match="does not exist"):
        find_studies(tmp_path / "missing")


def _empty(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    return folder


def test_inferer_keeps_metatensor_metadata(bundle):
    from monai.data import MetaTensor

    model = SegmentationModel.from_bundle(bundle)
    affine = torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0]))
    volume = MetaTensor(torch.zeros(1, 1, 32, 32, 2), affine=affine)
    out = TTOInferer(TTOOptions(steps=0))(volume, model)
    assert isinstance(out, MetaTensor) and out.shape == (1, 1, 32, 32, 2)
    assert torch.equal(out.affine, volume.affine)


def test_unavailable_device_is_a_clear_error(bundle, small_nifti, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert _segment(bundle, small_nifti, tmp_path / "o", "--device", "cuda") == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_inversion_options_from_the_command_line_reach_the_case_record(bundle, small_nifti, tmp_path):
    """--smooth, --restarts and --postprocess are what the case JSON says ran; the tiny bundle's
    configuration sets none of them, so its defaults (0, no restarts, none) are the other half."""
    assert _segment(bundle, small_nifti, tmp_path / "plain") == 0
    plain = json.loads((tmp_path / "plain" / "phantom.json").read_text())
    assert (plain["smooth_weight"], plain["restarts"], plain["postprocess"]) == (0.0, [], "none")
    assert _segment(bundle, small_nifti, tmp_path / "set", "--smooth", "2.5", "--restarts", "mean",
                    "--postprocess", "largest") == 0
    chosen = json.loads((tmp_path / "set" / "phantom.json").read_text())
    assert (chosen["smooth_weight"], chosen["restarts"], chosen["postprocess"]) == (2.5, ["mean"], "largest")


@pytest.mark.parametrize("flag, value, message", [("--smooth", "-1", "--smooth: smooth_weight must be >= 0"),
                                                  ("--restarts", "mean,sideways", "unknown start 'sideways'")])
def test_bad_inversion_options_are_refused_before_any_output(bundle, small_nifti, tmp_path, capsys,
                                                             flag, value, message):
    assert _segment(bundle, small_nifti, tmp_path / "out", flag, value) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
