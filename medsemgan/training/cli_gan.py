"""``medsemgan train gan --config cpu128|FILE [--out DIR] [--resume] [--kimg N] [--labeled N]``."""

from __future__ import annotations

import argparse
from pathlib import Path

from medsemgan.training.config import load_config, normalise


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="configuration name (cpu128, paper256) or YAML file")
    parser.add_argument("--out", default=None, help="run directory (default: runs/gan_<config name>)")
    parser.add_argument("--resume", action="store_true", help="continue from the run directory's checkpoint")
    parser.add_argument("--kimg", type=float, default=None, help="train until this many thousand images (overrides training.kimg)")
    parser.add_argument("--labeled", default=None, metavar="N|slices:N|volumes:K|all",
                        help="labeled data for the joint discriminator, in the paper's terms: N slices, "
                             "K volumes, or all (overrides data.labeled_budget)")
    parser.add_argument("--batch", type=int, default=None, help="global batch size (overrides training.batch_size)")
    parser.add_argument("--device", default=None, help="auto, cpu or cuda (overrides training.device)")
    parser.add_argument("--data", default=None, help="data root (overrides data.root)")
    parser.add_argument("--no-fast", action="store_true", help="turn every speed lever off (training.fast: false)")


def apply_overrides(config: dict, args: argparse.Namespace) -> dict:
    t, d = config["training"], config["data"]
    if args.kimg is not None:
        t["kimg"] = args.kimg
    if args.labeled is not None:
        d["labeled_budget"] = int(args.labeled) if args.labeled.strip().isdigit() else args.labeled
    if args.batch is not None:
        t["batch_size"] = args.batch
    if args.device is not None:
        t["device"] = args.device
    if args.data is not None:
        d["root"] = args.data
    if args.no_fast:
        t["fast"] = False
    return normalise(config)


def run(args: argparse.Namespace) -> int:
    from medsemgan.training.cli import print_summary
    from medsemgan.training.run import train_gan

    config = apply_overrides(load_config(args.config), args)
    out = Path(args.out) if args.out else Path("runs") / f"gan_{config['model'].get('name') or 'custom'}"
    summary = train_gan(config, out, resume=args.resume)
    print_summary(summary)
    # A run stopped by a signal exits like one (128 + signal number) after its checkpoint.
    return {"SIGINT": 130, "SIGTERM": 143}.get(summary["stopped_by"], 0)
