"""The joint image-label generator: shapes, W+ path, truncation, style mixing, noise, heads."""

from __future__ import annotations

import pytest
import torch

from medsemgan.models.build import build_generator
from medsemgan.models.generator import (
    IMAGE_ONLY,
    LABEL_ONLY,
    SHARED,
    iter_noise_inputs,
    parameters_by_role,
)


def _generator(tiny_config, **kw):
    torch.manual_seed(0)
    return build_generator(tiny_config(**kw))


def test_output_shapes_and_num_ws(tiny_config):
    G = _generator(tiny_config, resolution=16, num_labels=3)
    img, seg = G(torch.randn(5, G.z_dim))
    assert img.shape == (5, 1, 16, 16)
    assert seg.shape == (5, 3, 16, 16)
    # Two latents per resolution from 8 px on, one conv + the heads at 4 px: 2*log2(16) - 2.
    assert G.num_ws == 6
    assert G.mapping(torch.randn(2, G.z_dim)).shape == (2, 6, G.w_dim)


def test_w_plus_path_equals_mapping_then_synthesis(tiny_config):
    G = _generator(tiny_config)
    z = torch.randn(3, G.z_dim)
    ws = G.mapping(z)
    img_a, seg_a = G(z, noise_mode="const")
    img_b, seg_b = G.synthesis(ws, noise_mode="const")
    torch.testing.assert_close(img_a, img_b)
    torch.testing.assert_close(seg_a, seg_b)
    # One latent per layer really is used per layer: changing only the last one moves the output.
    ws2 = ws.clone()
    ws2[:, -1] += 1
    img_c, _ = G.synthesis(ws2, noise_mode="const")
    assert not torch.allclose(img_c, img_b)
    with pytest.raises(ValueError):
        G.synthesis(ws[:, :-1])


def test_truncation_psi_zero_gives_w_avg_and_cutoff_keeps_later_layers(tiny_config):
    G = _generator(tiny_config)
    z = torch.randn(4, G.z_dim)
    G.mapping(z, update_w_avg=True)
    assert G.w_avg.abs().sum() > 0, "update_w_avg must move w_avg"
    ws = G.mapping(z, truncation_psi=0.0)
    torch.testing.assert_close(ws, G.w_avg.expand_as(ws))
    full = G.mapping(z)
    cut = G.mapping(z, truncation_psi=0.0, truncation_cutoff=2)
    torch.testing.assert_close(cut[:, :2], G.w_avg.expand(4, 2, -1))
    torch.testing.assert_close(cut[:, 2:], full[:, 2:])
    half = G.mapping(z, truncation_psi=0.5)
    torch.testing.assert_close(half, (full + G.w_avg) / 2)


def test_w_avg_tracks_a_running_mean(tiny_config):
    G = _generator(tiny_config)
    z = torch.randn(8, G.z_dim)
    w = G.mapping(z)[:, 0].mean(dim=0)
    G.mapping(z, update_w_avg=True)
    torch.testing.assert_close(G.w_avg, w * (1 - G.mapping.w_avg_beta))


def test_style_mixing_changes_outputs_only_after_a_cutoff(tiny_config):
    G = _generator(tiny_config)
    z = torch.randn(6, G.z_dim)
    plain = G.mapping(z)
    torch.manual_seed(1)
    mixed = G.sample_ws(z, style_mixing_prob=1.0)
    # Every sample keeps its own first latent and takes a second z's latents from some layer on.
    torch.testing.assert_close(mixed[:, 0], plain[:, 0])
    assert (mixed != plain).any(dim=2).any(dim=1).all()
    img_plain, _ = G.synthesis(plain, noise_mode="const")
    img_mixed, _ = G(z, noise_mode="const", style_mixing_prob=1.0)
    assert not torch.allclose(img_plain, img_mixed)
    torch.testing.assert_close(G.sample_ws(z, style_mixing_prob=0.0), plain)


def test_noise_modes(tiny_config):
    G = _generator(tiny_config)
    for noise in iter_noise_inputs(G):
        noise.strength.data.fill_(1.0)  # untrained strengths are 0: make the noise visible
    ws = G.mapping(torch.randn(2, G.z_dim))
    const_a, seg_a = G.synthesis(ws, noise_mode="const")
    const_b, seg_b = G.synthesis(ws, noise_mode="const")
    torch.testing.assert_close(const_a, const_b)
    torch.testing.assert_close(seg_a, seg_b)
    rand_a, _ = G.synthesis(ws, noise_mode="random")
    rand_b, _ = G.synthesis(ws, noise_mode="random")
    assert not torch.allclose(rand_a, rand_b)
    none_a, _ = G.synthesis(ws, noise_mode="none")
    assert not torch.allclose(none_a, const_a)
    torch.testing.assert_close(none_a, G.synthesis(ws, noise_mode="none")[0])
    with pytest.raises(ValueError):
        G.synthesis(ws, noise_mode="loud")
    # Const noise buffers travel with the weights.
    assert any(k.endswith("noise_const") for k in G.state_dict())


def test_label_head_is_affine_in_its_bias_no_output_activation(tiny_config):
    G = _generator(tiny_config).double()
    ws = G.mapping(torch.randn(2, G.z_dim, dtype=torch.float64)).double()
    last_bias = G.synthesis.blocks[-1].to_seg.bias
    first_bias = G.synthesis.blocks[0].to_seg.bias
    with torch.no_grad():
        _, base = G.synthesis(ws, noise_mode="const")
        last_bias += 5.0
        _, shifted = G.synthesis(ws, noise_mode="const")
        # The top-resolution head is not upsampled: its bias shifts every logit by exactly 5.
        torch.testing.assert_close(shifted - base, torch.full_like(base, 5.0))
        last_bias -= 5.0
        # Any head's bias enters linearly (an activation would break this).
        first_bias += 1.0
        _, one = G.synthesis(ws, noise_mode="const")
        first_bias += 1.0
        _, two = G.synthesis(ws, noise_mode="const")
        torch.testing.assert_close(two - base, 2 * (one - base))
    assert (base < 0).any() and (base > 0).any()


def test_parameter_roles_separate_the_heads(tiny_config):
    G = _generator(tiny_config)
    roles = parameters_by_role(G)
    assert roles[IMAGE_ONLY] and roles[LABEL_ONLY] and roles[SHARED]
    assert all("to_rgb" in n for n, _ in roles[IMAGE_ONLY])
    assert all("to_seg" in n for n, _ in roles[LABEL_ONLY])
    n_heads = len(G.synthesis.blocks)
    # per head: affine weight, affine bias, conv weight, output bias
    assert len(roles[IMAGE_ONLY]) == len(roles[LABEL_ONLY]) == n_heads * 4
    total = sum(len(v) for v in roles.values())
    assert total == len(list(G.parameters()))

    # A loss on the label output only never reaches the image heads, and vice versa.
    img, seg = G(torch.randn(2, G.z_dim))
    seg.square().mean().backward(retain_graph=True)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for _, p in roles[IMAGE_ONLY])
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in roles[LABEL_ONLY])
    G.zero_grad(set_to_none=True)
    img.square().mean().backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for _, p in roles[LABEL_ONLY])
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in roles[IMAGE_ONLY])


def test_synthesis_gradcheck_through_both_heads(tiny_config):
    # Whole-network sanity in float64: every layer's backward agrees with finite differences.
    torch.manual_seed(3)
    G = build_generator(tiny_config(resolution=8, w_dim=4, z_dim=4, channel_base=32, channel_max=4)).double()
    ws = torch.randn(1, G.num_ws, G.w_dim, dtype=torch.float64, requires_grad=True)

    def fn(ws):
        img, seg = G.synthesis(ws, noise_mode="const")
        return img, seg

    assert torch.autograd.gradcheck(fn, (ws,))


@pytest.mark.parametrize("form", ["grouped", "auto"])
def test_modconv_forms_give_the_same_generator(tiny_config, form):
    batched = _generator(tiny_config)
    other = _generator(tiny_config, modconv_form=form)
    other.load_state_dict(batched.state_dict())
    batched.double(), other.double()
    ws = batched.mapping(torch.randn(3, batched.z_dim, dtype=torch.float64))
    for a, b in zip(batched.synthesis(ws, noise_mode="const"), other.synthesis(ws, noise_mode="const")):
        torch.testing.assert_close(a, b)


def test_channels_last_blocks_give_the_same_output(tiny_config):
    plain = _generator(tiny_config)
    cl = _generator(tiny_config, channels_last_from=8)
    cl.load_state_dict(plain.state_dict())
    ws = plain.mapping(torch.randn(2, plain.z_dim))
    for a, b in zip(plain.synthesis(ws, noise_mode="const"), cl.synthesis(ws, noise_mode="const")):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_conv_clamp_bounds_every_layer_output(tiny_config):
    G = _generator(tiny_config, conv_clamp=0.01)
    img, seg = G(torch.randn(3, G.z_dim))
    # Each head output is clamped to +-0.01, and the [1,3,3,1] upsampling is a convex combination
    # per output pixel, so the skip sum stays within 0.01 per resolution.
    bound = 0.01 * len(G.synthesis.blocks) + 1e-6
    assert img.abs().max() <= bound and seg.abs().max() <= bound
    unclamped, _ = _generator(tiny_config)(torch.randn(3, G.z_dim))
    assert unclamped.abs().max() > bound
