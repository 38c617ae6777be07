"""Issue 16 item 3, measured on the dev studies: restarts, the w+ smoothness term and 3-D post-processing.

For every dev study (CT: chaos_ct_1 and the 5 BTCV dev patients; MRI: the 10 CHAOS T2 patients)
this segments with the given bundle weights (TTO at the configuration's K, the MR path for MRI)
once per restart setting, and with the U-Net + shift control, then scores every mask raw and after
each post-processing mode (largest component; largest component + hole filling). Per-case rows go
to ``<out>/rows.jsonl`` (appended as they finish, so a killed run resumes where it stopped) and a
summary table to ``<out>/summary.md``.

    MEDSEMGAN_DATA=../shared/data python docs/experiments/inversion_levers.py \
        --out ~/.cache/medsemgan/experiments/inversion_levers --restarts none neighbour --threads 1
    # the smoothness term (inference.smooth_weight) at two weights, MRI only:
    ... --restarts none --smooth 1 10 --sets mri

Cited by docs/results.md ("Inversion levers").
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from medsemgan.data.catalogue import ct_dev_studies, get_study
from medsemgan.evaluation.metrics import dice
from medsemgan.inference.model import SegmentationModel
from medsemgan.inference.postprocess import POSTPROCESS_MODES, postprocess_mask
from medsemgan.inference.segment import SegmentOptions, segment_volume
from medsemgan.inference.unet import UNetSegmenter, segment_volume_unet
from medsemgan.paths import REPO_DIR, data_root

MRI = [f"chaos_t2_{n}" for n in (2, 15, 21, 22, 31, 32, 36, 37, 38, 39)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--bundle", default=str(REPO_DIR / "bundles" / "medsemgan_liver"))
    parser.add_argument("--unet", default=str(REPO_DIR / "baselines" / "unet_shift_all.pt"))
    parser.add_argument("--restarts", nargs="+", default=["none", "neighbour"])
    parser.add_argument("--smooth", nargs="*", type=float, default=[],
                        help="also TTO with these inference.smooth_weight values (no restarts)")
    parser.add_argument("--sets", nargs="+", default=["mri", "ct"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = data_root()
    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / "rows.jsonl"
    done = set()
    if rows_path.is_file():
        done = {(r["case"], r["method"]) for r in map(json.loads, rows_path.read_text().splitlines())}
    by_set = {"ct": [("ct", "chaos_ct_1")] + [("ct_dev", s.name) for s in ct_dev_studies(root)],
              "mri": [("mri", name) for name in MRI]}
    cases = [case for name in args.sets for case in by_set[name]]
    model = SegmentationModel.from_bundle(args.bundle)
    unet = UNetSegmenter.from_file(args.unet)
    methods = ({"unet_shift": None}
               | {f"tto_restarts_{r}": SegmentOptions(seed=0, restarts=() if r == "none" else (r,))
                  for r in args.restarts}
               | {f"tto_smooth_{w:g}": SegmentOptions(seed=0, extra_tto={"smooth_weight": w}) for w in args.smooth})
    for test_set, name in cases:
        study = get_study(root, name)
        loaded = study.load()
        truth = loaded["label"][0].numpy() > 0
        for method, options in methods.items():
            if (name, method) in done:
                continue
            started = time.perf_counter()
            if options is None:
                mask, extras = segment_volume_unet(loaded["image"], unet, study.modality, 32)
            else:
                mask, extras = segment_volume(loaded["image"], model, options)
            row = {"test_set": test_set, "case": name, "method": method,
                   "seconds": round(time.perf_counter() - started, 1),
                   "mean_objective": extras.get("mean_objective")}
            for mode in POSTPROCESS_MODES:
                cleaned = postprocess_mask(mask, mode)[0].numpy() > 0
                row[f"dice_{mode}"] = round(float(dice(cleaned, truth)), 4)
            with open(rows_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    summarise(rows_path, out / "summary.md")


def summarise(rows_path: Path, target: Path) -> None:
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()]
    sets = sorted({r["test_set"] for r in rows})
    methods = sorted({r["method"] for r in rows})
    lines = ["| method | post-processing | " + " | ".join(sets) + " |",
             "|---|---|" + "---|" * len(sets)]
    for method in methods:
        for mode in POSTPROCESS_MODES:
            cells = []
            for test_set in sets:
                values = [r[f"dice_{mode}"] for r in rows if r["method"] == method and r["test_set"] == test_set]
                cells.append(f"{np.mean(values):.3f} ± {np.std(values):.3f} (n={len(values)})" if values else "—")
            lines.append(f"| {method} | {mode} | " + " | ".join(cells) + " |")
    target.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
