import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import tiny_config

from medsemgan.errors import InputError
from medsemgan.models.build import build_generator
from medsemgan.training.checkpoint import (
    capture_rng_state,
    export_generator,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from medsemgan.training.run import train_gan


def test_rng_state_round_trip_through_weights_only_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    state = capture_rng_state()
    expected = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())
    save_checkpoint(tmp_path / "c.pt", {"rng": [state]})
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind
    loaded = load_checkpoint(tmp_path / "c.pt")  # weights_only=True inside
    restore_rng_state(loaded["rng"][0])
    assert (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist()) == expected


def test_load_checkpoint_rejects_missing_and_foreign_files(tmp_path):
    with pytest.raises(InputError, match="no checkpoint"):
        load_checkpoint(tmp_path / "none.pt")
    torch.save({"something": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="not a medsemgan"):
        load_checkpoint(tmp_path / "other.pt")


def _states_equal(a: dict, b: dict, path="") -> list[str]:
    """Names of entries that differ (tensors compared bit for bit)."""
    diffs = []
    for key in set(a) | set(b):
        va, vb = a.get(key), b.get(key)
        name = f"{path}{key}"
        if isinstance(va, dict) and isinstance(vb, dict):
            diffs += _states_equal(va, vb, name + ".")
        elif isinstance(va, list) and isinstance(vb, list):
            diffs += _states_equal(dict(enumerate(va)), dict(enumerate(vb)), name + ".")
        elif torch.is_tensor(va) and torch.is_tensor(vb):
            if va.shape != vb.shape or not torch.equal(va, vb):
                diffs.append(name)
        elif va != vb:
            diffs.append(name)
    return diffs


COMPARED = ("G", "D_image", "D_joint", "G_ema", "opt_G", "opt_D_image", "opt_D_joint", "pl_mean",
            "step", "images_seen", "rng")


def test_resume_in_process_is_bit_identical(tmp_path):
    config = tiny_config({"kimg": 0.024})  # 6 iterations; regularisers at 0, 2, 3, 4 ...
    full = train_gan(config, tmp_path / "full")
    part = train_gan(config, tmp_path / "part", max_steps=3)
    assert part["steps"] == 3 and not part["finished"]
    with pytest.raises(InputError, match="--resume"):
        train_gan(config, tmp_path / "part")
    resumed = train_gan(config, tmp_path / "part", resume=True)
    assert resumed["finished"] and resumed["steps"] == 6
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "part" / "checkpoint.pt")
    assert _states_equal({k: a[k] for k in COMPARED}, {k: b[k] for k in COMPARED}) == []
    # ...and a different seed would differ (the comparison can fail).
    other = train_gan(tiny_config({"kimg": 0.024, "seed": 4}), tmp_path / "other")
    c = load_checkpoint(Path(other["run_dir"]) / "checkpoint.pt")
    assert "G" in " ".join(_states_equal({"G": a["G"]}, {"G": c["G"]}))


def test_export_generator_is_small_plain_state_dict(tmp_path):
    config = tiny_config({"kimg": 0.008})
    summary = train_gan(config, tmp_path / "run")
    exported = tmp_path / "run" / "generator_ema.pt"
    assert exported.is_file()
    state = torch.load(exported, weights_only=True)
    G = build_generator(config["model"])
    G.load_state_dict(state)
    ema = summary["trainer"].G_ema.state_dict()
    assert all(torch.equal(state[k], ema[k]) for k in ema)
    assert any("to_seg" in k for k in state) and any("to_rgb" in k for k in state)

    half = export_generator(tmp_path / "run" / "checkpoint.pt", tmp_path / "g_bf16.pt", dtype="bf16")
    half_state = torch.load(half, weights_only=True)
    assert all(v.dtype == torch.bfloat16 for v in half_state.values() if v.is_floating_point())
    assert half.stat().st_size < exported.stat().st_size


def _write_yaml(config: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump({k: config[k] for k in ("model", "data", "training")}))
    return path


def _cli(args, log: Path):
    """Start ``medsemgan train gan ARGS``; output goes to files (a full pipe would block it)."""
    # Processes started at different times must run the same op code, even while the compiled
    # ops are being rebuilt; resuming with the fused ops is covered in-process above.
    env = dict(os.environ, OMP_NUM_THREADS="1", MEDSEMGAN_OPS="reference")
    with open(log.with_suffix(".out"), "w") as out, open(log.with_suffix(".err"), "w") as err:
        return subprocess.Popen([sys.executable, "-m", "medsemgan.cli", "train", "gan", *args],
                                stdout=out, stderr=err, text=True, env=env)


def _finish(proc: subprocess.Popen, log: Path, timeout: float = 240) -> tuple[str, str]:
    proc.wait(timeout=timeout)
    return log.with_suffix(".out").read_text(), log.with_suffix(".err").read_text()


def test_cli_run_killed_with_sigterm_resumes_bit_for_bit(tmp_path):
    config = tiny_config({"kimg": 0.048, "log_every": 1, "checkpoint_kimg": 1.0})  # 12 iterations
    cfg_file = _write_yaml(config, tmp_path / "tiny.yaml")
    full = _cli(["--config", str(cfg_file), "--out", str(tmp_path / "full")], tmp_path / "full_log")
    killed = _cli(["--config", str(cfg_file), "--out", str(tmp_path / "killed")], tmp_path / "killed_log")
    stats = tmp_path / "killed" / "stats.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and killed.poll() is None:
        if stats.exists() and len(stats.read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    assert killed.poll() is None, "the run ended before it could be interrupted"
    killed.send_signal(signal.SIGTERM)
    _, err = _finish(killed, tmp_path / "killed_log")
    assert killed.returncode == 143, err[-2000:]
    part = load_checkpoint(tmp_path / "killed" / "checkpoint.pt")
    assert 3 <= part["step"] < 12
    assert not (tmp_path / "killed" / "generator_ema.pt").exists()  # unfinished: nothing exported

    resumed = _cli(["--config", str(cfg_file), "--out", str(tmp_path / "killed"), "--resume"],
                   tmp_path / "resumed_log")
    out, err = _finish(resumed, tmp_path / "resumed_log")
    assert resumed.returncode == 0, err[-2000:]
    assert '"finished": true' in out
    _, err = _finish(full, tmp_path / "full_log")
    assert full.returncode == 0, err[-2000:]
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "killed" / "checkpoint.pt")
    assert a["step"] == b["step"] == 12
    assert _states_equal({k: a[k] for k in COMPARED}, {k: b[k] for k in COMPARED}) == []
    samples = sorted(p.name for p in (tmp_path / "full" / "samples").glob("*.png"))
    assert "fakes_latest.png" in samples and len(samples) >= 2


def test_resume_refuses_a_different_model(tmp_path):
    train_gan(tiny_config({"kimg": 0.004}), tmp_path)
    other = tiny_config({"kimg": 0.008}, model={"generator": {"z_dim": 8, "w_dim": 16, "mapping_layers": 2,
                                                              "channel_base": 256, "channel_max": 32}})
    with pytest.raises(InputError, match="different model"):
        train_gan(other, tmp_path, resume=True)


WIDER_JOINT_D = {"joint_discriminator": {"num_scales": 2, "base_channels": 16, "n_layers": 1, "channel_max": 32}}


def test_init_from_carries_unchanged_networks_and_builds_the_changed_one_fresh(tmp_path):
    import json

    source = train_gan(tiny_config({"kimg": 0.012}), tmp_path / "source")  # 3 iterations, 12 images
    before = load_checkpoint(tmp_path / "source" / "checkpoint.pt")
    wider = tiny_config({"kimg": 0.012}, model=WIDER_JOINT_D)
    started = train_gan(wider, tmp_path / "wide", init_from=tmp_path / "source", max_steps=0)
    trainer = started["trainer"]
    assert trainer.images_seen == source["images_seen"] == 12 and trainer.step_index == 3
    for key in ("G", "G_ema", "D_image"):
        ours = getattr(trainer, key).state_dict()
        assert all(torch.equal(ours[k], v) for k, v in before[key].items()), key
    assert trainer.opt_G.state_dict()["state"][0]["step"] == before["opt_G"]["state"][0]["step"]
    assert trainer.D_joint.state_dict().keys() != before["D_joint"].keys() or any(
        v.shape != before["D_joint"][k].shape for k, v in trainer.D_joint.state_dict().items())
    assert trainer.opt_D_joint.state_dict()["state"] == {}  # a fresh optimiser for the fresh network
    record = json.loads((tmp_path / "wide" / "init_from.json").read_text())
    assert record["carried"] == ["generator", "image_discriminator"] and record["fresh"] == ["joint_discriminator"]
    assert record["images_seen"] == 12 and not Path(record["run"]).is_absolute()


def test_init_from_then_resume_continues_the_new_run(tmp_path):
    train_gan(tiny_config({"kimg": 0.008}), tmp_path / "source")  # 8 images
    wider = tiny_config({"kimg": 0.024}, model=WIDER_JOINT_D)
    part = train_gan(wider, tmp_path / "wide", init_from=tmp_path / "source", max_steps=2, resume=True)
    assert part["images_seen"] == 16 and not part["finished"]
    own = load_checkpoint(tmp_path / "wide" / "checkpoint.pt")
    # with a checkpoint of its own, --resume --init-from resumes it and leaves the source alone
    done = train_gan(wider, tmp_path / "wide", init_from=tmp_path / "source", resume=True)
    assert done["finished"] and done["images_seen"] == 24 and own["images_seen"] == 16
    with pytest.raises(InputError, match="--resume"):  # a run folder with a checkpoint is never overwritten
        train_gan(wider, tmp_path / "wide", init_from=tmp_path / "source")


def test_init_from_refuses_another_generator_or_resolution_and_a_folder_without_checkpoint(tmp_path):
    train_gan(tiny_config({"kimg": 0.004}), tmp_path / "source")
    other_g = tiny_config({"kimg": 0.008}, model={"generator": {"z_dim": 8, "w_dim": 16, "mapping_layers": 2,
                                                                "channel_base": 256, "channel_max": 32}})
    with pytest.raises(InputError, match="generator: section differs"):
        train_gan(other_g, tmp_path / "a", init_from=tmp_path / "source")
    with pytest.raises(InputError, match="differs in resolution"):
        train_gan(tiny_config({"kimg": 0.008}, model={"resolution": 32}), tmp_path / "b", init_from=tmp_path / "source")
    with pytest.raises(InputError, match="no GAN checkpoint"):
        train_gan(tiny_config({"kimg": 0.008}), tmp_path / "c", init_from=tmp_path / "empty")
    assert not (tmp_path / "a" / "checkpoint.pt").exists() and not (tmp_path / "c").exists()
