import pytest
import torch

from medsemgan.training.modality_augment import (
    AIR_LEVEL,
    ModalityAugmentConfig,
    modality_shift,
    percentile_normalise,
    random_bias_field,
    random_curve,
    random_gin,
)
from medsemgan.training.synthetic import phantom_slices


def _slices(n=6, res=32):
    images, _ = phantom_slices(n, res, seed=3)
    return images


def test_off_is_the_identity():
    x = _slices()
    assert modality_shift(x, ModalityAugmentConfig()) is x
    assert torch.equal(modality_shift(x, ModalityAugmentConfig(p=0.0)), x)


def test_remapped_slices_are_normalised_like_mri_and_keep_air_darkest():
    torch.manual_seed(0)
    x = _slices(16)
    y = modality_shift(x, ModalityAugmentConfig(p=1.0))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.isfinite(y).all()
    assert y.min() >= -1 and y.max() <= 1
    assert not torch.allclose(y, x)
    for xi, yi in zip(x, y):
        air, body = xi < AIR_LEVEL, xi > 0
        # Air is the darkest level of a magnitude image: at or below the body's median.
        assert yi[air].mean() <= yi[body].median() + 1e-6
        # Robust percentiles -> [-1, 1]: both ends are reached (clipped tails).
        assert yi.min() == -1 and yi.max() == 1


def test_probability_selects_slices_and_leaves_others_bit_identical():
    torch.manual_seed(1)
    x = _slices(64)
    y = modality_shift(x, ModalityAugmentConfig(p=0.5))
    changed = (y != x).flatten(1).any(1)
    assert 15 < int(changed.sum()) < 49  # about half
    assert torch.equal(y[~changed], x[~changed])


def test_same_seed_same_draws():
    x = _slices()
    cfg = ModalityAugmentConfig(p=1.0)
    torch.manual_seed(5)
    a = modality_shift(x, cfg)
    torch.manual_seed(5)
    b = modality_shift(x, cfg)
    torch.manual_seed(6)
    c = modality_shift(x, cfg)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_random_curve_is_piecewise_linear_through_its_knots_and_keeps_air():
    torch.manual_seed(2)
    x = torch.linspace(-1, 1, 11).view(1, 1, 1, 11).repeat(3, 1, 1, 1)
    y = random_curve(x, points=3)  # knots at -1, 0, 1
    assert torch.allclose(y[:, 0, 0, 0], torch.full((3,), -1.0))
    # Between knots the map is linear: the midpoint is the mean of its neighbours.
    assert torch.allclose(y[..., 2], 0.6 * y[..., 0] + 0.4 * y[..., 5], atol=1e-6)
    # Curves differ between slices (one draw per slice).
    assert not torch.allclose(y[0], y[1])


def test_gin_is_per_slice_and_matches_the_input_statistics_when_fully_blended():
    torch.manual_seed(3)
    x = _slices(4)
    y = random_gin(x, layers=3, channels=4)
    assert y.shape == x.shape and torch.isfinite(y).all()
    # A blend of two images with the input's mean has the input's mean.
    assert torch.allclose(y.mean((1, 2, 3)), x.mean((1, 2, 3)), atol=1e-4)
    # One slice's output does not depend on the others in the batch (grouped convolutions).
    torch.manual_seed(3)
    first = random_gin(x, layers=3, channels=4)
    assert torch.allclose(first, y)


def test_bias_field_is_smooth_and_positive():
    torch.manual_seed(4)
    f = random_bias_field(8, 64, 64, 0.4, "cpu", torch.float32)
    assert f.shape == (8, 1, 64, 64)
    # Bounded by the strength: |log f| <= 0.4 everywhere.
    assert f.log().abs().max() <= 0.4 + 1e-5
    assert f.log().abs().max() > 0.05  # and not trivially flat
    # Smooth: neighbouring pixels differ by far less than each field's range.
    for fi in f:
        step = max((fi[..., 1:] - fi[..., :-1]).abs().max(), (fi[..., 1:, :] - fi[..., :-1, :]).abs().max())
        assert step < 0.15 * (fi.max() - fi.min())


def test_percentile_normalise_maps_robust_range_to_unit_interval():
    x = torch.linspace(0, 10, 1000).view(1, 1, 10, 100)
    y = percentile_normalise(x, 10, 90)
    assert y.min() == -1 and y.max() == 1
    assert abs(float(y.median())) < 0.01


@pytest.mark.parametrize("values, message", [({"p": 1.5}, "p must be"), ({"nope": 1}, "unknown"),
                                             ({"curve_points": 1}, "curve_points")])
def test_bad_configuration_is_rejected(values, message):
    with pytest.raises(ValueError, match=message):
        ModalityAugmentConfig.from_dict(values)
