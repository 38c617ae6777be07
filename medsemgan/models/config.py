"""Model configuration: the ``model:`` section of ``medsemgan/configs/<name>.yaml``.

Other sections of the same file (``training:`` ...) belong to other layers and are ignored here.
Missing keys take the defaults below (StyleGAN2 config-f values); unknown keys are an error, so a
typo in a YAML file never silently falls back to a default.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from medsemgan.errors import InputError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

DEFAULTS: dict[str, Any] = {
    "name": None,  # filled with the file's stem by load_model_config
    "resolution": 256,
    "img_channels": 1,
    "num_labels": 1,
    "generator": {
        "z_dim": 512,
        "w_dim": 512,
        "mapping_layers": 8,
        "mapping_lr_multiplier": 0.01,
        "w_avg_beta": 0.995,
        "channel_base": 32768,
        "channel_max": 512,
        "conv_clamp": None,
        "modconv_form": "auto",
        "channels_last_from": None,
    },
    "image_discriminator": {
        "channel_base": 32768,
        "channel_max": 512,
        "mbstd_group_size": 4,
        "mbstd_channels": 1,
        "conv_clamp": None,
    },
    "joint_discriminator": {
        "num_scales": 3,
        "base_channels": 64,
        "n_layers": 3,
        "channel_max": 512,
    },
}


def config_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _resolve_path(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    return CONFIG_DIR / f"{name_or_path}.yaml"


def _merge(defaults: dict, given: dict, path: Path, prefix: str) -> dict:
    out = copy.deepcopy(defaults)
    for key, value in given.items():
        if key not in defaults:
            raise InputError(path, f"unknown key '{prefix}{key}' (known: {', '.join(sorted(defaults))})")
        if isinstance(defaults[key], dict):
            if not isinstance(value, dict):
                raise InputError(path, f"'{prefix}{key}' must be a mapping")
            out[key] = _merge(defaults[key], value, path, f"{prefix}{key}.")
        else:
            out[key] = value
    return out


def model_config_from_dict(data: dict, source: str | Path = "<dict>") -> dict:
    """Fill defaults into a ``model:`` mapping and check it."""
    path = Path(source)
    cfg = _merge(DEFAULTS, data or {}, path, "model.")
    res = cfg["resolution"]
    if not isinstance(res, int) or res < 4 or res & (res - 1):
        raise InputError(path, f"model.resolution must be a power of two >= 4, got {res!r}")
    if int(cfg["num_labels"]) < 1:
        raise InputError(path, f"model.num_labels must be >= 1, got {cfg['num_labels']!r}")
    if cfg["generator"]["modconv_form"] not in ("batched", "grouped", "auto"):
        raise InputError(path, "model.generator.modconv_form must be 'batched', 'grouped' or 'auto'")
    return cfg


def load_model_config(name_or_path: str | Path) -> dict:
    """Model configuration by name (``cpu128``, ``paper256``) or YAML path; returns the model dict."""
    path = _resolve_path(name_or_path)
    if not path.is_file():
        raise InputError(path, f"no such model configuration (known names: {', '.join(config_names())})")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise InputError(path, f"not valid YAML: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise InputError(path, "has no 'model:' section")
    cfg = model_config_from_dict(data["model"], path)
    cfg["name"] = cfg["name"] or path.stem
    return cfg
