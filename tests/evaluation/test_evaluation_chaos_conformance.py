"""Conformance with the CHAOS organisers' own numbers on their sample submission.

Organisers' results for ``Segmentation/`` vs ``Ground/`` of chaos_ct_1 (CHAOS-evaluation README):
MATLAB and Julia ``DICE=0.978 RAVD=0.665 ASSD=0.734 MSSD=14``; their Python port ``ASSD=0.713``.
MATLAB prints with ``mat2str(x, 3)`` (3 significant digits), hence "14" for MSSD.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from medsemgan.evaluation.metrics import compute_metrics


def _read_png_stack(files) -> np.ndarray:
    """PNG slices as an (X, Y, Z) array: the data layer's reader when present, else PIL directly
    (same layout), so this test does not wait for the data layer."""
    try:
        from medsemgan.data.readers import read_png_stack
    except ImportError:
        from PIL import Image

        # 1-bit PNGs (the ground truth) open as bool; the reader reports them as 0/255.
        slices = [np.asarray(Image.open(f).convert("L")).T for f in files]
        return np.stack(slices, axis=-1)
    return read_png_stack(files)


def _dicom_spacing_xyz(dicom_dir: Path) -> tuple[float, float, float]:
    """(X, Y, Z) spacing in mm as the organisers derive it: PixelSpacing in-plane, and the slice
    step from the first and last ImagePositionPatient (2.0 mm here; SliceThickness says 3.2)."""
    import pydicom

    files = sorted(dicom_dir.glob("*.dcm"))
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    last = pydicom.dcmread(files[-1], stop_before_pixels=True)
    step = np.linalg.norm(
        np.asarray(last.ImagePositionPatient, float) - np.asarray(first.ImagePositionPatient, float)
    ) / (len(files) - 1)
    row_spacing, column_spacing = (float(v) for v in first.PixelSpacing)
    return column_spacing, row_spacing, float(step)


@pytest.fixture(scope="module")
def chaos_case(shared_data):
    root = shared_data / "ct" / "chaos_ct_1"
    # Sorted names pair results001 with liver_GT_000 (the submission is numbered from 001).
    gt = _read_png_stack(sorted((root / "Ground").glob("liver_GT_*.png")))
    pred = _read_png_stack(sorted((root / "Segmentation").glob("results*.png")))
    assert gt.shape == pred.shape == (512, 512, 78)
    return pred == 63, gt == 255, _dicom_spacing_xyz(root / "DICOM_anon")


def test_spacing_is_read_from_slice_positions_not_slice_thickness(chaos_case):
    _, _, spacing = chaos_case
    assert spacing == pytest.approx((0.7265625, 0.7265625, 2.0))


def test_sample_submission_reproduces_the_organisers_numbers(chaos_case):
    pred, gt, spacing = chaos_case
    start = time.perf_counter()
    result = compute_metrics(pred, gt, spacing)
    seconds = time.perf_counter() - start
    assert round(result.dice, 3) == 0.978
    assert round(result.ravd, 3) == 0.665
    assert round(result.assd, 3) == 0.734  # the official (MATLAB/Julia) value
    assert 0.713 <= round(result.assd, 3) <= 0.734
    assert float(f"{result.mssd:.3g}") == 14.0
    assert 0 < result.hd95 < result.mssd
    # The bounding-box restriction keeps a 512x512x78 case fast (measured ~0.5 s on 2 cores).
    assert seconds < 20, f"metrics took {seconds:.1f} s"


def test_monai_surface_definition_gives_the_organisers_python_number(chaos_case):
    # Why we do not call MONAI for ASSD: its edge treats the array border as background, which is
    # what the organisers' Python port did too (0.713), not their official MATLAB value (0.734).
    import torch
    from monai.metrics import SurfaceDistanceMetric

    pred, gt, spacing = chaos_case
    onehot = lambda m: torch.as_tensor(m, dtype=torch.float32)[None, None]  # noqa: E731
    metric = SurfaceDistanceMetric(include_background=True, symmetric=True)
    monai_assd = metric(onehot(pred), onehot(gt), spacing=list(spacing))
    assert round(float(monai_assd), 3) == 0.713
