"""Weights I/O, one home: dtype names, reading ``torch`` files without executing code
(``weights_only=True``) with errors that name the file, loading a state dict into a module,
writing state dicts atomically, and choosing the device.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medsemgan.errors import InputError
from medsemgan.io_utils import atomic_path

# dtype names accepted by the export paths (``medsemgan export --dtype``, ``export_state_dict``)
DTYPES: dict[str, torch.dtype] = {
    "fp16": torch.float16, "float16": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp32": torch.float32, "float32": torch.float32,
}


def read_weights(path: str | os.PathLike, what: str, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: no pickled code runs. A truncated file, a non-torch
    file or an unsafe pickle raises ``InputError(path, "cannot read <what>: ...")``."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated, not a torch file, or unsafe pickle
        raise InputError(Path(path), f"cannot read {what}: {' '.join(str(err).split())[:300]}") from None


def is_state_dict(state: Any) -> bool:
    """A mapping of tensor names to tensors."""
    return isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())


def load_state_dict_file(path: str | os.PathLike, what: str) -> dict[str, torch.Tensor]:
    """A plain state dict, loaded without executing code; clear errors for missing/bad files.
    A GAN training checkpoint gives its EMA generator, an encoder checkpoint its encoder."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"no trained {what} weights here (train them with `medsemgan train "
                               f"{'gan' if what == 'generator' else 'encoder'}`, or pass --bundle "
                               f"DIR / --{what} FILE)")
    state = read_weights(path, f"{what} weights")
    if isinstance(state, dict) and what == "generator" and "G_ema" in state:
        state = state["G_ema"]  # a GAN training checkpoint: take its EMA generator
    if isinstance(state, dict) and what == "encoder" and "encoder" in state and isinstance(state["encoder"], dict):
        state = state["encoder"]  # an encoder training checkpoint
    if not is_state_dict(state):
        raise InputError(path, f"not a {what} state dict (expected a mapping of tensor names to tensors)")
    return state


def load_into(module: nn.Module, state: dict, path: str | os.PathLike, what: str) -> None:
    """``module.load_state_dict(state, strict=True)``; a mismatch names the file and the first
    differences instead of torch's full listing."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = " ".join(str(err).split())[:400]
        raise InputError(Path(path), f"{what} weights do not match the configuration's architecture: {first}") from None


def cast_state_dict(state: dict[str, torch.Tensor], dtype: str | torch.dtype | None) -> dict[str, torch.Tensor]:
    """Detached contiguous CPU copies; floating tensors cast to ``dtype`` (a ``DTYPES`` name or a
    torch dtype; None: kept as they are), integer buffers unchanged."""
    if isinstance(dtype, str) and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)} or None, got {dtype!r}")
    target = DTYPES[dtype] if isinstance(dtype, str) else dtype
    out = {}
    for key, value in state.items():
        value = value.detach().to("cpu").contiguous()
        if target is not None and value.is_floating_point():
            value = value.to(target)
        out[key] = value.clone()
    return out


def save_state_dict(state: dict[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically (a reader never sees a partial file)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def resolve_device(device: str | torch.device | None, what: str = "--device") -> torch.device:
    """'auto'/None -> CUDA when available, else CPU; a clear error (naming ``what``, the option or
    key the value came from) for an unusable choice."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise InputError(None, f"{what} {device!r}: {err}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(None, f"{what} {device}: CUDA is not available on this machine")
    return dev
