"""Every study in the shared data folder, with its layout, modality, liver label and pairing rules.

``list_studies(root)`` yields uniform :class:`Study` objects; ``Study.load()`` returns the image
(``MetaTensor [1, X, Y, Z]``, CT in HU), a binary uint8 liver mask on exactly the image's grid, and
metadata. The split follows the paper's protocol: train on CT only; chaos_ct_1 (CT) and every MRI
study are test data and never enter training.

Pairing rules (each verified by alignment in tests/test_data_catalogue.py, not assumed):

* CHAOS CT ``Ground/liver_GT_NNN.png`` belongs to ``DICOM_anon/i00NN,0000b.dcm`` (0-based); the
  sample submission ``Segmentation/resultsMMM.png`` is 1-based (MMM = NNN + 1), liver = 63.
  File i0000 is the most cranial slice, so the PNGs are stacked in the DICOM series' sorted order,
  not in file-name order.
* IRCAD ``MASKS_DICOM.zip`` members are DICOM slices with their own ImagePositionPatient; each is
  matched to the CT slice at the same position (``image_0`` is the most caudal).
* TotalSegmentator's ``example_seg_dicom.nii.gz`` is LAS while the DICOM series is LPS: the label is
  reoriented onto the image grid exactly (same voxels, axes flipped).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from monai.data import MetaTensor

from medsemgan.data import btcv
from medsemgan.data.io import load_image, match_label_to_image
from medsemgan.data.readers import read_png_stack, read_zip_dicom_masks, select_series
from medsemgan.errors import InputError

TRAIN, TEST = "train", "test"

# Labeled volumes in the order the protocol spends a "K volumes" budget: the expert IRCAD mask
# first, then model-made TotalSegmentator labels, then the three dcmqi slices.
LABELED_ORDER = ("ircadb_1", "totalseg_ct_dicom", "totalseg_ct", "dcmqi_3slice")

CHAOS_T2_PATIENTS = (2, 15, 21, 22, 31, 32, 36, 37, 38, 39)


@dataclass(frozen=True)
class Study:
    """One image volume with its liver label; paths are absolute."""

    name: str
    source: str
    modality: str  # 'CT' or 'MR'
    liver_value: int
    split: str  # 'train' or 'test'
    image_path: Path
    label_path: Path | None
    label_kind: str = "volume"  # 'volume', 'chaos_png', 'ircad_zip'
    manual_labels: bool = True
    duplicate_of: str | None = None  # identical slices live in another study
    prediction_path: Path | None = None  # an extra segmentation to compare against (CHAOS sample)
    prediction_value: int | None = None
    notes: str = ""
    root: Path | None = None  # the data folder the study was listed from
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def load_image(self) -> MetaTensor:
        image = load_image(self.image_path)
        image.meta["modality"] = self.modality
        return image

    def load_label(self, image: MetaTensor | None = None) -> MetaTensor | None:
        """Binary uint8 liver mask ``[1, X, Y, Z]`` on ``image``'s grid (loaded if not given)."""
        if self.label_path is None:
            return None
        image = self.load_image() if image is None else image
        return LABEL_LOADERS[self.label_kind](self, image, self.label_path, self.liver_value)

    def load_prediction(self, image: MetaTensor | None = None) -> MetaTensor | None:
        """The extra segmentation shipped with the study (CHAOS sample submission), binary uint8."""
        if self.prediction_path is None:
            return None
        image = self.load_image() if image is None else image
        return _chaos_png(self, image, self.prediction_path, self.prediction_value, one_based=True)

    def load(self) -> dict:
        image = self.load_image()
        label = self.load_label(image)
        return {"image": image, "label": label, "meta": self.meta(image)}

    def meta(self, image: MetaTensor) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "modality": self.modality,
            "split": self.split,
            "liver_value": self.liver_value,
            "manual_labels": self.manual_labels,
            "image_path": str(self.image_path),
            "label_path": None if self.label_path is None else str(self.label_path),
            "affine": image.affine.numpy().copy(),
            "spacing": tuple(image.meta["spacing"]),
            "axcodes": image.meta["axcodes"],
            "shape": tuple(image.shape[1:]),
        }


# ----------------------------------------------------------------------------- label loaders


def _binary(array: np.ndarray | torch.Tensor, value: int) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype.kind == "f":  # labels stored as floats (CHAOS T2) are rounded first
        array = np.rint(array)
    return (array == value).view(np.uint8)


def _mask_like(image: MetaTensor, mask: np.ndarray, source: Path) -> MetaTensor:
    if tuple(mask.shape) != tuple(image.shape[1:]):
        raise InputError(source, f"label shape {mask.shape} does not match image shape {tuple(image.shape[1:])}")
    label = MetaTensor(torch.from_numpy(mask)[None], meta={})
    label.affine = image.affine.clone()
    label.meta.update(
        {
            "spatial_shape": np.asarray(mask.shape),
            "original_channel_dim": "no_channel",
            "filename_or_obj": str(source),
            "source": str(source),
            "spacing": image.meta["spacing"],
            "axcodes": image.meta["axcodes"],
        }
    )
    return label


def _volume_label(study: Study, image: MetaTensor, path: Path, value: int) -> MetaTensor:
    label = match_label_to_image(image, load_image(path), path)
    return _mask_like(image, _binary(label[0], value), path)


def _series_numbers(image_path: Path) -> list[int]:
    """DICOM file numbers (``i00NN`` -> NN) in the series' slice order."""
    series = select_series(image_path)
    numbers = []
    for name in series.files:
        match = re.match(r"i(\d+),", os.path.basename(name))
        if match is None:
            raise InputError(name, "expected a CHAOS file name like i0012,0000b.dcm to pair PNG slices")
        numbers.append(int(match.group(1)))
    return numbers


def _chaos_png(study: Study, image: MetaTensor, folder: Path, value: int, one_based: bool = False) -> MetaTensor:
    numbers = _series_numbers(study.image_path)
    if one_based:
        files = [folder / f"results{n + 1:03d}.png" for n in numbers]
    else:
        files = [folder / f"liver_GT_{n:03d}.png" for n in numbers]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise InputError(folder, f"{len(missing)} PNG slices missing for the DICOM series, e.g. {missing[0]}")
    return _mask_like(image, _binary(read_png_stack(files), value), folder)


def _chaos_ground(study: Study, image: MetaTensor, folder: Path, value: int) -> MetaTensor:
    return _chaos_png(study, image, folder, value, one_based=False)


def _ircad_zip(study: Study, image: MetaTensor, zip_path: Path, value: int) -> MetaTensor:
    """Match each mask slice to the CT slice at the same position (within 1 % of the step)."""
    slices = read_zip_dicom_masks(zip_path, study.extra.get("member", "MASKS_DICOM/liver"))
    affine_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ image.affine.numpy()
    origin, step = affine_lps[:3, 3], affine_lps[:3, 2]
    step_len = float(np.linalg.norm(step))
    shape = tuple(image.shape[1:])
    planes: list[np.ndarray | None] = [None] * shape[2]
    filled = np.zeros(shape[2], dtype=bool)
    for position, _cosines, pixels in slices:
        k_float = float((position - origin) @ step) / step_len**2
        k = int(round(k_float))
        off_grid = np.linalg.norm(position - (origin + k * step))
        if not 0 <= k < shape[2] or off_grid > 0.01 * step_len or filled[k]:
            raise InputError(zip_path, f"mask slice at {position.tolist()} matches no unique CT slice")
        if pixels.shape != shape[:2]:
            raise InputError(zip_path, f"mask slice size {pixels.shape} differs from the CT's {shape[:2]}")
        planes[k] = _binary(pixels, value)
        filled[k] = True
    if not filled.all():
        raise InputError(zip_path, f"{int((~filled).sum())} CT slices have no mask slice")
    # stacking along a new first axis copies whole planes; the transpose is a free view
    return _mask_like(image, np.stack(planes, axis=0).transpose(1, 2, 0), zip_path)


LABEL_LOADERS: dict[str, Callable[[Study, MetaTensor, Path, int], MetaTensor]] = {
    "volume": _volume_label,
    "chaos_png": _chaos_ground,
    "ircad_zip": _ircad_zip,
}


# ----------------------------------------------------------------------------- the catalogue


def _known_studies(root: Path) -> list[Study]:
    ct, mr = root / "ct", root / "mr"
    studies = [
        Study(
            "chaos_ct_1", "chaos_ct", "CT", 255, TEST,
            ct / "chaos_ct_1" / "DICOM_anon", ct / "chaos_ct_1" / "Ground", label_kind="chaos_png",
            prediction_path=ct / "chaos_ct_1" / "Segmentation", prediction_value=63,
            notes="CHAOS CT, in-domain test; Segmentation/ is the organisers' sample submission",
        ),
        Study(
            "ircadb_1", "ircadb", "CT", 255, TRAIN,
            ct / "ircadb_1" / "PATIENT_DICOM", ct / "ircadb_1" / "MASKS_DICOM.zip", label_kind="ircad_zip",
            notes="3D-IRCADb-01 patient 1, expert mask; the protocol's labeled volume",
            extra={"member": "MASKS_DICOM/liver"},
        ),
        Study(
            "totalseg_ct", "totalseg_ct", "CT", 5, TRAIN,
            ct / "totalseg" / "example_ct.nii.gz", ct / "totalseg" / "example_seg_fast_force_split.nii.gz",
            manual_labels=False, notes="TotalSegmentator example, model labels",
        ),
        Study(
            "totalseg_ct_sm", "totalseg_ct", "CT", 5, TRAIN,
            ct / "totalseg" / "example_ct_sm.nii.gz", ct / "totalseg" / "example_seg.nii.gz",
            manual_labels=False, duplicate_of="totalseg_ct",
            notes="voxel-identical to slices 82-111 of example_ct.nii.gz: left out of the training pool",
        ),
        Study(
            "totalseg_ct_dicom", "totalseg_ct", "CT", 5, TRAIN,
            ct / "totalseg" / "example_ct_dicom", ct / "totalseg" / "example_seg_dicom.nii.gz",
            manual_labels=False, notes="JPEG-2000 DICOM series; LAS label reoriented onto the LPS series",
        ),
        Study(
            "dcmqi_3slice", "dcmqi", "CT", 1, TRAIN,
            ct / "dcmqi" / "ct-3slice", ct / "dcmqi" / "liver_seg.nrrd",
            notes="three CT slices with an NRRD liver segmentation",
        ),
    ]
    btcv_dir = ct / "btcv"
    studies += [
        Study(
            f"btcv_{i}", "btcv", "CT", btcv.LIVER_VALUE, TEST if i in btcv.BTCV_DEV_PATIENTS else TRAIN,
            btcv_dir / "images" / f"image_SABS_{i}_slice000.png", btcv_dir / "labels" / f"label_{i}.nii.gz",
            notes=(
                "BTCV CT, CT dev test patient (never trained on)" if i in btcv.BTCV_DEV_PATIENTS
                else "BTCV CT, unlabeled training pool (label used only for validation)"
            ),
            extra={"patient": i},
        )
        for i in btcv.BTCV_PATIENTS
    ]
    studies += [
        Study(
            f"chaos_t2_{n}", "chaos_t2", "MR", 1, TEST,
            mr / "chaos_t2" / f"image_{n}.nii.gz", mr / "chaos_t2" / f"label_{n}.nii.gz",
            notes="CHAOS MR T2-SPIR, out-of-domain test",
        )
        for n in CHAOS_T2_PATIENTS
    ]
    studies.append(
        Study(
            "totalseg_mr", "totalseg_mr", "MR", 5, TEST,
            mr / "totalseg" / "example_mr_sm.nii.gz", mr / "totalseg" / "example_seg_mr.nii.gz",
            manual_labels=False, notes="TotalSegmentator MR example, model labels",
        )
    )
    return studies


def list_studies(root: str | os.PathLike) -> list[Study]:
    """Every known study whose image exists under ``root`` (the shared data folder)."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise InputError(root, "data folder does not exist")
    return [replace(s, root=root) for s in _known_studies(root) if s.image_path.exists()]


def get_study(root: str | os.PathLike, name: str) -> Study:
    studies = {s.name: s for s in list_studies(root)}
    if name not in studies:
        raise InputError(root, f"no study named {name!r}; known: {', '.join(studies)}")
    return studies[name]


def find_study(path: str | os.PathLike, root: str | os.PathLike | None) -> Study | None:
    """The catalogued study whose image or label is ``path``, if any (used by ``info``)."""
    if root is None or not Path(root).is_dir():
        return None
    target = Path(path).resolve()
    slice_of = btcv.patient_slice(target)
    for study in list_studies(root):
        if target in (study.image_path, study.label_path, study.prediction_path):
            return study
        if slice_of is not None and study.source == "btcv" and study.extra.get("patient") == slice_of[0] \
                and study.image_path.parent == slice_of[1]:
            return study
    return None


def training_studies(root: str | os.PathLike) -> list[Study]:
    """The CT training pool: every CT study except the test ones and duplicates."""
    return [
        s for s in list_studies(root) if s.split == TRAIN and s.modality == "CT" and s.duplicate_of is None
    ]


def held_out_studies(root: str | os.PathLike, modality: str | None = None) -> list[Study]:
    found = [s for s in list_studies(root) if s.split == TEST]
    return [s for s in found if modality is None or s.modality == modality.upper()]


def ct_dev_studies(root: str | os.PathLike) -> list[Study]:
    """The CT dev test set beside chaos_ct_1: the BTCV dev patients (``btcv.BTCV_DEV_PATIENTS``)."""
    return [s for s in held_out_studies(root, "CT") if s.source == "btcv"]


def labeled_studies(root: str | os.PathLike, volumes: int | None = None) -> list[Study]:
    """Labeled training volumes in protocol order (``LABELED_ORDER``), the first ``volumes``."""
    by_name = {s.name: s for s in training_studies(root)}
    ordered = [by_name[n] for n in LABELED_ORDER if n in by_name]
    return ordered if volumes is None else ordered[:volumes]
