"""Training checkpoints (resume bit-for-bit) and the exported generator weights.

A checkpoint holds only tensors and plain containers (RNG states as uint8/int64 tensors, the
configuration as a JSON string), so it loads with ``torch.load(weights_only=True)``: opening a
checkpoint never runs code from the file. Writes go through a temporary file and ``os.replace``,
so a kill during saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsemgan.errors import InputError
from medsemgan.io_utils import atomic_path
from medsemgan.weights import DTYPES, cast_state_dict, read_weights, save_state_dict

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1


# --- RNG state as tensors ---------------------------------------------------------------------


def capture_rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and python ``random`` states, as weights_only-safe values."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]),
        "numpy_cached_gauss": float(np_state[4]),
        "python_version": int(py_version),
        "python_internal": torch.tensor(py_internal, dtype=torch.int64),
        "python_gauss": py_gauss,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            int(state["numpy_pos"]),
            int(state["numpy_has_gauss"]),
            float(state["numpy_cached_gauss"]),
        )
    )
    random.setstate(
        (int(state["python_version"]), tuple(int(v) for v in state["python_internal"].tolist()), state["python_gauss"])
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- save / load ------------------------------------------------------------------------------


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    state = dict(state, format_version=FORMAT_VERSION)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no checkpoint here (nothing to resume from)")
    state = read_weights(path, "checkpoint", map_location)
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise InputError(path, f"not a medsemgan GAN checkpoint (format {FORMAT_VERSION} expected)")
    return state


def checkpoint_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CHECKPOINT_NAME


# --- export -----------------------------------------------------------------------------------



def generator_state_dict(source: torch.nn.Module | dict | str | os.PathLike) -> dict[str, torch.Tensor]:
    """The EMA generator's state dict from a module, a checkpoint dict, or a checkpoint file."""
    if isinstance(source, torch.nn.Module):
        return source.state_dict()
    if not isinstance(source, dict):
        source = load_checkpoint(source)
    if "G_ema" not in source:
        raise InputError(None, "checkpoint has no G_ema entry")
    return source["G_ema"]


def export_generator(
    source: torch.nn.Module | dict | str | os.PathLike,
    out_path: str | os.PathLike,
    dtype: str | None = None,
) -> Path:
    """Write the EMA generator (image and label heads) as a plain state dict for the bundle.

    ``dtype``: None/'fp32' keeps float32; 'bf16' or 'fp16' halves the file. Integer buffers are
    kept as they are. Loads with ``torch.load(path, weights_only=True)`` + ``load_state_dict``
    (cast back to float32 first when the model runs in float32).
    """
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)} or None")
    return save_state_dict(cast_state_dict(generator_state_dict(source), dtype), out_path)
