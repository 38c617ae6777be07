"""Image discriminator (residual, minibatch std) and joint multi-scale patch discriminator."""

from __future__ import annotations

import pytest
import torch

from medsemgan.models.build import build_image_discriminator, build_joint_discriminator
from medsemgan.models.discriminator import minibatch_stddev


def _group_std(x: torch.Tensor) -> torch.Tensor:
    return x.var(dim=0, unbiased=False).add(1e-8).sqrt().mean()


def test_minibatch_stddev_value_for_full_groups():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 4, 4, dtype=torch.float64)
    y = minibatch_stddev(x, group_size=4, num_channels=1)
    assert y.shape == (8, 4, 4, 4)
    torch.testing.assert_close(y[:, :3], x)
    # 8 samples, groups of 4 by index % 2: {0, 2, 4, 6} and {1, 3, 5, 7}.
    torch.testing.assert_close(y[0, 3], torch.full((4, 4), _group_std(x[0::2]).item(), dtype=torch.float64))
    torch.testing.assert_close(y[1, 3], torch.full((4, 4), _group_std(x[1::2]).item(), dtype=torch.float64))


@pytest.mark.parametrize("n", [1, 3, 5, 6, 7])
def test_minibatch_stddev_accepts_batches_not_divisible_by_the_group_size(n):
    torch.manual_seed(n)
    x = torch.randn(n, 4, 2, 2, dtype=torch.float64)
    y = minibatch_stddev(x, group_size=4, num_channels=2)
    assert y.shape == (n, 6, 2, 2)
    num_groups = -(-n // 4)
    for i in range(n):
        members = x[i % num_groups :: num_groups]
        assert 1 <= len(members) <= 4
        for c in range(2):
            expected = _group_std(members[:, 2 * c : 2 * c + 2])
            torch.testing.assert_close(y[i, 4 + c], torch.full((2, 2), expected.item(), dtype=torch.float64))
    # The statistic carries batch information: changing the last sample changes what another
    # member of its group (sample g, g < num_groups <= n - 1) sees.
    if n > 1:
        g = (n - 1) % num_groups
        x2 = x.clone()
        x2[-1] = 3 * x2[-1] + 1
        assert not torch.allclose(minibatch_stddev(x2, 4, 2)[g, 4:], y[g, 4:])


def test_image_discriminator_output_and_batch_sizes(tiny_config):
    torch.manual_seed(1)
    D = build_image_discriminator(tiny_config(resolution=16))
    for n in (1, 3, 4, 5):
        assert D(torch.randn(n, 1, 16, 16)).shape == (n, 1)
    with pytest.raises(ValueError):
        D(torch.randn(2, 1, 32, 32))


def test_image_discriminator_second_derivatives_for_r1(tiny_config):
    # R1 = ||d D(x) / d x||^2 is trained through, so D must be twice differentiable.
    torch.manual_seed(2)
    cfg = tiny_config(resolution=8)
    cfg["image_discriminator"].update(channel_base=16, channel_max=2)
    D = build_image_discriminator(cfg).double()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(D, (x,))
    assert torch.autograd.gradgradcheck(D, (x,), fast_mode=True)


def test_joint_discriminator_outputs_and_features(tiny_config):
    torch.manual_seed(3)
    cfg = tiny_config(resolution=32, num_labels=2)
    DJ = build_joint_discriminator(cfg)
    img = torch.randn(3, 1, 32, 32)
    mask = torch.rand(3, 2, 32, 32) * 2 - 1
    outputs = DJ(img, mask)
    assert isinstance(outputs, list) and len(outputs) == cfg["joint_discriminator"]["num_scales"] == 2
    assert outputs[0].shape[:2] == (3, 1) and outputs[1].shape[:2] == (3, 1)
    # Each scale sees the pair at half the previous resolution.
    assert outputs[1].shape[-1] < outputs[0].shape[-1]
    outputs2, features = DJ(img, mask, return_features=True)
    assert len(features) == 2
    assert all(len(f) == DJ.features_per_scale == cfg["joint_discriminator"]["n_layers"] + 1 for f in features)
    for a, b in zip(outputs, outputs2):
        torch.testing.assert_close(a, b)
    assert [f.shape[1] for f in features[0]] == [4, 8, 8]  # base 4, doubling, capped at channel_max 8
    # The mask matters: the joint D judges the pair, not the image alone.
    assert not torch.allclose(DJ(img, -mask)[0], outputs[0])
    with pytest.raises(ValueError):
        DJ(img, mask[:, :1])


def test_joint_discriminator_gradients_reach_the_mask(tiny_config):
    DJ = build_joint_discriminator(tiny_config(resolution=32))
    img = torch.randn(2, 1, 32, 32)
    mask = torch.zeros(2, 1, 32, 32, requires_grad=True)
    outputs, features = DJ(img, mask, return_features=True)
    (sum(o.mean() for o in outputs) + sum(f.abs().mean() for fs in features for f in fs)).backward()
    assert mask.grad is not None and mask.grad.abs().sum() > 0


@pytest.mark.parametrize("n", [2, 3, 4, 8])
def test_reals_and_fakes_share_a_pass_exactly_when_the_std_groups_stay_pure(tiny_config, n):
    """Interleaved (real, fake, real, ...) in one batch gives the two separate passes' logits
    whenever ``pairs_in_one_pass`` says so; where it says no (2 + 2 with groups of 4: one group
    would mix them), the interleaved pass really differs."""
    torch.manual_seed(0)
    D = build_image_discriminator(tiny_config(resolution=16)).double()
    assert D.epilogue.mbstd_group_size == 4
    real = torch.randn(n, 1, 16, 16, dtype=torch.float64)
    fake = torch.randn(n, 1, 16, 16, dtype=torch.float64)
    both = D(torch.stack([real, fake], dim=1).flatten(0, 1))
    same = torch.allclose(both[0::2], D(real)) and torch.allclose(both[1::2], D(fake))
    assert D.pairs_in_one_pass(n) == (n != 2)
    assert same == D.pairs_in_one_pass(n)
