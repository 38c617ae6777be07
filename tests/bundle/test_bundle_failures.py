"""inference.json / evaluate.json with a bad study among good ones: the others are segmented, the bad
one is named (file and problem) in the log, in failures.json and in the error that ends the run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from bundle_fixtures import REPO, load_nifti, run_workflow, write_phantom_nifti

from medsemgan.data.io import load_image
from medsemgan.errors import InputError

GOOD = ("phantom_ct", "phantom_dicom")
NOT_GZIP = "not gzip-compressed"  # what the NIfTI reader says about a text file named .nii.gz


@pytest.fixture(scope="module")
def mixed_dir(studies_dir, tmp_path_factory):
    """The session's good NIfTI study and DICOM series plus a text file named bad.nii.gz."""
    root = tmp_path_factory.mktemp("mixed")
    shutil.copy(studies_dir / "phantom_ct.nii.gz", root / "phantom_ct.nii.gz")
    shutil.copytree(studies_dir / "phantom_dicom", root / "phantom_dicom")
    (root / "bad.nii.gz").write_text("this is not an image\n")
    return root


def _error_chain(err: BaseException) -> list[BaseException]:
    chain = []
    while err is not None and err not in chain:
        chain.append(err)
        err = err.__cause__ or err.__context__
    return chain


def _run_expecting_failure(bundle, config, dataset_dir, output_dir, **override) -> InputError:
    workflow, missing = run_workflow(bundle, config, "infer", dataset_dir=str(dataset_dir),
                                     output_dir=str(output_dir), device="cpu", steps=0, **override)
    assert missing == []
    with pytest.raises(Exception) as info:
        workflow.run()
    found = [e for e in _error_chain(info.value) if isinstance(e, InputError)]
    assert found, f"the run did not end with an InputError: {info.value!r}"
    return found[0]


def _assert_no_partial_files(out):
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".") or p.name.startswith("bad")]
    assert leftovers == [], leftovers


@pytest.fixture(scope="module")
def mixed_run(tiny_bundle, mixed_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("mixed_out")
    error = _run_expecting_failure(tiny_bundle, "inference.json", mixed_dir, out)
    return out, error


def test_good_studies_are_written_in_their_input_geometry(mixed_run, mixed_dir):
    out, _ = mixed_run
    for case, source in (("phantom_ct", mixed_dir / "phantom_ct.nii.gz"),
                         ("phantom_dicom", mixed_dir / "phantom_dicom")):
        mask, affine = load_nifti(out / f"{case}.nii.gz")
        image = load_image(source)
        assert mask.dtype == np.uint8 and mask.shape == tuple(image.shape[1:]), case
        np.testing.assert_allclose(affine, image.affine.numpy(), atol=1e-4)
        assert json.loads((out / f"{case}.json").read_text())["case"] == case
    _assert_no_partial_files(out)


def test_bad_study_named_in_failures_json_and_in_the_error(mixed_run, mixed_dir):
    out, error = mixed_run
    failures = json.loads((out / "failures.json").read_text())
    assert failures["n_studies"] == 3 and failures["n_failed"] == 1
    [entry] = failures["failed"]
    assert entry["case"] == "bad" and entry["input"] == str(mixed_dir / "bad.nii.gz")
    assert entry["error"].startswith(f"{mixed_dir / 'bad.nii.gz'}: ") and NOT_GZIP in entry["error"]
    assert "1 of 3 studies" in str(error) and "bad.nii.gz" in str(error) and NOT_GZIP in str(error)
    assert "phantom" not in str(error)


def test_masks_identical_to_medsemgan_segment_on_the_same_folder(mixed_run, tiny_bundle, mixed_dir, tmp_path):
    from medsemgan.cli import main

    out, _ = mixed_run
    assert main(["segment", "-i", str(mixed_dir), "-o", str(tmp_path), "--bundle", str(tiny_bundle),
                 "--device", "cpu", "--no-progress", "--steps", "0"]) == 1  # the bad study fails there too
    for case in GOOD:
        bundle_mask, bundle_affine = load_nifti(out / f"{case}.nii.gz")
        cli_mask, cli_affine = load_nifti(tmp_path / f"{case}.nii.gz")
        assert np.array_equal(bundle_mask, cli_mask), case
        assert np.array_equal(bundle_affine, cli_affine), case


def test_clean_run_removes_a_stale_failures_json(tiny_bundle, studies_dir, tmp_path):
    (tmp_path / "failures.json").write_text('{"failed": ["from an earlier run"]}')
    workflow, _ = run_workflow(tiny_bundle, "inference.json", "infer", dataset_dir=str(studies_dir),
                               output_dir=str(tmp_path), device="cpu", steps=0)
    workflow.run()
    assert not (tmp_path / "failures.json").exists()
    assert all((tmp_path / f"{case}.nii.gz").is_file() for case in GOOD)


def test_every_study_bad_ends_the_run_with_nothing_written(tiny_bundle, tmp_path):
    data = tmp_path / "in"
    data.mkdir()
    (data / "bad.nii.gz").write_text("this is not an image\n")
    (data / "empty.nrrd").write_bytes(b"")
    out = tmp_path / "out"
    error = _run_expecting_failure(tiny_bundle, "inference.json", data, out)
    assert "2 of 2 studies" in str(error) and "bad.nii.gz" in str(error) and "empty.nrrd" in str(error)
    assert sorted(p.name for p in out.iterdir()) == ["failures.json"]


def test_evaluate_scores_the_readable_cases_and_reports_the_bad_label(tiny_bundle, labeled_dir, tmp_path):
    data = tmp_path / "labeled"
    shutil.copytree(labeled_dir, data)
    write_phantom_nifti(data / "images" / "case_3.nii.gz", seed=6)
    (data / "labels" / "case_3_seg.nii.gz").write_text("corrupt label\n")
    out = tmp_path / "out"
    error = _run_expecting_failure(tiny_bundle, "evaluate.json", data, out)
    assert "case_3_seg.nii.gz" in str(error) and NOT_GZIP in str(error)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_cases"] == 2 and summary["n_failed"] == 1
    assert summary["failed"][0]["case"] == "case_3"
    assert summary["failed"][0]["error"].startswith(str(data / "labels" / "case_3_seg.nii.gz"))
    assert "case_3" not in (out / "metrics.csv").read_text()
    assert not (out / "case_3.nii.gz").exists()
    assert json.loads((out / "failures.json").read_text())["failed"] == summary["failed"]


def test_failure_marker_crosses_a_loader_worker_and_is_skipped(mixed_dir, tmp_path):
    """With worker processes a failure reaches the main process as a marker item (strings only)."""
    from monai.data import DataLoader

    from medsemgan.bundle.inference import StudyDataset, StudyFailures, study_datalist
    from medsemgan.data.io import LoadVolumed

    dataset = StudyDataset(study_datalist(mixed_dir), transform=LoadVolumed(keys="image"))
    failures = StudyFailures(tmp_path)
    batches = list(failures.skip(DataLoader(dataset, batch_size=1, num_workers=1)))
    assert sorted(b["case"][0] for b in batches) == list(GOOD)
    assert failures.seen == 3 and [f["case"] for f in failures.failed] == ["bad"]
    assert NOT_GZIP in failures.failed[0]["error"]
    assert not (tmp_path / "failures.json").exists()  # written only when the run completes
    with pytest.raises(InputError, match="1 of 3 studies"):
        failures.completed()
    assert json.loads((tmp_path / "failures.json").read_text())["n_failed"] == 1


def test_describe_failure_finds_the_input_error_behind_monai_wrappers():
    from monai.transforms import Compose

    from medsemgan.bundle.inference import describe_failure
    from medsemgan.data.io import LoadVolumed

    try:
        Compose([Compose([LoadVolumed(keys="image")])])({"image": "/nowhere/x.nii.gz"})
    except Exception as err:  # noqa: BLE001
        path, problem = describe_failure(err, "/the/study")
    assert path == "/nowhere/x.nii.gz" and "applying transform" not in problem
    try:
        raise RuntimeError("applying transform") from ValueError("odd spacing")
    except RuntimeError as err:
        assert describe_failure(err, "/the/study") == ("/the/study", "ValueError: odd spacing")


# A fresh interpreter (~15 s): the literal command line and its exit status.
@pytest.mark.slow
def test_monai_bundle_run_exits_non_zero_and_writes_the_good_masks(tiny_bundle, mixed_dir, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run",
         "--config_file", str(tiny_bundle / "configs" / "inference.json"), "--bundle_root", str(tiny_bundle), "--dataset_dir", str(mixed_dir), "--output_dir", str(out),
         "--steps", "0", "--device", "cpu"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode != 0, log[-3000:]
    assert f"{mixed_dir / 'bad.nii.gz'}: " in log and NOT_GZIP in log and "(study skipped)" in log
    assert "InputError: 1 of 3 studies" in log
    for case in GOOD:
        mask, _ = load_nifti(out / f"{case}.nii.gz")
        assert mask.dtype == np.uint8 and mask.ndim == 3
    assert json.loads((out / "failures.json").read_text())["failed"][0]["case"] == "bad"
    _assert_no_partial_files(out)
