"""What ``inference.json`` / ``evaluate.json`` build, made by the code ``medsemgan segment`` runs.

Masks from the bundle and from ``medsemgan segment`` are identical because both use the same
study discovery (``find_studies``), model loading (``segment.load_model``), options
(``SegmentOptions``: configuration defaults, seed, batch size), preprocessing
(``data.transforms.preprocess`` per modality), inferer (``TTOInferer``), inversion (``Invertd`` of
the sigmoid probability, linear interpolation) and threshold (``> 0.5``, the input's own affine).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

import torch

from medsemgan.errors import InputError

log = logging.getLogger(__name__)


def study_datalist(dataset_dir: str | os.PathLike) -> list[dict[str, str]]:
    """One item per study under ``dataset_dir`` (NIfTI/NRRD files, DICOM series folders):
    ``{"image": path, "image_path": path, "case": name}``; names as ``medsemgan segment`` gives."""
    from medsemgan.inference.segment import find_studies

    if dataset_dir is None:
        raise InputError(None, "no --dataset_dir given (a study file or a folder of studies)")
    return [{"image": str(path), "image_path": str(path), "case": case}
            for case, path in find_studies(dataset_dir)]


def load_network(bundle_root: str | os.PathLike, model_config: str | None = None,
                 generator: str | None = None, encoder: str | None = None,
                 device: str | torch.device | None = None) -> torch.nn.Module:
    """``SegmentationModel`` from the bundle's ``models/generator.pt`` + ``models/encoder.pt``
    (or explicit files); the same loader as ``medsemgan segment --bundle``. ``device``: None
    keeps it on the CPU; 'auto', 'cpu', 'cuda', 'cuda:N' as ``--device``."""
    from medsemgan.inference.model import resolve_device
    from medsemgan.inference.segment import load_model

    from medsemgan.bundle.options import as_optional_str

    args = argparse.Namespace(bundle=os.fspath(bundle_root), config=as_optional_str(model_config),
                              generator=as_optional_str(generator), encoder=as_optional_str(encoder))
    model = load_model(args)
    return model if device is None else model.to(resolve_device(device))


def segment_options(steps: int | None = None, encoder_only: bool = False, batch_size: int | None = None,
                    seed: int | None = None, modality: str | None = None, **tto: Any):
    from medsemgan.inference.segment import SegmentOptions

    return SegmentOptions(steps=steps, encoder_only=bool(encoder_only), batch_size=batch_size, seed=seed,
                          modality=modality, extra_tto={k: v for k, v in tto.items() if v is not None})


def make_inferer(network, steps: int | None = None, encoder_only: bool = False,
                 batch_size: int | None = None, seed: int | None = None, progress: bool = False,
                 **tto: Any):
    """``TTOInferer`` with the options ``segment_volume`` would use for the same settings
    (``None`` = the model configuration's ``inference:`` value)."""
    from medsemgan.bundle.options import as_bool, as_optional_int
    from medsemgan.inference.inferer import TTOInferer

    steps, batch_size = as_optional_int(steps, "steps"), as_optional_int(batch_size, "batch_size")
    seed = as_optional_int(seed, "seed")
    if steps is not None and steps < 0:
        raise InputError(None, f"--steps must be >= 0, got {steps}")
    if batch_size is not None and batch_size < 1:
        raise InputError(None, f"--batch_size must be >= 1, got {batch_size}")
    options = segment_options(steps, as_bool(encoder_only, "encoder_only"), batch_size, seed, **tto)
    cfg = network.config.inference
    return TTOInferer(options.tto_options(cfg), batch_size=options.slice_batch(cfg),
                      progress=as_bool(progress, "progress"))


def ood_threshold(network) -> float:
    from medsemgan.inference.segment import DEFAULT_OOD_MSE

    return float(network.config.inference.get("ood_mse_threshold", DEFAULT_OOD_MSE))


def resolution(network) -> int:
    return int(network.resolution)


def output_folder(path: str | os.PathLike) -> str:
    """Create the output folder up front (a clear error if it is a file)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(path, "output exists and is not a folder")
    path.mkdir(parents=True, exist_ok=True)
    return str(path)
