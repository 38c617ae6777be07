"""Issue 16: average a run's kept EMA-generator snapshots (a post-hoc, longer EMA).

The 0.4.0 run's label head swings by up to 0.16 clean-CT Dice within 5,000 images while its image
side holds still (training.md, "The 0.4.0 run"); its EMA (2.5 kimg) is shorter than the swing.
Snapshots of one run lie on one trajectory, close in weight space, so their parameter mean is a
generator too (the idea behind post-hoc EMA and stochastic weight averaging). This writes the
float32 mean of the given snapshots (buffers such as the mapping's ``w_avg`` are averaged too) as
``OUT/<name>/snapshots/generator_ema_<images of the newest>.pt``, with the run's ``config.json``
copied beside, so ``gan_milestones.py`` scores it under the run name ``<name>`` and ``medsemgan
export --gan`` accepts it (and copies ``averaged.json``, which snapshots were averaged, into the
bundle's provenance).

    python docs/experiments/snapshot_average.py --name avg_50_65k --out ~/.cache/medsemgan/snapshot_avg \\
        ~/.cache/medsemgan/runs/gan_cpu128/snapshots/generator_ema_0000{50,55,60,65}000.pt
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from medsemgan.bundle.export import AVERAGED_RECORD
from medsemgan.io_utils import atomic_path
from medsemgan.training.run import snapshot_images_seen, snapshot_path
from medsemgan.weights import read_weights


def average(paths: list[Path]) -> dict[str, torch.Tensor]:
    states = [read_weights(p, "generator snapshot") for p in paths]
    keys = states[0].keys()
    if any(s.keys() != keys for s in states):
        raise SystemExit("the snapshots do not share one architecture")
    return {k: torch.stack([s[k].float() for s in states]).mean(0) for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("snapshots", nargs="+", type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    paths = sorted((p.expanduser() for p in args.snapshots), key=lambda p: snapshot_images_seen(p) or -1)
    seen = [snapshot_images_seen(p) for p in paths]
    if None in seen:
        raise SystemExit("every input must be a numbered snapshot (snapshots/generator_ema_<images>.pt)")
    run = args.out.expanduser() / args.name
    target = snapshot_path(run, seen[-1])
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(paths[-1].parent.parent / "config.json", run / "config.json")
    with atomic_path(target) as tmp:
        torch.save(average(paths), tmp)
    record = {"run": paths[-1].parent.parent.name, "snapshots": [p.name for p in paths], "images_seen": seen}
    (run / AVERAGED_RECORD).write_text(json.dumps(record) + "\n")
    print(target)


if __name__ == "__main__":
    main()
