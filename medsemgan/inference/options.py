"""Option resolution for segmentation: the model configuration's ``inference:`` section, its
per-modality ``modality_overrides``, then the caller's :class:`SegmentOptions` (the user's word
wins). Used by ``medsemgan.inference.segment``, the model loader (which checks the overrides when
it reads a configuration), the bundle, the report and the benchmarks; it imports neither of them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, fields

from monai.data import MetaTensor

from medsemgan.errors import InputError
from medsemgan.inference.tto import TTOOptions
from medsemgan.modality import MODALITIES, check_modality, guess_modality, modality_name

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 64


def modality_overrides(inference_cfg: dict) -> dict[str, dict]:
    """``inference.modality_overrides`` checked: ``{CT|MR: {TTO option: value}}``. A typo must not
    silently fall back to the shared value, so unknown modalities and option names are errors."""
    raw = inference_cfg.get("modality_overrides") or {}
    if not isinstance(raw, dict):
        raise ValueError(f"inference.modality_overrides must be a mapping, got {type(raw).__name__}")
    known = {f.name for f in fields(TTOOptions)}
    out = {}
    for modality, values in raw.items():
        key = modality_name(modality)
        if key not in MODALITIES:
            raise ValueError(f"inference.modality_overrides: unknown modality {modality!r} (CT or MR)")
        unknown = sorted(set(values or {}) - known)
        if unknown:
            raise ValueError(f"inference.modality_overrides.{modality}: unknown options {unknown}")
        out[key] = dict(values or {})
    return out


@dataclass
class SegmentOptions:
    """Per-call choices; ``None`` means: take the model configuration's ``inference:`` value."""

    steps: int | None = None
    encoder_only: bool = False
    batch_size: int | None = None
    seed: int | None = None
    lr: float | None = None
    early_stop_patience: int | None = None
    bf16: bool | None = None
    optimize_noise: bool | None = None  # per-slice noise maps optimised with w+ (docs/inference.md)
    modality: str | None = None  # 'CT' / 'MR' override
    save_prob: bool = False
    threshold: float = 0.5
    progress: bool = False
    postprocess: str | None = None  # 'none', 'largest', 'largest_fill' (inference/postprocess.py)
    restarts: tuple[str, ...] | None = None  # extra TTO starting points ('neighbour', 'mean')
    extra_tto: dict = field(default_factory=dict)  # any other TTOOptions field

    def tto_options(self, inference_cfg: dict, modality: str | None = None) -> TTOOptions:
        """The model configuration's ``inference:`` options, then its ``modality_overrides`` for
        ``modality``, then these options (the user's word wins)."""
        overrides = dict(self.extra_tto, steps=0 if self.encoder_only else self.steps, seed=self.seed,
                         lr=self.lr, early_stop_patience=self.early_stop_patience, bf16=self.bf16)
        if self.optimize_noise is not None:  # else keep an extra_tto value
            overrides["optimize_noise"] = self.optimize_noise
        if self.restarts is not None:
            overrides["restarts"] = tuple(self.restarts)
        section = dict(inference_cfg)
        if modality is not None:
            section.update(modality_overrides(inference_cfg).get(modality.upper(), {}))
        return TTOOptions.from_config(section, **overrides)

    def modality_tto_options(self, inference_cfg: dict) -> dict[str, TTOOptions]:
        """``tto_options`` for every modality the configuration overrides (for ``TTOInferer``)."""
        return {m: self.tto_options(inference_cfg, m) for m in modality_overrides(inference_cfg)}

    def postprocess_mode(self, inference_cfg: dict) -> str:
        """The user's choice, else the configuration's ``inference.postprocess`` (default none)."""
        from medsemgan.inference.postprocess import check_mode

        return check_mode(self.postprocess if self.postprocess is not None else inference_cfg.get("postprocess"))

    def slice_batch(self, inference_cfg: dict) -> int:
        return int(self.batch_size or inference_cfg.get("batch_size", DEFAULT_BATCH_SIZE))


def resolve_modality(image: MetaTensor, path: str | os.PathLike | None,
                     override: str | None) -> tuple[str, str]:
    """``(modality, where it came from)``: the override, the DICOM tag, the catalogue of known
    studies, or (for NIfTI/NRRD files, which do not record it) a guess from the intensities."""
    if override:
        try:
            return check_modality(override, "--modality"), "option"
        except ValueError as err:
            raise InputError(None, str(err)) from None
    tag = str(image.meta.get("modality", "") or "").upper()
    if tag in MODALITIES:
        return tag, "DICOM Modality tag"
    if tag:
        raise InputError(path, f"DICOM modality {tag!r} is not supported (CT or MR); "
                               "override with --modality if the tag is wrong")
    if path is not None:
        from medsemgan.data.catalogue import find_study
        from medsemgan.paths import data_root

        study = find_study(path, data_root())
        if study is not None:
            return study.modality, "catalogue"
    guess = guess_modality(image)
    log.warning("%s: modality not recorded in the file; guessed %s from the intensities "
                "(pass --modality CT|MR to override)", path, guess)
    return guess, "guessed from intensities"
