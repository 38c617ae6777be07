"""Your own data: a Medical Segmentation Decathlon / nnU-Net folder or a MONAI datalist JSON, as
the same :class:`~medsemgan.data.catalogue.Study` objects the built-in catalogue gives.

Accepted (``--data PATH`` of ``train gan|encoder|unet``, ``evaluate``, ``report``; the bundle's
``dataset_dir``):

* **MSD folder**: ``dataset.json`` with a ``training`` list of ``{"image": "./imagesTr/x.nii.gz",
  "label": "./labelsTr/x.nii.gz"}`` (and a ``test`` list of image paths); ``modality`` ``{"0": "CT"}``.
* **nnU-Net v2 folder**: ``dataset.json`` with ``channel_names`` ``{"0": "CT"}`` and ``file_ending``;
  ``imagesTr/<case>_0000<ending>`` paired with ``labelsTr/<case><ending>``, ``imagesTs/`` unlabeled.
* **a folder with ``imagesTr/`` and ``labelsTr/``** and no ``dataset.json``: paired by case name
  (an nnU-Net ``_0000`` channel suffix is ignored).
* **MONAI datalist JSON** (``monai.data.load_decathlon_datalist``): ``training``, ``validation``,
  ``testing``/``test`` lists of ``{"image", "label"}`` (label optional; a bare string is an
  image), paths relative to the JSON's folder (or ``base_dir`` in the JSON) or absolute; an entry
  or the file may give ``modality``.

The liver is the voxels equal to ``--label`` (default 1; several values ``1,2`` e.g. liver + tumour
in MSD Task03). Modality comes from the file (``CT``; ``MR``, ``MRI``, ``T1``, ``T2``... are MR),
CT when it says nothing. Entries of ``training`` are the training pool (``split='train'``), the
others test data. A missing file or a malformed entry is an :class:`InputError` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable

import numpy as np

from medsemgan.data.catalogue import TEST, TRAIN, Study
from medsemgan.errors import InputError

log = logging.getLogger(__name__)

DATASET_JSON = "dataset.json"
IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
SPLITS = {"training": TRAIN, "validation": TEST, "testing": TEST, "test": TEST}
MR_WORDS = re.compile(r"^(mr|mri|t1|t2|t1w|t2w|t1c|t1ce|t1gd|flair|adc|dwi|pd|spir|dixon)", re.I)
CHANNEL_SUFFIX = re.compile(r"_0000$")
CACHE_VERSION = 1
# Command-line help shared by every verb that takes --data/--label.
DATA_HELP = ("training/test data (overrides data.root): the shared data folder, or your own dataset: an "
             "MSD/nnU-Net folder (imagesTr/, labelsTr/, dataset.json) or a MONAI datalist JSON (docs/data.md)")
LABEL_HELP = "own data: the liver's value in the label files (default 1; several as 1,2)"


class DatalistStudy(Study):
    """A study of your own data: its label may mark the liver with several values."""

    @property
    def liver_values(self) -> tuple[int, ...]:
        return tuple(self.extra.get("liver_values") or (self.liver_value,))

    def load_label(self, image=None):
        from medsemgan.data.catalogue import _mask_like
        from medsemgan.data.io import load_image, match_label_to_image

        if self.label_path is None:
            return None
        image = self.load_image() if image is None else image
        label = match_label_to_image(image, load_image(self.label_path), self.label_path)
        array = np.asarray(label[0])
        if array.dtype.kind == "f":
            array = np.rint(array)
        return _mask_like(image, np.isin(array, self.liver_values).astype(np.uint8), self.label_path)


@dataclass
class OwnDataset:
    """Every study of one dataset, in the file's order."""

    source: Path  # the folder or the JSON file
    kind: str  # 'msd', 'nnunet', 'folders', 'datalist'
    studies: list[Study]
    liver_values: tuple[int, ...]

    def training(self) -> list[Study]:
        return [s for s in self.studies if s.split == TRAIN]

    def labeled(self, studies: Iterable[Study] | None = None) -> list[Study]:
        return [s for s in (self.studies if studies is None else studies) if s.label_path is not None]

    def test_cases(self) -> list[Study]:
        """Labeled studies to score: the labeled test entries, else every labeled study (an MSD
        folder labels only ``training``; used as a test set it is scored whole)."""
        held_out = self.labeled([s for s in self.studies if s.split == TEST])
        return held_out or self.labeled()

    def describe(self) -> dict:
        return {"source": str(self.source), "kind": self.kind, "liver_values": list(self.liver_values),
                "studies": len(self.studies), "training": len(self.training()),
                "labeled": len(self.labeled()), "modalities": sorted({s.modality for s in self.studies})}


# ----------------------------------------------------------------------------- detection and labels


def is_dataset(path: str | os.PathLike | None) -> bool:
    """True for a datalist ``.json`` file or a folder with ``dataset.json`` or ``imagesTr/``
    (cheap: nothing is read). The shared data folder of the catalogue is neither."""
    if path is None:
        return False
    path = Path(path)
    if path.is_file():
        return path.suffix.lower() == ".json"
    return path.is_dir() and ((path / DATASET_JSON).is_file() or (path / "imagesTr").is_dir())


def parse_label(value, source: str | os.PathLike | None = None) -> tuple[int, ...]:
    """``1``, ``"1"``, ``"1,2"`` or ``[1, 2]`` -> ``(1, 2)``; None -> ``(1,)``."""
    if value is None:
        return (1,)
    items = value if isinstance(value, (list, tuple)) else str(value).replace(" ", "").split(",")
    try:
        values = tuple(int(v) for v in items if str(v) != "")
    except (TypeError, ValueError):
        raise InputError(source, f"label {value!r}: expected an integer or integers separated by commas, e.g. 1 or 1,2") from None
    if not values or any(v <= 0 for v in values):
        raise InputError(source, f"label {value!r}: the liver's value(s) must be positive integers (0 is background)")
    return values


def _modality(value, where: Path) -> str:
    text = str(value).strip()
    if text.upper() == "CT":
        return "CT"
    if MR_WORDS.match(text):
        return "MR"
    raise InputError(where, f"modality {value!r} is neither CT nor an MR sequence (CT, MR, MRI, T1, T2, ...)")


def _file_modality(raw: dict, where: Path) -> str | None:
    channels = raw.get("modality") or raw.get("channel_names")
    if isinstance(channels, str):
        return _modality(channels, where)
    if isinstance(channels, dict) and channels:
        if len(channels) > 1:
            raise InputError(where, f"{len(channels)} input channels {dict(channels)}: medsemgan reads one image "
                                    "per case (CT or MR)")
        return _modality(next(iter(channels.values())), where)
    return None


def _case_name(path: Path) -> str:
    name = path.name
    for ext in IMAGE_EXTENSIONS:
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    return CHANNEL_SUFFIX.sub("", name)


def _check_labels(raw: dict, values: tuple[int, ...], where: Path) -> None:
    """When dataset.json names its labels, the chosen liver value(s) must be among them."""
    labels = raw.get("labels")
    if not isinstance(labels, dict) or not labels:
        return
    known: dict[int, str] = {}
    for key, val in labels.items():  # MSD: {"1": "liver"}; nnU-Net v2: {"liver": 1}
        number, name = (key, val) if str(key).lstrip("-").isdigit() else (val, key)
        if isinstance(number, (int, str)) and str(number).lstrip("-").isdigit():
            known[int(number)] = str(name)
    missing = [v for v in values if v not in known]
    if known and missing:
        raise InputError(where, f"label value(s) {missing} not in its labels {known}: pass --label N for the liver")


# ----------------------------------------------------------------------------- readers


def _study(name: str, image: Path, label: Path | None, split: str, modality: str, values: tuple[int, ...],
           root: Path, where: Path) -> Study:
    if not image.exists():
        raise InputError(image, f"image listed in {where} does not exist")
    if label is not None and not label.exists():
        raise InputError(label, f"label listed in {where} does not exist")
    return DatalistStudy(
        name=name, source=f"datalist:{root.name}", modality=modality, liver_value=values[0], split=split,
        image_path=image.resolve(), label_path=None if label is None else label.resolve(),
        notes=f"from {where}", root=root, extra={"liver_values": values},
    )


def _resolve(text, base: Path, where: Path) -> Path:
    if isinstance(text, (list, tuple)):
        raise InputError(where, f"entry {text!r} lists several channels: medsemgan reads one image per case")
    if not isinstance(text, str) or not text:
        raise InputError(where, f"expected a file path, got {text!r}")
    path = Path(os.path.expanduser(text))
    return path if path.is_absolute() else base / path


def _from_lists(raw: dict, base: Path, where: Path, values: tuple[int, ...], default_modality: str) -> list[Study]:
    studies = []
    for key, split in SPLITS.items():
        entries = raw.get(key)
        if entries is None:
            continue
        if not isinstance(entries, list):
            raise InputError(where, f"'{key}' must be a list of entries")
        for entry in entries:
            entry = {"image": entry} if isinstance(entry, str) else entry
            if not isinstance(entry, dict) or "image" not in entry:
                raise InputError(where, f"every '{key}' entry needs an 'image': {entry!r}")
            image = _resolve(entry["image"], base, where)
            label = _resolve(entry["label"], base, where) if entry.get("label") else None
            modality = _modality(entry["modality"], where) if entry.get("modality") else default_modality
            name = str(entry.get("name") or _case_name(label or image))
            studies.append(_study(name, image, label, split, modality, values, base, where))
    return studies


def _files(folder: Path, ending: str | None = None) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".")
                  and (p.name.lower().endswith(ending or IMAGE_EXTENSIONS) if ending else
                       p.is_dir() or p.name.lower().endswith(IMAGE_EXTENSIONS)))


def _from_folders(root: Path, values: tuple[int, ...], modality: str, ending: str | None, where: Path) -> list[Study]:
    labels = {_case_name(p): p for p in _files(root / "labelsTr", ending)}
    studies = []
    for split, folder in ((TRAIN, root / "imagesTr"), (TEST, root / "imagesTs")):
        for image in _files(folder, ending):
            stem = image.name if image.is_dir() else image.name.split(".")[0]
            if re.search(r"_\d{4}$", stem) and not stem.endswith("_0000"):
                continue  # nnU-Net channels other than the first
            name = _case_name(image)
            label = labels.pop(name, None) if split == TRAIN else None
            studies.append(_study(name, image, label, split, modality, values, root, where))
    for name, label in labels.items():
        raise InputError(label, f"label without an image {name}_0000 / {name} in {root / 'imagesTr'}")
    return studies


def read_dataset(path: str | os.PathLike, label=None) -> OwnDataset:
    """Every study of an MSD / nnU-Net folder or a MONAI datalist JSON (see the module docstring)."""
    path = Path(path).expanduser()
    values = parse_label(label, path)
    if not path.exists():
        raise InputError(path, "dataset does not exist (an MSD/nnU-Net folder or a datalist .json)")
    json_file = path if path.is_file() else path / DATASET_JSON
    raw: dict = {}
    if json_file.is_file():
        try:
            raw = json.loads(json_file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InputError(json_file, f"not a readable JSON file: {err}") from None
        if not isinstance(raw, dict):
            raise InputError(json_file, "expected a JSON object with 'training' (and 'test'/'validation') lists")
        _check_labels(raw, values, json_file)
    elif path.is_file():
        raise InputError(path, "expected a datalist .json file or a dataset folder")
    modality = _file_modality(raw, json_file) or "CT"
    if path.is_file():
        base = Path(raw["base_dir"]).expanduser() if raw.get("base_dir") else path.parent
        kind, studies = "datalist", _from_lists(raw, base.resolve(), path, values, modality)
    elif any(key in raw for key in SPLITS):
        kind, studies = "msd", _from_lists(raw, path.resolve(), json_file, values, modality)
    elif (path / "imagesTr").is_dir():
        kind = "nnunet" if raw else "folders"
        studies = _from_folders(path.resolve(), values, modality, raw.get("file_ending"), json_file if raw else path)
    else:
        raise InputError(json_file if raw else path, "neither 'training'/'test' lists nor an imagesTr/ folder: "
                                                     "not an MSD/nnU-Net dataset or a MONAI datalist")
    if not studies:
        raise InputError(path, "the dataset lists no studies")
    names: dict[str, int] = {}
    unique = []
    for study in studies:  # case names must be unique (outputs are named by them)
        names[study.name] = names.get(study.name, 0) + 1
        unique.append(study if names[study.name] == 1 else replace(study, name=f"{study.name}_{names[study.name]}"))
    dataset = OwnDataset(path, kind, unique, values)
    log.info("dataset %s", json.dumps(dataset.describe()))
    return dataset


# ----------------------------------------------------------------------------- training tensors


def _cache_key(studies: list[Study], resolution: int, budget_key: str, values: tuple[int, ...]) -> str:
    from medsemgan.data.slices import CACHE_VERSION as SLICES_VERSION, MIN_BODY_FRACTION

    files = []
    for study in studies:
        for path in (study.image_path, study.label_path):
            if path is not None:
                stat = path.stat()
                files.append([study.name, str(path), stat.st_size, stat.st_mtime_ns])
    settings = {"version": [CACHE_VERSION, SLICES_VERSION], "resolution": int(resolution), "budget": budget_key,
                "labels": list(values), "min_body_fraction": MIN_BODY_FRACTION, "files": files}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def training_tensors(path: str | os.PathLike, resolution: int, labeled_budget="all",
                     cache_dir: str | os.PathLike | None = None, label=None) -> dict:
    """Own data as training tensors, with the contract of ``medsemgan.data.slices.training_tensors``.

    Unlabeled pool: every body slice of every ``training`` study. Labeled: the budget
    (``LabeledBudget``) spent on the labeled training studies in file order, as the catalogue
    spends it on ``LABELED_ORDER`` (N slices of the first one, or ``volumes:K``).
    """
    import torch

    from medsemgan.data.slices import LabeledBudget, assemble_training_set, preprocess_pool
    from medsemgan.io_utils import atomic_path

    dataset = read_dataset(path, label)
    studies = dataset.training()
    order = [s.name for s in dataset.labeled(studies)]
    if not studies:
        raise InputError(path, "no training entries: the GAN and the U-Net train on 'training' studies")
    if not order:
        raise InputError(path, "no training entry has a label: semi-supervised training needs at least one")
    budget = LabeledBudget.parse(labeled_budget)
    cache_file = None
    if cache_dir is not None:
        key = _cache_key(studies, resolution, budget.key(), dataset.liver_values)
        cache_file = Path(cache_dir) / f"datalist_tensors_{int(resolution)}_{key}.pt"
        if cache_file.is_file():
            try:
                return torch.load(cache_file, weights_only=True)
            except Exception as err:  # noqa: BLE001 - a broken cache is rebuilt
                log.warning("ignoring unreadable cache %s: %s", cache_file, err)
    try:
        training_set = assemble_training_set(preprocess_pool(studies, resolution), budget, labeled_order=order)
    except ValueError as err:
        raise InputError(path, str(err)) from None
    log.info("training set from %s: %s", path, json.dumps(training_set.summary()))
    tensors = training_set.tensors()
    if cache_file is not None:
        with atomic_path(cache_file) as tmp:
            torch.save(tensors, tmp)
    return tensors


# ----------------------------------------------------------------------------- report and bundle


def report_test_sets(path: str | os.PathLike, label=None) -> list[dict]:
    """``test_sets:`` entries of the report configuration for own data: one per modality of its
    labeled test cases (:meth:`OwnDataset.test_cases`), read again by ``report_config``."""
    dataset = read_dataset(path, label)
    cases = dataset.test_cases()
    if not cases:
        raise InputError(path, "no labeled case to score in the report")
    title = dataset.source.stem if dataset.source.is_file() else dataset.source.name
    sets = []
    for modality in sorted({s.modality for s in cases}):
        count = sum(s.modality == modality for s in cases)
        sets.append({"key": f"{title}_{modality.lower()}", "title": f"{title}, {modality} ({count} cases)",
                     "modality": modality, "datalist": str(dataset.source.resolve()),
                     "label": ",".join(map(str, dataset.liver_values))})
    return sets


def bundle_items(path: str | os.PathLike, labeled: bool, label=None) -> list[dict]:
    """Items of the bundle's ``inference.json`` (``labeled=False``: the test images, else every
    image) or ``evaluate.json`` (``labeled=True``: the labeled test cases) for own data."""
    dataset = read_dataset(path, label)
    if labeled:
        chosen = dataset.test_cases()
    else:
        chosen = [s for s in dataset.studies if s.split == TEST] or dataset.studies
    if not chosen:
        raise InputError(path, "no labeled case to evaluate" if labeled else "no image to segment")
    items = []
    for s in chosen:
        item = {"image": str(s.image_path), "image_path": str(s.image_path), "case": s.name}
        if labeled:
            item.update(label=str(s.label_path), label_path=str(s.label_path))
        items.append(item)
    return items
