"""The supervised baseline: a MONAI 2-D ``UNet`` trained on the GAN's labeled slices only.

``train_unet(config, out_dir, resume=False)`` trains on exactly the labeled slices the GAN's joint
discriminator sees (``medsemgan.data.slices.training_tensors(root, resolution, labeled_budget)``:
same studies, same preprocessing, same budget rule), with Dice + cross-entropy, Adam, and
augmentation from the GAN's own ``augment_pair`` (small shifts applied to image and mask together;
gamma / contrast / brightness jitter on the image only). The unlabeled pool is not used: that is
what makes it the supervised baseline.

Run directory (``out_dir``)::

    checkpoint.pt   latest full state (network, Adam, iteration, elapsed seconds, RNG); --resume
    unet.pt         the trained network as a plain state dict (fp16 by default), written at the end
    unet.json       sidecar: architecture, resolution, data, iterations, wall time (read by
                    medsemgan.inference.unet to rebuild the network)
    config.json     the resolved configuration
    stats.jsonl     loss and speed every ``log_every`` iterations

The budget is ``training.iterations`` and, optionally, ``training.max_seconds`` of training wall
time (counted across resumes); whichever ends first stops the run. Iterations are the
reproducible budget; seconds depend on the machine and its load.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from medsemgan.paths import default_run_dir, portable_path
from medsemgan.config_files import config_path
from medsemgan.errors import InputError
from medsemgan.io_utils import atomic_path, write_json
from medsemgan.training.config import merge_section, read_yaml
from medsemgan.training.driver import Job, Outcome, StopRequest, drive, training_run
from medsemgan.models.unet import MODEL_DEFAULTS, build_unet  # noqa: F401  (re-exported)
from medsemgan.weights import DTYPES as _DTYPES
from medsemgan.weights import resolve_device

log = logging.getLogger(__name__)

WEIGHTS_NAME = "unet.pt"
SIDECAR_NAME = "unet.json"
DEFAULT_CONFIG = "unet_cpu"
CHECKPOINT_KIND = "unet"

DATA_DEFAULTS: dict[str, Any] = {
    "source": "ct",  # 'ct' (the shared studies) or 'synthetic' (phantoms; tests and smoke runs)
    "root": None,  # None: $MEDSEMGAN_DATA or ../shared/data; or own data: an MSD/nnU-Net folder or a MONAI datalist JSON
    "label": 1,  # own data only: the liver's value(s) in its label files (--label)
    "resolution": 128,  # must match the GAN's model resolution for a fair comparison
    "labeled_budget": "all",  # 'all', N slices, 'slices:N', 'volumes:K' (LabeledBudget)
    "cache_dir": None,
    "synthetic_labeled": 8,
}
TRAINING_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "device": "auto",
    "iterations": 1000,
    "max_seconds": None,  # optional wall-clock budget (training time only, across resumes)
    "batch_size": 16,
    "lr": 1.0e-2,
    "weight_decay": 0.0,
    "lr_schedule": "cosine",  # 'cosine' (to 5 % over `iterations`) or 'constant'
    "dice_weight": 1.0,
    "ce_weight": 1.0,
    # Keys of medsemgan.training.augment.AugmentConfig (the GAN's augmentation).
    "augment": {
        "p": 0.8,
        "translate": 0.06,
        "rotate_deg": 0.0,
        "scale": 0.0,
        "cutout": 0.0,
        "gamma": 1.5,
        "contrast": 1.0,
        "brightness": 0.5,
    },
    # medsemgan.training.modality_augment (p 0 = off): the encoder's modality-shift augmentation,
    # for the report row that gives the U-Net the same help.
    "modality_augment": {},
    "checkpoint_every": 200,
    "log_every": 25,
    "progress": True,
    "export_dtype": "fp16",  # 'fp16', 'bf16' or 'fp32' for unet.pt
    "threads": 2,  # torch CPU threads for the run (0: leave as is); the caller's count is restored
}


# --- configuration ----------------------------------------------------------------------------


def normalise_config(config: dict, path: str | os.PathLike | None = None) -> dict:
    """Fill defaults, reject unknown keys (a typo must not silently train with a default)."""
    from medsemgan.training.augment import AugmentConfig
    from medsemgan.training.modality_augment import ModalityAugmentConfig

    config = dict(config or {})
    unknown = sorted(set(config) - {"model", "data", "training", "_source"})
    if unknown:
        raise InputError(path, f"unknown sections {unknown}; expected model:, data:, training:")
    out = {
        "model": merge_section(path, "model", MODEL_DEFAULTS, config.get("model")),
        "data": merge_section(path, "data", DATA_DEFAULTS, config.get("data")),
        "training": merge_section(path, "training", TRAINING_DEFAULTS, config.get("training")),
    }
    if "_source" in config:
        out["_source"] = config["_source"]
    t, d, m = out["training"], out["data"], out["model"]
    # augment: a partial mapping in a file overrides the baseline's defaults key by key
    augment = dict(TRAINING_DEFAULTS["augment"])
    augment.update((config.get("training") or {}).get("augment") or {})
    t["augment"] = augment
    try:
        AugmentConfig.from_dict(augment)
    except (TypeError, ValueError) as err:
        raise InputError(path, f"training.augment: {err}") from None
    try:
        ModalityAugmentConfig.from_dict(t["modality_augment"])
    except (TypeError, ValueError) as err:
        raise InputError(path, f"training: {err}") from None
    if d["source"] not in ("ct", "synthetic"):
        raise InputError(path, f"data.source must be 'ct' or 'synthetic', got {d['source']!r}")
    for key in ("iterations", "batch_size", "checkpoint_every", "log_every"):
        if int(t[key]) < 1:
            raise InputError(path, f"training.{key} must be >= 1, got {t[key]}")
    if t["max_seconds"] is not None and float(t["max_seconds"]) <= 0:
        raise InputError(path, f"training.max_seconds must be > 0 or null, got {t['max_seconds']}")
    if t["lr_schedule"] not in ("cosine", "constant"):
        raise InputError(path, f"training.lr_schedule must be 'cosine' or 'constant', got {t['lr_schedule']!r}")
    if t["export_dtype"] not in ("fp16", "bf16", "fp32"):
        raise InputError(path, f"training.export_dtype must be fp16, bf16 or fp32, got {t['export_dtype']!r}")
    if len(m["strides"]) != len(m["channels"]) - 1:
        raise InputError(path, f"model.strides needs {len(m['channels']) - 1} entries (one per down step)")
    if int(d["resolution"]) % (2 ** len(m["strides"])):
        raise InputError(path, f"data.resolution {d['resolution']} is not divisible by 2^{len(m['strides'])}")
    return out


def load_unet_config(name_or_path: str | os.PathLike = DEFAULT_CONFIG) -> dict:
    """``unet_cpu`` -> medsemgan/configs/unet_cpu.yaml; anything with a suffix or slash is a path."""
    path = config_path(name_or_path)
    config = normalise_config(read_yaml(path), path)
    config["_source"] = str(path)
    return config


# --- network ----------------------------------------------------------------------------------


def labeled_tensors(config: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """``(images [M,1,S,S] in [-1,1], masks [M,1,S,S] in {0,1}, description)`` per ``data:``."""
    d = config["data"]
    resolution = int(d["resolution"])
    if d["source"] == "synthetic":
        from medsemgan.training.synthetic import phantom_slices

        images, masks = phantom_slices(int(d["synthetic_labeled"]), resolution, int(config["training"]["seed"]) + 1)
        return images, masks, {"source": "synthetic", "labeled_slices": int(images.shape[0])}
    from medsemgan.data.slices import training_tensors
    from medsemgan.paths import data_root

    root = d["root"] or data_root()
    if root is None:
        raise InputError(None, "no CT data: set data.root, $MEDSEMGAN_DATA, or place the studies at ../shared/data")
    from medsemgan.data import datalist

    own = datalist.is_dataset(root)  # own data: an MSD/nnU-Net folder or a MONAI datalist JSON
    if not own and not Path(root).is_dir():
        raise InputError(root, "data.root is not a folder")
    tensors = (datalist.training_tensors(root, resolution, d["labeled_budget"], d["cache_dir"], d.get("label")) if own
               else training_tensors(root, resolution, d["labeled_budget"], cache_dir=d["cache_dir"]))
    images, masks = tensors["labeled_image"], tensors["labeled_mask"]
    return images, masks, {
        "source": "ct",
        "root": d["root"],  # null: $MEDSEMGAN_DATA or ../shared/data (no machine's absolute path)
        "labeled_budget": d["labeled_budget"],
        "labeled_slices": int(images.shape[0]),
        "labeled_with_liver": int((masks.flatten(1).amax(1) > 0).sum()),
        "function": "medsemgan.data.slices.training_tensors",
    }


# --- one step ---------------------------------------------------------------------------------


def augment_batch(images: torch.Tensor, masks: torch.Tensor, augment: dict,
                  modality_augment: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The GAN's augmentation (the mask travels in [-1, 1] and is re-binarised after resampling),
    then the optional modality shift on the image."""
    from medsemgan.training.augment import AugmentConfig, augment_pair
    from medsemgan.training.modality_augment import ModalityAugmentConfig, modality_shift

    cfg = AugmentConfig.from_dict(augment)
    aug_images, aug_masks = augment_pair(images, masks * 2 - 1, cfg)
    aug_images = modality_shift(aug_images.clamp(-1, 1), ModalityAugmentConfig.from_dict(modality_augment))
    return aug_images, (aug_masks > 0).to(images.dtype)


def learning_rate(t: dict, step: int) -> float:
    base = float(t["lr"])
    if t["lr_schedule"] == "constant":
        return base
    progress = min(step / max(int(t["iterations"]), 1), 1.0)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


class UNetTrainer:
    """Network, optimiser, loss and counters; :meth:`step` runs one iteration."""

    def __init__(self, config: dict, images: torch.Tensor, masks: torch.Tensor, device: torch.device):
        from monai.losses import DiceCELoss

        self.config = config
        self.t = config["training"]
        self.device = device
        self.images = images.float().to(device)
        self.masks = (masks > 0.5).float().to(device)
        if self.images.shape[0] == 0:
            raise InputError(None, "no labeled slices to train on")
        torch.manual_seed(int(self.t["seed"]))
        self.net = build_unet(config["model"]).to(device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=float(self.t["lr"]),
                                          weight_decay=float(self.t["weight_decay"]))
        # batch=True: one Dice over the whole batch, so slices without liver do not give 0/0.
        self.loss_fn = DiceCELoss(sigmoid=True, batch=True, lambda_dice=float(self.t["dice_weight"]),
                                  lambda_ce=float(self.t["ce_weight"]))
        self.step_index = 0
        self.seconds = 0.0  # training wall time so far, across resumes

    def step(self) -> float:
        self.net.train()
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.t, self.step_index)
        index = torch.randint(0, self.images.shape[0], (int(self.t["batch_size"]),))
        images, masks = augment_batch(self.images[index], self.masks[index], self.t["augment"],
                                      self.t["modality_augment"])
        loss = self.loss_fn(self.net(images), masks)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step_index += 1
        return float(loss.detach())

    def state_dict(self) -> dict:
        from medsemgan.training.checkpoint import capture_rng_state

        return {
            "kind": CHECKPOINT_KIND,
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step_index,
            "seconds": self.seconds,
            "config": json.dumps(self.config, sort_keys=True),
            "rng": capture_rng_state(),
        }

    def load_state_dict(self, state: dict, path: Path) -> None:
        from medsemgan.training.checkpoint import restore_rng_state

        if state.get("kind") != CHECKPOINT_KIND:
            raise InputError(path, "not a U-Net checkpoint")
        saved = json.loads(state["config"])
        if saved.get("model") != self.config["model"] or saved.get("data") != self.config["data"]:
            raise InputError(path, "was trained with a different model: or data: section; cannot resume")
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step_index = int(state["step"])
        self.seconds = float(state["seconds"])
        restore_rng_state(state["rng"])


# --- export -----------------------------------------------------------------------------------



def export_state_dict(net: torch.nn.Module, path: str | os.PathLike, dtype: str = "fp16") -> Path:
    """Plain state dict (floating tensors cast to ``dtype``), loadable with ``weights_only=True``."""
    target = _DTYPES[dtype]
    state = {k: (v.detach().cpu().to(target) if v.is_floating_point() else v.detach().cpu()).clone()
             for k, v in net.state_dict().items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def sidecar(config: dict, data_info: dict, trainer: UNetTrainer, final_loss: float | None) -> dict:
    """What a reader needs to rebuild and judge the weights (medsemgan.inference.unet reads it)."""
    return {
        "kind": "medsemgan.unet_baseline",
        "architecture": {"class": "monai.networks.nets.UNet", "spatial_dims": 2, "in_channels": 1,
                         "out_channels": 1, **config["model"]},
        "resolution": int(config["data"]["resolution"]),
        "preprocessing": "medsemgan.data.transforms.preprocess(modality, resolution) (same as the GAN)",
        "output": "one liver logit per pixel; mask = sigmoid > 0.5",
        "data": data_info,
        "training": {k: v for k, v in config["training"].items() if k not in ("progress",)},
        "iterations": trainer.step_index,
        "train_seconds": round(trainer.seconds, 1),
        "final_loss": final_loss,
        "config_source": portable_path(config["_source"]) if config.get("_source") else None,
        "weights_dtype": config["training"]["export_dtype"],
    }


# --- the run ----------------------------------------------------------------------------------


class UNetJob(Job):
    """The U-Net baseline as the driver's job: iterations, plus the optional ``max_seconds`` of
    training wall time (across resumes) as a second budget; either spent finishes the run."""

    def __init__(self, config: dict, run_dir: Path, trainer: UNetTrainer, data_info: dict,
                 max_steps: int | None):
        from tqdm.auto import tqdm

        self.config, self.run_dir, self.trainer, self.data_info = config, run_dir, trainer, data_info
        self.t = t = config["training"]
        self.total = int(t["iterations"])
        self.last_step = self.total if max_steps is None else min(self.total, trainer.step_index + int(max_steps))
        self.max_seconds = None if t["max_seconds"] is None else float(t["max_seconds"])
        self.loss: float | None = None
        self.losses: list[float] = []
        self.summary_extra: dict[str, Any] = {}
        self.bar = tqdm(total=self.total, initial=trainer.step_index, unit="it", desc="train unet",
                        dynamic_ncols=True, disable=not t["progress"])

    @property
    def images_seen(self) -> int:
        return self.trainer.step_index * int(self.t["batch_size"])

    def complete(self) -> bool:
        return self.trainer.step_index >= self.total

    def step(self, progress) -> None:
        trainer, t = self.trainer, self.t
        started = time.perf_counter()
        self.loss = trainer.step()
        trainer.seconds += time.perf_counter() - started
        self.losses.append(self.loss)
        self.bar.update(1)
        if trainer.step_index % int(t["log_every"]) == 0 or trainer.step_index == self.last_step:
            mean_loss = sum(self.losses) / len(self.losses)
            self.losses.clear()
            self.bar.set_postfix(loss=f"{mean_loss:.4f}", refresh=False)
            with open(self.run_dir / "stats.jsonl", "a") as f:
                f.write(json.dumps({"step": trainer.step_index, "loss": mean_loss,
                                    "lr": learning_rate(t, trainer.step_index - 1),
                                    "seconds": round(trainer.seconds, 2)}) + "\n")

    def budget_spent(self) -> str | None:
        if self.max_seconds is not None and self.trainer.seconds >= self.max_seconds:
            return "max_seconds"
        return None

    def checkpoint_due(self) -> bool:
        return self.trainer.step_index % int(self.t["checkpoint_every"]) == 0

    def write_checkpoint(self) -> None:
        from medsemgan.training.checkpoint import checkpoint_path, save_checkpoint

        save_checkpoint(checkpoint_path(self.run_dir), self.trainer.state_dict())

    def finish(self, finished: bool) -> None:
        if finished:
            weights = export_state_dict(self.trainer.net, self.run_dir / WEIGHTS_NAME, self.t["export_dtype"])
            write_json(sidecar(self.config, self.data_info, self.trainer, self.loss), self.run_dir / SIDECAR_NAME,
                       sort_keys=True)
            self.summary_extra = {"weights": str(weights), "sidecar": str(self.run_dir / SIDECAR_NAME)}

    def summary(self, outcome: Outcome) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "steps": self.trainer.step_index,
            "total_steps": self.total,
            "finished": outcome.finished,
            "stopped_by": outcome.stopped_by,
            "train_seconds": round(self.trainer.seconds, 2),
            "labeled_slices": int(self.trainer.images.shape[0]),
            "final_loss": self.loss,
            **self.summary_extra,
        }

    def close(self) -> None:
        self.bar.close()


def train_unet(
    config: dict,
    out_dir: str | os.PathLike,
    resume: bool = False,
    *,
    tensors: tuple[torch.Tensor, torch.Tensor] | None = None,
    max_steps: int | None = None,
    stop: StopRequest | None = None,
) -> dict[str, Any]:
    """Train (or continue) the U-Net baseline described by ``config`` into ``out_dir``.

    ``tensors``: ``(images, masks)`` to use instead of ``data:`` (tests). ``max_steps``: stop after
    this many iterations of *this* call (checkpointed). ``stop``: a
    :class:`~medsemgan.training.driver.StopRequest` (SIGINT/SIGTERM set it too).
    ``training.threads`` sets torch's thread count for the run; the caller's is restored.
    Returns a summary.
    """
    from medsemgan.training.checkpoint import checkpoint_path, load_checkpoint

    config = normalise_config(config, config.get("_source") if isinstance(config, dict) else None)
    t = config["training"]
    run_dir = Path(out_dir)
    ckpt = checkpoint_path(run_dir)
    with training_run(run_dir, resume, int(t["threads"])):
        device = resolve_device(t["device"], "training.device")
        if tensors is None:
            images, masks, data_info = labeled_tensors(config)
        else:
            images, masks = tensors
            data_info = {"source": "given tensors", "labeled_slices": int(images.shape[0])}
        if tuple(images.shape[-2:]) != (int(config["data"]["resolution"]),) * 2:
            raise InputError(None, f"labeled slices are {tuple(images.shape[-2:])}, data.resolution is "
                                   f"{config['data']['resolution']}")
        trainer = UNetTrainer(config, images, masks, device)
        if resume:
            trainer.load_state_dict(load_checkpoint(ckpt), ckpt)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(config, run_dir / "config.json", sort_keys=True)
        job = UNetJob(config, run_dir, trainer, data_info, max_steps)
        log.info("training U-Net: iterations %d -> %d on %d labeled slices (%s), device %s", trainer.step_index,
                 job.last_step, images.shape[0], data_info.get("labeled_budget", data_info["source"]), device)
        return drive(job, stop, max_steps)


# --- the `medsemgan train unet` subcommand ----------------------------------------------------


def add_arguments(parser) -> None:
    from medsemgan.data.datalist import DATA_HELP, LABEL_HELP

    parser.add_argument("--config", default=DEFAULT_CONFIG,
                        help=f"configuration name or YAML file (default: {DEFAULT_CONFIG})")
    parser.add_argument("--out", default=None, help="run directory (default: <MEDSEMGAN_RUNS or ~/.cache/medsemgan/runs>/unet_<budget>)")
    parser.add_argument("--resume", action="store_true", help="continue from the run directory's checkpoint")
    parser.add_argument("--labeled", default=None,
                        help="labeled budget: 'all', N slices, 'slices:N', 'volumes:K' (overrides data.labeled_budget)")
    parser.add_argument("--iterations", type=int, default=None, help="overrides training.iterations")
    parser.add_argument("--max-seconds", type=float, default=None, help="overrides training.max_seconds")
    parser.add_argument("--device", default=None, help="auto, cpu or cuda (overrides training.device)")
    parser.add_argument("--data", default=None, help=DATA_HELP)
    parser.add_argument("--label", default=None, help=LABEL_HELP)
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (overrides training.threads; 1 per run when several share a machine)")
    parser.add_argument("--export", default=None,
                        help="also copy the weights (and the .json sidecar beside them) to this .pt path")


def apply_overrides(config: dict, args) -> dict:
    config = copy.deepcopy(config)
    t, d = config["training"], config["data"]
    if args.labeled is not None:
        d["labeled_budget"] = int(args.labeled) if str(args.labeled).isdigit() else args.labeled
    if args.iterations is not None:
        t["iterations"] = args.iterations
    if args.max_seconds is not None:
        t["max_seconds"] = args.max_seconds
    if args.device is not None:
        t["device"] = args.device
    if args.data is not None:
        d["root"] = args.data
    if getattr(args, "label", None) is not None:
        d["label"] = args.label
    if args.threads is not None:
        t["threads"] = args.threads
    return normalise_config(config, config.get("_source"))


def export_to(summary: dict, destination: str | os.PathLike) -> tuple[Path, Path]:
    """Copy ``unet.pt`` and its sidecar to ``destination`` (``X.pt`` + ``X.json``), atomically."""
    import shutil

    destination = Path(destination)
    if destination.suffix != ".pt":
        raise InputError(destination, "--export needs a .pt file name")
    sidecar_path = destination.with_suffix(".json")
    with atomic_path(destination) as tmp:
        shutil.copyfile(summary["weights"], tmp)
    with atomic_path(sidecar_path) as tmp:
        shutil.copyfile(summary["sidecar"], tmp)
    return destination, sidecar_path


def budget_slug(budget) -> str:
    """'all' -> 'all', 20 -> '20', 'volumes:2' -> 'volumes2' (file-name friendly)."""
    return "".join(ch for ch in str(budget) if ch.isalnum()) or "custom"


def run(args) -> int:
    from medsemgan.training.cli import print_summary

    config = apply_overrides(load_unet_config(args.config), args)
    out = Path(args.out) if args.out else default_run_dir(f"unet_{budget_slug(config['data']['labeled_budget'])}")
    summary = train_unet(config, out, resume=args.resume)
    if args.export:
        if "weights" not in summary:
            raise InputError(out, "training did not finish: nothing to export (run again with --resume)")
        weights, side = export_to(summary, args.export)
        summary["exported"] = str(weights)
        summary["exported_sidecar"] = str(side)
    print_summary(summary)
    return {"SIGINT": 130, "SIGTERM": 143}.get(summary["stopped_by"], 0)
