"""Metric definitions on synthetic masks with answers computed by hand or by brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial.distance import cdist

from medsemgan.errors import InputError
from medsemgan.evaluation import metrics as M


def _box(shape, lo, hi):
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return mask


def _brute_force(pred, gt, spacing):
    """The CHAOS definitions written as plainly as possible (all-pairs distances)."""
    cross = ndimage.generate_binary_structure(3, 1)
    surf_p = pred & ~ndimage.binary_erosion(pred, cross, border_value=1)
    surf_g = gt & ~ndimage.binary_erosion(gt, cross, border_value=1)
    pts_p = np.argwhere(surf_p) * np.asarray(spacing)
    pts_g = np.argwhere(surf_g) * np.asarray(spacing)
    d = cdist(pts_p, pts_g)
    p2g, g2p = d.min(axis=1), d.min(axis=0)
    both = np.concatenate([p2g, g2p])
    return both.mean(), both.max(), max(np.percentile(p2g, 95), np.percentile(g2p, 95))


def _blob(rng, shape, n_balls):
    """A random union of balls (irregular surface) that stays off the array edge."""
    grid = np.indices(shape).reshape(3, -1).T
    mask = np.zeros(int(np.prod(shape)), dtype=bool)
    for _ in range(n_balls):
        centre = rng.uniform(5, np.array(shape) - 5)
        radius = rng.uniform(2, 4)
        mask |= np.linalg.norm(grid - centre, axis=1) <= radius
    return mask.reshape(shape)


def test_slab_shift_along_anisotropic_axis_gives_shift_times_spacing():
    # Slabs spanning the whole Y-Z extent: under the CHAOS edge rule their only surfaces are the
    # two X faces, so every surface distance is exactly the shift k times the X spacing.
    shape, k, spacing = (40, 12, 9), 3, (2.5, 0.7, 0.4)
    gt = _box(shape, (10, 0, 0), (25, 12, 9))
    pred = _box(shape, (10 + k, 0, 0), (25 + k, 12, 9))
    result = M.compute_metrics(pred, gt, spacing)
    assert result.assd == pytest.approx(k * 2.5)
    assert result.mssd == pytest.approx(k * 2.5)
    assert result.hd95 == pytest.approx(k * 2.5)
    assert result.dice == pytest.approx((15 - k) / 15)
    assert result.ravd == 0.0
    assert result.volume_gt_ml == pytest.approx(15 * 12 * 9 * 2.5 * 0.7 * 0.4 / 1000)


def test_box_shift_mssd_uses_the_spacing_of_the_shifted_axis():
    shape, k = (30, 40, 40), 2
    gt = _box(shape, (8, 8, 8), (20, 30, 30))
    pred = _box(shape, (8 + k, 8, 8), (20 + k, 30, 30))
    # Shift along axis 0 (3 mm): farthest surface voxel is a front-face voxel, k slices away.
    assert M.mssd(pred, gt, (3.0, 0.5, 0.5)) == pytest.approx(k * 3.0)
    # The same voxels with the anisotropy on another axis: the shift now costs k * 0.5 mm.
    assert M.mssd(pred, gt, (0.5, 3.0, 3.0)) == pytest.approx(k * 0.5)
    assert M.dice(pred, gt) == pytest.approx((12 - k) / 12)


def test_ravd_is_relative_to_the_reference_volume_in_percent():
    gt = _box((20, 20, 20), (5, 5, 5), (15, 15, 15))  # 1000 voxels
    pred = _box((20, 20, 20), (5, 5, 5), (15, 15, 16))  # 1100 voxels
    assert M.ravd(pred, gt) == pytest.approx(10.0)
    assert M.ravd(gt, pred) == pytest.approx(100 * 100 / 1100)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_distances_match_brute_force_on_random_shapes(seed):
    rng = np.random.default_rng(seed)
    shape, spacing = (24, 28, 20), (1.5, 0.8, 2.2)
    gt, pred = _blob(rng, shape, 4), _blob(rng, shape, 4)
    # Let the prediction touch the first slice too, so the edge rule is exercised.
    pred[:, 10:15, 0:3] = True
    result = M.compute_metrics(pred, gt, spacing)
    assd, mssd, hd95 = _brute_force(pred, gt, spacing)
    assert result.assd == pytest.approx(assd, rel=1e-9)
    assert result.mssd == pytest.approx(mssd, rel=1e-9)
    assert result.hd95 == pytest.approx(hd95, rel=1e-9)


def test_agrees_with_monai_where_surfaces_coincide():
    # Off the array edge CHAOS's surface equals MONAI's, so MONAI's ASSD/HD95/Dice must agree.
    from monai.metrics import DiceMetric, HausdorffDistanceMetric, SurfaceDistanceMetric

    rng = np.random.default_rng(7)
    shape, spacing = (26, 30, 22), (1.2, 0.9, 2.5)
    gt, pred = _blob(rng, shape, 5), _blob(rng, shape, 5)
    result = M.compute_metrics(pred, gt, spacing)

    def onehot(mask):
        m = torch.as_tensor(mask, dtype=torch.float32)[None, None]
        return torch.cat([1 - m, m], dim=1)

    p, g = onehot(pred), onehot(gt)
    monai_dice = DiceMetric(include_background=False)(p, g).item()
    monai_hd95 = HausdorffDistanceMetric(percentile=95)(p, g, spacing=list(spacing)).item()
    monai_assd = SurfaceDistanceMetric(symmetric=True)(p, g, spacing=list(spacing)).item()
    assert result.dice == pytest.approx(monai_dice, rel=1e-6)
    assert result.hd95 == pytest.approx(monai_hd95, rel=1e-5)
    assert result.assd == pytest.approx(monai_assd, rel=1e-5)


def test_surface_treats_array_edge_as_foreground():
    mask = np.zeros((5, 6, 7), dtype=bool)
    mask[0:3] = True  # touches the array on five sides
    surf = M.surface(mask)
    # Only the internal face (slice 2) is surface; the faces on the array edge are not.
    assert surf[2].all()
    assert not surf[:2].any()


@pytest.mark.parametrize(
    "pred_empty, gt_empty, expected",
    [
        (True, True, dict(dice=1.0, ravd=0.0, assd=0.0, mssd=0.0, hd95=0.0)),
        (True, False, dict(dice=0.0, ravd=100.0, assd=math.inf, mssd=math.inf, hd95=math.inf)),
        (False, True, dict(dice=0.0, ravd=math.inf, assd=math.inf, mssd=math.inf, hd95=math.inf)),
    ],
)
def test_empty_mask_conventions(pred_empty, gt_empty, expected):
    full = _box((10, 10, 10), (2, 2, 2), (6, 6, 6))
    empty = np.zeros_like(full)
    result = M.compute_metrics(empty if pred_empty else full, empty if gt_empty else full, (1, 1, 2))
    for name, value in expected.items():
        assert getattr(result, name) == value, name


def test_identical_masks_filling_the_volume_have_zero_distance():
    # No surface voxels at all under the edge rule, yet the masks agree perfectly.
    full = np.ones((4, 5, 6), dtype=bool)
    result = M.compute_metrics(full, full, (1, 1, 1))
    assert (result.dice, result.assd, result.mssd, result.hd95) == (1.0, 0.0, 0.0, 0.0)


def test_shape_mismatch_is_an_input_error_naming_both_files():
    with pytest.raises(InputError) as err:
        M.compute_metrics(
            np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), pred_path="p.nii.gz", gt_path="g.nii.gz"
        )
    assert "p.nii.gz" in str(err.value) and "g.nii.gz" in str(err.value)
    assert "(4, 4, 4)" in str(err.value)


@pytest.mark.parametrize("spacing", [(1, 1), (1, 0, 1), (1, -2, 1), (1, float("nan"), 1)])
def test_bad_spacing_is_an_input_error(spacing):
    mask = _box((6, 6, 6), (1, 1, 1), (4, 4, 4))
    with pytest.raises(InputError, match="spacing"):
        M.compute_metrics(mask, mask, spacing)


def test_per_slice_dice_per_axis_and_empty_slices():
    gt = np.zeros((3, 3, 4), dtype=bool)
    pred = np.zeros_like(gt)
    gt[:, :, 0] = True
    pred[:, :, 0] = True  # slice 0 perfect
    gt[0, :, 1] = True  # slice 1: 3 gt voxels, prediction empty -> 0
    pred[:2, :, 2] = True  # slice 2: 6 predicted voxels, gt empty -> 0; slice 3 both empty
    values = M.per_slice_dice(pred, gt, axis=-1)
    assert values[:3].tolist() == [1.0, 0.0, 0.0]
    assert math.isnan(values[3])
    assert M.compute_metrics(pred, gt).slice_dice_mean == pytest.approx(1 / 3)
    along_first = M.per_slice_dice(pred, gt, axis=0)
    assert along_first.shape == (3,)


@pytest.mark.parametrize(
    "metric, value, points",
    [
        ("dice", 1.0, 100.0), ("dice", 0.9, 50.0), ("dice", 0.8, 0.0), ("dice", 0.3, 0.0),
        ("ravd", 0.0, 100.0), ("ravd", 2.5, 50.0), ("ravd", 7.0, 0.0), ("ravd", math.inf, 0.0),
        ("assd", 0.0, 100.0), ("assd", 3.0, 80.0), ("assd", 15.0, 0.0),
        ("mssd", 0.0, 100.0), ("mssd", 15.0, 75.0), ("mssd", 90.0, 0.0), ("mssd", math.nan, 0.0),
    ],
)
def test_chaos_points_are_linear_between_perfect_and_threshold(metric, value, points):
    assert M.chaos_points(metric, value) == pytest.approx(points)


def test_chaos_score_is_the_mean_of_the_four_points():
    points = M.chaos_score({"dice": 0.9, "ravd": 2.5, "assd": 3.0, "mssd": 15.0})
    assert points["chaos_score"] == pytest.approx((50 + 50 + 80 + 75) / 4)
    with pytest.raises(ValueError):
        M.chaos_points("hd95", 1.0)
