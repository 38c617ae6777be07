"""The YAML model configurations: loading, validation, building, one training-like step each."""

from __future__ import annotations

import argparse

import pytest
import torch
import torch.nn.functional as F

from medsemgan.errors import InputError
from medsemgan.models.build import build_models
from medsemgan.models.config import config_names, load_model_config
from medsemgan.models.generator import IMAGE_ONLY, count_parameters, parameters_by_role


def test_both_configurations_exist_and_load():
    assert {"cpu128", "paper256"} <= set(config_names())
    cpu = load_model_config("cpu128")
    paper = load_model_config("paper256")
    assert cpu["name"] == "cpu128" and cpu["resolution"] == 128
    assert paper["resolution"] == 256
    # The paper's configuration: latent 512, 8 mapping layers, channel multiplier 2.
    assert paper["generator"]["z_dim"] == paper["generator"]["w_dim"] == 512
    assert paper["generator"]["mapping_layers"] == 8
    assert paper["generator"]["channel_base"] == 32768 and paper["generator"]["channel_max"] == 512


def test_config_errors_name_the_file(tmp_path):
    bad = tmp_path / "typo.yaml"
    bad.write_text("model:\n  resolution: 128\n  generator:\n    chanel_base: 4096\n")
    with pytest.raises(InputError) as err:
        load_model_config(bad)
    assert "typo.yaml" in str(err.value) and "chanel_base" in str(err.value)
    (tmp_path / "nomodel.yaml").write_text("training:\n  batch: 4\n")
    with pytest.raises(InputError, match="model"):
        load_model_config(tmp_path / "nomodel.yaml")
    (tmp_path / "res.yaml").write_text("model:\n  resolution: 100\n")
    with pytest.raises(InputError, match="power of two"):
        load_model_config(tmp_path / "res.yaml")
    with pytest.raises(InputError, match="cpu128"):
        load_model_config("no_such_config")


def test_other_sections_are_left_alone_and_defaults_fill_in(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("model:\n  resolution: 32\ntraining:\n  batch: 4\n  lr: 0.002\n")
    cfg = load_model_config(path)
    assert cfg["name"] == "mine" and cfg["resolution"] == 32
    assert cfg["generator"]["mapping_layers"] == 8 and cfg["joint_discriminator"]["num_scales"] == 3
    assert "training" not in cfg


def _generator_step(G, D_image, D_joint, batch: int) -> dict:
    """One unregularised generator step as training runs it; returns the parameter groups."""
    img, seg = G(torch.randn(batch, G.z_dim), style_mixing_prob=0.9)
    loss = F.softplus(-D_image(img)).mean()
    outputs, features = D_joint(img.detach(), 2 * torch.sigmoid(seg) - 1, return_features=True)
    loss = loss - sum(o.mean() for o in outputs)
    assert torch.isfinite(loss)
    loss.backward()
    return parameters_by_role(G)


def _assert_all_trained(*nets):
    for net in nets:
        missing = [n for n, p in net.named_parameters() if p.grad is None]
        assert not missing, f"{type(net).__name__}: no gradient for {missing[:5]}"
        assert all(torch.isfinite(p.grad).all() for p in net.parameters())


def test_cpu128_builds_and_runs_a_step():
    torch.manual_seed(0)
    G, D_image, D_joint = build_models(load_model_config("cpu128"))
    img, seg = G(torch.randn(4, G.z_dim))
    assert img.shape == (4, 1, 128, 128) and seg.shape == (4, 1, 128, 128)
    G.zero_grad()
    _generator_step(G, D_image, D_joint, batch=4)
    _assert_all_trained(G, D_image, D_joint)
    # Small enough for a 2-core CPU (docs/architecture.md has the measurement behind it).
    assert count_parameters(G) < 8e6 and count_parameters(D_image) < 8e6


def test_paper256_builds_and_runs_a_step_at_batch_1():
    torch.manual_seed(0)
    G, D_image, D_joint = build_models(load_model_config("paper256"))
    # Close to the official SemanticGAN networks (MISSION.md: G 30.8 M, D 28.4 M, joint D 8.3 M).
    assert 29e6 < count_parameters(G) < 33e6
    assert 27e6 < count_parameters(D_image) < 30e6
    assert 7.5e6 < count_parameters(D_joint) < 9e6
    assert G.num_ws == 14
    _generator_step(G, D_image, D_joint, batch=1)
    _assert_all_trained(G, D_image, D_joint)


def test_joint_discriminator_loss_does_not_reach_the_image_head(tiny_config):
    # The property the training layer relies on: with the detached image, the joint D's
    # generator loss trains the label heads and the shared trunk, never the toRGB heads.
    torch.manual_seed(1)
    G, _, D_joint = build_models(tiny_config(resolution=32))
    img, seg = G(torch.randn(2, G.z_dim))
    loss = -sum(o.mean() for o in D_joint(img.detach(), 2 * torch.sigmoid(seg) - 1))
    loss.backward()
    roles = parameters_by_role(G)
    assert all(p.grad is None or not p.grad.any() for _, p in roles[IMAGE_ONLY])
    assert any(p.grad is not None and p.grad.any() for _, p in roles["shared"])


def test_bench_model_reports_both_op_paths_and_forms(tmp_path):
    from medsemgan.bench import model as bench

    path = tmp_path / "tiny.yaml"
    path.write_text(
        "model:\n  resolution: 16\n  generator: {z_dim: 8, w_dim: 8, mapping_layers: 1, channel_base: 64, channel_max: 8}\n"
        "  image_discriminator: {channel_base: 64, channel_max: 8}\n"
        "  joint_discriminator: {num_scales: 1, base_channels: 4, n_layers: 1, channel_max: 4}\n"
    )
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    threads = torch.get_num_threads()
    result = bench.run(parser.parse_args(["--configs", str(path), "--batch", "2", "--repeats", "1", "--threads", "1"]))
    torch.set_num_threads(threads)
    entry = result["configs"][str(path)]
    assert set(entry["impls"]) == {"fused", "reference"}
    assert entry["impls"]["reference"]["ran"] == "reference"
    for impl in entry["impls"].values():
        assert impl["g_step_s"] > 0 and impl["d_image_step_s"] > 0 and impl["cpu_s"]["per_kimg"] > 0
    assert result["speedup"] == entry["speedup"] > 0
    assert entry["params"]["G"] > 0 and entry["flops_per_image"]["G_forward"] > 0
    assert {"batched", "grouped"} <= set(entry["modconv_forms"])
