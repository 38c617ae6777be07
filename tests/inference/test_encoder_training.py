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


def test_train_encoder_command_runs_from_a_config_file(tmp_path, generator_file, capsys):
    import yaml

    from medsemgan.cli import main

    cfg = json.loads(json.dumps(TINY))
    cfg["data"] = {"source": "synthetic", "synthetic_unlabeled": 16, "synthetic_labeled": 4}
    cfg["encoder"]["train"].update(kimg=0.016, warmup_kimg=0.004)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    assert main(["train", "encoder", "--config", str(path), "--generator", str(generator_file),
                 "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["finished"] and summary["images_seen"] >= 16
    assert (out / "encoder.pt").is_file() and (out / "checkpoint.pt").is_file()
