"""Tiny synthetic CT/MRI NIfTI cases and a tiny trained U-Net for the report tests."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np


def phantom_volume(shape=(48, 40, 6), spacing=(4.0, 4.0, 5.0), modality="CT", seed=0, shift=0):
    """``(image, liver mask)``: a body ellipse with a liver blob on the patient's right.

    Written with a diagonal (RAS) affine: index 0 runs from the patient's left to right, so the
    liver (patient's right) sits at high indices.
    """
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    body = (x / 0.85) ** 2 + (y / 0.7) ** 2 <= 1
    liver2d = ((x - 0.35 + 0.02 * shift) / 0.35) ** 2 + ((y - 0.05) / 0.3) ** 2 <= 1
    image = np.empty(shape, np.float32)
    mask = np.zeros(shape, np.uint8)
    for k in range(shape[2]):
        liver = liver2d & body if 0 < k < shape[2] - 1 else np.zeros_like(body)
        if modality == "CT":
            sl = np.where(body, 40.0, -1000.0) + np.where(liver, 80.0, 0.0)
            sl = sl + rng.normal(0, 8, sl.shape) * body
        else:
            sl = np.where(body, 300.0, 5.0) + np.where(liver, -150.0, 0.0)
            sl = np.clip(sl + rng.normal(0, 10, sl.shape), 0, None)
        image[..., k] = sl
        mask[..., k] = liver
    return image, mask


def write_case(folder: Path, name: str, modality: str, seed: int, label_value: int = 1) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    image, mask = phantom_volume(modality=modality, seed=seed, shift=seed)
    affine = np.diag([4.0, 4.0, 5.0, 1.0])
    image_path, label_path = folder / f"image_{name}.nii.gz", folder / f"label_{name}.nii.gz"
    nib.save(nib.Nifti1Image(image.astype(np.int16 if modality == "CT" else np.float32), affine), image_path)
    nib.save(nib.Nifti1Image((mask * label_value).astype(np.float32), affine), label_path)
    return image_path, label_path


def tiny_unet_config(resolution: int = 32) -> dict:
    return {
        "model": {"channels": [4, 8, 8], "strides": [2, 2], "num_res_units": 0},
        "data": {"source": "synthetic", "resolution": resolution, "synthetic_labeled": 4},
        "training": {"iterations": 2, "batch_size": 2, "progress": False, "checkpoint_every": 1,
                     "log_every": 1, "device": "cpu"},
    }
