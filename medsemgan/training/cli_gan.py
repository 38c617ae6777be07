"""``medsemgan train gan --config cpu128|FILE [--out DIR] [--resume] [--init-from RUN] [--kimg N] [--labeled N]``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from medsemgan.paths import default_run_dir
from medsemgan.training.config import load_config, normalise
from medsemgan.training.layout import launch, needs_launch, plan_layout


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from medsemgan.data.datalist import DATA_HELP, LABEL_HELP

    parser.add_argument("--config", required=True, help="configuration name (cpu128, paper256) or YAML file")
    parser.add_argument("--out", default=None,
                        help="run directory (default: <MEDSEMGAN_RUNS or ~/.cache/medsemgan/runs>/gan_<config name>)")
    parser.add_argument("--resume", action="store_true", help="continue from the run directory's checkpoint")
    parser.add_argument("--init-from", default=None, metavar="RUN",
                        help="start from another run's checkpoint: networks whose model: subsection is unchanged "
                             "are carried with their optimiser, the others start fresh (e.g. a wider joint "
                             "discriminator); images seen continue. With --resume: only until this run has its own checkpoint")
    parser.add_argument("--kimg", type=float, default=None, help="train until this many thousand images (overrides training.kimg)")
    parser.add_argument("--labeled", default=None, metavar="N|slices:N|volumes:K|all",
                        help="labeled data for the joint discriminator, in the paper's terms: N slices, "
                             "K volumes, or all (overrides data.labeled_budget)")
    parser.add_argument("--batch", type=int, default=None, help="global batch size (overrides training.batch_size)")
    parser.add_argument("--device", default=None, help="auto, cpu or cuda (overrides training.device)")
    parser.add_argument("--data", default=None, help=DATA_HELP)
    parser.add_argument("--label", default=None, help=LABEL_HELP)
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads per process (overrides training.threads; 1 is faster on a busy machine)")
    parser.add_argument("--no-fast", action="store_true", help="turn every speed lever off (training.fast: false)")
    parser.add_argument("--processes", default=None, metavar="N|auto",
                        help="data-parallel processes (overrides training.processes; auto: 2 on a CPU machine "
                             "with 2+ cores, 1 on GPUs; more than 1 re-launches under torchrun)")


def apply_overrides(config: dict, args: argparse.Namespace) -> dict:
    """Apply the command-line overrides; attributes that are missing or None are left alone (the
    bundle builds its own namespace with a subset of them)."""
    t, d = config["training"], config["data"]

    def given(name):
        return getattr(args, name, None)

    if given("kimg") is not None:
        t["kimg"] = args.kimg
    if given("labeled") is not None:
        labeled = args.labeled
        if isinstance(labeled, str) and labeled.strip().isdigit():
            labeled = int(labeled)
        d["labeled_budget"] = labeled
    if given("batch") is not None:
        t["batch_size"] = args.batch
    if given("device") is not None:
        t["device"] = args.device
    if given("data") is not None:
        d["root"] = args.data
    if given("label") is not None:
        d["label"] = args.label
    if given("threads") is not None:
        t["threads"] = args.threads
    if given("no_fast"):
        t["fast"] = False
    if given("processes") is not None:
        t["processes"] = args.processes
    return normalise(config)


def worker_arguments(args: argparse.Namespace, out: Path, layout) -> list[str]:
    """The same command for each torchrun worker: every override given, the resolved run folder."""
    words = ["train", "gan", "--config", str(args.config), "--out", str(out),
             "--processes", str(layout.processes)]
    if layout.threads is not None:
        words += ["--threads", str(layout.threads)]
    for name in ("kimg", "labeled", "batch", "device", "data", "label", "init_from"):
        value = getattr(args, name, None)
        if value is not None:
            words += [f"--{name.replace('_', '-')}", str(value)]
    if args.resume:
        words.append("--resume")
    if args.no_fast:
        words.append("--no-fast")
    return words


def run(args: argparse.Namespace) -> int:
    from medsemgan.training.cli import print_summary
    from medsemgan.training.run import train_gan

    config = apply_overrides(load_config(args.config), args)
    t = config["training"]
    layout = plan_layout(str(t["device"]), t["processes"], t["threads"])
    t["threads"] = layout.threads
    out = Path(args.out) if args.out else default_run_dir(f"gan_{config['model'].get('name') or 'custom'}")
    if needs_launch(layout):
        return launch(layout, worker_arguments(args, out.resolve(), layout))
    summary = train_gan(config, out, resume=args.resume, init_from=getattr(args, "init_from", None))
    if int(os.environ.get("RANK", "0")) == 0:  # one summary, not one per torchrun worker
        print_summary(summary)
    # A run stopped by a signal exits like one (128 + signal number) after its checkpoint.
    return {"SIGINT": 130, "SIGTERM": 143}.get(summary["stopped_by"], 0)
