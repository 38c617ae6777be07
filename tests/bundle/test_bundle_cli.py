"""The documented command lines, run as a user runs them (subprocesses, strings from the shell)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from bundle_fixtures import REPO, SCHEMA, load_nifti


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


# ~30 s of two fresh interpreters; the same workflows run in-process in the default suite.
@pytest.mark.slow
def test_monai_bundle_run_inference_and_verify_metadata(tiny_bundle, studies_dir, tmp_path):
    out = tmp_path / "out"
    result = _run("run", "--config_file", str(tiny_bundle / "configs" / "inference.json"),
                  "--bundle_root", str(tiny_bundle), "--dataset_dir", str(studies_dir),
                  "--output_dir", str(out), "--steps", "0", "--device", "cpu")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "Setting logging properties based on config" in result.stdout + result.stderr
    for case in ("phantom_ct", "phantom_dicom"):
        mask, _ = load_nifti(out / f"{case}.nii.gz")
        assert mask.dtype == np.uint8 and mask.ndim == 3

    result = _run("verify_metadata", "--meta_file", str(REPO / "bundles/medsemgan_liver/configs/metadata.json"),
                  "--filepath", str(SCHEMA))
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert "skipped downloading" in log and "metadata is verified with no error" in log
