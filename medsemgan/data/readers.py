"""Readers for the formats the toolkit accepts, in MONAI's ``ImageReader`` shape.

* ``SimpleITKReader``: DICOM series folders (split by SeriesInstanceUID), single DICOM files,
  NRRD/MHA. SimpleITK (GDCM) applies RescaleSlope/Intercept, so CT arrives in HU, and it decodes
  JPEG-2000 transfer syntaxes that plain pydicom cannot.
* ``read_png_stack``: one PNG per slice (CHAOS ``Ground/``), stacked in the order the caller gives.
* ``read_zip_dicom_masks``: IRCAD's ``MASKS_DICOM.zip`` members, read in place (nothing unpacked).

Every reader returns arrays in MONAI's layout ``(X, Y, Z)``: X runs along a DICOM row (column
index), Y down the columns (row index), Z along the slice normal; affines are RAS like nibabel's.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk
from monai.data import ImageReader
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

from medsemgan.errors import InputError

# DICOM tags that SimpleITK exposes as "gggg|eeee" strings.
TAG_MODALITY = "0008|0060"
TAG_SERIES_UID = "0020|000e"
TAG_SERIES_DESCRIPTION = "0008|103e"
TAG_SERIES_NUMBER = "0020|0011"
TAG_IMAGE_TYPE = "0008|0008"
TAG_POSITION = "0020|0032"

SITK_FILE_SUFFIXES = (".dcm", ".dicom", ".ima", ".nrrd", ".nhdr", ".mha", ".mhd")

# SimpleITK works in LPS; MONAI and nibabel in RAS.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True for files with the DICOM preamble magic (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


@dataclass
class DicomSeries:
    """One DICOM series of a folder, described from the headers of its first two files."""

    uid: str  # SeriesInstanceUID; '' when the files carry none (TotalSegmentator's example)
    files: list[str]
    modality: str = ""
    description: str = ""
    number: int | None = None  # SeriesNumber
    image_type: str = ""  # ImageType, e.g. 'ORIGINAL\\PRIMARY\\AXIAL' or '...\\LOCALIZER'
    size: tuple[int, ...] = ()  # columns, rows (and frames of a multi-frame file), as in the header
    spacing: tuple[float, ...] = ()  # mm: along a row, down a column, between slices
    orientation: str = ""  # plane of the slices: axial, coronal, sagittal or oblique

    @property
    def key(self) -> str:
        """What ``--series`` accepts to pick this series: its UID, or ``none`` when it has none."""
        return self.uid or NO_UID_KEY

    @property
    def slices(self) -> int:
        """Slices of the volume: files, or the frames of a single multi-frame file."""
        if len(self.files) == 1 and len(self.size) > 2:
            return int(self.size[2])
        return len(self.files)

    def volume_problem(self) -> str | None:
        """Why this series is no CT/MR image volume (``None`` when it is one): the rule
        ``medsemgan segment`` uses to choose the series of a multi-series folder."""
        if self.modality.upper() not in ("CT", "MR"):
            return f"modality {self.modality or 'unknown'!r} is not CT or MR"
        if any(word in self.image_type.upper() for word in LOCALIZER_WORDS):
            return f"a localizer (ImageType {self.image_type})"
        if self.slices < MIN_VOLUME_SLICES:
            return f"{self.slices} slice{'s' if self.slices != 1 else ''} (a volume needs {MIN_VOLUME_SLICES})"
        return None

    def label(self) -> str:
        """One line naming the series for messages, e.g. ``#2 'CT Body' CT 20 slices UID 1.2.3``."""
        number = f"#{self.number}" if self.number is not None else "no number"
        description = f" {self.description!r}" if self.description else ""
        uid = f"UID {self.uid}" if self.uid else f"no UID (--series {NO_UID_KEY})"
        return f"{number}{description} {self.modality or '?'} {self.slices} slices {uid}"

    def summary(self) -> dict[str, Any]:
        return {
            "uid": self.uid,  # '' for "no UID"
            "select": self.key,  # what --series takes: the UID, or 'none'
            "number": self.number,
            "description": self.description,
            "modality": self.modality,
            "slices": self.slices,
            "size": list(self.size[:2]) + [self.slices] if self.size else [],
            "spacing": [round(v, 4) for v in self.spacing],
            "orientation": self.orientation,
            "image_type": self.image_type,
            "volume": self.volume_problem() is None,
        }


# The words of ImageType that mark a scout / topogram, not an image volume.
LOCALIZER_WORDS = ("LOCALIZER", "SCOUT", "TOPOGRAM")
MIN_VOLUME_SLICES = 3
NO_UID_KEY = "none"
NO_UID_WORDS = ("none", "no uid", "no-uid", "nouid", "")


def _header_info(filename: str, tags: Sequence[str]) -> tuple[dict[str, str], sitk.ImageFileReader | None]:
    """The ``tags`` present in a file's header, and the reader holding its geometry (or None)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(filename)
    reader.LoadPrivateTagsOff()
    try:
        _quiet(reader.ReadImageInformation)
    except RuntimeError:
        return {}, None
    return {tag: reader.GetMetaData(tag).strip() for tag in tags if reader.HasMetaDataKey(tag)}, reader


def _header_tags(filename: str, tags: Sequence[str]) -> dict[str, str]:
    return _header_info(filename, tags)[0]


def _plane(normal: np.ndarray) -> str:
    axis = int(np.argmax(np.abs(normal)))
    if abs(normal[axis]) < 0.8:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def _describe_series(uid: str, files: list[str]) -> DicomSeries:
    tags, reader = _header_info(files[0], (TAG_MODALITY, TAG_SERIES_DESCRIPTION, TAG_SERIES_NUMBER,
                                           TAG_IMAGE_TYPE, TAG_POSITION))
    series = DicomSeries(uid=uid, files=files, modality=tags.get(TAG_MODALITY, ""),
                         description=tags.get(TAG_SERIES_DESCRIPTION, ""),
                         image_type=tags.get(TAG_IMAGE_TYPE, ""))
    try:
        series.number = int(float(tags[TAG_SERIES_NUMBER]))
    except (KeyError, ValueError):
        series.number = None
    if reader is None:
        return series
    size = tuple(int(n) for n in reader.GetSize())
    spacing = [float(v) for v in reader.GetSpacing()]
    dim = reader.GetDimension()
    direction = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(dim, dim)
    normal = direction[:, 2] if dim == 3 else np.array([0.0, 0.0, 1.0])
    series.size = size if len(size) > 2 and size[2] > 1 else size[:2]
    series.orientation = _plane(normal)
    if len(files) > 1 and TAG_POSITION in tags:  # between slices: from the first two positions
        second = _header_tags(files[1], (TAG_POSITION,))
        try:
            first_pos = np.array([float(v) for v in tags[TAG_POSITION].split("\\")])
            second_pos = np.array([float(v) for v in second[TAG_POSITION].split("\\")])
            spacing = spacing[:2] + [float(abs((second_pos - first_pos) @ normal))]
        except (KeyError, ValueError):
            pass
    series.spacing = tuple(spacing[:3])
    return series


def list_dicom_series(folder: str | os.PathLike) -> list[DicomSeries]:
    """Every DICOM series directly inside ``folder``, split by SeriesInstanceUID.

    GDCM sorts each series' files by position along the slice normal, so ``files[0]`` is the first
    slice of the volume SimpleITK builds. Files without a SeriesInstanceUID form one series with
    ``uid == ''`` (GDCM's file list for '' is "the first series", so it is checked to hold none of
    the other series' files).
    """
    folder = os.fspath(folder)
    series_reader = sitk.ImageSeriesReader()
    # GDCM warns on stderr for folders without DICOM; the caller reports that case itself
    uids = _quiet(lambda: series_reader.GetGDCMSeriesIDs(folder))
    listed = {uid: list(_quiet(lambda: series_reader.GetGDCMSeriesFileNames(folder, uid))) for uid in uids}
    if "" in listed:
        others = {name for uid, names in listed.items() if uid for name in names}
        listed[""] = [name for name in listed[""] if name not in others]
    return [_describe_series(uid, files) for uid, files in listed.items() if files]


def find_series(series: Sequence[DicomSeries], choice: str) -> list[DicomSeries]:
    """The series that ``choice`` names: a SeriesInstanceUID, ``none`` (the series without a UID),
    or a SeriesNumber; empty when none does."""
    choice = str(choice).strip()
    by_uid = [s for s in series if s.uid and s.uid == choice]
    if by_uid:
        return by_uid
    if choice.lower() in NO_UID_WORDS:
        return [s for s in series if not s.uid]
    if re.fullmatch(r"[+-]?\d+", choice):
        return [s for s in series if s.number == int(choice)]
    return []


def series_listing(series: Sequence[DicomSeries]) -> str:
    return "; ".join(s.label() for s in series)


def select_series(folder: str | os.PathLike, series_uid: str | None = None) -> DicomSeries:
    """The one series to read from ``folder``: the one ``series_uid`` names (a UID, a
    SeriesNumber, or ``none`` for the series without a UID: ``find_series``), or the only one;
    an error listing them when the choice is missing or ambiguous."""
    series = list_dicom_series(folder)
    if not series:
        raise InputError(folder, "no DICOM series found in this folder")
    if series_uid is not None:
        chosen = find_series(series, series_uid)
        if len(chosen) == 1:
            return chosen[0]
        if chosen:
            raise InputError(folder, f"series {series_uid!r} is ambiguous ({len(chosen)} series have that "
                                     f"number); pick one by UID: {series_listing(chosen)}")
        raise InputError(folder, f"series {series_uid!r} not found; the folder holds: {series_listing(series)}")
    if len(series) > 1:
        raise InputError(
            folder,
            f"holds {len(series)} DICOM series, choose one with --series UID|NUMBER|none: "
            f"{series_listing(series)}",
        )
    return series[0]


def sitk_affine_ras(image: sitk.Image) -> np.ndarray:
    """The 4x4 RAS affine of a 3-D SimpleITK image (index (x, y, z) -> world mm)."""
    dim = image.GetDimension()
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dim, dim)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    affine = np.eye(4)
    affine[:dim, :dim] = direction * spacing[None, :]
    affine[:dim, 3] = origin
    return LPS_TO_RAS @ affine


@dataclass
class SitkVolume:
    """What ``SimpleITKReader.read`` returns: the image plus where it came from."""

    image: sitk.Image
    source: str
    format: str
    series: DicomSeries | None = None
    tags: dict[str, str] = field(default_factory=dict)


class SimpleITKReader(ImageReader):
    """DICOM series folders, single DICOM files and NRRD/MHA through SimpleITK.

    A folder is read as one DICOM series: several series in it raise ``InputError`` listing them
    unless ``series_uid`` picks one (a UID, a SeriesNumber or ``none``: ``find_series``); MONAI's
    PydicomReader would stack them silently.
    """

    def __init__(self, series_uid: str | None = None):
        super().__init__()
        self.series_uid = series_uid

    def verify_suffix(self, filename: Sequence[os.PathLike] | os.PathLike) -> bool:
        for name in ensure_tuple(filename):
            path = Path(name)
            if path.is_dir():
                continue
            if path.name.lower().endswith(SITK_FILE_SUFFIXES) or is_dicom_file(path):
                continue
            return False
        return True

    def read(self, data: Sequence[os.PathLike] | os.PathLike, **kwargs) -> SitkVolume | list[SitkVolume]:
        volumes = [self._read_one(os.fspath(name)) for name in ensure_tuple(data)]
        return volumes if len(volumes) > 1 else volumes[0]

    def _read_one(self, path: str) -> SitkVolume:
        if os.path.isdir(path):
            series = select_series(path, self.series_uid)
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(series.files)
            reader.MetaDataDictionaryArrayUpdateOn()
            image = _execute(lambda: _quiet(reader.Execute), path)
            _check_even_spacing(reader, image, series, path)
            tags = {TAG_MODALITY: series.modality, TAG_SERIES_UID: series.uid,
                    TAG_SERIES_NUMBER: "" if series.number is None else str(series.number),
                    TAG_SERIES_DESCRIPTION: series.description}
            return SitkVolume(image, path, "dicom-series", series=series, tags=tags)
        image = _execute(lambda: sitk.ReadImage(path), path)
        is_dicom = is_dicom_file(path)
        tags = {}
        if is_dicom:
            tags = {k: image.GetMetaData(k).strip() for k in (TAG_MODALITY, TAG_SERIES_UID)
                    if image.HasMetaDataKey(k)}
        fmt = "dicom" if is_dicom else Path(path).suffix.lower().lstrip(".")
        return SitkVolume(image, path, fmt, tags=tags)

    def get_data(self, img: SitkVolume | list[SitkVolume]) -> tuple[np.ndarray, dict]:
        arrays, meta = [], {}
        for volume in ensure_tuple(img):
            array, header = sitk_to_monai(volume)
            arrays.append(array)
            if not meta:
                meta = header
        data = arrays[0] if len(arrays) == 1 else np.stack(arrays, axis=0)
        if len(arrays) > 1:
            meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = 0
        return data, meta


def sitk_to_monai(volume: SitkVolume) -> tuple[np.ndarray, dict]:
    """(X, Y, Z[, C]) array and a MONAI meta dict for a SimpleITK image."""
    image = volume.image
    array = sitk.GetArrayFromImage(image)  # (Z, Y, X) or (Z, Y, X, C)
    components = image.GetNumberOfComponentsPerPixel()
    spatial_ndim = image.GetDimension()
    spatial_axes = tuple(range(spatial_ndim))[::-1]
    array = np.transpose(array, spatial_axes + ((spatial_ndim,) if components > 1 else ()))
    if spatial_ndim == 3:
        affine = sitk_affine_ras(image)
    else:  # 2-D files have no slice geometry; load_image rejects them, info still describes them
        affine = np.eye(4)
        affine[:spatial_ndim, :spatial_ndim] = np.diag(image.GetSpacing())
    meta = {
        MetaKeys.AFFINE: affine.copy(),
        MetaKeys.ORIGINAL_AFFINE: affine.copy(),
        MetaKeys.SPATIAL_SHAPE: np.asarray(array.shape[:spatial_ndim]),
        MetaKeys.SPACE: SpaceKeys.RAS,
        MetaKeys.ORIGINAL_CHANNEL_DIM: -1 if components > 1 else float("nan"),
        "format": volume.format,
        "modality": volume.tags.get(TAG_MODALITY, ""),
        "series_uid": volume.tags.get(TAG_SERIES_UID, ""),
        "series_number": volume.tags.get(TAG_SERIES_NUMBER, ""),
        "series_description": volume.tags.get(TAG_SERIES_DESCRIPTION, ""),
    }
    return array, meta


def _check_even_spacing(reader: sitk.ImageSeriesReader, image: sitk.Image, series: DicomSeries, path: str) -> None:
    """Refuse series with gaps or repeats: ITK would space them by the average step, misplacing
    slices. (ITK's own flag fires on float jitter of 1e-12 mm, e.g. in IRCAD, so it is not used.)"""
    if len(series.files) < 3:
        return
    normal = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)[:, 2]
    try:
        positions = np.array(
            [[float(v) for v in reader.GetMetaData(i, "0020|0032").split("\\")] for i in range(len(series.files))]
        )
    except (RuntimeError, ValueError):
        return  # no per-slice positions to check (e.g. multi-frame); ITK's geometry stands
    steps = np.diff(positions @ normal)
    typical = float(np.median(steps))
    worst = int(np.argmax(np.abs(steps - typical)))
    if typical <= 0 or abs(steps[worst] - typical) > max(0.05 * typical, 0.01):
        raise InputError(
            path,
            f"slices of series {series.uid!r} are not evenly spaced: {steps[worst]:.3g} mm between "
            f"{os.path.basename(series.files[worst])} and {os.path.basename(series.files[worst + 1])}, "
            f"{typical:.3g} mm elsewhere (missing or duplicated slices?)",
        )


def _quiet(call):
    """Run a SimpleITK call with ITK's own stderr warnings off (problems are reported by us)."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        return call()
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def _execute(call, path: str) -> sitk.Image:
    try:
        return call()
    except RuntimeError as err:
        raise InputError(path, f"SimpleITK cannot read it: {diagnose_dicom(path) or _first_line(err)}")


def _first_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    # ITK messages start with the source location; the description is the informative part.
    for line in lines:
        if line.lower().startswith("description:"):
            return line.split(":", 1)[1].strip()
    return lines[-1] if lines else type(err).__name__


def diagnose_dicom(path: str) -> str | None:
    """A precise reason for the common DICOM failures, e.g. a file without pixel data."""
    import pydicom

    files = [path]
    if os.path.isdir(path):
        files = sorted(str(p) for p in Path(path).iterdir() if p.is_file() and is_dicom_file(p))
    for name in files:
        try:
            dataset = pydicom.dcmread(name, force=True)
        except Exception:  # noqa: BLE001 - only a diagnosis; the caller already has an error
            continue
        if "PixelData" not in dataset and "FloatPixelData" not in dataset:
            return f"DICOM file {name} has no pixel data (PixelData element missing)"
    return None


def read_png_stack(files: Sequence[str | os.PathLike]) -> np.ndarray:
    """Stack single-channel PNG slices into an ``(X, Y, Z)`` array, slice ``k`` = ``files[k]``.

    PNG rows/columns are transposed to match the DICOM arrays SimpleITK gives (X = column index).
    """
    from PIL import Image

    slices = []
    for name in files:
        try:
            with Image.open(name) as png:
                array = np.asarray(png)
        except (OSError, ValueError) as err:
            raise InputError(name, f"cannot read PNG: {err}") from err
        if array.ndim == 3:  # grey stored as RGB(A): all channels equal for label PNGs
            if not np.all(array[..., :1] == array[..., : min(3, array.shape[-1])]):
                raise InputError(name, f"label PNG is colour (shape {array.shape}), expected one channel")
            array = array[..., 0]
        if array.dtype == bool:
            array = array.astype(np.uint8) * 255
        slices.append(array.T)
    shapes = {s.shape for s in slices}
    if len(shapes) != 1:
        raise InputError(os.path.dirname(os.fspath(files[0])), f"PNG slices differ in size: {sorted(shapes)}")
    return np.stack(slices, axis=-1)


def read_zip_dicom_masks(zip_path: str | os.PathLike, member_dir: str) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Read every DICOM slice under ``member_dir`` of a zip file in place.

    Returns ``(position, row_cosines_and_column_cosines, pixels (X, Y))`` per slice in the order
    the zip lists them; the caller sorts and matches them to its image series by position.
    """
    import pydicom

    zip_path = os.fspath(zip_path)
    prefix = member_dir.rstrip("/") + "/"
    found = []
    try:
        with zipfile.ZipFile(zip_path) as archive:
            names = [n for n in archive.namelist() if n.startswith(prefix) and not n.endswith("/")]
            for name in names:
                dataset = pydicom.dcmread(io.BytesIO(archive.read(name)))
                position = np.asarray(dataset.ImagePositionPatient, dtype=np.float64)
                cosines = np.asarray(dataset.ImageOrientationPatient, dtype=np.float64)
                found.append((position, cosines, dataset.pixel_array.T))
    except (zipfile.BadZipFile, OSError) as err:
        raise InputError(zip_path, f"cannot read zip archive: {err}") from err
    if not found:
        raise InputError(zip_path, f"no DICOM members under {prefix!r}")
    return found
