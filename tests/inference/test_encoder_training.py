import json

import pytest
import torch

from medsemgan.errors import InputError
from medsemgan.models.build import build_generator
from medsemgan.training.encoder import encoder_section, train_encoder
from medsemgan.training.run import StopRequest
from medsemgan.training.synthetic import synthetic_tensors

TINY = {
    "model": {"resolution": 32, "generator": {"z_dim": 32, "w_dim": 32, "channel_base": 256,
                                              "channel_max": 32, "mapping_layers": 2}},
    "encoder": {"channels": [8, 16, 16], "fpn_channels": 16, "head_channels": 8,
                "train": {"kimg": 0.048, "batch_size": 4, "labeled_batch_size": 2,
                          "synthetic_batch_size": 2, "warmup_kimg": 0.008, "lr": 1e-3,
                          "checkpoint_kimg": 0.008, "progress": False, "tensorboard": False,
                          "latent_reg_weight": 0.01}},
}


@pytest.fixture
def generator_file(tmp_path):
    torch.manual_seed(0)
    G = build_generator(TINY["model"])
    path = tmp_path / "generator_ema.pt"
    torch.save(G.state_dict(), path)
    return path


@pytest.fixture
def tensors():
    return synthetic_tensors(32, unlabeled=24, labeled=6, seed=3)


def test_encoder_trains_exports_and_resumes_bit_for_bit(tmp_path, generator_file, tensors):
    straight = train_encoder(TINY, tmp_path / "straight", generator=generator_file, tensors=tensors,
                             max_steps=6)
    # Two warm-up steps (8 generated images), then real steps with every loss term.
    assert straight["steps"] == 6 and straight["images_seen"] == 24
    assert {"loss/mse", "loss/perceptual", "loss/bce", "loss/dice", "loss/latent"} <= set(straight["last_stats"])

    train_encoder(TINY, tmp_path / "split", generator=generator_file, tensors=tensors, max_steps=3)
    with pytest.raises(InputError, match="--resume"):
        train_encoder(TINY, tmp_path / "split", generator=generator_file, tensors=tensors, max_steps=1)
    resumed = train_encoder(TINY, tmp_path / "split", resume=True, generator=generator_file,
                            tensors=tensors, max_steps=3)
    a = straight["trainer"].E.state_dict()
    b = resumed["trainer"].E.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not straight["finished"]

    done = train_encoder(TINY, tmp_path / "split", resume=True, generator=generator_file, tensors=tensors)
    assert done["finished"] and done["images_seen"] >= 48
    exported = torch.load(tmp_path / "split" / "encoder.pt", weights_only=True)
    assert set(exported) == set(done["trainer"].E.state_dict())
    assert (tmp_path / "split" / "samples" / "recon_latest.png").stat().st_size > 0
    assert json.loads((tmp_path / "split" / "config.json").read_text())["encoder"]["train"]["batch_size"] == 4


def test_training_lowers_the_reconstruction_loss(tmp_path, generator_file, tensors):
    cfg = json.loads(json.dumps(TINY))
    cfg["encoder"]["train"].update(warmup_kimg=0, synthetic_batch_size=0, kimg=0.2)
    first = train_encoder(cfg, tmp_path / "a", generator=generator_file, tensors=tensors, max_steps=1)
    later = train_encoder(cfg, tmp_path / "a", resume=True, generator=generator_file, tensors=tensors,
                          max_steps=25)
    assert later["last_stats"]["loss/total"] < first["last_stats"]["loss/total"]


def test_a_stop_request_writes_a_checkpoint(tmp_path, generator_file, tensors):
    stop = StopRequest()
    stop.requested, stop.signal_name = True, "SIGTERM"
    summary = train_encoder(TINY, tmp_path / "r", generator=generator_file, tensors=tensors, stop=stop)
    assert summary["stopped_by"] == "SIGTERM" and summary["steps"] == 1
    assert (tmp_path / "r" / "checkpoint.pt").is_file()


def test_unknown_encoder_keys_are_rejected():
    with pytest.raises(InputError, match="unknown keys in encoder.train"):
        encoder_section({"encoder": {"train": {"bacth_size": 3}}})
    with pytest.raises(InputError, match="generator"):
        train_encoder(TINY, "/tmp/unused", generator=None)


def _tiny_config_file(folder, kimg: float, **data) -> str:
    """TINY on synthetic data as a YAML file, for the command-line tests."""
    import yaml

    cfg = json.loads(json.dumps(TINY))
    cfg["data"] = {"source": "synthetic", "synthetic_unlabeled": 16, "synthetic_labeled": 4, **data}
    cfg["encoder"]["train"].update(kimg=kimg, warmup_kimg=0.004)
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_train_encoder_command_runs_from_a_config_file(tmp_path, generator_file, capsys):
    from medsemgan.cli import main

    path = _tiny_config_file(tmp_path, 0.016)
    out = tmp_path / "run"
    assert main(["train", "encoder", "--config", path, "--generator", str(generator_file),
                 "--out", str(out), "--modality-augment", "0.5"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["finished"] and summary["images_seen"] >= 16
    assert (out / "encoder.pt").is_file() and (out / "checkpoint.pt").is_file()
    # --modality-augment sets p and keeps the file's other modality_augment keys (defaults here)
    recorded = json.loads((out / "config.json").read_text())["encoder"]["train"]["modality_augment"]
    assert recorded == {"p": 0.5}
    assert main(["train", "encoder", "--config", path, "--generator", str(generator_file),
                 "--out", str(tmp_path / "bad"), "--modality-augment", "1.5"]) == 2
    assert "--modality-augment" in capsys.readouterr().err


def test_train_encoder_labeled_sets_the_budget_it_trains_and_records_with(tmp_path, generator_file, monkeypatch, capsys):
    """A small-budget encoder must see only that budget's labels, like its generator."""
    import medsemgan.training.run as run_module
    from medsemgan.cli import main

    seen = []
    real = run_module.load_training_tensors

    def spy(config, resolution):
        seen.append(config["data"]["labeled_budget"])
        return real(config, resolution)

    monkeypatch.setattr(run_module, "load_training_tensors", spy)
    path = _tiny_config_file(tmp_path, 0.008, labeled_budget="all")
    out = tmp_path / "run8"
    assert main(["train", "encoder", "--config", path, "--generator", str(generator_file),
                 "--out", str(out), "--labeled", "8"]) == 0
    capsys.readouterr()
    assert seen == [8]
    assert json.loads((out / "config.json").read_text())["data"]["labeled_budget"] == 8


def test_modality_augment_changes_the_encoder_inputs_not_the_targets(tmp_path, generator_file, tensors, monkeypatch):
    from medsemgan.training import encoder as encoder_module

    seen = []
    real_shift = encoder_module.modality_shift

    def recording_shift(x, cfg):
        out = real_shift(x, cfg)
        seen.append((x.clone(), out.clone(), cfg.p))
        return out

    targets = []
    real_mse = encoder_module.mse_per_slice

    def recording_mse(image, target):
        targets.append(target.clone())
        return real_mse(image, target)

    monkeypatch.setattr(encoder_module, "modality_shift", recording_shift)
    monkeypatch.setattr(encoder_module, "mse_per_slice", recording_mse)
    cfg = json.loads(json.dumps(TINY))
    cfg["encoder"]["train"]["modality_augment"] = {"p": 1.0}
    summary = train_encoder(cfg, tmp_path / "aug", generator=generator_file, tensors=tensors, max_steps=4)
    assert summary["steps"] == 4 and len(seen) == 4
    # Every step's inputs were remapped (p = 1), the real steps included.
    assert all(p == 1.0 and not torch.equal(before, after) for before, after, p in seen)
    # The reconstruction target of a real step is the slice before the shift, not the shifted input.
    real_steps = seen[-len(targets):]
    assert len(targets) == 2  # 2 warm-up steps (latent loss only), then 2 real steps
    for (before, after, _), target in zip(real_steps, targets):
        assert torch.equal(target, before) and not torch.equal(target, after)
    with pytest.raises(InputError, match="modality_augment"):
        encoder_section({"encoder": {"train": {"modality_augment": {"p": 2}}}})
    with pytest.raises(InputError, match="unknown modality_augment keys"):
        encoder_section({"encoder": {"train": {"modality_augment": {"strength": 1}}}})
