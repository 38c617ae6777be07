"""The one training loop (issue 18): ``train_gan``, ``train_encoder`` and ``train_unet`` share
``medsemgan.training.driver``: the same resume guard, the caller's thread count kept, the same
stop / budget / checkpoint order."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from helpers import tiny_config
from medsemgan.errors import InputError
from medsemgan.training.driver import EXISTING_CHECKPOINT, Job, StopRequest, drive
from medsemgan.training.encoder import train_encoder
from medsemgan.training.run import train_gan
from medsemgan.training.unet import normalise_config, train_unet

sys.path.insert(0, str(Path(__file__).parents[1] / "evaluation"))
from report_fixtures import tiny_unet_config  # noqa: E402

ENCODER = {
    "model": {"resolution": 32, "generator": {"z_dim": 16, "w_dim": 16, "channel_base": 256,
                                              "channel_max": 32, "mapping_layers": 2}},
    "data": {"source": "synthetic", "synthetic_unlabeled": 8, "synthetic_labeled": 4},
    "encoder": {"channels": [8, 8, 8], "fpn_channels": 8, "head_channels": 8,
                "train": {"kimg": 0.016, "batch_size": 2, "labeled_batch_size": 2, "warmup_kimg": 0.002,
                          "checkpoint_kimg": 0.004, "progress": False, "tensorboard": False, "device": "cpu"}},
}


@pytest.fixture(scope="module")
def generator_file(tmp_path_factory):
    from medsemgan.models.build import build_generator

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("g") / "generator_ema.pt"
    torch.save(build_generator(ENCODER["model"]).state_dict(), path)
    return path


def trainers(generator_file, threads: int):
    """name -> train(out_dir, resume=..., max_steps=...) for each of the three, asking for ``threads``
    where the configuration has the key (the encoder's has none)."""
    unet = tiny_unet_config(16)
    unet["training"].update({"iterations": 4, "threads": threads})
    return {
        "gan": lambda out, **kw: train_gan(tiny_config({"threads": threads}), out, **kw),
        "encoder": lambda out, **kw: train_encoder(ENCODER, out, generator=generator_file, **kw),
        "unet": lambda out, **kw: train_unet(normalise_config(unet), out, **kw),
    }


@pytest.mark.parametrize("name", ["gan", "encoder", "unet"])
def test_all_three_refuse_a_checkpoint_without_resume_and_keep_the_callers_threads(tmp_path, generator_file, name,
                                                                                 monkeypatch):
    before = torch.get_num_threads()
    seen, real = [], torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (seen.append(n), real(n))[1])
    caller = 3 if before != 3 else 2  # a count that none of the runs asks for
    torch.set_num_threads(caller)
    try:
        train = trainers(generator_file, threads=1)[name]
        first = train(tmp_path / "run", max_steps=1)
        assert torch.get_num_threads() == caller
        assert (1 in seen) == (name != "encoder")  # the run used its training.threads, then put ours back
        assert first["steps"] == 1 and not first["finished"] and first["stopped_by"] is None
        with pytest.raises(InputError) as err:
            train(tmp_path / "run")
        assert err.value.problem == EXISTING_CHECKPOINT
        assert torch.get_num_threads() == caller
        stop = StopRequest()
        stop.requested = True  # stops after the first iteration of this call, with a checkpoint
        resumed = train(tmp_path / "run", resume=True, stop=stop)
        assert resumed["steps"] == 2 and not resumed["finished"]
        assert torch.get_num_threads() == caller
    finally:
        real(before)


class Recorder(Job):
    """A job that records what the driver asks of it."""

    def __init__(self, total=5, budget_at=None, checkpoint_every=2):
        self.run_dir = Path(".")
        self.i, self.total, self.budget_at, self.every = 0, total, budget_at, checkpoint_every
        self.calls: list[str] = []

    step_index = property(lambda self: self.i)
    images_seen = property(lambda self: self.i * 10)

    def complete(self):
        return self.i >= self.total

    def step(self, progress):
        self.i += 1
        self.calls.append(f"step{self.i}")

    def agree(self, flag):
        self.calls.append("agree")
        return flag

    def budget_spent(self):
        return "max_seconds" if self.budget_at is not None and self.i >= self.budget_at else None

    def checkpoint_due(self):
        return self.i % self.every == 0

    def write_checkpoint(self):
        self.calls.append("ckpt")

    def between_steps(self):
        self.calls.append("between")

    def finish(self, finished):
        self.calls.append(f"finish({finished})")

    def summary(self, outcome):
        return {"outcome": outcome, "calls": self.calls}

    def close(self):
        self.calls.append("close")


def test_driver_order_stop_budget_and_max_steps():
    done = drive(Recorder(total=3))
    assert done["calls"] == ["step1", "agree", "between", "step2", "agree", "ckpt", "between",
                             "step3", "agree", "between", "ckpt", "finish(True)", "close"]
    assert done["outcome"].finished and done["outcome"].stopped_by is None and done["outcome"].images == 30

    stop = StopRequest()
    stop.requested, stop.signal_name = True, "SIGTERM"
    stopped = drive(Recorder(), stop)
    assert stopped["calls"] == ["step1", "agree", "ckpt", "finish(False)", "close"]
    assert stopped["outcome"].stopped_by == "SIGTERM" and not stopped["outcome"].finished

    spent = drive(Recorder(total=10, budget_at=2))  # a budget other than steps finishes the run
    assert spent["calls"][-3:] == ["ckpt", "finish(True)", "close"] and spent["calls"].count("step2") == 1
    assert spent["outcome"].finished and spent["outcome"].stopped_by == "max_seconds"

    partial = drive(Recorder(total=10), max_steps=1)
    assert partial["calls"] == ["step1", "agree", "between", "ckpt", "finish(False)", "close"]


def test_driver_closes_the_job_when_a_step_raises():
    class Failing(Recorder):
        def step(self, progress):
            raise RuntimeError("boom")

    job = Failing()
    with pytest.raises(RuntimeError):
        drive(job)
    assert job.calls == ["close"]
