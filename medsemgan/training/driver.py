"""The one training loop: ``train_gan``, ``train_encoder`` and ``train_unet`` are three :class:`Job` s.

What every run shares lives here, once:

* :func:`training_run`: refuses a run folder that already holds a checkpoint unless resuming (one
  message for all three), and sets torch's thread count for the run (``threads``; ``None``/0
  leaves it alone) and puts the caller's count back when the run returns or raises;
* :func:`drive`: the loop. Each iteration: :meth:`Job.step` (the trainer's step with its own
  logging), then the stop check (SIGINT/SIGTERM via :class:`StopRequest`, agreed across ranks by
  :meth:`Job.agree`), then a budget other than steps or images (:meth:`Job.budget_spent`, the
  U-Net's ``max_seconds``: spending it ends the run as finished), then the checkpoint cadence (:meth:`Job.checkpoint_due`), then whatever else
  is periodic (:meth:`Job.between_steps`: the GAN's snapshots and validation). After the loop a
  checkpoint is always written; then :meth:`Job.finish` exports the weights when the run is
  finished (its whole budget spent: steps, images, or the U-Net's seconds), and :meth:`Job.summary`
  turns the :class:`Outcome` into the dict the caller gets.

A stop (signal or ``StopRequest``) ends the current iteration, writes a checkpoint and returns
unfinished; ``max_steps`` ends the call after that many iterations, the same way.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from medsemgan.errors import InputError
from medsemgan.training.checkpoint import checkpoint_path

log = logging.getLogger(__name__)

EXISTING_CHECKPOINT = "already holds a checkpoint: pass --resume to continue it, or choose another --out"


# --- stopping on signals ----------------------------------------------------------------------


class StopRequest:
    """Set by SIGINT/SIGTERM (or by a test); the loop checks it between iterations."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None

    def __call__(self, signum, frame) -> None:  # signal handler
        self.requested = True
        self.signal_name = signal.Signals(signum).name


@contextlib.contextmanager
def stop_on_signals(stop: StopRequest) -> Iterator[StopRequest]:
    if threading.current_thread() is not threading.main_thread():
        yield stop  # handlers can only be installed from the main thread
        return
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def crossed(before: int, after: int, every_kimg: float) -> bool:
    """Whether going from ``before`` to ``after`` images passed a multiple of ``every_kimg``."""
    every = max(1, int(round(every_kimg * 1000)))
    return after // every > before // every


# --- the run's frame --------------------------------------------------------------------------


@contextlib.contextmanager
def training_run(run_dir: Path, resume: bool, threads: int | None = None) -> Iterator[None]:
    """Refuse ``run_dir`` if it holds a checkpoint and we are not resuming; run with ``threads``
    torch threads (if given) and restore the caller's count on the way out."""
    if not resume and checkpoint_path(run_dir).exists():
        raise InputError(run_dir, EXISTING_CHECKPOINT)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@dataclass
class Progress:
    """The clock of this call: wall time and images since the loop started."""

    start_images: int
    started: float

    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def images_per_s(self, images_seen: int) -> float:
        return (images_seen - self.start_images) / max(self.seconds(), 1e-9)


@dataclass
class Outcome:
    """How one call of :func:`drive` ended."""

    finished: bool  # the whole budget is spent (the weights were exported)
    stopped_by: str | None  # signal name, a budget's name ("max_seconds"), or None
    seconds: float  # wall time of the loop (with its checkpoints)
    images: int  # images seen during this call

    @property
    def s_per_kimg(self) -> float:
        return (self.seconds / self.images * 1000) if self.images else math.nan


class Job:
    """One trainer as :func:`drive` sees it. Subclasses fill in the steps; the optional hooks are
    no-ops; the counters are read from ``self.trainer``."""

    run_dir: Path
    trainer: Any

    @property
    def step_index(self) -> int:
        return self.trainer.step_index

    @property
    def images_seen(self) -> int:
        return self.trainer.images_seen

    def complete(self) -> bool:
        """The run's whole budget of steps / images is spent."""
        raise NotImplementedError

    def step(self, progress: Progress) -> None:
        """One iteration, with its logging and samples."""
        raise NotImplementedError

    def agree(self, flag: bool) -> bool:
        """Whether to stop, agreed by every process (a collective under torchrun)."""
        return flag

    def budget_spent(self) -> str | None:
        """The name of a budget other than steps that is now spent (ends the run as finished)."""
        return None

    def checkpoint_due(self) -> bool:
        raise NotImplementedError

    def write_checkpoint(self) -> None:
        raise NotImplementedError

    def between_steps(self) -> None:
        """Periodic work after the checkpoint check (snapshots, validation)."""

    def finish(self, finished: bool) -> None:
        """After the last checkpoint: final samples; the exported weights when ``finished``."""

    def summary(self, outcome: Outcome) -> dict[str, Any]:
        raise NotImplementedError

    def close(self) -> None:
        """Progress bars and writers; called however the run ends."""


def drive(job: Job, stop: StopRequest | None = None, max_steps: int | None = None) -> dict[str, Any]:
    """Run ``job`` until its budget is spent, ``max_steps`` iterations of this call are done, or
    ``stop`` is set (SIGINT/SIGTERM set it too); returns ``job.summary(outcome)``."""
    stop = stop or StopRequest()
    try:
        progress = Progress(job.images_seen, time.perf_counter())
        steps, budget = 0, None
        with stop_on_signals(stop):
            while not job.complete() and (max_steps is None or steps < int(max_steps)):
                job.step(progress)
                steps += 1
                budget = job.budget_spent()
                if job.agree(stop.requested):
                    log.warning("stopping at iteration %d (%s): writing a checkpoint",
                                job.step_index, stop.signal_name or "stop requested")
                    break
                if budget is not None:
                    log.info("stopping at iteration %d: %s spent", job.step_index, budget)
                    break
                if job.checkpoint_due():
                    job.write_checkpoint()
                job.between_steps()
            job.write_checkpoint()
        outcome = Outcome(
            finished=job.complete() or budget is not None,
            stopped_by=stop.signal_name if stop.requested else budget,
            seconds=progress.seconds(),
            images=job.images_seen - progress.start_images,
        )
        job.finish(outcome.finished)
        return job.summary(outcome)
    finally:
        job.close()
