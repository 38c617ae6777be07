"""The report's methods: one :class:`Runner` per (method, label budget).

Kinds: ``semanticgan`` (generator + encoder, ``medsemgan.inference.segment.segment_volume``;
encoder only when ``options.encoder_only``), ``unet`` (``medsemgan.inference.unet``), ``masks``
(a folder of precomputed ``<case>.nii.gz``). ``make_runner`` returns the reason instead of a
runner when weights are missing. Models load on first use, so a fully cached report never loads
them. A runner's ``fingerprint`` (kind, options, weight files' content hashes, U-Net sidecar minus
its recorded evaluation) keys the result cache, with the case's files' content hashes and the
fingerprint of the code that computes a case (:data:`CODE_PARTS`; ``report_jobs.Job.cache_key``).

``Runner.segment`` returns ``(mask, signal)``: for ``semanticgan`` the signal is the study's
out-of-domain signal (:func:`ood_signal`: how well the generator reconstructs the slices, and
``segment_volume``'s flag); the other kinds return ``{}``.
"""

from __future__ import annotations

from dataclasses import fields

import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from medsemgan.errors import InputError
from medsemgan.evaluation.report_config import SEMANTICGAN_MODALITY_ENCODERS, Method, slug
from medsemgan.fingerprint import content_hash
from medsemgan.weights import resolve_device

# Bump when the cache entries' layout changes; code and input changes re-key entries by themselves.
CACHE_VERSION = 2
# The parts of the package whose code computes a cached case result: reading and preprocessing,
# the networks and ops, inference (SemanticGAN and U-Net), the metrics, this module and the jobs.
CODE_PARTS = ("data", "models", "ops", "inference", "evaluation/metrics.py", "evaluation/report_methods.py",
              "evaluation/report_jobs.py", "io_utils.py", "runtime.py", "fingerprint.py", "modality.py", "weights.py")


def _file_stamp(path: Path) -> list:
    return [path.name, content_hash(path)]


def _missing(paths: list[Path], root: Path) -> list[str]:
    out = []
    for p in paths:
        if not p.exists():
            try:
                out.append(str(p.relative_to(root)))
            except ValueError:
                out.append(str(p))
    return out


class Runner:
    """One method at one budget: ``segment(image, modality, case) -> (uint8 mask on the input grid,
    signal dict)``. Models load on first use, so a fully cached report never loads them."""

    def __init__(self, method: Method, budget: str, files: list[Path], device: str,
                 load: Callable[[], Callable], extra: dict | None = None,
                 modality_files: dict[str, list[Path]] | None = None):
        """``modality_files``: the files a case of that modality depends on, when that is not all
        of ``files`` (a SemanticGAN with an encoder per modality): replacing the MR encoder then
        leaves the CT cases' cache valid, and the reverse."""
        self.method, self.budget, self.files, self.device = method, budget, files, device
        self._load, self._segment = load, None
        self._extra, self._modality_files = extra or {}, modality_files or {}
        self.fingerprint = self.fingerprint_for(None)

    def fingerprint_for(self, modality: str | None) -> str:
        files = self._modality_files.get((modality or "").upper(), self.files)
        return hashlib.sha256(json.dumps({
            "version": CACHE_VERSION, "kind": self.method.kind, "options": self.method.options,
            "files": [_file_stamp(f) for f in files if f.exists()], "extra": self._extra,
        }, sort_keys=True, default=str).encode()).hexdigest()[:20]

    @property
    def has_ood_signal(self) -> bool:
        """Whether this kind measures the out-of-domain signal (its cache entries must hold it)."""
        return self.method.kind == "semanticgan"

    def segment(self, image, modality: str, case: str) -> tuple:
        if self._segment is None:
            self._segment = self._load()
        return self._segment(image, modality, case)


def ood_signal(extras: dict) -> dict:
    """The report's summary of ``segment_volume``'s out-of-domain extras: per signal
    (``medsemgan.inference.ood``: ``recon_mse`` after optimisation, ``structure_error`` of the
    encoder's reconstruction) the mean, median and max over the model-space slices and the
    per-slice values; the objective's mean; the verdict (signal, score, threshold, flag)."""
    out: dict = {}
    for name in ("recon_mse", "structure_error"):
        per_slice = [float(v) for v in extras.get(name) or []]
        out[f"{name}_mean"] = float(np.mean(per_slice)) if per_slice else None
        out[f"{name}_median"] = float(np.median(per_slice)) if per_slice else None
        out[f"{name}_max"] = float(max(per_slice)) if per_slice else None
        out[name] = per_slice
    # the inversion objective's mean (structural term + weighted MSE), for comparison
    out["objective_mean"] = None if extras.get("mean_objective") is None else float(extras["mean_objective"])
    out.update(ood_signal=extras["ood_signal"], ood_score=float(extras["ood_score"]),
               ood_threshold=float(extras["ood_threshold"]), out_of_domain=bool(extras["out_of_domain"]))
    return out


def _semanticgan_loader(method: Method, weights: dict, device: str):
    def load():
        from medsemgan.inference.model import DEFAULT_CONFIG, SegmentationModel
        from medsemgan.inference.options import SegmentOptions
        from medsemgan.inference.segment import segment_volume
        from medsemgan.inference.tto import TTOOptions

        model = SegmentationModel.from_files(
            weights["generator"], weights["encoder"], model_config(weights) or DEFAULT_CONFIG,
            {m: weights[k] for k, m in SEMANTICGAN_MODALITY_ENCODERS.items() if weights.get(k)},
        ).to(resolve_device(device))
        o = method.options
        # Segment options by name, any other TTOOptions field (e.g. perceptual, mse_weight) as is.
        segment_keys = {"steps", "encoder_only", "batch_size", "seed", "lr", "early_stop_patience", "bf16",
                        "optimize_noise"}
        tto_keys = {f.name for f in fields(TTOOptions)} - segment_keys
        known = segment_keys | tto_keys
        unknown = sorted(set(o) - known)
        if unknown:
            raise InputError(None, f"method {method.key}: unknown options {unknown}; known: {sorted(known)}")

        def segment(image, modality, case):
            options = SegmentOptions(steps=o.get("steps"), encoder_only=bool(o.get("encoder_only", False)),
                                     batch_size=o.get("batch_size"), seed=o.get("seed", 0), lr=o.get("lr"),
                                     early_stop_patience=o.get("early_stop_patience"), bf16=o.get("bf16"),
                                     optimize_noise=o.get("optimize_noise"), modality=modality,
                                     extra_tto={k: v for k, v in o.items() if k in tto_keys})
            mask, extras = segment_volume(image, model, options)
            return mask, ood_signal(extras)
        return segment
    return load


def _unet_loader(method: Method, weights: Path, device: str):
    def load():
        from medsemgan.inference.unet import UNetSegmenter, segment_volume_unet

        segmenter = UNetSegmenter.from_file(weights).to(resolve_device(device))
        batch = int(method.options.get("batch_size", 32))

        def segment(image, modality, case):
            mask, _ = segment_volume_unet(image, segmenter, modality=modality, batch_size=batch)
            return mask, {}
        return segment
    return load


def _masks_loader(method: Method, folder: Path, device: str):
    def load():
        from monai.data import MetaTensor

        from medsemgan.data.io import load_image, match_label_to_image

        def segment(image, modality, case):
            candidates = [folder / f"{case}{ext}" for ext in (".nii.gz", ".nii", ".nrrd", ".mha")]
            found = next((p for p in candidates if p.is_file()), None)
            if found is None:
                raise InputError(folder, f"no mask for case {case} (expected {candidates[0].name})")
            mask = match_label_to_image(image, load_image(found), found)
            return MetaTensor((mask.as_tensor() > 0).to(torch.uint8), affine=image.affine.clone()), {}
        return segment
    return load


def make_runner(method: Method, budget: str, weights_root: Path, device: str) -> Runner | str:
    """A :class:`Runner`, or the reason the method is not available at this budget."""
    if budget not in method.weights:
        return "not available (no weights configured for this budget)"
    value = method.weights[budget]
    extra: dict = {}
    modality_files: dict | None = None
    if method.kind == "semanticgan":
        modality_encoders = {m: value[k] for k, m in SEMANTICGAN_MODALITY_ENCODERS.items() if value.get(k)}
        files = [value["generator"], value["encoder"], *modality_encoders.values()]
        config = model_config(value)
        config_files = [Path(config)] if config is not None and Path(config).is_file() else []
        files += config_files
        # A case of a modality with its own encoder depends on that encoder, not the default one.
        modality_files = {m: [value["generator"], modality_encoders.get(m, value["encoder"]), *config_files]
                          for m in SEMANTICGAN_MODALITY_ENCODERS.values()}
        extra = {"config": str(config)}
        load = _semanticgan_loader(method, value, device)
    elif method.kind == "unet":
        files = [value]
        # The sidecar's architecture and resolution matter; its recorded evaluation does not.
        extra = {k: v for k, v in _read_sidecar(value).items() if k != "evaluation"}
        load = _unet_loader(method, value, device)
    else:
        files = [value]
        load = _masks_loader(method, value, device)
    missing = _missing(files, weights_root)
    if missing:
        return f"not available (missing {', '.join(missing)})"
    return Runner(method, budget, files, device, load, extra, modality_files)


class PostprocessedRunner(Runner):
    """Another runner's masks (read back from the report's predictions folder), cleaned up by
    ``medsemgan.inference.postprocess``. Keyed on the source's fingerprint, so new weights or
    options of the source recompute these rows too."""

    def __init__(self, method: Method, source: Runner, predictions: Path):
        self.source, self.predictions = source, predictions
        super().__init__(method, source.budget, [], source.device, self._loader, {"mode": method.options["mode"]})

    def fingerprint_for(self, modality: str | None) -> str:
        return hashlib.sha256(json.dumps({"version": CACHE_VERSION, "mode": self.method.options["mode"],
                                          "source": self.source.fingerprint_for(modality)},
                                         sort_keys=True).encode()).hexdigest()[:20]

    @property
    def has_ood_signal(self) -> bool:
        return False

    def _loader(self):
        from monai.data import MetaTensor

        from medsemgan.data.io import load_image
        from medsemgan.inference.postprocess import postprocess_mask

        def segment(image, modality, case):
            found = sorted(self.predictions.glob(f"*/{slug(case)}.nii.gz"))
            if len(found) != 1:
                raise InputError(self.predictions, f"expected one prediction of {self.source.method.key} for "
                                 f"case {case}, found {len(found)} (run the report with that method)")
            raw = load_image(found[0])
            mask = MetaTensor((raw.as_tensor() > 0).to(torch.uint8), affine=image.affine.clone())
            return postprocess_mask(mask, self.method.options["mode"]), {}
        return segment


def postprocessed_runner(method: Method, source: Runner | None, out: Path) -> Runner | str:
    """The runner of a derived post-processing row, or why it is not available."""
    if source is None:
        return f"not available (its source method {method.options['source']} is not available)"
    from medsemgan.evaluation.report_jobs import predictions_dir

    return PostprocessedRunner(method, source, predictions_dir(out, source.method.key, source.budget))


def model_config(weights: dict) -> str | Path | None:
    """The GAN's configuration: the method's ``config:``, else the bundle's ``configs/model.yaml``
    beside ``models/generator.pt`` (as ``SegmentationModel.from_bundle`` does), else None (cpu128)."""
    if weights.get("config"):
        return weights["config"]
    bundled = Path(weights["generator"]).parent.parent / "configs" / "model.yaml"
    return bundled if bundled.is_file() else None


def _read_sidecar(weights: Path) -> dict:
    side = weights.with_suffix(".json")
    try:
        return json.loads(side.read_text()) if side.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {"unreadable": str(side)}
