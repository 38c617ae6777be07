"""Volume segmentation and the ``medsemgan segment`` verb.

``segment_volume(path, model, options)``: load (NIfTI, NRRD, DICOM series) -> ``preprocess`` to
model space -> ``TTOInferer`` (encoder + test-time optimisation) -> liver probability -> MONAI
``Invertd`` back to the input's exact shape and affine -> mask (probability > 0.5).

``medsemgan segment -i IN -o OUT``: IN is a volume file, a DICOM series folder, or a folder of
studies; writes ``OUT/<case>.nii.gz`` (uint8, 1 = liver) per study. A failing study is reported
(file and problem) and skipped; the exit code is 1 when any study failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from monai.data import MetaTensor
from tqdm.auto import tqdm

from medsemgan.errors import InputError
from medsemgan.inference.inferer import TTOInferer
from medsemgan.inference.model import SegmentationModel
from medsemgan.inference.ood import ood_message, ood_setting, ood_verdict, signal_record
from medsemgan.inference.postprocess import POSTPROCESS_MODES, postprocess_mask
from medsemgan.inference.tto import RESTART_STARTS, TTOOptions
from medsemgan.inference.options import (  # noqa: F401  (SegmentOptions, modality_overrides re-exported)
    DEFAULT_BATCH_SIZE, SegmentOptions, modality_overrides, resolve_modality)
from medsemgan.modality import guess_modality  # noqa: F401  (re-exported)
from medsemgan.weights import resolve_device
from medsemgan.inference.writers import write_json, write_mask, write_probability

log = logging.getLogger(__name__)

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
NNUNET_CHANNEL = "_0000"  # nnU-Net's channel suffix: case_0000.nii.gz is case 'case'
MASK_SUFFIXES = (".nii.gz", ".nii")  # an -o ending so names one mask file


# --------------------------------------------------------------------------- one volume


@dataclass
class VolumePrediction:
    """A method's liver probability taken back to the input volume's grid (``predict_volume``)."""

    image: MetaTensor  # the input as loaded, [1, X, Y, Z]
    path: str | os.PathLike | None  # where it came from, when known
    modality: str
    modality_from: str
    probability: torch.Tensor  # float32 [1, X, Y, Z] on the input's grid, not clamped
    slices: int  # model-space slices the method predicted


def predict_volume(image: str | os.PathLike | MetaTensor, resolution: int,
                   predict: Callable[[MetaTensor, str], torch.Tensor],
                   modality: str | None = None) -> VolumePrediction:
    """The geometry path every segmentation method shares (the GAN here, the U-Net baseline in
    ``medsemgan.inference.unet``): load -> ``resolve_modality`` -> ``preprocess(modality,
    resolution)`` -> ``predict`` (model-space volume ``[1, S, S, Z]`` and its modality -> liver
    probability ``[1, S, S, Z]`` on the CPU) -> MONAI ``Invertd`` back to the input's exact shape."""
    from monai.transforms import Invertd

    from medsemgan.data.io import load_image
    from medsemgan.data.transforms import preprocess

    path = None
    if not isinstance(image, MetaTensor):
        path = image
        image = load_image(image)
    else:
        path = image.meta.get("source") or image.meta.get("filename_or_obj")
    modality, modality_from = resolve_modality(image, path, modality)
    transform = preprocess(modality, resolution, keys=("image",))
    data = transform({"image": image})
    prob = predict(data["image"], modality)
    data["pred"] = MetaTensor(prob)
    inverted = Invertd(keys="pred", transform=transform, orig_keys="image",
                       nearest_interp=False)(data)["pred"]
    if tuple(inverted.shape[1:]) != tuple(image.shape[1:]):
        raise RuntimeError(f"inverted prediction has shape {tuple(inverted.shape[1:])}, "
                           f"input {tuple(image.shape[1:])}")
    return VolumePrediction(image, path, modality, modality_from, inverted.as_tensor().float(),
                            int(prob.shape[-1]))


def segment_volume(image: str | os.PathLike | MetaTensor, model: SegmentationModel,
                   options: SegmentOptions | None = None) -> tuple[MetaTensor, dict[str, Any]]:
    """Segment one volume; returns ``(mask, extras)``.

    ``mask``: uint8 ``MetaTensor [1, X, Y, Z]`` on the input's grid (same shape and affine).
    ``extras``: ``probability`` (float32 ``MetaTensor`` like ``mask``, when ``save_prob``),
    ``recon_mse`` / ``structure_error`` / ``objective`` / ``steps_run`` per slice (model-space
    order: inferior to superior), their means, the out-of-domain verdict (``ood_signal``,
    ``ood_score``, ``ood_threshold``, ``out_of_domain``; ``medsemgan.inference.ood``),
    ``modality``, ``liver_voxels``, ``liver_volume_ml``, ``seconds``.
    """
    options = options or SegmentOptions()
    started = time.perf_counter()
    cfg = model.config.inference
    inferer = TTOInferer(options.tto_options(cfg), batch_size=options.slice_batch(cfg),
                         progress=options.progress, modality_options=options.modality_tto_options(cfg))

    def predict(volume: MetaTensor, modality: str) -> torch.Tensor:
        logits = inferer(volume.as_tensor()[None], model, modality=modality)
        return torch.sigmoid(logits[0, :1].float()).cpu()

    predicted = predict_volume(image, model.resolution, predict, options.modality)
    image, path = predicted.image, predicted.path
    # The inverse transforms recompute the affine in floating point; the input's own is exact.
    prob_volume = MetaTensor(predicted.probability.clamp_(0, 1), affine=image.affine.clone())
    mask = MetaTensor((prob_volume.as_tensor() > options.threshold).to(torch.uint8),
                      affine=image.affine.clone())
    postprocess = options.postprocess_mode(cfg)
    mask = postprocess_mask(mask, postprocess)
    per_slice = {k: v[0].cpu() for k, v in inferer.last_extras.items()}
    objective = per_slice["loss"]
    verdict = ood_verdict(per_slice, *ood_setting(cfg))
    extras: dict[str, Any] = {
        "modality": predicted.modality,
        "modality_from": predicted.modality_from,
        "shape": [int(n) for n in image.shape[1:]],
        "slices": int(objective.numel()),
        "steps": inferer.options_for(predicted.modality).steps,
        "steps_run": inferer.last_extras["steps_run"][0].cpu().tolist(),
        **signal_record(per_slice),
        # the inversion objective (structural term + weighted MSE) at the returned w+, per slice
        "objective": [round(float(v), 6) for v in objective],
        "mean_objective": float(objective.mean()),
        **verdict,
        "restarts": list(inferer.options_for(predicted.modality).restarts),
        "smooth_weight": inferer.options_for(predicted.modality).smooth_weight,
        "postprocess": postprocess,
        "liver_voxels": int(mask.sum()),
        "liver_volume_ml": liver_volume_ml(mask, image.affine),
        "seconds": time.perf_counter() - started,
    }
    if extras["out_of_domain"]:
        log.warning(ood_message(path, verdict))
    if options.save_prob:
        extras["probability"] = prob_volume
    return mask, extras


# --------------------------------------------------------------------------- finding studies


def _is_volume_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(VOLUME_SUFFIXES)


def _has_dicom_files(folder: Path) -> bool:
    from medsemgan.data.readers import is_dicom_file

    try:
        entries = list(folder.iterdir())
    except OSError:
        return False
    return any(p.is_file() and (is_dicom_file(p) or p.suffix.lower() == ".dcm") for p in entries)


def case_name(path: Path) -> str:
    """The case a file stands for: its name less the volume suffix and nnU-Net's ``_0000``
    channel suffix (``liver_003_0000.nii.gz`` -> ``liver_003``)."""
    name = path.name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name[: -len(NNUNET_CHANNEL)] if name.endswith(NNUNET_CHANNEL) and len(name) > len(NNUNET_CHANNEL) else name


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return unique


def find_studies(root: str | os.PathLike) -> list[tuple[str, Path]]:
    """``[(case, path)]``: ``root`` itself when it is a volume file or a DICOM series folder;
    otherwise every volume file and every folder holding DICOM files below it (case names join
    the relative folder names with '_').

    Symbolic links to folders are followed; a folder reached twice (a link cycle, or two links to
    one study) is visited once, under the first name found."""
    root = Path(root)
    if not root.exists():
        raise InputError(root, "does not exist" + (" (a broken symbolic link)" if root.is_symlink() else ""))
    if root.is_file():
        return [(case_name(root), root)]
    if _has_dicom_files(root):
        return [(root.name, root)]
    studies: list[tuple[str, Path]] = []
    visited: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()
        here = Path(folder)
        real = os.path.realpath(here)
        if real in visited:
            log.debug("%s: already visited as %s (symbolic link), not read again", here, real)
            dirs[:] = []
            continue
        visited.add(real)
        if here != root and _has_dicom_files(here):
            studies.append(("_".join(here.relative_to(root).parts), here))
            dirs[:] = []  # a DICOM folder is one study; do not look inside it again
            continue
        for name in sorted(files):
            if _is_volume_file(here / name):
                rel = (here / name).relative_to(root)
                studies.append(("_".join((*rel.parts[:-1], case_name(rel))), here / name))
    if not studies:
        raise InputError(root, "no studies found: expected NIfTI/NRRD files or DICOM series folders")
    return list(zip(_unique([case for case, _ in studies]), [path for _, path in studies]))


@dataclass
class Case:
    """One volume to segment: a file, or one series of a DICOM folder (``series``: what
    ``load_image(path, series)`` takes; None when the folder holds one series)."""

    name: str
    path: Path
    series: str | None = None
    error: str | None = None  # why it cannot be segmented, known before loading


def _series_tag(series, index: int) -> str:
    parts = [] if series.number is None else [f"s{series.number}"]
    slug = re.sub(r"[^A-Za-z0-9-]+", "_", series.description).strip("_")[:40]
    if slug:
        parts.append(slug)
    return "_".join(parts) or f"series{index + 1}"


def find_cases(root: str | os.PathLike, series: str | None = None) -> tuple[list[Case], list[dict]]:
    """``(cases, skipped)``: the studies of ``find_studies``, with DICOM folders of several series
    split by the rule of ``medsemgan segment`` (docs/inference.md):

    * ``series`` given (a UID, a SeriesNumber or ``none``): that series of every DICOM folder;
      a folder without it is skipped.
    * otherwise every series that is a CT/MR image volume (not a localizer, not SEG/SR/..., at
      least 3 slices) is its own case, named ``<study>_s<number>_<description>``; the other series
      are skipped. When only one series is a volume, the case keeps the study's name.

    ``skipped``: ``{"case", "input", "series", "reason"}`` per series or folder left out.
    """
    from medsemgan.data.readers import find_series, list_dicom_series, series_listing

    cases: list[Case] = []
    skipped: list[dict] = []
    for name, path in find_studies(root):
        if not path.is_dir():
            cases.append(Case(name, path))
            continue
        listed = list_dicom_series(path)
        if series is not None:
            if find_series(listed, series) or not listed:
                cases.append(Case(name, path, series))
            else:
                skipped.append({"case": name, "input": str(path), "series": series,
                                "reason": f"holds no series {series!r}: {series_listing(listed)}"})
            continue
        if len(listed) <= 1:
            cases.append(Case(name, path))
            continue
        volumes = [s for s in listed if s.volume_problem() is None]
        for s in listed:
            if s.volume_problem() is not None:
                skipped.append({"case": name, "input": str(path), "series": s.key,
                                "reason": f"series {s.label()}: {s.volume_problem()}"})
        if not volumes:
            cases.append(Case(name, path, error=f"holds {len(listed)} DICOM series and none is a CT/MR volume "
                                                f"(choose one with --series UID|NUMBER|none): {series_listing(listed)}"))
        elif len(volumes) == 1:
            cases.append(Case(name, path, volumes[0].key))
        else:
            cases.extend(Case(f"{name}_{_series_tag(s, i)}", path, s.key) for i, s in enumerate(volumes))
    for case, unique in zip(cases, _unique([c.name for c in cases])):
        case.name = unique
    return cases, skipped


# --------------------------------------------------------------------------- the verb


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--input", required=True,
                        help="NIfTI/NRRD file, DICOM series folder, or a folder of such studies")
    parser.add_argument("-o", "--output", required=True,
                        help="output folder (OUT/<case>.nii.gz), or with one input case a mask file "
                             "name ending .nii.gz/.nii")
    parser.add_argument("--bundle", default=None,
                        help="bundle folder with models/generator.pt and models/encoder.pt (default: "
                             "$MEDSEMGAN_BUNDLE, the checkout's bundles/medsemgan_liver, or the installed "
                             "bundle; docs/install.md)")
    parser.add_argument("--generator", default=None, help="generator weights (instead of the bundle's)")
    parser.add_argument("--encoder", default=None, help="encoder weights (instead of the bundle's)")
    parser.add_argument("--config", default=None,
                        help="model configuration name or YAML (default: the bundle's, else cpu128)")
    parser.add_argument("--method", choices=["gan", "unet"], default="gan",
                        help="gan: the generator + encoder (+ test-time optimisation), default; unet: a "
                             "supervised U-Net baseline (--unet-weights) through the same geometry path")
    parser.add_argument("--unet-weights", default=None, metavar="FILE",
                        help="U-Net weights written by `medsemgan train unet` (with its .json sidecar)")
    parser.add_argument("--series", default=None, metavar="UID|NUMBER|none",
                        help="the DICOM series to segment: SeriesInstanceUID, SeriesNumber, or 'none' "
                             "for the series without a UID (default: every CT/MR volume series of a "
                             "multi-series folder, each its own case)")
    parser.add_argument("--steps", type=int, default=None,
                        help="test-time optimisation steps K (default: the configuration's)")
    parser.add_argument("--encoder-only", action="store_true", help="no optimisation (K = 0): fastest")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    parser.add_argument("--batch-size", type=int, default=None, help="slices optimised together")
    parser.add_argument("--seed", type=int, default=None, help="random seed (same input + seed -> same mask)")
    parser.add_argument("--optimize-noise", action=argparse.BooleanOptionalAction, default=None,
                        help="also optimise per-slice noise maps (default: the configuration's "
                             "optimize_noise, off in the shipped configs)")
    parser.add_argument("--postprocess", choices=list(POSTPROCESS_MODES), default=None,
                        help="3-D clean-up of the mask: keep the largest connected component "
                             "('largest'), and fill enclosed holes ('largest_fill'); default: the "
                             "configuration's inference.postprocess")
    parser.add_argument("--restarts", default=None, metavar="START[,START]",
                        help="extra test-time optimisation starts per slice, kept when their objective "
                             "ends lower: 'neighbour' (the adjacent slice's solved w+), 'mean' (the mean "
                             "latent); each costs one more optimisation pass")
    parser.add_argument("--smooth", type=float, default=None, metavar="WEIGHT",
                        help="3-D consistency: weight of the squared w+ difference between adjacent "
                             "slices during test-time optimisation (default: the configuration's "
                             "inference.smooth_weight, 0 = slices solved independently)")
    parser.add_argument("--modality", choices=["CT", "MR", "ct", "mr"], default=None,
                        help="override the modality (NIfTI/NRRD files do not record it)")
    parser.add_argument("--save-prob", action="store_true",
                        help="also write OUT/<case>_prob.nii.gz (float32 liver probability)")
    parser.add_argument("--preview", action="store_true",
                        help="also write OUT/<case>_overlay.png (axial slices with the mask's contour)")
    parser.add_argument("--continue", dest="resume", action="store_true",
                        help="skip cases whose outputs all exist already")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def load_model(args: argparse.Namespace) -> SegmentationModel:
    if args.generator or args.encoder:
        from medsemgan.inference.model import DEFAULT_CONFIG, ENCODER_FILE, GENERATOR_FILE
        from medsemgan.paths import DEFAULT_BUNDLE_DIR

        bundle = Path(args.bundle) if args.bundle else DEFAULT_BUNDLE_DIR
        return SegmentationModel.from_files(args.generator or bundle / GENERATOR_FILE,
                                            args.encoder or bundle / ENCODER_FILE,
                                            args.config or DEFAULT_CONFIG)
    return SegmentationModel.from_bundle(args.bundle, args.config)


def liver_volume_ml(mask: torch.Tensor, affine: torch.Tensor | np.ndarray) -> float:
    """Liver volume in millilitres: voxels x |det(affine)| mm^3 / 1000."""
    voxel_mm3 = abs(float(np.linalg.det(np.asarray(torch.as_tensor(affine), dtype=np.float64)[:3, :3])))
    return round(int((torch.as_tensor(mask) > 0).sum()) * voxel_mm3 / 1000.0, 3)


def series_record(image: MetaTensor) -> dict[str, Any]:
    """The DICOM series a volume came from (empty for files that are not DICOM series)."""
    meta = image.meta
    if meta.get("format") != "dicom-series":
        return {}
    number = str(meta.get("series_number", "") or "")
    return {"series_uid": str(meta.get("series_uid", "")),
            "series_number": int(number) if number.lstrip("+-").isdigit() else None,
            "series_description": str(meta.get("series_description", ""))}


def output_paths(output: Path, case: str, single_file: bool, save_prob: bool, preview: bool) -> dict[str, Path]:
    """Where a case's outputs go: ``OUT/<case>.nii.gz`` (+ ``.json``, ``_prob.nii.gz``,
    ``_overlay.png``), or with a mask file name ``-o mask.nii.gz`` beside it: ``mask.json``,
    ``mask_prob.nii.gz``, ``mask_overlay.png``."""
    if single_file:
        stem = output.name[: -len(next(s for s in MASK_SUFFIXES if output.name.lower().endswith(s)))]
        folder, ext = output.parent, output.name[len(stem):]
    else:
        stem, folder, ext = case, output, ".nii.gz"
    paths = {"mask": folder / f"{stem}{ext}", "json": folder / f"{stem}.json"}
    if save_prob:
        paths["probability"] = folder / f"{stem}_prob{ext}"
    if preview:
        paths["preview"] = folder / f"{stem}_overlay.png"
    return paths


def _smooth(weight: float | None) -> dict:
    if weight is None:
        return {}
    try:  # one rule for the flag and the configuration key, raised as the CLI's input error
        TTOOptions(smooth_weight=float(weight)).validate()
    except ValueError as err:
        raise InputError(None, f"--smooth: {err}") from None
    return {"smooth_weight": float(weight)}


def _restarts(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    starts = tuple(s.strip() for s in text.split(",") if s.strip() and s.strip() != "none")
    unknown = [s for s in starts if s not in RESTART_STARTS]
    if unknown:
        raise InputError(None, f"--restarts: unknown start {unknown[0]!r}; choose from {', '.join(RESTART_STARTS)}")
    return starts


def _check_args(args: argparse.Namespace) -> None:
    for name, low in (("batch_size", 1), ("steps", 0), ("threads", 1)):
        value = getattr(args, name, None)
        if value is not None and value < low:
            raise InputError(None, f"--{name.replace('_', '-')} must be >= {low}, got {value}")
    method = getattr(args, "method", "gan")
    if method == "unet" and not args.unet_weights:
        raise InputError(None, "--method unet needs --unet-weights FILE (from `medsemgan train unet`)")
    if method != "unet" and getattr(args, "unet_weights", None):
        raise InputError(None, "--unet-weights is for --method unet")


def _segmenter(args: argparse.Namespace, device: torch.device, options: SegmentOptions):
    """``(image -> (mask, extras))`` for the chosen method."""
    if getattr(args, "method", "gan") == "unet":
        from medsemgan.inference.unet import UNetSegmenter, segment_volume_unet

        unet = UNetSegmenter.from_file(args.unet_weights).to(device)
        return lambda image: segment_volume_unet(image, unet, options.modality, options.batch_size or 32,
                                                 options.threshold, save_prob=options.save_prob,
                                                 postprocess=options.postprocess)
    model = load_model(args).to(device)
    return lambda image: segment_volume(image, model, options)


def segment_case(case: Case, segmenter, paths: dict[str, Path]) -> dict[str, Any]:
    """Load, segment and write one case; every file written for it is removed when any step fails
    (each write is atomic, so no half-written file is ever seen either)."""
    from medsemgan.data.io import load_image
    from medsemgan.inference.overlay import overlay_png

    if case.error:
        raise InputError(case.path, case.error)
    written: list[Path] = []
    try:
        image = load_image(case.path, case.series)
        mask, extras = segmenter(image)
        written.append(write_mask(mask, paths["mask"]))
        if "probability" in paths:
            written.append(write_probability(extras.pop("probability"), paths["probability"]))
        extras.pop("probability", None)
        if "preview" in paths:
            title = f"{case.name}  {extras['modality']}  liver {extras['liver_volume_ml']:.0f} mL"
            written.append(overlay_png(image, extras["modality"], mask, paths["preview"], title=title))
        record = {"case": case.name, "input": str(case.path), **series_record(image), **extras,
                  "outputs": {k: str(v) for k, v in paths.items() if k != "json"}}
        written.append(write_json(record, paths["json"]))
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return extras


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    cases, skipped = find_cases(args.input, getattr(args, "series", None))
    if not cases:
        reasons = "; ".join(f"{s['input']}: {s['reason']}" for s in skipped)
        raise InputError(args.input, f"nothing to segment: {reasons}")
    output = Path(args.output)
    single_file = output.name.lower().endswith(MASK_SUFFIXES)
    if single_file and len(cases) != 1:
        raise InputError(output, f"names one mask file, but the input holds {len(cases)} cases "
                                 f"({', '.join(c.name for c in cases[:5])}{', ...' if len(cases) > 5 else ''}); "
                                 "give an output folder")
    if single_file and output.is_dir():
        raise InputError(output, "is a folder although named like a mask file")
    if not single_file and output.exists() and not output.is_dir():
        raise InputError(output, "output exists and is not a folder")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    preview = getattr(args, "preview", False)
    plan = [(case, output_paths(output, case.name, single_file, args.save_prob, preview)) for case in cases]
    if getattr(args, "resume", False):
        for case, paths in plan:
            if all(p.is_file() for p in paths.values()):
                log.info("%s: outputs exist, skipped (--continue)", case.name)
                skipped.append({"case": case.name, "input": str(case.path), "series": case.series,
                                "reason": "outputs exist (--continue)"})
        plan = [(case, paths) for case, paths in plan if not all(p.is_file() for p in paths.values())]
    for entry in skipped:
        log.info("%s: %s (skipped)", entry["input"], entry["reason"])
    options = SegmentOptions(steps=args.steps, encoder_only=args.encoder_only, batch_size=args.batch_size,
                             seed=args.seed, modality=args.modality, save_prob=args.save_prob,
                             progress=not args.no_progress,
                             optimize_noise=getattr(args, "optimize_noise", None),
                             postprocess=getattr(args, "postprocess", None),
                             restarts=_restarts(getattr(args, "restarts", None)),
                             extra_tto=_smooth(getattr(args, "smooth", None)))
    segmenter = _segmenter(args, device, options) if plan else None
    done, failed = [], []
    bar = tqdm(plan, desc="studies", unit="study", disable=args.no_progress or len(plan) < 2)
    for case, paths in bar:
        bar.set_postfix_str(case.name)
        try:
            extras = segment_case(case, segmenter, paths)
        except KeyboardInterrupt:
            raise
        except Exception as err:  # noqa: BLE001 - report every failing study and go on
            where = err.path if isinstance(err, InputError) and err.path else str(case.path)
            problem = err.problem if isinstance(err, InputError) else f"{type(err).__name__}: {err}"
            log.error("%s: %s (study skipped)", where, problem)
            log.debug("traceback", exc_info=True)
            failed.append({"case": case.name, "input": str(case.path), "error": f"{where}: {problem}"})
            continue
        log.info("%s -> %s (%.1f s, %d slices, %s from %s, liver %.1f mL%s)", case.path, paths["mask"],
                 extras["seconds"], extras["slices"], extras["modality"], extras["modality_from"],
                 extras["liver_volume_ml"], ", OUT OF DOMAIN?" if extras.get("out_of_domain") else "")
        record = {"case": case.name, "input": str(case.path), "output": str(paths["mask"]),
                  "seconds": round(extras["seconds"], 2), "modality": extras["modality"],
                  "liver_volume_ml": extras["liver_volume_ml"]}
        if case.series is not None:
            record["series"] = case.series
        if "preview" in paths:
            record["preview"] = str(paths["preview"])
        if "mean_recon_mse" in extras:  # the GAN's reconstruction signals (not the U-Net's)
            record.update(mean_recon_mse=round(extras["mean_recon_mse"], 5),
                          mean_structure_error=round(extras["mean_structure_error"], 5),
                          out_of_domain=extras["out_of_domain"])
        done.append(record)
    bar.close()
    json.dump({"segmented": done, "failed": failed, "skipped": skipped, "device": str(device),
               "method": getattr(args, "method", "gan"),
               "options": {k: v for k, v in asdict(options).items() if k != "extra_tto"}},
              sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 1 if failed else 0
