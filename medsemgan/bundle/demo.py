"""``medsemgan demo``: segment the sample study shipped with the bundle (and real studies if present).

1. Checks that the bundle holds trained weights (``models/generator.pt``, ``models/encoder.pt``);
   says plainly what is missing otherwise.
2. Segments the bundle's synthetic sample (``sample/``, made by ``medsemgan.bundle.make_sample``
   from the shipped generator; made on the fly into the output folder if the bundle has none),
   writes the mask and a PNG overlay, prints Dice against the sample's generated label and the time.
3. When the real studies are present (``$MEDSEMGAN_DATA`` or ``../shared/data``), does the same for
   one real CT (chaos_ct_1) and one real MRI (a CHAOS T2-SPIR case) against their manual labels.

Needs no network. Everything goes through ``segment_volume``, the code ``medsemgan segment`` runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from medsemgan.errors import InputError

log = logging.getLogger(__name__)

DEFAULT_OUT = Path("out") / "demo"
REAL_CT = "chaos_ct_1"
REAL_MR = "chaos_t2_2"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from medsemgan.paths import DEFAULT_BUNDLE_DIR

    parser.add_argument("--bundle", default=str(DEFAULT_BUNDLE_DIR), help="bundle folder (default: %(default)s)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=None,
                        help="test-time optimisation steps K (default: the model configuration's)")
    parser.add_argument("--encoder-only", action="store_true", help="no optimisation (K = 0): fastest")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=None, help="slices optimised together")
    parser.add_argument("--seed", type=int, default=None, help="random seed of the optimisation")
    parser.add_argument("--no-real", action="store_true", help="skip the real studies even when present")
    parser.add_argument("--mr-case", default=REAL_MR, help="real MRI study to segment (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _relative(path: Path) -> Path:
    """Shorter paths in messages when the bundle is under the working directory."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path


def weights_status(bundle: Path) -> dict[str, bool]:
    from medsemgan.inference.model import ENCODER_FILE, GENERATOR_FILE

    return {str(GENERATOR_FILE): (bundle / GENERATOR_FILE).is_file(),
            str(ENCODER_FILE): (bundle / ENCODER_FILE).is_file()}


def no_weights_message(bundle: Path, status: dict[str, bool]) -> str:
    missing = [name for name, present in status.items() if not present]
    models = bundle / "models"
    return (
        f"medsemgan demo: no trained weights in {bundle} ({', '.join(missing)} missing).\n"
        "The demo segments with the model shipped in the bundle, and this checkout does not ship one "
        "yet (training produces it).\n"
        "To make the weights yourself (CPU: hours; see docs/bundle.md and docs/demo.md):\n"
        "  medsemgan train gan --config cpu128 --out runs/gan\n"
        f"  cp runs/gan/generator_ema.pt {models / 'generator.pt'}\n"
        f"  medsemgan train encoder --config cpu128 --generator {models / 'generator.pt'} --out runs/encoder\n"
        f"  cp runs/encoder/encoder.pt {models / 'encoder.pt'}\n"
        f"  python -m medsemgan.bundle.make_sample --bundle {bundle}    # the demo's sample for these weights"
    )


def _segment_options(args: argparse.Namespace, modality: str | None):
    from medsemgan.inference.segment import SegmentOptions

    return SegmentOptions(steps=args.steps, encoder_only=args.encoder_only, batch_size=args.batch_size,
                          seed=args.seed, modality=modality, progress=not args.no_progress)


def segment_case(name: str, image, label, modality: str, model, args: argparse.Namespace, out: Path,
                 started: float, what: str) -> dict[str, Any]:
    """Segment one loaded study, write mask + overlay, return the record printed and saved."""
    from medsemgan.inference.overlay import overlay_png
    from medsemgan.bundle.transforms import as_numpy_mask
    from medsemgan.evaluation.metrics import dice
    from medsemgan.inference.segment import segment_volume
    from medsemgan.inference.writers import write_mask

    mask, extras = segment_volume(image, model, _segment_options(args, modality))
    seconds = time.perf_counter() - started
    mask_path = write_mask(mask, out / f"{name}.nii.gz")
    score = dice(as_numpy_mask(mask), as_numpy_mask(label)) if label is not None else None
    title = f"{name} ({what}): Dice {score:.3f}" if score is not None else f"{name} ({what})"
    png = overlay_png(image, modality, mask, out / f"{name}_overlay.png", label=label, title=title)
    return {"case": name, "what": what, "modality": modality, "shape": extras["shape"],
            "dice": None if score is None else round(score, 4), "seconds": round(seconds, 1),
            "steps": extras["steps"], "mean_recon_mse": round(extras["mean_recon_mse"], 5),
            "mean_structure_error": round(extras["mean_structure_error"], 5),
            "ood_signal": extras["ood_signal"], "ood_score": round(extras["ood_score"], 5),
            "out_of_domain": extras["out_of_domain"], "mask": str(mask_path), "overlay": str(png)}


def _sample(bundle: Path, out: Path) -> tuple[dict[str, Path], dict[str, Any], str | None]:
    """The bundle's sample, or one made now from its generator; plus a note for the user."""
    from medsemgan.bundle.make_sample import file_sha256, make_sample, sample_paths
    from medsemgan.inference.model import GENERATOR_FILE

    paths = sample_paths(bundle)
    note = None
    if not (paths["image"].is_file() and paths["label"].is_file()):
        made = make_sample(bundle, out / "sample")
        paths = {k: Path(v) for k, v in made.items()}
        note = (f"the bundle ships no sample study ({sample_paths(bundle)['root']}); made one from its generator "
                f"in {paths['root']} (python -m medsemgan.bundle.make_sample writes it into the bundle)")
    info = json.loads(paths["info"].read_text()) if paths["info"].is_file() else {}
    expected = info.get("generator_sha256")
    if expected and expected != file_sha256(bundle / GENERATOR_FILE):
        note = ("the sample was made with other generator weights than the bundle's: its label is not what "
                "this generator would draw, so its Dice is not meaningful (remake it: "
                "python -m medsemgan.bundle.make_sample)")
    return paths, info, note


def print_record(record: dict[str, Any]) -> None:
    dice = "n/a" if record["dice"] is None else f"{record['dice']:.3f}"
    flag = "  [generator explains it poorly: out of domain]" if record["out_of_domain"] else ""
    print(f"  {record['case']:<12} {record['what']:<44} Dice {dice:>6}   {record['seconds']:7.1f} s"
          f"   K={record['steps']}{flag}")
    print(f"  {'':<12} mask {record['mask']}   overlay {record['overlay']}")


def run(args: argparse.Namespace) -> int:
    from medsemgan.data.io import load_image
    from medsemgan.inference.model import SegmentationModel, resolve_device
    from medsemgan.paths import data_root

    bundle, out = _relative(Path(args.bundle)), Path(args.out)
    if not bundle.is_dir():
        raise InputError(bundle, "bundle folder does not exist")
    status = weights_status(bundle)
    if not all(status.values()):
        print(no_weights_message(bundle, status), file=sys.stderr)
        return 1
    if args.steps is not None and args.steps < 0:
        raise InputError(None, f"--steps must be >= 0, got {args.steps}")
    device = resolve_device(args.device)
    demo_started = started = time.perf_counter()
    model = SegmentationModel.from_bundle(bundle).to(device)
    print(f"medsemgan demo: bundle {bundle} ({model.config.source}, {model.resolution} px), device {device}, "
          f"model loaded in {time.perf_counter() - started:.1f} s")
    out.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    failed: list[str] = []

    paths, info, note = _sample(bundle, out)
    if note:
        print(f"  note: {note}")
    started = time.perf_counter()
    image, label = load_image(paths["image"]), load_image(paths["label"])
    record = segment_case(info.get("name", paths["image"].name.split(".")[0]), image, label,
                          info.get("modality", "CT"), model, args, out, started,
                          "synthetic sample vs its generated label")
    records.append(record)
    print_record(record)

    root = None if args.no_real else data_root()
    if root is None:
        print("  real studies: " + ("skipped (--no-real)" if args.no_real else
              "not found (set MEDSEMGAN_DATA or place them at ../shared/data): skipped"))
    else:
        from medsemgan.data.catalogue import get_study

        for name, what in ((REAL_CT, "real CT (CHAOS), manual label"),
                           (args.mr_case, "real MRI T2-SPIR (CHAOS), out of domain")):
            started = time.perf_counter()
            try:
                study = get_study(root, name)
                loaded = study.load()
                record = segment_case(name, loaded["image"], loaded["label"], study.modality, model, args,
                                      out, started, what)
            except InputError as err:
                print(f"  {name:<12} failed: {err}")
                failed.append(name)
                continue
            records.append(record)
            print_record(record)
    summary = {"bundle": str(bundle), "device": str(device), "results": records, "failed": failed,
               "note": note}
    from medsemgan.inference.writers import write_json

    write_json(summary, out / "demo.json")
    print(f"  summary: {out / 'demo.json'}   total {time.perf_counter() - demo_started:.1f} s")
    print("  The sample is synthetic (drawn from the shipped generator with its own label): its Dice shows "
          "that encoder + optimisation recover the generator's label, not accuracy on real anatomy.")
    return 1 if failed else 0
