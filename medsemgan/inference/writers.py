"""Writers for segmentation outputs: NIfTI masks / probability maps and a per-case JSON.

Everything goes through ``atomic_path``: a reader never sees a half-written file, and a failing
case leaves no file behind.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from medsemgan.io_utils import atomic_path, write_json  # noqa: F401  (write_json re-exported)


def _affine(volume: torch.Tensor, affine: np.ndarray | torch.Tensor | None) -> np.ndarray:
    if affine is None:
        affine = getattr(volume, "affine", None)
    if affine is None:
        raise ValueError("an affine is needed to write a NIfTI file")
    return np.asarray(torch.as_tensor(affine).detach().cpu(), dtype=np.float64)


def _spatial(volume: torch.Tensor | np.ndarray) -> np.ndarray:
    array = volume.detach().cpu().numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]  # drop MONAI's channel axis
    if array.ndim != 3:
        raise ValueError(f"expected a 3-D volume (optionally [1, X, Y, Z]), got shape {array.shape}")
    return array


def nifti_image(volume: torch.Tensor | np.ndarray, affine: np.ndarray | torch.Tensor | None = None,
                dtype=np.uint8) -> nib.Nifti1Image:
    """``volume`` (``[X, Y, Z]`` or ``[1, X, Y, Z]``) as a NIfTI image with ``affine`` (default:
    the MetaTensor's own) as both sform and qform, so every reader sees the same geometry."""
    array = _spatial(volume).astype(dtype, copy=False)
    matrix = _affine(volume, affine)
    image = nib.Nifti1Image(array, matrix)
    image.set_sform(matrix, code=1)
    image.set_qform(matrix, code=1)
    image.header.set_data_dtype(dtype)
    if np.issubdtype(np.dtype(dtype), np.integer):
        image.header["scl_slope"], image.header["scl_inter"] = 1.0, 0.0
    return image


def write_nifti(volume: torch.Tensor | np.ndarray, path: str | os.PathLike,
                affine: np.ndarray | torch.Tensor | None = None, dtype=np.uint8) -> Path:
    """Write ``nifti_image(volume, affine, dtype)`` to ``path`` (atomically)."""
    image = nifti_image(volume, affine, dtype)
    path = Path(path)
    with atomic_path(path) as tmp:
        nib.save(image, tmp)
    return path


def write_mask(mask: torch.Tensor, path: str | os.PathLike,
               affine: np.ndarray | torch.Tensor | None = None) -> Path:
    """uint8 liver mask (1 = liver)."""
    return write_nifti((mask > 0).to(torch.uint8) if isinstance(mask, torch.Tensor) else mask > 0,
                       path, affine, np.uint8)


def write_probability(prob: torch.Tensor, path: str | os.PathLike,
                      affine: np.ndarray | torch.Tensor | None = None) -> Path:
    return write_nifti(prob, path, affine, np.float32)
