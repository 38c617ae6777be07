"""``train_gan(config, out_dir, resume)``: the whole GAN run, shared by the CLI and the bundle.

Run directory layout (``out_dir``)::

    checkpoint.pt        latest full training state (atomic; --resume continues from it)
    generator_ema.pt     EMA generator state dict, written at the end (the bundle's weights)
    snapshots/generator_ema_<images>.pt   EMA generator kept every training.snapshot_kimg
    config.json          the resolved configuration of the run
    samples/fakes_<kimg>.png   fixed-latent samples with their generated liver masks overlaid
    tensorboard/         TensorBoard scalars
    stats.jsonl          the same scalars as JSON lines

SIGINT / SIGTERM end the current iteration, write a checkpoint and return; under torchrun all
ranks agree on the stop step first, so nobody waits forever in a collective.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist

from medsemgan.errors import InputError
from medsemgan.io_utils import atomic_path
from medsemgan.training.checkpoint import (
    capture_rng_state,
    checkpoint_path,
    export_generator,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from medsemgan.training.config import normalise
from medsemgan.training.distributed import DistInfo, init_distributed, shutdown
from medsemgan.training.gan import GanTrainer, rank_seed
from medsemgan.training.lever_probe import resolve_probes
from medsemgan.training.observe import Observer, fixed_latents, save_sample_grid
from medsemgan.training.synthetic import synthetic_tensors
from medsemgan.training.validation import validate_generator

log = logging.getLogger(__name__)

EXPORT_NAME = "generator_ema.pt"
SAMPLE_SEED = 20210405  # fixed latents of the sample grid


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


def _agree(flag: bool, info: DistInfo) -> bool:
    """True on every rank when any rank's flag is set."""
    if not info.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


# --- data and models --------------------------------------------------------------------------


def load_training_tensors(config: dict, resolution: int) -> dict[str, torch.Tensor]:
    data = config["data"]
    if data["source"] == "synthetic":
        return synthetic_tensors(
            resolution, int(data["synthetic_unlabeled"]), int(data["synthetic_labeled"]),
            seed=int(config["training"]["seed"]),
        )
    from medsemgan.data.slices import LabeledBudget, training_tensors
    from medsemgan.paths import cache_dir, data_root

    root = data["root"] or data_root()
    if root is None:
        raise InputError(None, "no CT data: set data.root, $MEDSEMGAN_DATA, or place the studies at ../shared/data")
    from medsemgan.data import datalist

    if datalist.is_dataset(root):  # own data: an MSD/nnU-Net folder or a MONAI datalist JSON
        return datalist.training_tensors(root, resolution, data["labeled_budget"],
                                         data["cache_dir"] or (cache_dir() / "training_tensors"), data.get("label"))
    if not Path(root).is_dir():
        raise InputError(root, "data.root is not a folder")
    try:
        budget = LabeledBudget.parse(data["labeled_budget"])
    except ValueError as err:
        raise InputError(config.get("_source"), f"data.labeled_budget: {err}") from None
    cache = data["cache_dir"] or (cache_dir() / "training_tensors")
    return training_tensors(root, resolution, budget, cache_dir=cache)


def _validation_set(config: dict, resolution: int, info: DistInfo) -> dict[str, torch.Tensor] | None:
    """The fixed validation slices (rank 0 only; ``None`` when switched off or unavailable)."""
    if not info.is_main or float(config["training"]["validation"]["every_kimg"]) <= 0:
        return None
    from medsemgan.paths import cache_dir, data_root
    from medsemgan.training.validation import build_validation_set

    root = config["data"]["root"] or data_root()
    from medsemgan.data.datalist import is_dataset

    if is_dataset(root):  # own data (--data): the BTCV validation patients are not there
        return None
    cache = config["data"]["cache_dir"] or (cache_dir() / "training_tensors")
    return build_validation_set(root, resolution, config["training"]["validation"], cache)


def build_networks(config: dict):
    from medsemgan.models.build import build_models

    # Same seed on every rank: identical initial weights (then broadcast anyway, to be sure).
    torch.manual_seed(int(config["training"]["seed"]))
    return build_models(config["model"])


def seed_everything(seed: int) -> None:
    """torch, numpy and python ``random`` from one seed (all three are saved in checkpoints)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


# --- checkpoints across ranks -----------------------------------------------------------------


def _gather_rng(info: DistInfo) -> list[dict]:
    mine = capture_rng_state()
    if not info.distributed:
        return [mine]
    everyone: list[Any] = [None] * info.world_size
    dist.all_gather_object(everyone, mine)
    return everyone


def write_checkpoint(trainer: GanTrainer, run_dir: Path) -> None:
    """Collective under torchrun (gathers every rank's RNG state); only rank 0 writes."""
    rng = _gather_rng(trainer.info)
    if trainer.info.is_main:
        state = trainer.state_dict()
        state["rng"] = rng
        save_checkpoint(checkpoint_path(run_dir), state)


def restore(trainer: GanTrainer, run_dir: Path) -> None:
    state = load_checkpoint(checkpoint_path(run_dir), map_location="cpu")
    def architecture(model: dict | None) -> dict:
        return {k: v for k, v in (model or {}).items() if k != "name"}  # renaming a file is fine

    if architecture(json.loads(state["config"]).get("model")) != architecture(trainer.config["model"]):
        raise InputError(checkpoint_path(run_dir), "was trained with a different model: section; cannot resume")
    trainer.load_state_dict(state)
    rng = state["rng"]
    if len(rng) == trainer.info.world_size:
        restore_rng_state(rng[trainer.info.rank])
    else:
        log.warning("checkpoint from %d processes resumed with %d: RNG streams reseeded",
                    len(rng), trainer.info.world_size)
        seed_everything(rank_seed(int(trainer.t["seed"]) + trainer.step_index, trainer.info.rank))


# --- the run ----------------------------------------------------------------------------------


def snapshot_path(run_dir: Path, images_seen: int) -> Path:
    """A kept EMA-generator snapshot, named by images seen so that names sort by age."""
    return run_dir / "snapshots" / f"generator_ema_{images_seen:09d}.pt"


def _crossed(before: int, after: int, every_kimg: float) -> bool:
    every = max(1, int(round(every_kimg * 1000)))
    return after // every > before // every


def _scalars(stats: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v) for k, v in stats.items()}


def train_gan(
    config: dict,
    out_dir: str | Path,
    resume: bool = False,
    *,
    tensors: dict[str, torch.Tensor] | None = None,
    stop: StopRequest | None = None,
    max_steps: int | None = None,
    validation: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Train (or continue training) the joint GAN described by ``config`` into ``out_dir``.

    ``config``: a dict with ``model``, ``data``, ``training`` (as from
    :func:`medsemgan.training.config.load_config`). ``tensors``: training pool to use instead of
    ``data:`` (tests). ``stop``: a :class:`StopRequest` to end early (tests; signals use it too).
    ``max_steps``: stop after this many iterations of *this* call (checkpointed; tests, benches).
    ``validation``: ``{"image", "mask"}`` slices for ``val/dice`` instead of the BTCV pool's
    (tests); with ``data.source: ct`` they are built from the catalogue.
    Returns a summary (steps, images seen, seconds per kimg, paths).
    """
    config = normalise(config)
    if "model" not in config:
        raise InputError(None, "configuration has no model: section")
    run_dir = Path(out_dir)
    ckpt = checkpoint_path(run_dir)
    if not resume and ckpt.exists():
        raise InputError(run_dir, "already holds a checkpoint: pass --resume to continue it, or choose another --out")
    if config["training"]["threads"]:
        torch.set_num_threads(int(config["training"]["threads"]))
    info = init_distributed(str(config["training"]["device"]))
    stop = stop or StopRequest()
    observer = None
    try:
        config = resolve_probes(config, info.device, info.is_main, info.distributed)
        G, D_image, D_joint = build_networks(config)
        using_data = tensors is None and config["data"]["source"] == "ct"
        if tensors is None:
            tensors = load_training_tensors(config, G.resolution)
        if validation is None and using_data:
            validation = _validation_set(config, G.resolution, info)
        if not info.is_main:
            validation = None
        trainer = GanTrainer(config, (G, D_image, D_joint), tensors, info)
        seed_everything(rank_seed(int(config["training"]["seed"]), info.rank))
        if resume:
            restore(trainer, run_dir)
        t = trainer.t
        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            with atomic_path(run_dir / "config.json") as tmp:
                tmp.write_text(json.dumps(config, indent=2, sort_keys=True))
        total_steps = trainer.total_steps()
        last_step = total_steps if max_steps is None else min(total_steps, trainer.step_index + max_steps)
        observer = Observer(
            run_dir, total_steps * trainer.global_batch, trainer.images_seen, info.is_main,
            progress=bool(t["progress"]), tensorboard=bool(t["tensorboard"]),
        )
        rows, cols = (int(v) for v in t["sample_grid"])
        sample_z = fixed_latents(rows * cols, G.z_dim, SAMPLE_SEED)
        log.info("training %s: %d -> %d iterations (batch %d on %d process(es), %d unlabeled, %d labeled slices)",
                 config.get("model", {}).get("name"), trainer.step_index, last_step, trainer.global_batch,
                 info.world_size, len(trainer.unlabeled), len(trainer.labeled_image))

        started, start_images = time.perf_counter(), trainer.images_seen
        stats: dict[str, float] = {}
        with stop_on_signals(stop):
            while trainer.step_index < last_step:
                before = trainer.images_seen
                raw = trainer.step()
                after = trainer.images_seen
                log_now = trainer.step_index % int(t["log_every"]) == 0 or trainer.step_index == last_step
                if info.is_main and (log_now or observer.bar is not None):
                    stats = _scalars(raw)
                    elapsed = time.perf_counter() - started
                    rate = (after - start_images) / max(elapsed, 1e-9)
                    observer.advance(after - before, {
                        "D_img": stats["loss/D_image"], "D_joint": stats["loss/D_joint"], "G": stats["loss/G"],
                    })
                    if log_now:
                        stats["speed/images_per_s"] = rate
                        stats["speed/s_per_kimg"] = 1000 / max(rate, 1e-9)
                        observer.scalars(stats, after)
                if _crossed(before, after, float(t["sample_kimg"])) and info.is_main:
                    save_sample_grid(trainer.G_ema, sample_z, rows, cols,
                                     run_dir / "samples" / f"fakes_{after // 1000:06d}k_{after:09d}.png")
                if _agree(stop.requested, info):
                    log.warning("stopping at iteration %d (%s): writing a checkpoint",
                                trainer.step_index, stop.signal_name or "stop requested")
                    break
                if _crossed(before, after, float(t["checkpoint_kimg"])):
                    write_checkpoint(trainer, run_dir)
                if info.is_main and _crossed(before, after, float(t["snapshot_kimg"])):
                    export_generator(trainer.G_ema, snapshot_path(run_dir, after))
                every_val = float(t["validation"]["every_kimg"])
                if validation is not None and every_val > 0 and _crossed(before, after, every_val):
                    scores = validate_generator(trainer.G_ema, validation, t["validation"], config.get("inference"))
                    observer.scalars(scores, after)
                    log.info("validation at %d images: %s", after, scores)
            write_checkpoint(trainer, run_dir)
        elapsed = time.perf_counter() - started
        done_images = trainer.images_seen - start_images
        finished = trainer.step_index >= total_steps
        if info.is_main:
            save_sample_grid(trainer.G_ema, sample_z, rows, cols, run_dir / "samples" / "fakes_latest.png")
            if finished:
                export_generator(trainer.G_ema, run_dir / EXPORT_NAME)
        return {
            "run_dir": str(run_dir),
            "steps": trainer.step_index,
            "total_steps": total_steps,
            "images_seen": trainer.images_seen,
            "finished": finished,
            "stopped_by": stop.signal_name if stop.requested else None,
            "seconds": elapsed,
            "s_per_kimg": (elapsed / done_images * 1000) if done_images else math.nan,
            "last_stats": stats,
            "trainer": trainer,
        }
    finally:
        if observer is not None:
            observer.close()
        shutdown(info)
