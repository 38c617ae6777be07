"""Dictionary transforms the bundle configs need beyond MONAI's own.

``ModalityPreprocessd`` is the data layer's ``preprocess(modality, size)`` chosen per study (CT
window or MRI percentiles) behind one invertible transform, so a bundle's ``preprocessing``
``Compose`` can be handed to ``Invertd`` whatever the modality of each study.
``SaveMaskd`` thresholds the inverted probability and writes it with the project's NIfTI writer
and the input's own affine, exactly as ``medsemgan segment`` does.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Hashable, Mapping

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, InvertibleTransform, MapTransform

from medsemgan.bundle.options import as_optional_str
from medsemgan.errors import InputError
from medsemgan.inference.inferer import MODALITY_META_KEY
from medsemgan.inference.postprocess import check_mode, postprocess_mask

log = logging.getLogger(__name__)

MODALITY_KEY = "modality"
MODALITY_FROM_KEY = "modality_from"
INPUT_AFFINE_KEY = "input_affine"
INPUT_SHAPE_KEY = "input_shape"
META_MODALITY_KEY = MODALITY_META_KEY  # TTOInferer picks per-modality options by it


class ModalityPreprocessd(MapTransform, InvertibleTransform):
    """Resolve each study's modality and apply ``medsemgan.data.transforms.preprocess``.

    The modality comes from ``medsemgan.inference.segment.resolve_modality`` (the override, the
    DICOM tag, the catalogue of known studies, or a guess from the intensities), the same rule
    ``medsemgan segment`` uses. Adds ``modality``, ``modality_from``, ``input_affine`` (the
    loaded image's affine, float64 4x4) and ``input_shape`` to the dictionary. ``inverse`` picks the
    per-modality pipeline that was applied (by the transform ids recorded on the tensor), because
    ``Invertd`` requires the very instances that ran forward.
    """

    def __init__(self, keys="image", spatial_size: int = 128, modality: str | None = None,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"ModalityPreprocessd takes one image key, got {self.keys}")
        self.image_key = self.keys[0]
        self.spatial_size = int(spatial_size)
        self.modality = as_optional_str(modality)
        # Built now, not on first use: with DataLoader workers the forward pass runs in a worker
        # and Invertd in the main process, which must hold the very pipeline instances that ran.
        from medsemgan.data.transforms import preprocess

        self._pipelines: dict[str, Compose] = {
            modality: preprocess(modality, self.spatial_size, keys=(self.image_key,)) for modality in ("CT", "MR")
        }

    def pipeline(self, modality: str) -> Compose:
        if modality not in self._pipelines:
            raise ValueError(f"no preprocessing for modality {modality!r} (known: {sorted(self._pipelines)})")
        return self._pipelines[modality]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        from medsemgan.inference.options import resolve_modality

        d = dict(data)
        image = d[self.image_key]
        if not isinstance(image, MetaTensor):
            raise TypeError(f"'{self.image_key}' must be a loaded MetaTensor (put LoadVolumed first)")
        path = image.meta.get("source") or image.meta.get("filename_or_obj")
        modality, origin = resolve_modality(image, path, self.modality)
        d[MODALITY_KEY], d[MODALITY_FROM_KEY] = modality, origin
        d[INPUT_AFFINE_KEY] = torch.as_tensor(image.affine, dtype=torch.float64).clone()
        d[INPUT_SHAPE_KEY] = torch.tensor(image.shape[1:])
        # Invertd hands inverse() only the tensor and its meta: the modality travels in the meta
        # (a new MetaTensor on the same storage, so the caller's meta is not modified).
        image = MetaTensor(image.as_tensor(), meta={**image.meta, META_MODALITY_KEY: modality},
                           applied_operations=list(image.applied_operations))
        d[self.image_key] = image
        return self.pipeline(modality)(d)

    def inverse(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        tensor = d[self.image_key]
        modality = getattr(tensor, "meta", {}).get(META_MODALITY_KEY)
        if isinstance(modality, (list, tuple)) and len(modality) == 1:  # left batched by a collate
            modality = modality[0]
        if modality not in self._pipelines:
            raise RuntimeError(f"'{self.image_key}' was not preprocessed by this ModalityPreprocessd "
                               f"(meta {META_MODALITY_KEY}={modality!r}; pipelines run: "
                               f"{sorted(self._pipelines) or 'none'})")
        return self._pipelines[modality].inverse(d)


class LoadLabeledStudyd(MapTransform):
    """Load ``image`` and its liver ``label`` for evaluation.

    Items naming a catalogued ``study`` (with the data ``root``) use the catalogue's loaders
    (CHAOS PNG stacks, the IRCAD zip, ...); other items give ``image`` and ``label`` paths, the
    label is brought onto the image grid (``match_label_to_image``) and binarised: voxels equal to
    ``liver_value``, or any nonzero voxel when it is ``None``.
    """

    def __init__(self, keys=("image", "label"), liver_value: int | None = None,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key, self.label_key = self.keys[0], self.keys[1]
        self.liver_value = liver_value

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        from medsemgan.data.io import load_image, match_label_to_image

        d = dict(data)
        if d.get("study"):
            from medsemgan.data.catalogue import get_study

            loaded = get_study(d["root"], d["study"]).load()
            if loaded["label"] is None:
                raise InputError(d["image"], f"study {d['study']} has no liver label")
            d[self.image_key], d[self.label_key] = loaded["image"], loaded["label"]
            return d
        image = load_image(d[self.image_key])
        label_path = d[self.label_key]
        label = match_label_to_image(image, load_image(label_path), label_path)
        values = label.as_tensor()
        mask = values == self.liver_value if self.liver_value is not None else values != 0
        d[self.image_key] = image
        d[self.label_key] = MetaTensor(mask.to(torch.uint8), affine=image.affine.clone(),
                                       meta={"source": os.fspath(label_path)})
        return d


class SaveMaskd(MapTransform):
    """Probability on the input grid -> uint8 mask ``OUT/<case><postfix>.nii.gz``.

    Thresholds like ``segment_volume`` (``probability > threshold``; MONAI's ``AsDiscrete`` uses
    ``>=``), writes with ``medsemgan.inference.writers.write_mask`` and the input's exact affine
    (the inverse transforms recompute it in floating point), and replaces ``key`` by the mask so
    metrics handlers see what was written. ``inferer`` (optional): its ``last_extras`` give the
    per-slice reconstruction error written to ``OUT/<case>.json``, as ``medsemgan segment`` does.
    """

    def __init__(self, keys="pred", output_dir: str | os.PathLike = "output", threshold: float = 0.5,
                 output_postfix: str = "", case_key: str = "case", inferer: Any = None,
                 ood_signal: str | None = None, ood_threshold: float | None = None,
                 postprocess: str | None = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.threshold = float(threshold)
        self.output_postfix = output_postfix
        self.case_key = case_key
        self.inferer = inferer
        # The out-of-domain verdict is written when both are given (medsemgan.inference.ood).
        self.ood_signal = ood_signal
        self.ood_threshold = ood_threshold
        self.postprocess = check_mode(postprocess)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        from medsemgan.inference.writers import write_json, write_mask

        d = dict(data)
        case = str(d[self.case_key])
        affine = torch.as_tensor(d[INPUT_AFFINE_KEY], dtype=torch.float64)
        for key in self.key_iterator(d):
            prob = d[key]
            prob = prob.as_tensor() if isinstance(prob, MetaTensor) else torch.as_tensor(prob)
            prob = prob[:1].float().clamp(0, 1).cpu()
            expected = tuple(int(n) for n in torch.as_tensor(d[INPUT_SHAPE_KEY]).tolist())
            if tuple(prob.shape[1:]) != expected:
                raise RuntimeError(f"{case}: inverted prediction has shape {tuple(prob.shape[1:])}, "
                                   f"input {expected}")
            mask = MetaTensor((prob > self.threshold).to(torch.uint8), affine=affine.clone())
            mask = postprocess_mask(mask, self.postprocess)
            path = write_mask(mask, self.output_dir / f"{case}{self.output_postfix}.nii.gz")
            d[key] = mask
            d[f"{key}_path"] = str(path)
            self._write_extras(d, case, mask, write_json)
            log.info("%s -> %s (modality %s, %s)", d.get("image_path", case), path,
                     d.get(MODALITY_KEY), d.get(MODALITY_FROM_KEY))
        return d

    def _write_extras(self, d: dict, case: str, mask: torch.Tensor, write_json) -> None:
        from medsemgan.inference.segment import liver_volume_ml

        extras = getattr(self.inferer, "last_extras", None) or {}
        record: dict[str, Any] = {"case": case, "input": d.get("image_path"),
                                  "modality": d.get(MODALITY_KEY),
                                  "modality_from": d.get(MODALITY_FROM_KEY),
                                  "shape": [int(n) for n in mask.shape[1:]],
                                  "liver_voxels": int(mask.sum()),
                                  "liver_volume_ml": liver_volume_ml(mask, mask.affine),
                                  "postprocess": self.postprocess}
        if "recon_mse" in extras and extras["recon_mse"].shape[0] == 1:
            from medsemgan.inference.ood import ood_message, ood_verdict, signal_record

            per_slice = {k: v[0].cpu() for k, v in extras.items()}
            record.update(signal_record(per_slice))
            record["steps_run"] = per_slice["steps_run"].tolist()
            if self.ood_signal is not None and self.ood_threshold is not None:
                record.update(ood_verdict(per_slice, self.ood_signal, float(self.ood_threshold)))
                if record["out_of_domain"]:
                    log.warning(ood_message(case, record))
        write_json(record, self.output_dir / f"{case}{self.output_postfix}.json")


def as_numpy_mask(mask: torch.Tensor) -> np.ndarray:
    array = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    return array[0] if array.ndim == 4 else array
