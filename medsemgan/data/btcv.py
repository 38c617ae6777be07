"""BTCV (Synapse multi-atlas abdomen) CT as stored in the shared data: PNG slices + label volumes.

Layout (``ct/btcv``, see its README.md): ``images/image_SABS_{i}_sliceNNN.png`` (8-bit, 257 x 257,
windowed) and ``labels/label_{i}.nii.gz`` (13 organs, liver = 6). Three facts make this source
different from every other one, and are handled here so that the rest of the toolkit sees an
ordinary CT volume:

* **Intensities** are ``(HU + 125) x 255 / 400`` clipped to [0, 255]: back to approximate HU with
  ``value x 400 / 255 - 125``; 0 means "at most -125 HU" (air, lung, padding) and becomes -1024,
  so the body crop and the CT window treat it as air.
* **Geometry**: PNG ``[row, column]`` is ``label[row, column, NNN]`` with no transpose; axis 0 runs
  to the patient's left, axis 1 to anterior, axis 2 cranial (slice 000 most caudal). The label
  header says axis 1 points posterior (``diag(-sx, -sy, sz)``): that is wrong, so both image and
  label get the affine ``diag(-sx, +sy, sz)`` (RAS world, axcodes ``LAS``) built from the header's
  voxel sizes, which are physical.
* **Split**: a fixed rule, written before any result was seen (docs/data.md): in ascending id
  order, every fourth patient starting with the fourth is a CT *dev test* patient (never trained
  on); the other 15 join the unlabeled CT training pool (their labels are never trained on either;
  a handful serve as the training run's validation slices).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.utils import ImageMetaKey

from medsemgan.errors import InputError

# The 20 patients of the shared data (upstream re-index 0-29; the other 10 are kept aside).
BTCV_PATIENTS = (1, 2, 4, 5, 7, 8, 10, 11, 13, 14, 16, 17, 19, 20, 22, 23, 25, 26, 28, 29)
LIVER_VALUE = 6
AIR_HU = -1024.0
_SLICE_NAME = re.compile(r"^image_SABS_(\d+)_slice(\d{3})\.png$")


def dev_patients(patients=BTCV_PATIENTS) -> tuple[int, ...]:
    """Every fourth patient in ascending id order, starting with the fourth: the CT dev test set."""
    ordered = sorted(patients)
    return tuple(ordered[3::4])


BTCV_DEV_PATIENTS = dev_patients()  # (5, 11, 17, 23, 29)
BTCV_POOL_PATIENTS = tuple(p for p in BTCV_PATIENTS if p not in BTCV_DEV_PATIENTS)


def png_to_hu(values: np.ndarray) -> np.ndarray:
    """8-bit windowed grey values -> approximate HU; 0 (clipped at -125 HU or padding) -> air."""
    hu = values.astype(np.float32) * np.float32(400.0 / 255.0) - np.float32(125.0)
    hu[values == 0] = AIR_HU
    return hu


def patient_slice(path: str | os.PathLike) -> tuple[int, Path, Path] | None:
    """``(patient, images folder, label path)`` when ``path`` is a BTCV slice PNG, else ``None``."""
    path = Path(path)
    match = _SLICE_NAME.match(path.name)
    if match is None:
        return None
    patient = int(match.group(1))
    return patient, path.parent, path.parent.parent / "labels" / f"label_{patient}.nii.gz"


def is_label_volume(path: str | os.PathLike) -> bool:
    """A BTCV label volume (``.../labels/label_{i}.nii.gz`` beside an ``images`` folder of PNGs)."""
    path = Path(path)
    match = re.match(r"^label_(\d+)\.nii\.gz$", path.name)
    if match is None or path.parent.name != "labels":
        return False
    return (path.parent.parent / "images" / f"image_SABS_{match.group(1)}_slice000.png").is_file()


def corrected_affine(label_path: str | os.PathLike) -> np.ndarray:
    """RAS affine ``diag(-sx, +sy, sz)`` from the label header's (physical) voxel sizes."""
    header = nib.load(os.fspath(label_path)).header
    sx, sy, sz = (float(v) for v in header.get_zooms()[:3])
    return np.diag([-sx, sy, sz, 1.0])


def _meta(path: Path, affine: np.ndarray, fmt: str) -> dict:
    return {
        "affine": torch.as_tensor(affine, dtype=torch.float64),
        "original_affine": affine.copy(),
        ImageMetaKey.FILENAME_OR_OBJ: os.fspath(path),
        "format": fmt,
        "modality": "CT",
    }


def read_patient(path: str | os.PathLike) -> MetaTensor:
    """The whole patient that a slice PNG belongs to, as ``[X, Y, Z]`` HU float32 (not yet ``[1, ...]``)."""
    found = patient_slice(path)
    if found is None:
        raise InputError(path, "not a BTCV slice (expected image_SABS_<i>_slice<NNN>.png)")
    patient, images, label_path = found
    if not label_path.is_file():
        raise InputError(path, f"BTCV slice without its label volume {label_path} (it gives the geometry)")
    depth = int(nib.load(os.fspath(label_path)).shape[2])
    files = [images / f"image_SABS_{patient}_slice{k:03d}.png" for k in range(depth)]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise InputError(images, f"BTCV patient {patient}: {len(missing)} of {depth} slices missing, e.g. {missing[0].name}")
    from PIL import Image

    planes = []
    for name in files:
        try:
            with Image.open(name) as png:
                planes.append(np.asarray(png))
        except (OSError, ValueError) as err:
            raise InputError(name, f"cannot read PNG: {err}") from err
    shapes = {p.shape for p in planes}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise InputError(images, f"BTCV patient {patient}: slices are not one grey size: {sorted(shapes)}")
    array = png_to_hu(np.stack(planes, axis=-1))  # PNG [row, column] = label [axis 0, axis 1]
    affine = corrected_affine(label_path)
    image = MetaTensor(torch.from_numpy(np.ascontiguousarray(array)), meta=_meta(Path(path), affine, "btcv-png"))
    image.meta["dtype"] = "uint8"
    image.meta["btcv_patient"] = patient
    return image


def read_label(path: str | os.PathLike) -> MetaTensor:
    """A BTCV label volume ``[X, Y, Z]`` with the corrected affine (values unchanged, float32)."""
    path = Path(path)
    try:
        array = np.asarray(nib.load(os.fspath(path)).dataobj, dtype=np.float32)
    except Exception as err:  # noqa: BLE001 - reader failures become user-facing messages
        raise InputError(path, f"cannot read BTCV label volume: {err}") from err
    label = MetaTensor(torch.from_numpy(np.ascontiguousarray(array)), meta=_meta(path, corrected_affine(path), "nifti"))
    label.meta["dtype"] = "float32"
    label.meta["modality"] = ""
    return label
