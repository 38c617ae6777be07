"""The ``training:`` and ``data:`` sections of a configuration file, with the paper's defaults.

A configuration file (``medsemgan/configs/<name>.yaml`` or any path) has three sections:
``model:`` (read by :mod:`medsemgan.models.config`), ``data:`` and ``training:`` (read here).
Keys missing from the file take the defaults below; unknown keys are an error, so a typo never
silently trains with a default. See docs/training.md for what each key means.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

from medsemgan.config_files import config_path, read_yaml_mapping
from medsemgan.errors import InputError
from medsemgan.training.augment import AugmentConfig
from medsemgan.training.validation import VALIDATION_DEFAULTS

DATA_DEFAULTS: dict[str, Any] = {
    # 'ct': the CT training pool of the shared studies (medsemgan.data.slices.training_tensors);
    # 'synthetic': generated phantoms (tests, benchmarks, smoke runs without the data).
    "source": "ct",
    "root": None,  # None: $MEDSEMGAN_DATA or ../shared/data; or own data: an MSD/nnU-Net folder or a MONAI datalist JSON
    "label": 1,  # own data only: the liver's value(s) in its label files, e.g. 5 or "1,2" (--label)
    "labeled_budget": 8,  # labeled slices, in the paper's terms (8, 20, 118 ...)
    "cache_dir": None,
    "synthetic_unlabeled": 256,  # pool sizes for source 'synthetic'
    "synthetic_labeled": 8,
}

TRAINING_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "device": "auto",  # auto | cpu | cuda
    "threads": None,  # CPU threads per process; None: cores / processes on a CPU (train gan)
    "processes": "auto",  # data-parallel processes of `train gan`: auto = 2 on a CPU machine, 1 on GPUs
    "kimg": 20.0,  # length of training in thousands of unlabeled (real) images shown to D_image
    "batch_size": 16,  # global unlabeled batch (split across processes)
    "labeled_batch_size": 16,  # global labeled batch for the joint discriminator
    "lr": 0.002,
    "betas": [0.0, 0.99],
    "eps": 1e-8,
    # image discriminator: non-saturating logistic loss, lazy R1
    "r1_gamma_image": 10.0,
    "r1_interval_image": 16,
    # joint discriminator: hinge loss, lazy R1 on (image, mask), feature matching in G's loss
    "r1_gamma_joint": 10.0,
    "r1_interval_joint": 16,
    "joint_weight": 1.0,  # weight of the joint hinge term in the generator loss
    "feature_matching_weight": 2.0,
    # generator regularisers
    "pl_weight": 2.0,
    "pl_interval": 4,
    "pl_batch_shrink": 2,
    "pl_decay": 0.01,
    "style_mixing": 0.9,
    # generator EMA (StyleGAN2-ADA): half-life in kimg, ramp-up as a fraction of images seen
    "ema_kimg": 10.0,
    "ema_rampup": None,
    "augment": {},  # see AugmentConfig; empty = its defaults
    # speed levers (docs/training.md "Speed"): `fast` switches all of them; `levers` overrides
    "fast": True,
    "levers": {},
    # observation
    "checkpoint_kimg": 1.0,  # rolling checkpoint.pt (full state, for --resume)
    "snapshot_kimg": 10.0,  # kept snapshots/generator_ema_<images>.pt (EMA generator, both heads)
    "validation": {},  # val/dice every few kimg; keys and defaults in training/validation.py
    "sample_kimg": 1.0,
    "log_every": 10,  # iterations between TensorBoard scalars
    "sample_grid": [4, 4],  # rows, columns of the sample PNG
    "tensorboard": True,
    "progress": True,
}

LEVER_KEYS = (
    "bf16", "channels_last", "channels_last_generator", "paired_d_pass", "shared_fakes", "fused_ops", "compile",
    "bf16_regularizers",
)


def levers_from(training: dict) -> dict[str, bool]:
    """Resolve ``fast`` plus per-lever overrides into a full set of on/off flags.

    ``compile`` stays off under ``fast`` (torch.compile does not support the double backward R1
    and path length need; see docs/training.md).
    """
    fast = bool(training.get("fast", True))
    flags = {
        "bf16": fast,
        "channels_last": fast,
        "channels_last_generator": fast,
        "paired_d_pass": fast,
        "shared_fakes": fast,
        "fused_ops": fast,
        "compile": False,
        "bf16_regularizers": fast,
    }
    overrides = training.get("levers") or {}
    unknown = sorted(set(overrides) - set(LEVER_KEYS))
    if unknown:
        raise ValueError(f"unknown levers {unknown}; known: {list(LEVER_KEYS)}")
    bad = {k: v for k, v in overrides.items() if not isinstance(v, bool) and v != "probe"}
    if bad:
        raise ValueError(f"levers take true, false or 'probe' (measured on this CPU), got {bad}")
    # 'probe' is decided by training/lever_probe.py before the trainer is built; until then it
    # reads as the lever's fast setting
    flags.update({k: True if v == "probe" else bool(v) for k, v in overrides.items()})
    if flags["compile"]:
        raise ValueError(
            "levers.compile is not supported: torch.compile cannot run the double backward of R1 "
            "and path length, and compiling the other passes took minutes per network on this CPU "
            "(docs/training.md, 'Speed')"
        )
    return flags


def read_yaml(path: Path) -> dict:
    return read_yaml_mapping(path, "expected a mapping with sections model:, data:, training:")


def merge_section(path, section: str, defaults: dict, values: dict | None) -> dict:
    """``defaults`` updated with ``values``; a key ``defaults`` lacks is an error naming ``section``."""
    values = dict(values or {})
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise InputError(path, f"unknown keys in {section}: {unknown}; known: {sorted(defaults)}")
    merged = copy.deepcopy(defaults)
    merged.update(values)
    return merged


def normalise(config: dict, path: str | os.PathLike | None = None) -> dict:
    """Fill defaults and check the ``data`` and ``training`` sections; returns a new dict."""
    config = copy.deepcopy(config)
    data = merge_section(path, "data", DATA_DEFAULTS, config.get("data"))
    training = merge_section(path, "training", TRAINING_DEFAULTS, config.get("training"))
    unknown = set(training["validation"] or {}) - set(VALIDATION_DEFAULTS)
    if unknown:
        raise InputError(path, f"training.validation: unknown keys {sorted(unknown)}; known: {sorted(VALIDATION_DEFAULTS)}")
    training["validation"] = {**VALIDATION_DEFAULTS, **(training["validation"] or {})}
    try:
        AugmentConfig.from_dict(training["augment"])
        levers_from(training)
    except (TypeError, ValueError) as err:
        raise InputError(path, f"training: {err}") from None
    from medsemgan.data.datalist import parse_label

    parse_label(data["label"], path)  # own data (medsemgan.data.datalist): checked here, used when loading
    if data["source"] not in ("ct", "synthetic"):
        raise InputError(path, f"data.source must be 'ct' or 'synthetic', got {data['source']!r}")
    for key in ("batch_size", "labeled_batch_size", "r1_interval_image", "r1_interval_joint", "pl_interval"):
        if int(training[key]) < 1:
            raise InputError(path, f"training.{key} must be >= 1, got {training[key]}")
    if float(training["kimg"]) <= 0:
        raise InputError(path, f"training.kimg must be > 0, got {training['kimg']}")
    if len(training["betas"]) != 2:
        raise InputError(path, f"training.betas must be two numbers, got {training['betas']}")
    config["data"], config["training"] = data, training
    return config


def load_config(name_or_path: str | os.PathLike) -> dict:
    """Read a configuration by name or path: ``model`` as the models layer resolves it, ``data``
    and ``training`` with defaults filled in. Adds ``_source`` (the file) for the record."""
    path = config_path(name_or_path)
    raw = read_yaml(path)
    from medsemgan.models.config import load_model_config  # models layer owns `model:`

    config = normalise(raw, path)
    config["model"] = load_model_config(str(path))
    config["_source"] = str(path)
    return config


def to_json(config: dict) -> str:
    """The configuration as stored in checkpoints (a string, so weights_only loading accepts it)."""
    return json.dumps(config, sort_keys=True)
