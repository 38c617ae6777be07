"""3-D studies -> 2-D slices, for training (random or exhaustive) and inference (every slice).

All slices are taken along the last axis of preprocessed volumes ``[1, S, S, Z]`` (canonical
orientation, intensities in [-1, 1]; see ``medsemgan.data.transforms``).

* ``volume_dataset``: preprocessed volumes of catalogued studies, optionally cached on disk with
  MONAI's ``PersistentDataset(track_meta=True)`` so affines and the inversion record survive.
* ``random_slice_dataset`` / ``all_slice_dataset``: MONAI ``PatchDataset`` / ``GridPatchDataset``
  over those volumes, yielding ``{"image": [1, S, S], "label": [1, S, S]}`` per slice.
* ``volume_to_slices`` / ``slices_to_volume``: every slice of one volume as a batch and back, the
  volume keeping its metadata so ``Invertd`` can return predictions to the input geometry.
* ``training_tensors``: the protocol's CT training set as in-memory tensors, cached on disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Callable, Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.data import Dataset, GridPatchDataset, MetaTensor, PatchDataset, PatchIterd, PersistentDataset
from monai.data.utils import json_hashing
from monai.transforms import (
    Compose,
    MapTransform,
    RandSpatialCropSamplesd,
    SqueezeDimd,
)
from monai.transforms.utils import reset_ops_id

from medsemgan.data.catalogue import LABELED_ORDER, Study, get_study, training_studies
from medsemgan.data.transforms import BODY_THRESHOLD, preprocess
from medsemgan.fingerprint import code_fingerprint, content_hashes
from medsemgan.io_utils import atomic_path

log = logging.getLogger(__name__)

# Bump when the cache's layout changes. Changes of the code that computes the cached values (the
# parts below: reading, preprocessing, slice selection) and of the studies' bytes change the key
# by themselves (medsemgan.fingerprint).
CACHE_VERSION = 2
CODE_PARTS = ("data", "io_utils.py", "fingerprint.py")
# A slice whose body (pixels above the CT body threshold) covers less than this fraction of the
# crop is air or table: useless for training.
MIN_BODY_FRACTION = 0.05


# ----------------------------------------------------------------------------- volumes


class PreprocessStudyd(MapTransform):
    """``{"name", "root", "resolution"}`` -> loaded and preprocessed ``image`` (+ ``label``)."""

    def __init__(self, keys=("name",)):
        super().__init__(keys)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        study = get_study(d["root"], d["name"])
        loaded = study.load()
        item = {"image": loaded["image"]}
        if loaded["label"] is not None:
            item["label"] = loaded["label"]
        item = preprocess(study.modality, int(d["resolution"]))(item)
        # the record must invert through any Compose built by preprocess(), not just this one
        reset_ops_id(item)
        for key, value in item.items():
            d[key] = safe_for_weights_only(value)
        d["modality"] = study.modality
        return d


def _plain(value):
    """numpy values -> tensors / Python scalars, enums -> their value (recursively)."""
    if isinstance(value, np.ndarray):
        return torch.as_tensor(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def safe_for_weights_only(tensor: MetaTensor) -> MetaTensor:
    """A MetaTensor whose meta and transform record ``torch.load(weights_only=True)`` accepts.

    MONAI's ``PersistentDataset`` saves meta as is; numpy arrays and enums in it make the
    cache unreadable under ``weights_only`` (MONAI then silently recomputes every time).
    """
    if not isinstance(tensor, MetaTensor):
        return tensor
    out = MetaTensor(tensor.as_tensor(), meta=_plain(dict(tensor.meta)),
                     applied_operations=_plain(list(tensor.applied_operations)))
    return out


def volume_dataset(
    studies: Sequence[Study], resolution: int, cache_dir: str | os.PathLike | None = None
) -> Dataset:
    """Preprocessed volumes, one item per study; ``PersistentDataset`` when ``cache_dir`` is given,
    keyed by the study, the resolution, the code fingerprint and the study files' content hashes."""
    code = code_fingerprint(CODE_PARTS) if cache_dir is not None else None
    items = [
        {"name": s.name, "root": str(s.root), "resolution": int(resolution), "version": CACHE_VERSION,
         **({} if code is None else {"code": code, "content": content_hashes([s.image_path, s.label_path])})}
        for s in studies
    ]
    transform = Compose([PreprocessStudyd()])
    if cache_dir is None:
        return Dataset(items, transform=transform)
    return PersistentDataset(
        items,
        transform=transform,
        cache_dir=Path(cache_dir) / "volumes",
        hash_transform=json_hashing,
        track_meta=True,
        reset_ops_id=False,  # done in PreprocessStudyd, before the record is made loadable
    )


# ----------------------------------------------------------------------------- slice datasets


def _slice_keys(volumes: Sequence[Mapping]) -> list[str]:
    return ["image", "label"] if all("label" in v for v in volumes) else ["image"]


def random_slice_dataset(volumes: Sequence[Mapping], samples_per_volume: int = 8, seed: int = 0) -> PatchDataset:
    """Random axial slices: ``RandSpatialCropSamplesd(roi=[-1, -1, 1])`` then squeeze the slice axis."""
    keys = _slice_keys(volumes)
    sampler = RandSpatialCropSamplesd(
        keys=keys, roi_size=(-1, -1, 1), num_samples=samples_per_volume, random_size=False
    )
    sampler.set_random_state(seed)
    return PatchDataset(
        data=volumes,
        patch_func=sampler,
        samples_per_image=samples_per_volume,
        transform=SqueezeDimd(keys=keys, dim=-1),
    )


def all_slice_dataset(volumes: Sequence[Mapping]) -> GridPatchDataset:
    """Every axial slice of every volume once, in order (an iterable dataset)."""
    keys = _slice_keys(volumes)
    return GridPatchDataset(
        data=volumes,
        patch_iter=PatchIterd(keys=keys, patch_size=(None, None, 1), mode=None),
        transform=SqueezeDimd(keys=keys, dim=-1),
        with_coordinates=False,
    )


def volume_to_slices(volume: torch.Tensor) -> torch.Tensor:
    """``[C, S, S, Z]`` -> ``[Z, C, S, S]``: every slice of one volume as a batch (plain tensor)."""
    tensor = volume.as_tensor() if isinstance(volume, MetaTensor) else volume
    return tensor.permute(3, 0, 1, 2).contiguous()


def slices_to_volume(slices: torch.Tensor, like: MetaTensor) -> MetaTensor:
    """``[Z, C, S, S]`` -> ``MetaTensor[C, S, S, Z]`` carrying ``like``'s affine, meta and
    transform record, ready for ``Invertd(..., orig_keys=<like's key>)``."""
    if slices.shape[0] != like.shape[-1] or tuple(slices.shape[2:]) != tuple(like.shape[1:3]):
        raise ValueError(f"{tuple(slices.shape)} slices do not fit a volume of shape {tuple(like.shape)}")
    data = slices.detach().permute(1, 2, 3, 0).contiguous()
    return MetaTensor(data, affine=like.affine.clone(), meta=dict(like.meta), applied_operations=list(like.applied_operations))


# ----------------------------------------------------------------------------- training set


@dataclass(frozen=True)
class LabeledBudget:
    """How much of the labeled data training may use.

    ``kind='all'``: every body slice of the first labeled volume (ircadb_1);
    ``kind='slices'``: ``count`` slices spread evenly over that volume's liver-containing slices;
    ``kind='volumes'``: every body slice of the first ``count`` volumes in ``LABELED_ORDER``.
    """

    kind: str
    count: int | None = None

    @classmethod
    def parse(cls, value: "LabeledBudget | int | str | None") -> "LabeledBudget":
        if isinstance(value, LabeledBudget):
            return value
        if value is None or (isinstance(value, str) and value.strip().lower() == "all"):
            return cls("all")
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            return cls._checked("slices", int(value))
        if isinstance(value, str):
            text = value.strip().lower()
            if text.isdigit():
                return cls._checked("slices", int(text))
            kind, _, count = text.partition(":")
            if kind in ("slices", "volumes") and count.strip().isdigit():
                return cls._checked(kind, int(count))
        raise ValueError(
            f"labeled budget {value!r} not understood: use 'all', N (slices), 'slices:N' or 'volumes:K'"
        )

    @classmethod
    def _checked(cls, kind: str, count: int) -> "LabeledBudget":
        if count < 1:
            raise ValueError(f"labeled budget needs at least one {kind[:-1]}, got {count}")
        return cls(kind, count)

    def key(self) -> str:
        return self.kind if self.count is None else f"{self.kind}:{self.count}"


def spread_indices(candidates: Sequence[int], count: int) -> list[int]:
    """``count`` entries of ``candidates`` evenly spread, avoiding both ends (deterministic)."""
    candidates = list(candidates)
    if count >= len(candidates):
        return candidates
    picks = np.floor((np.arange(count) + 0.5) * len(candidates) / count).astype(int)
    return [candidates[i] for i in picks]


def body_fraction(images: torch.Tensor, threshold: float = BODY_THRESHOLD["CT"]) -> torch.Tensor:
    """Per-slice fraction of pixels above the body threshold, for ``[N, 1, S, S]`` in [-1, 1]."""
    return (images > threshold).float().mean(dim=(1, 2, 3))


@dataclass
class TrainingSet:
    unlabeled: torch.Tensor
    labeled_image: torch.Tensor
    labeled_mask: torch.Tensor
    unlabeled_origin: list[tuple[str, int]] = field(default_factory=list)  # (study, slice index)
    labeled_origin: list[tuple[str, int]] = field(default_factory=list)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            "unlabeled": self.unlabeled,
            "labeled_image": self.labeled_image,
            "labeled_mask": self.labeled_mask,
        }

    def summary(self) -> dict:
        per_study: dict[str, int] = {}
        for name, _ in self.unlabeled_origin:
            per_study[name] = per_study.get(name, 0) + 1
        labeled_studies_used = sorted({name for name, _ in self.labeled_origin})
        return {
            "unlabeled_slices": int(self.unlabeled.shape[0]),
            "unlabeled_per_study": per_study,
            "labeled_slices": int(self.labeled_image.shape[0]),
            "labeled_with_liver": int((self.labeled_mask.flatten(1).amax(1) > 0).sum()),
            "labeled_studies": labeled_studies_used,
            "resolution": int(self.unlabeled.shape[-1]),
        }


@dataclass
class SliceVolume:
    """One preprocessed training study as slice batches: images ``[Z, 1, S, S]``, masks or None."""

    name: str
    images: torch.Tensor
    masks: torch.Tensor | None
    body: list[int]  # slice indices with enough body to train on


def preprocess_pool(
    studies: Sequence[Study], resolution: int, load: Callable[[Study], dict] | None = None
) -> list[SliceVolume]:
    """Load (``load(study)``, default ``Study.load``) and preprocess each study once; keep its
    slices and which of them show body."""
    pool = []
    for study in studies:
        loaded = study.load() if load is None else load(study)
        item = {"image": loaded["image"]}
        if loaded["label"] is not None:
            item["label"] = loaded["label"]
        volume = preprocess(study.modality, resolution)(item)
        images = volume_to_slices(volume["image"])
        masks = (volume_to_slices(volume["label"]) > 0.5).float() if "label" in volume else None
        body = torch.nonzero(body_fraction(images) >= MIN_BODY_FRACTION).flatten().tolist()
        pool.append(SliceVolume(study.name, images, masks, body))
    return pool


def assemble_training_set(
    pool: Sequence[SliceVolume], budget: LabeledBudget | int | str | None, labeled_order: Sequence[str] = LABELED_ORDER
) -> TrainingSet:
    """Unlabeled = every body slice of the pool; labeled = what ``budget`` allows, in protocol order."""
    budget = LabeledBudget.parse(budget)
    available = [name for name in labeled_order if any(v.name == name and v.masks is not None for v in pool)]
    labeled_names = available[: budget.count if budget.kind == "volumes" else 1]
    if not labeled_names:
        raise ValueError(f"no labeled volume among {list(labeled_order)} in the training pool")
    unlabeled, unlabeled_origin = [], []
    labeled_image, labeled_mask, labeled_origin = [], [], []
    for volume in pool:
        unlabeled.append(volume.images[volume.body])
        unlabeled_origin += [(volume.name, k) for k in volume.body]
    for name in labeled_names:
        volume = next(v for v in pool if v.name == name)
        if budget.kind == "slices":
            with_liver = [k for k in volume.body if volume.masks[k].any()]
            chosen = spread_indices(with_liver, budget.count)
            if len(chosen) < budget.count:
                log.warning("labeled budget %d > %d liver slices in %s: using all of them",
                            budget.count, len(chosen), name)
        else:
            chosen = volume.body
        labeled_image.append(volume.images[chosen])
        labeled_mask.append(volume.masks[chosen])
        labeled_origin += [(name, k) for k in chosen]
    return TrainingSet(
        unlabeled=torch.cat(unlabeled),
        labeled_image=torch.cat(labeled_image),
        labeled_mask=torch.cat(labeled_mask),
        unlabeled_origin=unlabeled_origin,
        labeled_origin=labeled_origin,
    )


def build_training_set(
    root: str | os.PathLike, resolution: int, labeled_budget: LabeledBudget | int | str | None = "all"
) -> TrainingSet:
    """The protocol's CT training set without caching: see ``training_tensors``."""
    studies = training_studies(root)
    if not studies:
        raise ValueError(f"no CT training studies found under {root}")
    return assemble_training_set(preprocess_pool(studies, resolution), labeled_budget)


def _cache_key(root: Path, resolution: int, budget: LabeledBudget) -> str:
    files = [[study.name, *content_hashes([study.image_path, study.label_path])]
             for study in training_studies(root)]
    settings = {
        "version": CACHE_VERSION,
        "code": code_fingerprint(CODE_PARTS),
        "resolution": int(resolution),
        "budget": budget.key(),
        "labeled_order": list(LABELED_ORDER),
        "min_body_fraction": MIN_BODY_FRACTION,
        "files": files,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def training_tensors(
    root: str | os.PathLike,
    resolution: int,
    labeled_budget: LabeledBudget | int | str | None = "all",
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, torch.Tensor]:
    """The CT training pool in memory (contract "data -> training").

    Returns ``unlabeled [N, 1, S, S]`` (every body slice of every CT training study: ircadb_1,
    totalseg CT volume and DICOM, dcmqi), ``labeled_image`` and ``labeled_mask [M, 1, S, S]`` (from
    ``labeled_budget``: 'all', N slices, 'slices:N' or 'volumes:K'); images float32 in [-1, 1],
    masks float32 in {0, 1}. chaos_ct_1 and every MRI study are never included.

    With ``cache_dir`` the tensors are saved there (keyed by the settings, the fingerprint of the
    code that computes them and the source files' content hashes: ``medsemgan.fingerprint``) and
    reloaded on the next call.
    """
    root = Path(root)
    budget = LabeledBudget.parse(labeled_budget)
    cache_file = None
    if cache_dir is not None:
        key = _cache_key(root, resolution, budget)
        cache_file = Path(cache_dir) / f"training_tensors_{int(resolution)}_{key}.pt"
        if cache_file.is_file():
            try:
                return torch.load(cache_file, weights_only=True)
            except Exception as err:  # noqa: BLE001 - a broken cache is rebuilt, not fatal
                log.warning("ignoring unreadable cache %s: %s", cache_file, err)
    training_set = build_training_set(root, resolution, budget)
    log.info("training set: %s", json.dumps(training_set.summary()))
    tensors = training_set.tensors()
    if cache_file is not None:
        with atomic_path(cache_file) as tmp:
            torch.save(tensors, tmp)
    return tensors
