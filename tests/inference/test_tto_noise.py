"""Test-time optimisation of per-slice noise maps (``optimize_noise``), on a tiny random
StyleGAN2 generator (the real synthesis network: the inference conftest's stand-in has no noise
inputs)."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from medsemgan.inference.inferer import TTOInferer
from medsemgan.inference.losses import reconstruction_loss_per_slice
from medsemgan.inference.tto import (
    TTOOptions,
    initial_noise,
    invert,
    learning_rate,
    lr_ramp,
    noise_regularisation_per_slice,
)
from medsemgan.models.encoder import Encoder
from medsemgan.models.generator import Generator

RESOLUTION, W_DIM = 32, 16


@pytest.fixture
def noisy_models():
    """Generator with visible noise (trained strengths are learned; fresh ones are 0) and a
    matching untrained encoder."""
    torch.manual_seed(0)
    G = Generator(z_dim=W_DIM, w_dim=W_DIM, resolution=RESOLUTION, mapping_layers=2,
                  channel_base=8 * RESOLUTION, channel_max=16).eval()
    for noise_input in G.synthesis.noise_inputs():
        noise_input.strength.data.fill_(0.2)
    with torch.no_grad():
        G.mapping.w_avg.copy_(G.mapping(torch.randn(256, W_DIM)).mean((0, 1)))
    E = Encoder(RESOLUTION, G.num_ws, W_DIM, channels=(8, 16, 16), fpn_channels=16,
                head_channels=8).eval()
    E.set_w_avg(G.w_avg)
    return G, E


@pytest.fixture
def noisy_targets(noisy_models):
    """Slices the generator made with its own random per-sample noise: part of each slice is
    explained by noise, not by w+."""
    G, _ = noisy_models
    torch.manual_seed(1)
    with torch.no_grad():
        images, _ = G(torch.randn(3, W_DIM), noise_mode="random")
    return images


def _noise_like(G, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 1, m.resolution, m.resolution, generator=g) for m in G.synthesis.noise_inputs()]


# --------------------------------------------------------------------------- generator


def test_synthesis_takes_per_sample_noise_maps(noisy_models):
    G, _ = noisy_models
    inputs = G.synthesis.noise_inputs()
    assert [m.resolution for m in inputs] == [4, 8, 8, 16, 16, 32, 32]
    ws = G.mapping(torch.randn(2, W_DIM))
    with torch.no_grad():
        const = G.synthesis(ws, noise_mode="const")
        # The fixed maps passed per sample give exactly the 'const' output.
        as_maps = G.synthesis(ws, noise=[m.noise_const.expand(2, 1, -1, -1) for m in inputs])
        assert all(torch.equal(a, b) for a, b in zip(const, as_maps))
        # Slice 1's maps change slice 1 only.
        maps = _noise_like(G, 2)
        image, _ = G.synthesis(ws, noise=maps)
        maps[3][1] += 1.0
        changed, _ = G.synthesis(ws, noise=maps)
    assert torch.equal(image[0], changed[0])
    assert not torch.allclose(image[1], changed[1])
    with pytest.raises(ValueError, match="7 maps"):
        G.synthesis(ws, noise=maps[:-1])
    with pytest.raises(ValueError, match="noise map must be"):
        G.synthesis(ws, noise=[m[:1] for m in maps])


def test_noise_maps_are_in_the_graph(noisy_models, noisy_targets):
    G, _ = noisy_models
    maps = [m.requires_grad_() for m in _noise_like(G, 3)]
    ws = G.mapping(torch.randn(3, W_DIM)).detach()
    image, _ = G.synthesis(ws, noise=maps)
    grads = torch.autograd.grad(reconstruction_loss_per_slice(image, noisy_targets).sum(), maps)
    assert all(g.abs().sum() > 0 for g in grads)


# --------------------------------------------------------------------------- the penalty


def test_noise_penalty_follows_its_definition():
    ones32 = torch.ones(2, 1, 32, 32)
    # A constant map is perfectly correlated: 1 per direction per scale (32, 16, 8 px) -> 6.
    assert torch.allclose(noise_regularisation_per_slice([ones32]), torch.full((2,), 6.0))
    # 4 px maps are not downsampled: one scale -> 2.
    assert torch.allclose(noise_regularisation_per_slice([torch.ones(1, 1, 4, 4)]), torch.tensor([2.0]))
    # White noise is nearly uncorrelated; a smooth map is not; values are per slice.
    torch.manual_seed(0)
    white = torch.randn(1, 1, 64, 64)
    smooth = torch.nn.functional.interpolate(torch.randn(1, 1, 8, 8), size=64, mode="bilinear")
    smooth = (smooth - smooth.mean()) / smooth.std()
    penalty = noise_regularisation_per_slice([torch.cat([white, smooth])])
    assert penalty.shape == (2,)
    assert penalty[0] < 0.01 < 0.1 < penalty[1]


# --------------------------------------------------------------------------- optimisation


def test_noise_maps_change_and_explain_what_w_cannot(noisy_models, noisy_targets):
    G, E = noisy_models
    common = dict(steps=25, lr=0.05, seed=3)
    w_only = invert(G, E, noisy_targets, TTOOptions(**common))
    with_noise = invert(G, E, noisy_targets, TTOOptions(**common, optimize_noise=True,
                                                        noise_reg_weight=1.0))
    assert w_only.noise is None and w_only.noise_reg is None
    start = initial_noise(G, 3, TTOOptions(**common, optimize_noise=True), torch.device("cpu"))
    assert len(with_noise.noise) == len(start) == 7
    for best, first in zip(with_noise.noise, start):
        assert best.shape == first.shape
        assert not torch.allclose(best, first)
        # Re-normalised after every step: zero mean, unit variance per slice.
        assert torch.allclose(best.mean((1, 2, 3)), torch.zeros(3), atol=1e-5)
        assert torch.allclose(best.square().mean((1, 2, 3)), torch.ones(3), atol=1e-4)
    assert torch.all(with_noise.loss <= w_only.loss)
    assert with_noise.loss.sum() < 0.8 * w_only.loss.sum()
    assert with_noise.noise_reg.shape == (3,)


def test_the_penalty_keeps_the_maps_noise_like(noisy_models, noisy_targets):
    G, E = noisy_models
    common = dict(steps=25, lr=0.05, optimize_noise=True)
    free = invert(G, E, noisy_targets, TTOOptions(**common, noise_reg_weight=0.0))
    held = invert(G, E, noisy_targets, TTOOptions(**common, noise_reg_weight=1e5))
    assert torch.all(held.noise_reg < 0.5 * free.noise_reg)


def test_same_seed_gives_identical_noise_and_mask(noisy_models, noisy_targets):
    G, E = noisy_models
    options = TTOOptions(steps=8, lr=0.05, optimize_noise=True, seed=5)
    first = invert(G, E, noisy_targets, options)
    torch.rand(3)  # the global RNG must not matter
    second = invert(G, E, noisy_targets, options)
    assert torch.equal(first.label_logits, second.label_logits)
    assert all(torch.equal(a, b) for a, b in zip(first.noise, second.noise))
    other = initial_noise(G, 1, TTOOptions(seed=6), torch.device("cpu"))
    assert not torch.equal(other[-1], initial_noise(G, 1, options, torch.device("cpu"))[-1])


@pytest.mark.parametrize("patience", [0, 2])
def test_each_slice_gets_the_same_result_alone_and_in_a_batch(noisy_models, noisy_targets, patience):
    G, E = noisy_models
    options = TTOOptions(steps=10, lr=0.05, optimize_noise=True, noise_reg_weight=10.0,
                         early_stop_patience=patience, early_stop_rel_tol=0.1)
    batch = invert(G, E, noisy_targets, options)
    if patience:
        assert (batch.steps_run < 10).any()  # early stopping took part
    # The returned noise is the one that belongs to the returned (best) w+: together they give
    # the returned loss and image, also for slices that went on past their best step.
    with torch.no_grad():
        image, logits = G.synthesis(batch.ws, noise=batch.noise)
    torch.testing.assert_close(image, batch.image, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits, batch.label_logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(reconstruction_loss_per_slice(image, noisy_targets), batch.loss,
                               atol=1e-5, rtol=1e-4)
    for i in range(3):
        alone = invert(G, E, noisy_targets[i:i + 1], options)
        assert torch.equal(alone.steps_run[0], batch.steps_run[i])
        torch.testing.assert_close(alone.ws[0], batch.ws[i], atol=1e-5, rtol=1e-4)
        for a, b in zip(alone.noise, batch.noise):  # the best noise travels with the best w+
            torch.testing.assert_close(a[0], b[i], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(alone.label_logits[0], batch.label_logits[i], atol=1e-4, rtol=1e-4)
        assert torch.equal(alone.label_logits[0] > 0, batch.label_logits[i] > 0)


def test_matches_torch_adam_on_w_and_noise(noisy_models, noisy_targets):
    """The hand-written per-slice Adam equals torch.optim.Adam with two parameter groups, the
    projector's schedule and re-normalisation, keeping the best state."""
    G, E = noisy_models
    x = noisy_targets[:1]
    options = TTOOptions(steps=6, lr=0.05, noise_lr=0.08, optimize_noise=True, noise_reg_weight=10.0)
    ours = invert(G, E, x, options)

    G.requires_grad_(False)
    w = E(x).detach().clone().requires_grad_()
    noise = [m.requires_grad_() for m in initial_noise(G, 1, options, torch.device("cpu"))]
    adam = torch.optim.Adam([{"params": [w]}, {"params": noise}], betas=options.betas)
    best, best_w, best_noise = math.inf, None, None
    for t in range(options.steps + 1):
        image, _ = G.synthesis(w, noise_mode="const", noise=noise)
        fit = reconstruction_loss_per_slice(image, x)
        if float(fit.detach()) < best:
            best, best_w, best_noise = float(fit), w.detach().clone(), [m.detach().clone() for m in noise]
        if t == options.steps:
            break
        adam.zero_grad()
        (fit + options.noise_reg_weight * noise_regularisation_per_slice(noise)).sum().backward()
        adam.param_groups[0]["lr"] = learning_rate(t, options.steps, options)
        adam.param_groups[1]["lr"] = options.noise_lr * lr_ramp(t, options.steps, options)
        adam.step()
        with torch.no_grad():
            for m in noise:
                m.sub_(m.mean()).mul_(m.square().mean().rsqrt())
    assert float(ours.loss[0]) == pytest.approx(best, rel=1e-5)
    torch.testing.assert_close(ours.ws, best_w, atol=1e-5, rtol=1e-4)
    for a, b in zip(ours.noise, best_noise):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_off_ignores_the_noise_options(noisy_models, noisy_targets):
    G, E = noisy_models
    default = invert(G, E, noisy_targets, TTOOptions(steps=6, lr=0.05))
    off = invert(G, E, noisy_targets, TTOOptions(steps=6, lr=0.05, optimize_noise=False, noise_lr=0.5,
                                                 noise_reg_weight=3.0, noise_init="const"))
    assert torch.equal(default.ws, off.ws) and torch.equal(default.label_logits, off.label_logits)
    assert default.history == off.history and off.noise is None


def test_const_init_starts_where_w_only_starts(noisy_models, noisy_targets):
    G, E = noisy_models
    w_only = invert(G, E, noisy_targets, TTOOptions(steps=3, lr=0.05))
    const = invert(G, E, noisy_targets, TTOOptions(steps=3, lr=0.05, optimize_noise=True, noise_init="const"))
    assert const.history[0] == w_only.history[0]
    assert torch.all(const.loss <= invert(G, E, noisy_targets, TTOOptions(steps=0)).loss)


# --------------------------------------------------------------------------- wiring


def test_option_validation_and_generators_without_noise(tiny_models, target_slices):
    with pytest.raises(ValueError, match="optimize_noise"):
        TTOOptions.from_config({"optimize_noise": "false"})  # a string would be truthy
    with pytest.raises(ValueError, match="noise_lr"):
        TTOOptions(noise_lr=0).validate()
    with pytest.raises(ValueError, match="noise_reg_weight"):
        TTOOptions(noise_reg_weight=-1).validate()
    with pytest.raises(ValueError, match="noise_init"):
        TTOOptions(noise_init="zeros").validate()
    o = TTOOptions.from_config({"optimize_noise": True, "noise_lr": 0.05}, noise_reg_weight=10.0)
    assert (o.optimize_noise, o.noise_lr, o.noise_reg_weight) == (True, 0.05, 10.0)
    G, E = tiny_models  # the stand-in generator has no noise inputs: a clear error
    with pytest.raises(ValueError, match="per-sample noise maps"):
        invert(G, E, target_slices, TTOOptions(steps=1, optimize_noise=True))


def test_inferer_passes_the_option(noisy_models, noisy_targets):
    G, E = noisy_models
    network = torch.nn.Module()
    network.generator, network.encoder = G, E
    volume = noisy_targets.permute(1, 2, 3, 0)[None]  # [1, 1, S, S, D]
    inferer = TTOInferer(steps=4, lr=0.05, batch_size=2, optimize_noise=True, noise_reg_weight=10.0)
    assert inferer.options.optimize_noise
    logits = inferer(volume, network)
    direct = invert(G, E, noisy_targets, inferer.options)
    torch.testing.assert_close(logits[0].permute(3, 0, 1, 2), direct.label_logits, atol=1e-4, rtol=1e-4)


TINY = {
    "model": {"resolution": 32, "generator": {"z_dim": 32, "w_dim": 32, "channel_base": 256,
                                              "channel_max": 32, "mapping_layers": 2}},
    "encoder": {"channels": [8, 16, 16], "fpn_channels": 16, "head_channels": 8},
    "inference": {"steps": 2, "lr": 0.05, "batch_size": 16},
}


@pytest.mark.parametrize("flag, expected", [([], False), (["--optimize-noise"], True)])
def test_segment_cli_flag_reaches_the_optimisation(tmp_path, monkeypatch, flag, expected):
    import nibabel as nib
    import numpy as np

    import medsemgan.inference.inferer as inferer_module
    from medsemgan.cli import main
    from medsemgan.inference.model import SegmentationModel

    torch.manual_seed(0)
    SegmentationModel.build(TINY).save(tmp_path / "bundle")
    (tmp_path / "bundle" / "configs").mkdir()
    (tmp_path / "bundle" / "configs" / "model.yaml").write_text(yaml.safe_dump(TINY))
    data = np.full((40, 36, 3), -1000.0, np.float32)
    data[5:35, 4:32] = 40 + 20 * np.random.default_rng(0).standard_normal((30, 28, 3))
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.5, 1.0])), tmp_path / "ct.nii.gz")

    seen = []
    real_invert = inferer_module.invert

    def recording_invert(G, E, images, options, **kwargs):
        result = real_invert(G, E, images, options, **kwargs)
        seen.append((options.optimize_noise, result.noise is not None))
        return result

    monkeypatch.setattr(inferer_module, "invert", recording_invert)
    code = main(["segment", "-i", str(tmp_path / "ct.nii.gz"), "-o", str(tmp_path / "out"),
                 "--bundle", str(tmp_path / "bundle"), "--no-progress", "--modality", "CT", *flag])
    assert code == 0 and (tmp_path / "out" / "ct.nii.gz").is_file()
    assert seen and all(s == (expected, expected) for s in seen)
