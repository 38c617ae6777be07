"""``medsemgan bench infer``: seconds per volume (encoder only, default K), batched vs one slice
at a time, peak memory -- one JSON object.

Volumes: one CHAOS T2 MRI (default ``mr/chaos_t2/image_2.nii.gz``, 31 slices) and one CT
(default ``ct/chaos_ct_1/DICOM_anon``, 78 slices) from the shared data. Times are end to end
(load, preprocessing, encoder + optimisation, inversion to the input grid; writing excluded).
The model is the shipped bundle's when its weights exist, else a randomly initialised model of
the configuration (the JSON says which): speed does not depend on the weights, except through
early stopping.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import time
from pathlib import Path

import torch

from medsemgan.machine import cpu_model
from medsemgan.paths import portable_path
from medsemgan.errors import InputError
from medsemgan.runtime import restores_torch_threads

DEFAULT_MR = Path("mr") / "chaos_t2" / "image_2.nii.gz"
DEFAULT_CT = Path("ct") / "chaos_ct_1" / "DICOM_anon"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", default=None, help="bundle with trained weights (default: bundles/medsemgan_liver)")
    parser.add_argument("--config", default=None, help="configuration when no trained weights exist (default: cpu128)")
    parser.add_argument("--steps", type=int, default=None, help="K for the optimised runs (default: the configuration's)")
    parser.add_argument("--batch-size", type=int, default=None, help="slices per batch (default: the configuration's)")
    parser.add_argument("--mr", default=None, help=f"MRI volume (default: DATA/{DEFAULT_MR})")
    parser.add_argument("--ct", default=None, help=f"CT volume (default: DATA/{DEFAULT_CT})")
    parser.add_argument("--speedup-slices", type=int, default=None,
                        help="slices of the MRI volume for the batched vs one-at-a-time comparison "
                             "(default: the slice batch size, i.e. one full batch)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="alternating batched / one-at-a-time runs in the comparison; each keeps its fastest (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    parser.add_argument("--skip-ct", action="store_true", help="measure the MRI volume only")


def _model(args):
    from medsemgan.inference.model import DEFAULT_CONFIG, SegmentationModel
    from medsemgan.paths import DEFAULT_BUNDLE_DIR

    bundle = Path(args.bundle) if args.bundle else DEFAULT_BUNDLE_DIR
    try:
        return SegmentationModel.from_bundle(bundle, args.config), f"trained weights from {portable_path(bundle)}"
    except InputError as err:
        if args.bundle:  # asked for this bundle explicitly: its problem is the answer
            raise
        name = args.config or DEFAULT_CONFIG
        torch.manual_seed(0)
        return SegmentationModel.build(name), f"randomly initialised {name} (no trained weights: {err.problem})"


def _volume_seconds(path: Path, model, steps: int, batch_size: int | None, extra_tto: dict | None = None) -> dict:
    from medsemgan.inference.segment import SegmentOptions, segment_volume

    cpu = time.process_time()
    mask, extras = segment_volume(path, model, SegmentOptions(steps=steps, batch_size=batch_size,
                                                              extra_tto=extra_tto or {}))
    return {"seconds": round(extras["seconds"], 2), "slices": extras["slices"],
            "cpu_seconds": round(time.process_time() - cpu, 2),
            "steps_run_mean": round(sum(extras["steps_run"]) / max(1, len(extras["steps_run"])), 1),
            "modality": extras["modality"], "smooth_weight": extras["smooth_weight"]}


def _batched_vs_serial(path: Path, model, steps: int | None, count: int, repeats: int = 1) -> dict:
    """The same ``count`` slices (the middle of the volume) optimised in one batch, then one at a
    time with identical options (``speedup``: batching alone), then one at a time in float32
    without early stopping (``speedup_vs_reference_loop``: every lever of the batched path).
    Options and encoder are the ones ``segment`` uses for the volume's modality. With
    ``repeats`` > 1 the batched and one-at-a-time runs alternate and each keeps its fastest run
    (wall and CPU time separately), as ``bench train`` does: load on a shared machine hits both."""
    from medsemgan.data.io import load_image
    from medsemgan.data.transforms import preprocess
    from medsemgan.inference.options import SegmentOptions, resolve_modality
    from medsemgan.inference.tto import invert

    image = load_image(path)
    modality, _ = resolve_modality(image, path, None)
    options = SegmentOptions(steps=steps).tto_options(model.config.inference, modality)
    # Slices solved one at a time have no neighbours to be smoothed towards: compare batching
    # alone (the smoothness term's own cost is ``mr_smoothing_cost``).
    options = dataclasses.replace(options, smooth_weight=0.0)
    volume = preprocess(modality, model.resolution, keys=("image",))({"image": image})["image"]
    depth = volume.shape[-1]
    start = max(0, depth // 2 - count // 2)
    slices = volume.as_tensor()[..., start:start + count].permute(3, 0, 1, 2).contiguous().to(model.device)
    G, E = model.generator, model.encoder_for(modality)

    def timed(run) -> tuple[float, float, object]:
        wall, cpu = time.perf_counter(), time.process_time()
        out = run()
        return time.perf_counter() - wall, time.process_time() - cpu, out

    invert(G, E, slices[:1], options)  # warm-up (allocator, oneDNN primitives)
    runs: dict[str, list[tuple[float, float]]] = {"batched": [], "serial": []}
    for _ in range(max(1, repeats)):
        wall, cpu, batched = timed(lambda: invert(G, E, slices, options))
        runs["batched"].append((wall, cpu))
        wall, cpu, serial = timed(lambda: [invert(G, E, s[None], options) for s in slices])
        runs["serial"].append((wall, cpu))
    best = {name: (min(w for w, _ in r), min(c for _, c in r)) for name, r in runs.items()}
    # The straightforward port: one slice at a time, float32, every step (no early stopping).
    plain = dataclasses.replace(options, bf16=False, early_stop_patience=0)
    invert(G, E, slices[:1], plain)
    plain_wall, plain_cpu, _ = timed(lambda: [invert(G, E, s[None], plain) for s in slices])
    serial_masks = torch.stack([s.label_logits[0] > 0 for s in serial])
    differing = float((serial_masks != (batched.label_logits > 0)).float().mean())
    (b_wall, b_cpu), (s_wall, s_cpu) = best["batched"], best["serial"]
    return {"slices": int(slices.shape[0]), "steps": options.steps, "modality": modality,
            "perceptual": options.perceptual, "repeats": max(1, repeats),
            "batched_seconds": round(b_wall, 2), "serial_seconds": round(s_wall, 2),
            "batched_cpu_seconds": round(b_cpu, 2), "serial_cpu_seconds": round(s_cpu, 2),
            "speedup": round(s_wall / max(b_wall, 1e-9), 2),
            "speedup_cpu": round(s_cpu / max(b_cpu, 1e-9), 2), "masks_identical": differing == 0.0,
            # bf16 kernels round differently for different batch shapes; float32 gives identical masks
            "mask_pixels_differing": round(differing, 6),
            "runs_seconds": {name: [round(w, 2) for w, _ in r] for name, r in runs.items()},
            "reference_loop_seconds": round(plain_wall, 2), "reference_loop_cpu_seconds": round(plain_cpu, 2),
            "speedup_vs_reference_loop": round(plain_wall / max(b_wall, 1e-9), 2)}


def _smoothing_cost(path: Path, model, steps: int, batch_size: int | None, seconds: float, cpu_seconds: float) -> dict:
    """The same volume again with the slice-to-slice w+ smoothness off: what the default costs.
    The CPU-time ratio is the one to read on a shared machine."""
    independent = _volume_seconds(path, model, steps, batch_size, {"smooth_weight": 0.0})
    return {"seconds_smoothed": seconds, "seconds_independent": independent["seconds"],
            "cpu_seconds_smoothed": cpu_seconds, "cpu_seconds_independent": independent["cpu_seconds"],
            "steps_run_mean_independent": independent["steps_run_mean"],
            "smooth_weight_independent": independent["smooth_weight"],
            "cpu_ratio": round(cpu_seconds / max(independent["cpu_seconds"], 1e-9), 3)}


@restores_torch_threads
def run(args: argparse.Namespace) -> dict:
    from medsemgan.weights import resolve_device
    from medsemgan.inference.options import SegmentOptions
    from medsemgan.inference.tto import TTOOptions
    from medsemgan.paths import data_root
    from medsemgan.runtime import keep_freed_memory

    torch.set_num_threads(max(1, args.threads))
    root = data_root()
    mr = Path(args.mr) if args.mr else (root / DEFAULT_MR if root else None)
    ct = Path(args.ct) if args.ct else (root / DEFAULT_CT if root else None)
    if mr is None or not mr.exists():
        raise InputError(mr, "MRI volume not found (set MEDSEMGAN_DATA or pass --mr)")
    if not args.skip_ct and (ct is None or not ct.exists()):
        raise InputError(ct, "CT volume not found (set MEDSEMGAN_DATA or pass --ct)")
    model, which = _model(args)
    model = model.to(resolve_device(args.device))
    options = TTOOptions.from_config(model.config.inference, steps=args.steps)
    load_before = os.getloadavg()
    started = time.perf_counter()
    result: dict = {
        "model": which,
        "config": portable_path(model.config.source),
        "steps": options.steps,
        "tto": {k: v for k, v in vars(options).items() if k != "seed"},
        "tto_modality_overrides": model.config.inference.get("modality_overrides") or {},
        "batch_size": SegmentOptions(batch_size=args.batch_size).slice_batch(model.config.inference),
        "device": str(model.device),
        "threads": torch.get_num_threads(),
        "machine": f"{cpu_model()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        # medsemgan.runtime: glibc keeps freed activation memory (the medsemgan command sets it)
        "keep_freed_memory": keep_freed_memory(),
    }
    for key, path in (("mr", mr), ("ct", None if args.skip_ct else ct)):
        if path is None:
            continue
        encoder_only = _volume_seconds(path, model, 0, args.batch_size)
        optimised = _volume_seconds(path, model, options.steps, args.batch_size)
        result[f"{key}_volume"] = portable_path(path)
        result[f"{key}_slices"] = optimised["slices"]
        result[f"{key}_seconds_encoder_only"] = encoder_only["seconds"]
        result[f"{key}_seconds_optimized"] = optimised["seconds"]
        # CPU time of this process (all threads): divided by the threads it approximates the
        # wall time on an otherwise idle machine (shared machines inflate wall time).
        result[f"{key}_cpu_seconds_encoder_only"] = encoder_only["cpu_seconds"]
        result[f"{key}_cpu_seconds_optimized"] = optimised["cpu_seconds"]
        result[f"{key}_steps_run_mean"] = optimised["steps_run_mean"]
    if options.smooth_weight > 0:
        result["mr_smoothing_cost"] = _smoothing_cost(mr, model, options.steps, args.batch_size,
                                                      result["mr_seconds_optimized"], result["mr_cpu_seconds_optimized"])
    comparison = _batched_vs_serial(mr, model, args.steps, args.speedup_slices or result["batch_size"],
                                    args.repeats)
    result["speedup"] = comparison.pop("speedup")
    result["batched_vs_serial"] = comparison
    # ru_maxrss is in KiB on Linux: the process's peak resident memory over the whole run.
    result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    result["load_average_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    return result
