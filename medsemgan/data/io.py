"""``load_image``: any supported volume as a validated ``MetaTensor`` ``[1, X, Y, Z]``.

Formats: NIfTI (MONAI's ``NibabelReader``), NRRD/MHA, single DICOM files and DICOM series folders
(``SimpleITKReader``). Everything that cannot become one finite 3-D volume raises
``InputError(path, problem)``; nothing here writes files.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import Hashable, Mapping

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.image_reader import NibabelReader
from monai.transforms import MapTransform, Orientation
from monai.utils import ImageMetaKey, MetaKeys

from medsemgan.data.readers import SITK_FILE_SUFFIXES, SimpleITKReader, diagnose_dicom, is_dicom_file
from medsemgan.errors import InputError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
GZIP_MAGIC = b"\x1f\x8b"
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


def detect_format(path: str | os.PathLike) -> str:
    """'nifti', 'dicom-series', 'dicom', 'nrrd', 'mha', ..., or 'picture' / 'unknown'."""
    path = Path(path)
    name = path.name.lower()
    if path.is_dir():
        return "dicom-series"
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(PICTURE_SUFFIXES):
        return "picture"
    if is_dicom_file(path) or name.endswith((".dcm", ".dicom", ".ima")):
        return "dicom"
    if name.endswith(SITK_FILE_SUFFIXES):
        return name.rsplit(".", 1)[-1]
    return "unknown"


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise InputError(path, "does not exist")
    if path.is_dir():
        if not any(path.iterdir()):
            raise InputError(path, "folder is empty (expected one DICOM series)")
    elif path.stat().st_size == 0:
        raise InputError(path, "file is empty")


def _check_gzip(path: Path) -> None:
    """A ``.gz`` name must hold gzip data that decompresses to the end (catches truncation early)."""
    with open(path, "rb") as handle:
        if handle.read(2) != GZIP_MAGIC:
            raise InputError(path, "not gzip-compressed although named .gz (is it really a NIfTI file?)")
    try:
        with gzip.open(path, "rb") as stream:
            while stream.read(1 << 24):
                pass
    except (EOFError, OSError, zlib.error) as err:
        raise InputError(path, f"gzip data is truncated or corrupt ({err})") from err


def _check_finite(array: np.ndarray, path: Path) -> None:
    if array.dtype.kind != "f":
        return
    finite = np.isfinite(array)
    if finite.all():
        return
    nan = int(np.isnan(array).sum())
    inf = int(array.size - finite.sum()) - nan
    problems = [f"{n} {kind} voxels" for n, kind in ((nan, "NaN"), (inf, "infinite")) if n]
    raise InputError(path, "contains " + " and ".join(problems) + " (the volume must be finite)")


def read_volume(path: str | os.PathLike, series_uid: str | None = None) -> MetaTensor:
    """Read without the 3-D checks: the raw array (spatial axes first) and MONAI metadata."""
    path = Path(path)
    _check_exists(path)
    known = _read_known_source(path)
    if known is not None:
        _check_finite(known.numpy(), path)
        return known
    fmt = detect_format(path)
    if fmt == "picture":
        raise InputError(path, "is a 2-D picture; a 3-D volume (NIfTI, NRRD or DICOM) is required")
    if fmt == "unknown":
        raise InputError(
            path, "unsupported format: expected NIfTI (.nii/.nii.gz), NRRD, MHA, DICOM file or DICOM folder"
        )
    if fmt == "dicom-series" and series_uid is None and not _has_dicom(path):
        diagnosis = diagnose_dicom(os.fspath(path))
        if diagnosis:
            raise InputError(path, f"no readable DICOM series: {diagnosis}")
        pngs = list(path.glob("*.png"))
        hint = " (PNG slices carry no geometry: read them as labels paired with a DICOM series)" if pngs else ""
        raise InputError(path, f"no DICOM series found in this folder{hint}")
    if fmt == "nifti":
        if path.name.lower().endswith(".gz"):
            _check_gzip(path)
        reader = NibabelReader()
    else:
        reader = SimpleITKReader(series_uid=series_uid)
    try:
        array, meta = reader.get_data(reader.read(path))
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - every reader failure becomes a user-facing message
        raise InputError(path, f"cannot read as {fmt}: {_message(err)}") from err
    array = np.asarray(array)
    _check_finite(array, path)
    meta[ImageMetaKey.FILENAME_OR_OBJ] = os.fspath(path)
    meta["dtype"] = str(array.dtype)
    # C-contiguous once here: SimpleITK arrays arrive transposed, and every later op is faster
    image = MetaTensor(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)), meta=meta)
    image.meta["format"] = image.meta.get("format", fmt)
    return image


def _read_known_source(path: Path) -> MetaTensor | None:
    """Sources whose files alone mislead a generic reader (BTCV: PNG slices, a wrong header axis)."""
    from medsemgan.data import btcv

    if btcv.patient_slice(path) is not None and btcv.patient_slice(path)[2].is_file():
        return btcv.read_patient(path)
    if btcv.is_label_volume(path):
        return btcv.read_label(path)
    return None


def _has_dicom(folder: Path) -> bool:
    from medsemgan.data.readers import list_dicom_series

    return bool(list_dicom_series(folder))


def _message(err: Exception) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def as_volume(image: MetaTensor, path: str | os.PathLike) -> MetaTensor:
    """Validate a raw read as one finite 3-D volume and return it as ``[1, X, Y, Z]``."""
    array = image
    shape = tuple(array.shape)
    # trailing singleton axes (e.g. NIfTI (X, Y, Z, 1)) carry nothing: drop them
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim > 3:
        raise InputError(path, f"is {len(shape)}-D (shape {shape}); only single 3-D volumes are supported")
    if array.ndim < 3:
        raise InputError(path, f"is {array.ndim}-D (shape {shape}); a 3-D volume is required")
    if min(array.shape) < 1:
        raise InputError(path, f"has an empty dimension (shape {shape})")
    volume = MetaTensor(array.as_tensor().unsqueeze(0), meta=dict(image.meta))
    affine = np.asarray(image.meta[MetaKeys.AFFINE], dtype=np.float64)
    volume.affine = torch.as_tensor(affine, dtype=torch.float64)
    volume.meta[MetaKeys.ORIGINAL_AFFINE] = affine.copy()
    volume.meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = "no_channel"
    volume.meta[MetaKeys.SPATIAL_SHAPE] = np.asarray(volume.shape[1:])
    volume.meta["spacing"] = tuple(float(s) for s in spacing_of(affine))
    volume.meta["axcodes"] = axcodes_of(affine)
    volume.meta["source"] = os.fspath(path)
    volume.meta.setdefault("modality", "")
    return volume


def load_image(path: str | os.PathLike, series_uid: str | None = None) -> MetaTensor:
    """The volume at ``path`` as ``MetaTensor[1, X, Y, Z]`` with RAS ``affine``.

    ``series_uid`` picks one series of a DICOM folder: a SeriesInstanceUID, a SeriesNumber, or
    ``none`` for the series without a UID (``readers.find_series``).
    ``meta`` holds ``spacing`` (mm per axis), ``axcodes`` (e.g. 'LPS'), ``source`` (the path),
    ``format``, ``modality`` (from DICOM, else '') and ``series_uid``, ``series_number``,
    ``series_description`` for DICOM.
    Raises ``InputError`` naming the file and the problem for anything unusable.
    """
    return as_volume(read_volume(path, series_uid), path)


def volume_from_array(array, affine, source: str = "<array>", modality: str = "") -> MetaTensor:
    """An in-memory volume (``[X, Y, Z]`` or ``[1, X, Y, Z]``, voxel axes of the RAS ``affine``,
    as nibabel gives them) as ``load_image`` would return it, with the same checks (3-D, finite)."""
    plain = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    if plain.ndim == 4 and plain.shape[0] == 1:
        plain = plain[0]
    if affine is None:
        raise InputError(source, "an affine (4x4, voxel -> RAS mm) is needed with an array")
    matrix = np.asarray(torch.as_tensor(affine).detach().cpu() if isinstance(affine, torch.Tensor) else affine,
                        dtype=np.float64)
    if matrix.shape != (4, 4) or not np.isfinite(matrix).all() or abs(np.linalg.det(matrix[:3, :3])) < 1e-12:
        raise InputError(source, f"affine must be a finite, invertible 4x4 matrix, got shape {matrix.shape}")
    if plain.dtype.kind not in "biuf":
        raise InputError(source, f"array of dtype {plain.dtype} is not a numeric volume")
    _check_finite(plain, Path(source))
    meta = {MetaKeys.AFFINE: matrix.copy(), MetaKeys.ORIGINAL_AFFINE: matrix.copy(),
            MetaKeys.SPACE: "RAS", "format": "array", "dtype": str(plain.dtype), "modality": modality,
            ImageMetaKey.FILENAME_OR_OBJ: source}
    image = MetaTensor(torch.from_numpy(np.ascontiguousarray(plain, dtype=np.float32)), meta=meta)
    return as_volume(image, source)


def spacing_of(affine: np.ndarray) -> np.ndarray:
    return np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))


def axcodes_of(affine: np.ndarray) -> str:
    return "".join(nib.aff2axcodes(np.asarray(affine)))


def _corners_world(affine: np.ndarray, shape) -> np.ndarray:
    ranges = [(0, n - 1) for n in shape]
    corners = np.array(np.meshgrid(*ranges, indexing="ij")).reshape(3, -1)
    return (np.asarray(affine)[:3, :3] @ corners + np.asarray(affine)[:3, 3:]).T


def match_label_to_image(
    image: MetaTensor, label: MetaTensor, label_path: str | os.PathLike | None = None
) -> MetaTensor:
    """``label`` on ``image``'s voxel grid, or ``InputError`` when the two grids differ.

    A label stored with a different axis order or flips of the same grid (e.g. an LAS NIfTI for an
    LPS DICOM series) is reoriented exactly; any other difference in shape or affine is an error.
    """
    where = label_path if label_path is not None else label.meta.get("source")
    if axcodes_of(label.affine) != axcodes_of(image.affine):
        label = Orientation(axcodes=axcodes_of(image.affine), labels=RAS_LABELS)(label)
    if tuple(label.shape[1:]) != tuple(image.shape[1:]):
        raise InputError(
            where,
            f"label shape {tuple(label.shape[1:])} does not match image shape {tuple(image.shape[1:])}",
        )
    voxel = float(spacing_of(image.affine).min())
    offset = np.abs(
        _corners_world(label.affine.numpy(), label.shape[1:]) - _corners_world(image.affine.numpy(), image.shape[1:])
    ).max()
    if offset > 0.1 * voxel:
        raise InputError(
            where,
            f"label affine does not match the image (grids differ by up to {offset:.3g} mm; "
            f"label axcodes {axcodes_of(label.affine)}, image {axcodes_of(image.affine)})",
        )
    label = MetaTensor(label.as_tensor(), meta=dict(label.meta))
    label.affine = image.affine.clone()
    return label


class LoadVolumed(MapTransform):
    """Dictionary transform around :func:`load_image` for MONAI pipelines and bundles.

    The series of a DICOM folder: the item's ``series_key`` entry when it has one (a datalist of a
    multi-series folder gives one item per series), else ``series_uid``."""

    def __init__(self, keys, series_uid: str | None = None, series_key: str = "series",
                 allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.series_uid = None if series_uid is None else str(series_uid)
        self.series_key = series_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        series = d.get(self.series_key, self.series_uid)
        for key in self.key_iterator(d):
            d[key] = load_image(d[key], series_uid=series)
        return d
