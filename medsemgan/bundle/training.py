"""Run components for ``train.json`` (GAN) and ``train_encoder.json``.

They only assemble: the configuration is read and overridden by the functions the
``medsemgan train gan|encoder`` verbs use, and ``run()`` calls ``train_gan`` / ``train_encoder``.
Under ``torchrun`` the GAN loop joins the process group itself (gloo on CPUs, NCCL on GPUs).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from medsemgan.bundle.options import as_bool, as_optional_float, as_optional_int, as_optional_str
from medsemgan.errors import InputError

log = logging.getLogger(__name__)


def gan_config(training_config: str = "cpu128", dataset_dir: str | None = None, device: str | None = None,
               kimg: float | None = None, labeled: int | None = None, batch_size: int | None = None,
               fast: bool = True, label: str | int | None = None) -> dict:
    """The GAN run's configuration, exactly as ``medsemgan train gan --config ... --kimg ...``."""
    from medsemgan.training.cli_gan import apply_overrides
    from medsemgan.training.config import load_config

    args = argparse.Namespace(kimg=as_optional_float(kimg, "kimg"), labeled=as_optional_int(labeled, "labeled"),
                              batch=as_optional_int(batch_size, "batch_size"), device=as_optional_str(device),
                              data=as_optional_str(dataset_dir), no_fast=not as_bool(fast, "fast"),
                              label=as_optional_str(label))
    return apply_overrides(load_config(training_config), args)


def encoder_config(training_config: str = "cpu128", dataset_dir: str | None = None, device: str | None = None,
                   kimg: float | None = None, label: str | int | None = None) -> dict:
    """The encoder run's configuration, exactly as ``medsemgan train encoder --config ...``."""
    from medsemgan.training.encoder import load_encoder_config

    config = load_encoder_config(training_config)
    t = config["encoder"]["train"]
    kimg, device, dataset_dir = as_optional_float(kimg, "kimg"), as_optional_str(device), as_optional_str(dataset_dir)
    if kimg is not None:
        t["kimg"] = kimg
    if device is not None:
        t["device"] = device
    if dataset_dir is not None:
        config["data"]["root"] = dataset_dir
    if as_optional_str(label) is not None:  # own data: the liver's value(s) in its labels, e.g. "1,2"
        config["data"]["label"] = as_optional_str(label)
    return config


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _export(source: str | os.PathLike | None, destination: str | os.PathLike | None) -> str | None:
    """Copy finished weights into the bundle's ``models/`` (atomically, rank 0 only)."""
    if not destination or source is None or not _is_main_process():
        return None
    from medsemgan.io_utils import atomic_path

    source, destination = Path(source), Path(destination)
    if not source.is_file():
        raise InputError(source, "expected the finished run's exported weights here")
    with atomic_path(destination) as tmp:
        shutil.copyfile(source, tmp)
    log.info("exported %s -> %s", source, destination)
    bundle = destination.parent.parent
    if destination.parent.name == "models" and (bundle / "large_files.yml").is_file():
        from medsemgan.bundle.large_files import write_large_files

        write_large_files(bundle)  # keep the sha256 list in step with the new weights
    return str(destination)


class GanTraining:
    """``train#trainer`` of train.json: ``run()`` trains the joint GAN into ``output_dir``.

    ``max_steps`` stops after that many iterations of this call (a checkpoint is written; smoke
    tests); ``export_to``: where to copy ``generator_ema.pt`` when the run finishes (e.g. the
    bundle's ``models/generator.pt``), if ``export``.
    """

    def __init__(self, config: dict, output_dir: str | os.PathLike, resume: bool = False,
                 max_steps: int | None = None, export_to: str | os.PathLike | None = None,
                 export: bool = True) -> None:
        self.config = config
        self.output_dir = Path(output_dir)
        self.resume = as_bool(resume, "resume")
        self.max_steps = as_optional_int(max_steps, "max_steps")
        self.export_to = as_optional_str(export_to) if as_bool(export, "export_weights") else None
        self.summary: dict[str, Any] | None = None

    def run(self) -> dict[str, Any]:
        from medsemgan.training.run import EXPORT_NAME, train_gan

        summary = train_gan(self.config, self.output_dir, resume=self.resume, max_steps=self.max_steps)
        summary.pop("trainer", None)
        if summary["finished"]:
            summary["exported"] = _export(self.output_dir / EXPORT_NAME, self.export_to)
        self.summary = summary
        log.info("GAN training: %d/%d iterations, %d images, %.1f s/kimg, run dir %s%s",
                 summary["steps"], summary["total_steps"], summary["images_seen"], summary["s_per_kimg"],
                 summary["run_dir"], "" if summary["finished"] else " (not finished: --resume true continues)")
        return summary


class EncoderTraining:
    """``train#trainer`` of train_encoder.json: ``run()`` trains the encoder for ``generator``
    (a ``generator_ema.pt``, a GAN checkpoint, or the bundle's ``models/generator.pt``)."""

    def __init__(self, config: dict, output_dir: str | os.PathLike, generator: str | os.PathLike,
                 resume: bool = False, max_steps: int | None = None,
                 export_to: str | os.PathLike | None = None, export: bool = True) -> None:
        self.config = config
        self.output_dir = Path(output_dir)
        self.generator = Path(generator)
        self.resume = as_bool(resume, "resume")
        self.max_steps = as_optional_int(max_steps, "max_steps")
        self.export_to = as_optional_str(export_to) if as_bool(export, "export_weights") else None
        self.summary: dict[str, Any] | None = None

    def run(self) -> dict[str, Any]:
        from medsemgan.training.encoder import train_encoder

        if not self.generator.is_file():
            raise InputError(self.generator, "no trained generator here (train it with configs/train.json "
                                             "or `medsemgan train gan`, or pass --generator_file PATH)")
        summary = train_encoder(self.config, self.output_dir, resume=self.resume, generator=self.generator,
                                max_steps=self.max_steps)
        summary.pop("trainer", None)
        if summary["finished"]:
            summary["exported"] = _export(summary["encoder_path"], self.export_to)
        self.summary = summary
        log.info("encoder training: %d steps, %d/%d images, run dir %s%s", summary["steps"],
                 summary["images_seen"], summary["total_images"], summary["run_dir"],
                 "" if summary["finished"] else " (not finished: --resume true continues)")
        return summary


def check_distributed_launch() -> int:
    """For multi_gpu_train.json: say how many processes joined, and warn when not under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if "LOCAL_RANK" not in os.environ:
        log.warning("multi_gpu_train.json without torchrun: training in one process "
                    "(launch with `torchrun --standalone --nproc_per_node=N -m monai.bundle run ...`)")
    elif _is_main_process():
        log.info("distributed GAN training on %d process(es)", world)
    return world
