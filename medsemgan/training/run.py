"""``train_gan(config, out_dir, resume)``: the whole GAN run, shared by the CLI and the bundle.

Run directory layout (``out_dir``)::

    checkpoint.pt        latest full training state (atomic; --resume continues from it)
    generator_ema.pt     EMA generator state dict, written at the end (the bundle's weights)
    snapshots/generator_ema_<images>.pt   EMA generator kept every training.snapshot_kimg
    snapshots/generator_ema_best.pt + best.json   the EMA generator with the highest val/dice so far
    config.json          the resolved configuration of the run
    samples/fakes_<kimg>.png   fixed-latent samples with their generated liver masks overlaid
    tensorboard/         TensorBoard scalars
    stats.jsonl          the same scalars as JSON lines

SIGINT / SIGTERM end the current iteration, write a checkpoint and return; under torchrun all
ranks agree on the stop step first, so nobody waits forever in a collective.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

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
from medsemgan.training.driver import (  # noqa: F401  (StopRequest, stop_on_signals: re-exported)
    Job,
    Outcome,
    Progress,
    StopRequest,
    crossed as _crossed,
    drive,
    stop_on_signals,
    training_run,
)
from medsemgan.training.gan import GanTrainer, rank_seed
from medsemgan.training.lever_probe import resolve_probes
from medsemgan.training.observe import Observer, fixed_latents, save_sample_grid
from medsemgan.training.synthetic import synthetic_tensors
from medsemgan.training.validation import validate_generator

log = logging.getLogger(__name__)

EXPORT_NAME = "generator_ema.pt"
SAMPLE_SEED = 20210405  # fixed latents of the sample grid


# --- stopping: the driver's, agreed across ranks ---------------------------------------------


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


def reseed_at_step(trainer: GanTrainer) -> None:
    """Fresh, distinct streams for a run whose saved RNG states cannot be restored one-to-one
    (another process count, or a warm start): seeded from the step so a rerun repeats them."""
    seed_everything(rank_seed(int(trainer.t["seed"]) + trainer.step_index, trainer.info.rank))


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
        reseed_at_step(trainer)


# Which trainer state belongs to which model: section; a network is carried with its optimiser.
WARM_START_PARTS = {
    "generator": ("G", "G_ema", "opt_G"),
    "image_discriminator": ("D_image", "opt_D_image"),
    "joint_discriminator": ("D_joint", "opt_D_joint"),
}
WARM_START_RECORD = "init_from.json"


def warm_start(trainer: GanTrainer, source_run: Path) -> dict[str, Any]:
    """Start a new run from another run's checkpoint, carrying each network whose ``model:``
    subsection is unchanged (with its optimiser state) and building the others fresh: e.g. a wider
    joint discriminator under a generator that has already seen 65k images. The images-seen count
    continues, so ``kimg`` stays a total. Returns what was carried, for ``init_from.json``."""
    from medsemgan.paths import portable_path

    if source_run.name == checkpoint_path(source_run.parent).name and source_run.is_file():
        source_run = source_run.parent  # the checkpoint file itself was named
    source = checkpoint_path(source_run)
    if not source.is_file():
        raise InputError(source_run, "has no GAN checkpoint to start from (--init-from takes a run folder "
                                     "with checkpoint.pt)")
    state = load_checkpoint(source, map_location="cpu")
    theirs = json.loads(state["config"]).get("model") or {}
    ours = trainer.config["model"]
    shared = sorted((set(theirs) | set(ours)) - set(WARM_START_PARTS) - {"name"})
    differing = [k for k in shared if theirs.get(k) != ours.get(k)]
    if differing:
        raise InputError(source, f"its model differs in {', '.join(differing)}; --init-from carries networks "
                                 "between runs that share resolution and channels")
    carried = [part for part in WARM_START_PARTS if theirs.get(part) == ours.get(part)]
    if "generator" not in carried:
        raise InputError(source, "its generator: section differs from this configuration's; --init-from carries "
                                 "the generator (change a discriminator, or start a new run without it)")
    for part in carried:
        for key in WARM_START_PARTS[part]:
            getattr(trainer, key).load_state_dict(state[key])
    trainer.pl_mean.copy_(state["pl_mean"].to(trainer.device))
    trainer.images_seen = int(state["images_seen"])
    trainer.step_index = trainer.images_seen // trainer.global_batch
    reseed_at_step(trainer)
    return {"run": portable_path(source_run, tail=True), "images_seen": trainer.images_seen,
            "carried": carried, "fresh": [part for part in WARM_START_PARTS if part not in carried]}


# --- the run ----------------------------------------------------------------------------------


SNAPSHOT_PREFIX, SNAPSHOT_SUFFIX = "generator_ema_", ".pt"


def snapshot_path(run_dir: Path, images_seen: int) -> Path:
    """A kept EMA-generator snapshot, named by images seen so that names sort by age."""
    return run_dir / "snapshots" / f"{SNAPSHOT_PREFIX}{images_seen:09d}{SNAPSHOT_SUFFIX}"


def snapshot_images_seen(path: Path) -> int | None:
    """The images seen that :func:`snapshot_path` wrote into ``path``'s name; None for another name."""
    name = Path(path).name
    count = name[len(SNAPSHOT_PREFIX):-len(SNAPSHOT_SUFFIX)]
    if not (name.startswith(SNAPSHOT_PREFIX) and name.endswith(SNAPSHOT_SUFFIX) and count.isdigit()):
        return None
    return int(count)


BEST_SNAPSHOT = "generator_ema_best.pt"
BEST_RECORD = "best.json"


def keep_best_snapshot(run_dir: Path, G_ema: torch.nn.Module, scores: dict[str, float], images_seen: int) -> bool:
    """Keep ``G_ema`` as ``snapshots/generator_ema_best.pt`` when its ``val/dice`` beats the best
    recorded in ``snapshots/best.json`` (kept across resumes); True when it was kept. The label
    head's quality swings between validations while the image side improves steadily (docs/training.md,
    "The 0.4.0 run"), so the latest generator is not always the one to export."""
    folder = run_dir / "snapshots"
    record = folder / BEST_RECORD
    best = json.loads(record.read_text()) if record.is_file() else None
    if best is not None and float(best["val/dice"]) >= float(scores["val/dice"]):
        return False
    folder.mkdir(parents=True, exist_ok=True)
    export_generator(G_ema, folder / BEST_SNAPSHOT)
    with atomic_path(record) as tmp:
        tmp.write_text(json.dumps({"images_seen": int(images_seen), **{k: float(v) for k, v in scores.items()}}))
    return True


def _scalars(stats: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v) for k, v in stats.items()}


class GanJob(Job):
    """The joint GAN as the driver's job: built (and restored) from the configuration, observed by
    rank 0; checkpoints and the stop decision are collectives under torchrun."""

    def __init__(self, config: dict, run_dir: Path, resume: bool, info: DistInfo, *,
                 tensors: dict[str, torch.Tensor] | None, validation: dict[str, torch.Tensor] | None,
                 max_steps: int | None, init_from: Path | None = None):
        self.run_dir, self.info = run_dir, info
        config = resolve_probes(config, info.device, info.is_main, info.distributed)
        G, D_image, D_joint = build_networks(config)
        using_data = tensors is None and config["data"]["source"] == "ct"
        if tensors is None:
            tensors = load_training_tensors(config, G.resolution)
        if validation is None and using_data:
            validation = _validation_set(config, G.resolution, info)
        self.validation = validation if info.is_main else None
        self.config = config
        self.trainer = trainer = GanTrainer(config, (G, D_image, D_joint), tensors, info)
        seed_everything(rank_seed(int(config["training"]["seed"]), info.rank))
        warm = None
        if resume and (init_from is None or checkpoint_path(run_dir).exists()):
            restore(trainer, run_dir)  # a warm-started run resumes from its own checkpoint
        elif init_from is not None:
            warm = warm_start(trainer, Path(init_from))
            log.info("warm start from %s at %d images: carried %s, fresh %s", warm["run"], warm["images_seen"],
                     warm["carried"], warm["fresh"])
        self.t = t = trainer.t
        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            if warm is not None:
                with atomic_path(run_dir / WARM_START_RECORD) as tmp:
                    tmp.write_text(json.dumps(warm, indent=2) + "\n")
            with atomic_path(run_dir / "config.json") as tmp:
                tmp.write_text(json.dumps(config, indent=2, sort_keys=True))
        self.total_steps = trainer.total_steps()
        self.last_step = (self.total_steps if max_steps is None
                          else min(self.total_steps, trainer.step_index + int(max_steps)))
        self.rows, self.cols = (int(v) for v in t["sample_grid"])
        self.sample_z = fixed_latents(self.rows * self.cols, G.z_dim, SAMPLE_SEED)
        self.stats: dict[str, float] = {}
        self.before = self.after = trainer.images_seen
        self.observer = Observer(
            run_dir, self.total_steps * trainer.global_batch, trainer.images_seen, info.is_main,
            progress=bool(t["progress"]), tensorboard=bool(t["tensorboard"]),
        )
        log.info("training %s: %d -> %d iterations (batch %d on %d process(es), %d unlabeled, %d labeled slices)",
                 config.get("model", {}).get("name"), trainer.step_index, self.last_step, trainer.global_batch,
                 info.world_size, len(trainer.unlabeled), len(trainer.labeled_image))

    def complete(self) -> bool:
        return self.trainer.step_index >= self.total_steps

    def step(self, progress: Progress) -> None:
        trainer, t, observer = self.trainer, self.t, self.observer
        before = trainer.images_seen
        raw = trainer.step()
        after = trainer.images_seen
        self.before, self.after = before, after
        log_now = trainer.step_index % int(t["log_every"]) == 0 or trainer.step_index == self.last_step
        if self.info.is_main and (log_now or observer.bar is not None):
            stats = _scalars(raw)
            rate = progress.images_per_s(after)
            observer.advance(after - before, {
                "D_img": stats["loss/D_image"], "D_joint": stats["loss/D_joint"], "G": stats["loss/G"],
            })
            if log_now:
                stats["speed/images_per_s"] = rate
                stats["speed/s_per_kimg"] = 1000 / max(rate, 1e-9)
                observer.scalars(stats, after)
            self.stats = stats
        if _crossed(before, after, float(t["sample_kimg"])) and self.info.is_main:
            save_sample_grid(trainer.G_ema, self.sample_z, self.rows, self.cols,
                             self.run_dir / "samples" / f"fakes_{after // 1000:06d}k_{after:09d}.png")

    def agree(self, flag: bool) -> bool:
        return _agree(flag, self.info)

    def checkpoint_due(self) -> bool:
        return _crossed(self.before, self.after, float(self.t["checkpoint_kimg"]))

    def write_checkpoint(self) -> None:
        write_checkpoint(self.trainer, self.run_dir)

    def between_steps(self) -> None:
        t, before, after = self.t, self.before, self.after
        if self.info.is_main and _crossed(before, after, float(t["snapshot_kimg"])):
            export_generator(self.trainer.G_ema, snapshot_path(self.run_dir, after))
        every_val = float(t["validation"]["every_kimg"])
        if self.validation is not None and every_val > 0 and _crossed(before, after, every_val):
            scores = validate_generator(self.trainer.G_ema, self.validation, t["validation"],
                                        self.config.get("inference"))
            self.observer.scalars(scores, after)
            kept = keep_best_snapshot(self.run_dir, self.trainer.G_ema, scores, after)
            log.info("validation at %d images: %s%s", after, scores, " (best so far: kept)" if kept else "")

    def finish(self, finished: bool) -> None:
        if self.info.is_main:
            G_ema = self.trainer.G_ema
            save_sample_grid(G_ema, self.sample_z, self.rows, self.cols, self.run_dir / "samples" / "fakes_latest.png")
            if finished:
                export_generator(G_ema, self.run_dir / EXPORT_NAME)

    def summary(self, outcome: Outcome) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "steps": self.trainer.step_index,
            "total_steps": self.total_steps,
            "images_seen": self.trainer.images_seen,
            "finished": outcome.finished,
            "stopped_by": outcome.stopped_by,
            "seconds": outcome.seconds,
            "s_per_kimg": outcome.s_per_kimg,
            "last_stats": self.stats,
            "trainer": self.trainer,
        }

    def close(self) -> None:
        self.observer.close()


def train_gan(
    config: dict,
    out_dir: str | Path,
    resume: bool = False,
    *,
    tensors: dict[str, torch.Tensor] | None = None,
    stop: StopRequest | None = None,
    max_steps: int | None = None,
    validation: dict[str, torch.Tensor] | None = None,
    init_from: str | Path | None = None,
) -> dict[str, Any]:
    """Train (or continue training) the joint GAN described by ``config`` into ``out_dir``.

    ``config``: a dict with ``model``, ``data``, ``training`` (as from
    :func:`medsemgan.training.config.load_config`). ``tensors``: training pool to use instead of
    ``data:`` (tests). ``stop``: a :class:`StopRequest` to end early (tests; signals use it too).
    ``max_steps``: stop after this many iterations of *this* call (checkpointed; tests, benches).
    ``validation``: ``{"image", "mask"}`` slices for ``val/dice`` instead of the BTCV pool's
    (tests); with ``data.source: ct`` they are built from the catalogue.
    ``init_from``: another run folder whose checkpoint starts this one (:func:`warm_start`); with
    ``resume`` it is used only while ``out_dir`` has no checkpoint of its own.
    ``training.threads`` sets torch's thread count for the run; the caller's is restored.
    Returns a summary (steps, images seen, seconds per kimg, paths).
    """
    config = normalise(config)
    if "model" not in config:
        raise InputError(None, "configuration has no model: section")
    run_dir = Path(out_dir)
    with training_run(run_dir, resume, config["training"]["threads"]):
        info = init_distributed(str(config["training"]["device"]))
        try:
            job = GanJob(config, run_dir, resume, info, tensors=tensors, validation=validation, max_steps=max_steps,
                         init_from=Path(init_from) if init_from is not None else None)
            return drive(job, stop, max_steps)
        finally:
            shutdown(info)
