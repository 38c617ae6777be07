"""The GAN run's validation number: Dice of the label head after a short projection."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_config

from medsemgan.data.btcv import BTCV_DEV_PATIENTS, BTCV_POOL_PATIENTS
from medsemgan.training.run import build_networks, keep_best_snapshot, train_gan
from medsemgan.training.synthetic import synthetic_tensors
from medsemgan.training.validation import (
    VALIDATION_DEFAULTS,
    build_validation_set,
    pooled_dice,
    validate_generator,
    validation_patients,
)


def test_pooled_dice_counts_every_pixel_of_every_slice():
    truth = torch.zeros(2, 1, 4, 4)
    truth[0, 0, :2] = 1  # 8 pixels
    pred = torch.zeros_like(truth)
    pred[0, 0, :1] = 1  # 4 of them
    pred[1, 0, 3] = 1  # 4 false positives on a slice without liver
    assert pooled_dice(pred, truth) == pytest.approx(2 * 4 / (8 + 8))
    assert pooled_dice(torch.zeros_like(truth), torch.zeros_like(truth)) == 1.0


def test_validation_patients_come_from_the_pool_never_the_dev_set():
    names = validation_patients(4)
    assert len(names) == 4
    patients = {int(n.split("_")[1]) for n in names}
    assert patients <= set(BTCV_POOL_PATIENTS)
    assert not patients & set(BTCV_DEV_PATIENTS)


def _own_sample(G):
    """The generator's image and mask at its mean latent: a projection should recover the mask."""
    with torch.no_grad():
        ws = G.mapping.w_avg[None, None].expand(4, G.num_ws, -1)
        image, logits = G.synthesis(ws, noise_mode="const")
    return image.clamp(-1, 1), (logits[:, :1] > 0).float()


def test_projection_recovers_the_generators_own_mask_and_not_its_complement():
    cfg = tiny_config(model={"resolution": 32})  # 32 px: enough for the 3-scale structural term
    G, _, _ = build_networks(cfg)
    with torch.no_grad():
        G.mapping.w_avg.copy_(G.mapping(torch.randn(64, G.z_dim))[:, 0].mean(0))
    image, mask = _own_sample(G)
    assert 0 < float(mask.mean()) < 1, "the tiny generator should draw a partial mask"
    settings = {**VALIDATION_DEFAULTS, "steps": 2, "lr": 1e-4}
    objective = {"perceptual_weight": 0.0, "mse_weight": 1.0}
    same = validate_generator(G, {"image": image, "mask": mask}, settings, objective)
    flipped = validate_generator(G, {"image": image, "mask": 1 - mask}, settings, objective)
    assert same["val/dice"] > 0.95
    assert flipped["val/dice"] < 0.5
    assert same["val/recon_mse"] < 1e-2


def test_train_gan_logs_validation_at_its_cadence(tmp_path):
    cfg = tiny_config({"kimg": 0.032, "validation": {"every_kimg": 0.016, "steps": 1}}, model={"resolution": 32})
    G, _, _ = build_networks(cfg)
    image, mask = _own_sample(G)
    tensors = synthetic_tensors(32, 8, 3, seed=0)
    train_gan(cfg, tmp_path, tensors=tensors, validation={"image": image, "mask": mask})
    rows = [json.loads(line) for line in (tmp_path / "stats.jsonl").read_text().splitlines()]
    validated = [r["images_seen"] for r in rows if "val/dice" in r]
    assert validated == [16, 32]
    assert all(0.0 <= r["val/dice"] <= 1.0 for r in rows if "val/dice" in r)
    best = json.loads((tmp_path / "snapshots" / "best.json").read_text())
    scores = {r["images_seen"]: r["val/dice"] for r in rows if "val/dice" in r}
    assert best["val/dice"] == pytest.approx(max(scores.values()))
    assert scores[best["images_seen"]] == pytest.approx(best["val/dice"])
    assert (tmp_path / "snapshots" / "generator_ema_best.pt").is_file()


def test_the_best_snapshot_changes_only_when_val_dice_beats_the_record(tmp_path):
    net = torch.nn.Linear(2, 2)

    def kept_weight():
        return torch.load(tmp_path / "snapshots" / "generator_ema_best.pt", weights_only=True)["weight"]

    assert keep_best_snapshot(tmp_path, net, {"val/dice": 0.5, "val/recon_mse": 0.1}, 1000)
    first = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    assert not keep_best_snapshot(tmp_path, net, {"val/dice": 0.3, "val/recon_mse": 0.1}, 2000)
    assert torch.equal(kept_weight(), first)
    assert not keep_best_snapshot(tmp_path, net, {"val/dice": 0.5, "val/recon_mse": 0.1}, 3000)  # a tie keeps the older
    assert keep_best_snapshot(tmp_path, net, {"val/dice": 0.7, "val/recon_mse": 0.1}, 4000)
    assert torch.equal(kept_weight(), net.weight.detach())
    assert json.loads((tmp_path / "snapshots" / "best.json").read_text()) == {
        "images_seen": 4000, "val/dice": 0.7, "val/recon_mse": 0.1}


def test_a_snapshot_name_gives_back_its_images_seen(tmp_path):
    from medsemgan.training.run import BEST_SNAPSHOT, snapshot_images_seen, snapshot_path

    assert snapshot_images_seen(snapshot_path(tmp_path, 65_000)) == 65_000
    assert snapshot_images_seen(snapshot_path(tmp_path, 1_234_567_890)) == 1_234_567_890  # wider than the padding
    for other in (BEST_SNAPSHOT, "generator_ema_12.pth", "encoder_000001000.pt", "generator_ema_.pt"):
        assert snapshot_images_seen(tmp_path / other) is None


def test_unknown_validation_key_is_refused():
    from medsemgan.errors import InputError

    with pytest.raises(InputError, match="validation"):
        tiny_config({"validation": {"every": 1}})


def test_validation_set_from_real_pool_slices(shared_data, tmp_path):
    settings = {**VALIDATION_DEFAULTS, "patients": 2, "slices_per_patient": 2}
    data = build_validation_set(shared_data, 32, settings, tmp_path)
    assert data["image"].shape == (4, 1, 32, 32) and data["mask"].shape == (4, 1, 32, 32)
    assert all(float(m.sum()) > 0 for m in data["mask"])  # every slice shows liver
    assert -1.0 <= float(data["image"].min()) and float(data["image"].max()) <= 1.0
    cached = build_validation_set(shared_data, 32, settings, tmp_path)  # second call reads the cache
    assert torch.equal(cached["image"], data["image"])
