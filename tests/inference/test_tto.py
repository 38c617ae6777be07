import math

import pytest
import torch

from medsemgan.inference.losses import ms_ssim_loss_per_slice, reconstruction_loss_per_slice
from medsemgan.inference.tto import TTOOptions, invert, learning_rate


def test_optimisation_lowers_the_loss_below_encoder_only(tiny_models, target_slices):
    G, E = tiny_models
    encoder_only = invert(G, E, target_slices, TTOOptions(steps=0))
    optimised = invert(G, E, target_slices, TTOOptions(steps=15, lr=0.1))
    assert torch.all(encoder_only.steps_run == 0)
    assert torch.allclose(encoder_only.ws, E(target_slices))
    assert optimised.loss.sum() < 0.9 * encoder_only.loss.sum()
    assert optimised.label_logits.shape == (5, 1, 32, 32)
    assert optimised.recon_mse.shape == (5,)


@pytest.mark.parametrize("patience", [0, 3])
def test_a_slice_gives_the_same_result_alone_and_in_a_batch(tiny_models, target_slices, patience):
    G, E = tiny_models
    options = TTOOptions(steps=8, lr=0.05, early_stop_patience=patience, encoder_weight=0.1)
    batch = invert(G, E, target_slices, options)
    for i in (0, 3):
        alone = invert(G, E, target_slices[i:i + 1], options)
        assert torch.equal(alone.steps_run[0], batch.steps_run[i])
        assert torch.allclose(alone.ws[0], batch.ws[i], atol=1e-5, rtol=1e-4)
        assert torch.allclose(alone.label_logits[0], batch.label_logits[i], atol=1e-4, rtol=1e-4)
        assert torch.equal(alone.label_logits[0] > 0, batch.label_logits[i] > 0)


def test_same_input_and_seed_give_an_identical_mask(tiny_models, target_slices):
    G, E = tiny_models
    options = TTOOptions(steps=10, lr=0.05, seed=7, noise_mode="random")
    first = invert(G, E, target_slices, options)
    torch.rand(3)  # disturb the global RNG: the result must not depend on it
    second = invert(G, E, target_slices, options)
    assert torch.equal(first.label_logits, second.label_logits)
    assert torch.equal(first.ws, second.ws)


def test_optimises_inside_no_grad(tiny_models, target_slices):
    """MONAI evaluators run inferers under torch.no_grad(); inversion must still work."""
    G, E = tiny_models
    with torch.no_grad():
        result = invert(G, E, target_slices, TTOOptions(steps=10, lr=0.05))
        assert not torch.is_grad_enabled()  # the caller's mode is restored
    assert result.history[-1] < result.history[0]
    assert all(p.requires_grad for p in G.parameters())  # flags restored


def test_early_stopping_stops_slices_that_stall(tiny_models, target_slices):
    G, E = tiny_models
    full = invert(G, E, target_slices, TTOOptions(steps=20, lr=0.05))
    early = invert(G, E, target_slices, TTOOptions(steps=20, lr=0.05, early_stop_patience=2,
                                                     early_stop_rel_tol=0.05))
    assert torch.all(full.steps_run == 20)
    assert torch.all(early.steps_run < 20)
    # Returned ws belong to the best loss each slice saw.
    assert torch.all(early.loss <= invert(G, E, target_slices, TTOOptions(steps=0)).loss + 1e-6)


def test_learning_rate_ramps_up_and_down():
    o = TTOOptions(steps=100, lr=0.1)
    rates = [learning_rate(t, 100, o) for t in range(100)]
    assert 0 < rates[0] < 0.05  # ramps up from the first step (never a wasted lr-0 step)
    assert max(rates) == pytest.approx(0.1)
    assert rates[-1] < 0.01
    assert rates[3] < rates[5] <= 0.1


def test_reconstruction_loss_is_per_slice_and_zero_for_identical_images():
    x = torch.rand(3, 1, 64, 64) * 2 - 1
    y = x.clone()
    y[1] = torch.rand(1, 64, 64) * 2 - 1
    loss = reconstruction_loss_per_slice(x, y)
    assert loss.shape == (3,)
    assert loss[0].abs() < 1e-5 and loss[2].abs() < 1e-5 and loss[1] > 0.1
    with pytest.raises(ValueError, match="too small"):
        ms_ssim_loss_per_slice(x[..., :16, :16], y[..., :16, :16])


def test_options_from_config_ignore_unknown_keys_and_none_overrides():
    o = TTOOptions.from_config({"steps": 12, "lr": 0.2, "batch_size": 8}, steps=None, seed=3)
    assert (o.steps, o.lr, o.seed) == (12, 0.2, 3)
    with pytest.raises(ValueError):
        TTOOptions.from_config({"steps": -1})


def test_separable_ssim_matches_monai():
    from monai.metrics.regression import compute_ssim_and_cs

    from medsemgan.inference.losses import ssim_and_cs_maps

    x = torch.rand(2, 1, 40, 36) * 2 - 1
    y = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1)
    ours = ssim_and_cs_maps(x, y)
    theirs = compute_ssim_and_cs(x, y, spatial_dims=2, kernel_size=(7, 7), kernel_sigma=(1.5, 1.5),
                                 data_range=2.0)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_lncc_ignores_local_contrast_sign_and_offset_but_not_structure():
    from medsemgan.inference.losses import lncc_loss_per_slice

    torch.manual_seed(0)
    # Smooth structure at 64 px, with the local contrast of organ edges in [-1, 1] images.
    x = torch.nn.functional.avg_pool2d(torch.rand(3, 1, 68, 68), 5, 1) * 4 - 2
    remapped = -0.5 * x + 0.3  # inverted contrast, other offset: the same structure
    other = torch.nn.functional.avg_pool2d(torch.rand(3, 1, 68, 68), 5, 1) * 4 - 2
    same = lncc_loss_per_slice(x, remapped)
    different = lncc_loss_per_slice(x, other)
    assert same.shape == (3,)
    assert same.max() < 0.15  # not 0: eps makes near-flat windows count as uncorrelated
    assert different.min() > 0.8
    # MS-SSIM, by contrast, punishes the inverted contrast as much as a different image.
    assert ms_ssim_loss_per_slice(x, remapped).min() > 0.5


def test_reconstruction_loss_names_its_structural_term():
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    y = -x
    lncc = reconstruction_loss_per_slice(x, y, perceptual_weight=1.0, mse_weight=0.0, perceptual="lncc")
    ssim = reconstruction_loss_per_slice(x, y, perceptual_weight=1.0, mse_weight=0.0)
    assert (lncc < 0.15).all() and (ssim > 0.5).all()
    with pytest.raises(ValueError, match="perceptual must be one of"):
        TTOOptions(perceptual="lpips").validate()


def test_optimisation_with_lncc_lowers_its_loss(tiny_models, target_slices):
    G, E = tiny_models
    start = invert(G, E, target_slices, TTOOptions(steps=0, perceptual="lncc", mse_weight=0.0))
    optimised = invert(G, E, target_slices, TTOOptions(steps=15, lr=0.1, perceptual="lncc", mse_weight=0.0))
    assert optimised.loss.sum() < start.loss.sum()


def test_structure_error_is_the_lncc_of_the_first_guess_whatever_the_objective(tiny_models, target_slices):
    """The out-of-domain signal: same value for K = 0 and K > 0 and for either objective (it is
    measured at the encoder's w+), and equal to the LNCC loss of G(E(x)) against x."""
    from medsemgan.inference.losses import lncc_loss_per_slice

    G, E = tiny_models
    encoder_only = invert(G, E, target_slices, TTOOptions(steps=0))
    optimised = invert(G, E, target_slices, TTOOptions(steps=6, lr=0.1, perceptual="lncc", mse_weight=0.0))
    with torch.no_grad():
        image, _ = G.synthesis(E(target_slices), noise_mode="const")
    expected = lncc_loss_per_slice(image.float(), target_slices)
    assert encoder_only.structure_error.shape == (5,)
    assert torch.allclose(encoder_only.structure_error, expected, atol=1e-5)
    assert torch.allclose(optimised.structure_error, expected, atol=1e-5)
    # ... while the reconstruction MSE follows the optimisation
    assert not torch.allclose(optimised.recon_mse, encoder_only.recon_mse)


def _real_generator(form: str):
    from medsemgan.models.build import build_generator
    from medsemgan.models.config import model_config_from_dict

    config = model_config_from_dict({
        "resolution": 32, "num_labels": 1,
        "generator": {"z_dim": 16, "w_dim": 16, "mapping_layers": 2, "channel_base": 256,
                      "channel_max": 16, "modconv_form": form},
        "image_discriminator": {"channel_base": 256, "channel_max": 16},
        "joint_discriminator": {"num_scales": 2, "base_channels": 4, "n_layers": 2, "channel_max": 8},
    })
    torch.manual_seed(0)
    return build_generator(config).eval()


def _layer_forms(G) -> list[str]:
    from medsemgan.models.layers import ModulatedConv2d

    return [m.form for m in G.modules() if isinstance(m, ModulatedConv2d)]


@pytest.mark.parametrize("form", ["grouped", "auto", None])
def test_optimisation_form_changes_speed_not_result_and_is_restored(form):
    """``modconv_form`` is a speed setting: every form inverts to the same w+ and mask (float32),
    and the generator's own form is back after the call."""
    G = _real_generator("grouped")
    with torch.no_grad():
        targets, _ = G.synthesis(G.mapping(torch.randn(3, G.z_dim)), noise_mode="const")
        ws_init = G.mapping(torch.randn(3, G.z_dim))
    before = _layer_forms(G)
    reference = invert(G, None, targets, TTOOptions(steps=5, lr=0.05, perceptual="lncc", modconv_form="batched"), ws_init=ws_init)
    assert _layer_forms(G) == before
    other = invert(G, None, targets, TTOOptions(steps=5, lr=0.05, perceptual="lncc", modconv_form=form), ws_init=ws_init)
    assert _layer_forms(G) == before
    torch.testing.assert_close(other.ws, reference.ws, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(other.label_logits, reference.label_logits, rtol=1e-4, atol=1e-4)
    assert not torch.equal(reference.ws, ws_init)  # it did optimise


def test_optimisation_form_is_restored_after_an_error():
    G = _real_generator("auto")
    ws = torch.zeros(2, G.num_ws + 1, G.w_dim)  # wrong number of latents: synthesis raises
    with pytest.raises(ValueError, match="ws must be"):
        invert(G, None, torch.zeros(2, 1, 32, 32), TTOOptions(steps=2, modconv_form="batched"), ws_init=ws)
    assert set(_layer_forms(G)) == {"auto"}


def test_unknown_optimisation_form_is_refused():
    with pytest.raises(ValueError, match="modconv_form"):
        TTOOptions(modconv_form="fused").validate()
    assert TTOOptions.from_config({"modconv_form": None}).modconv_form is None
