"""Issue 16: the 0.4.0 run's EMA generator at its milestones, on the A/B's CT-only evidence.

Each generator file (the run's ``snapshots/generator_ema_<images>.pt``, or an exported
``generator.pt`` with its ``provenance.json``) is projected from its mean latent onto the 30 BTCV
pool slices of ``dshift_ab/evaluate.py`` (labels never trained on): clean CT with MS-SSIM + MSE and
three fixed modality shifts with LNCC, 50 steps, Dice pooled. One JSON row per generator is
appended to ``results/gan_0.4.0_milestones.jsonl`` (or ``--rows FILE``, given first); a generator
whose run and images-seen count already have a row is skipped, so the script can be re-run as
snapshots appear. The run is the folder above ``snapshots/`` (or above a milestone's ``models/``). About 6 minutes per generator
on one thread.

    MEDSEMGAN_DATA=../shared/data OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive \\
        python docs/experiments/gan_milestones.py ~/.cache/medsemgan/runs/gan_cpu128/snapshots/*.pt

For reference (same evidence, results.md "Generator A/B"): shipped 0.3.1 generator (20,012 images,
three CT volumes) clean 0.716 / shifted 0.603; arm A at 22,000 images 0.639 / 0.565.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "dshift_ab"))
from evaluate import evidence_slices, load_generator, project, shifted_copies  # noqa: E402

from medsemgan.training.config import load_config  # noqa: E402

ROWS = Path(__file__).parent / "results" / "gan_0.4.0_milestones.jsonl"


def images_seen(path: Path) -> int:
    provenance = path.parent / "provenance.json"
    if provenance.is_file():
        return int(json.loads(provenance.read_text())[path.name]["images_seen"])
    found = re.search(r"(\d+)\.pt$", path.name)
    if not found:
        raise SystemExit(f"{path}: cannot tell how many images this generator has seen")
    return int(found.group(1))


def run_name(path: Path) -> str:
    """The run a generator file belongs to: ``<run>/snapshots/x.pt`` or ``<milestone>/models/x.pt``."""
    return path.parent.parent.name


def main(paths: list[Path], rows: Path = ROWS) -> None:
    done = ({(r.get("run", ""), r["images_seen"]) for r in map(json.loads, rows.read_text().splitlines())}
            if rows.is_file() else set())
    config = load_config("cpu128")
    data = evidence_slices()
    shifted = shifted_copies(data["image"])
    for path in sorted(paths, key=images_seen):
        seen = images_seen(path)
        if (run_name(path), seen) in done:
            continue
        started = time.perf_counter()
        G = load_generator(path, config["model"])
        clean = project(G, data["image"], data["mask"], config["inference"], perceptual="ms_ssim", mse_weight=0.1)
        lncc = [project(G, x, data["mask"], config["inference"], perceptual="lncc", mse_weight=0.0) for x in shifted]
        row = {"run": run_name(path), "images_seen": seen, "source": path.name, "clean_ct_msssim": round(clean, 4),
               "shifted_ct_lncc": [round(v, 4) for v in lncc], "shifted_ct_lncc_mean": round(sum(lncc) / len(lncc), 4),
               "seconds": round(time.perf_counter() - started, 1)}
        with rows.open("a") as out:
            out.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
        done.add((row["run"], seen))


if __name__ == "__main__":
    args = sys.argv[1:]
    target = ROWS
    if args[:1] == ["--rows"]:  # another results file, e.g. an A/B's
        target, args = Path(args[1]), args[2:]
    main([Path(p).expanduser() for p in args], target)
