"""``medsemgan info PATH``: one JSON object describing a volume, or a clear error (exit 2).

Reports format, shape, spacing (mm), orientation (axcodes of the voxel axes, as nibabel names
them: DICOM 'LPS', CHAOS T2 'LAS', ...), modality (DICOM Modality tag, else the catalogue entry,
else a guess from the intensities), the DICOM series found in a folder, dtype and intensity range.
With ``--label`` it also checks that a label volume lies on the image's grid.

A DICOM folder holding several series (and no ``--series``) is listed, not read: ``format``
``dicom-folder``, ``series`` with each one's UID (or "no UID"), number, description, modality,
slices, spacing, plane, and whether ``medsemgan segment`` takes it as a CT/MR volume.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from medsemgan.data.io import as_volume, load_image, match_label_to_image, read_volume
from medsemgan.data.readers import list_dicom_series
from medsemgan.modality import looks_like_ct
from medsemgan.paths import data_root

MAX_LISTED_VALUES = 16


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="NIfTI/NRRD/MHA file, DICOM file, or DICOM series folder")
    parser.add_argument("--series", metavar="UID|NUMBER|none", default=None,
                        help="the series to describe when the folder holds several: its "
                             "SeriesInstanceUID, its SeriesNumber, or 'none' for the series without "
                             "a UID (without it, a multi-series folder is listed)")
    parser.add_argument("--label", metavar="PATH", default=None,
                        help="a label volume to check against the image (shape and affine) and summarise")
    parser.add_argument("--indent", type=int, default=2, help="indentation of the JSON keys (0: all on one line)")


def _round(values, digits: int = 4) -> list[float]:
    return [round(float(v), digits) for v in values]


def _guess_modality(array: np.ndarray) -> tuple[str, str]:
    values = array[:: max(1, array.size // 2_000_000)]  # a subsample is enough for a guess
    if np.all(np.mod(values, 1) == 0) and values.min() >= 0 and np.unique(values).size <= 64:
        return "label", "intensities (few non-negative integer values)"
    if looks_like_ct(array):
        return "CT", "intensities (air below -500: Hounsfield units)"
    return "MR", "intensities (no Hounsfield air values)"


def describe(
    path: str | os.PathLike, series_uid: str | None = None, label: str | os.PathLike | None = None
) -> dict:
    """The JSON-ready description of the volume at ``path`` (raises ``InputError`` if unusable).

    With ``label``, adds ``"label"``: its values, after checking it lies on the image's grid.
    """
    path = Path(path)
    if series_uid is None and label is None and path.is_dir():
        listed = list_dicom_series(path)
        if len(listed) > 1:
            return describe_folder(path, listed)
    volume = as_volume(read_volume(path, series_uid), path)
    array = volume[0].numpy()
    meta = volume.meta
    info: dict = {
        "path": str(path),
        "format": meta.get("format", ""),
        "shape": [int(n) for n in volume.shape[1:]],
        "spacing": _round(meta["spacing"]),
        "orientation": meta["axcodes"],
        "origin_ras": _round(volume.affine[:3, 3].tolist(), 3),
        "dtype": meta.get("dtype", str(array.dtype)),
        "intensity_range": [float(array.min()), float(array.max())],
    }
    modality, modality_from = meta.get("modality", ""), "DICOM Modality tag"
    study = _catalogued(path)
    if study is not None:
        info["study"] = study.name
        info["source"] = study.source
        info["split"] = study.split
        liver_ml = _catalogued_liver_ml(study, volume)
        if liver_ml is not None:
            info["liver_volume_ml"] = liver_ml
    if not modality:
        if study is not None:
            is_label = path.resolve() in (study.label_path, study.prediction_path)
            modality = "label" if is_label else study.modality
            modality_from = "catalogue"
        else:
            modality, modality_from = _guess_modality(array)
    info["modality"] = modality
    info["modality_from"] = modality_from
    if path.is_dir():
        info["series"] = [s.summary() for s in list_dicom_series(path)]
        info["series_uid"] = meta.get("series_uid", "")
    else:
        info["series"] = []
    if label is not None:
        info["label"] = describe_label(volume, label)
    return info


def describe_folder(path: Path, listed: list) -> dict:
    """A multi-series DICOM folder: every series from its headers (no volume is read)."""
    return {
        "path": str(path),
        "format": "dicom-folder",
        "n_series": len(listed),
        "series": [s.summary() for s in listed],
        "choose": "medsemgan segment/info --series UID|NUMBER|none (none: the series without a UID)",
    }


def _catalogued_liver_ml(study, volume) -> float | None:
    """Liver volume (mL) of a catalogued study's label, when ``volume`` is its image."""
    if study.label_path is None or Path(volume.meta.get("source", "")).resolve() in (
        study.label_path, study.prediction_path
    ):
        return None
    try:
        label = study.load_label(volume)
    except Exception:  # noqa: BLE001 - the catalogue only adds context; never fail info for it
        return None
    voxel_ml = float(np.prod(volume.meta["spacing"])) / 1000.0
    return round(float(label.sum()) * voxel_ml, 2)


def _catalogued(path: Path):
    from medsemgan.data.catalogue import find_study

    try:
        return find_study(path, data_root())
    except Exception:  # noqa: BLE001 - the catalogue only adds context; never fail info for it
        return None


def describe_label(image, label_path: str | os.PathLike) -> dict:
    label = match_label_to_image(image, load_image(label_path), label_path)
    values, counts = np.unique(np.rint(label[0].numpy()).astype(np.int64), return_counts=True)
    listed = {str(v): int(c) for v, c in zip(values[:MAX_LISTED_VALUES], counts[:MAX_LISTED_VALUES])}
    return {
        "path": str(label_path),
        "matches_image": True,
        "values": listed,
        "distinct_values": int(values.size),
    }


def run(args: argparse.Namespace) -> int:
    info = describe(args.path, args.series, args.label)
    print(format_json(info, args.indent))
    return 0


def format_json(info: dict, indent: int = 2) -> str:
    """One key per line with compact values (shapes and spacings stay on one line); 0: one line."""
    if not indent:
        return json.dumps(info)
    pad = " " * indent
    lines = [f"{pad}{json.dumps(key)}: {json.dumps(value)}" for key, value in info.items()]
    return "{\n" + ",\n".join(lines) + "\n}"
