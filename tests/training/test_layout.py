"""Process x thread layout of `train gan` and the arguments each torchrun worker gets."""

from __future__ import annotations

import argparse

import pytest

from medsemgan.errors import InputError
from medsemgan.training import cli_gan
from medsemgan.training.layout import Layout, needs_launch, plan_layout


def test_auto_layout_is_two_single_thread_processes_on_a_two_core_cpu():
    assert plan_layout("cpu", "auto", None, cores=2) == Layout(2, 1)
    assert plan_layout("cpu", "auto", None, cores=16) == Layout(2, 8)
    assert plan_layout("cpu", "auto", None, cores=1) == Layout(1, 1)
    assert plan_layout("cpu", 1, None, cores=2) == Layout(1, 2)
    assert plan_layout("cpu", "3", 4, cores=2) == Layout(3, 4)  # explicit values win


def test_bad_process_count_is_refused():
    with pytest.raises(InputError, match="processes"):
        plan_layout("cpu", "many", None)
    with pytest.raises(InputError, match=">= 1"):
        plan_layout("cpu", 0, None)


def test_launch_only_outside_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert needs_launch(Layout(2, 1)) and not needs_launch(Layout(1, 2))
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not needs_launch(Layout(2, 1))  # already a worker: train


def test_workers_get_every_override_and_the_resolved_run_folder(tmp_path):
    parser = argparse.ArgumentParser()
    cli_gan.add_arguments(parser)
    args = parser.parse_args(["--config", "cpu128", "--kimg", "3", "--labeled", "8", "--resume", "--no-fast",
                              "--init-from", str(tmp_path / "source")])
    words = cli_gan.worker_arguments(args, tmp_path / "run", Layout(2, 1))
    assert words[:2] == ["train", "gan"]
    joined = " ".join(words)
    for part in ("--config cpu128", f"--out {tmp_path / 'run'}", "--processes 2", "--threads 1",
                 "--kimg 3.0", "--labeled 8", "--resume", "--no-fast", f"--init-from {tmp_path / 'source'}"):
        assert part in joined
    assert "--batch" not in words  # not given: the config decides
    reparsed = parser.parse_args(words[2:])
    assert reparsed.processes == "2" and reparsed.threads == 1 and reparsed.resume
    assert reparsed.init_from == str(tmp_path / "source")


@pytest.mark.slow
def test_sigterm_to_the_launched_command_checkpoints_and_exits_143(tmp_path):
    """The default CPU layout (torchrun workers): a SIGTERM to `train gan` reaches the workers,
    which finish their iteration and checkpoint; the command exits like a process stopped by it."""
    import signal
    import subprocess
    import sys
    import time

    import yaml
    from helpers import tiny_config

    from medsemgan.training.checkpoint import load_checkpoint

    config = tiny_config({"kimg": 0.4, "log_every": 1, "checkpoint_kimg": 1.0})
    config.pop("_source", None)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "medsemgan.cli", "train", "gan", "--config", str(tmp_path / "tiny.yaml"),
               "--out", str(run_dir), "--processes", "2"]
    with open(tmp_path / "err", "w") as err:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)
        stats, deadline = run_dir / "stats.jsonl", time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if stats.exists() and len(stats.read_text().splitlines()) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    log = (tmp_path / "err").read_text()
    assert proc.returncode == 143, log[-2000:]
    state = load_checkpoint(run_dir / "checkpoint.pt")
    assert 3 <= state["step"] < 100
    assert state["world_size"] == 2 and len(state["rng"]) == 2  # both workers took part
    assert "batch 4 on 2 process(es)" in log
    assert not (run_dir / "generator_ema.pt").exists()
