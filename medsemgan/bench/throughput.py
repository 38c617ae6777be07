"""``medsemgan bench throughput``: real ``train gan`` images per second, one process vs several.

Runs the real command twice per repeat, alternating so that load on a shared machine hits both
alike, each into a fresh temporary run folder and for ``--images`` images (data loading, model
build and the final export included, i.e. the command's whole wall time):

- ``single``: ``train gan --processes 1 --threads <cores>`` (one process using every core);
- ``multi``: ``train gan --processes <N> --threads <cores / N>`` (torchrun workers, gloo).

Both use the configuration's global batch, so they train the same thing. Reported: the best of
``--repeats`` runs of each (``images_per_second_single``, ``images_per_second_multi``,
``speedup`` = multi / single), every run's seconds, and the steady rate from ``stats.jsonl``
(training iterations only) beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from medsemgan.machine import cpu_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="cpu128", help="configuration name or YAML file (default cpu128)")
    parser.add_argument("--images", type=int, default=512, help="images per run (default 512)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each layout, alternating (default 2)")
    parser.add_argument("--processes", type=int, default=2, help="processes of the multi layout (default 2)")
    parser.add_argument("--cores", type=int, default=None, help="cores to share (default: all of this machine)")
    parser.add_argument("--data", default=None, help="data root passed to train gan (default: its own)")
    parser.add_argument("--keep", default=None, metavar="DIR", help="keep the run folders under DIR")


def _steady_rate(run_dir: Path) -> float | None:
    """Images per second of the training loop alone, from the last logged speed."""
    stats = run_dir / "stats.jsonl"
    if not stats.is_file():
        return None
    rates = [json.loads(line).get("speed/images_per_s") for line in stats.read_text().splitlines() if line.strip()]
    rates = [r for r in rates if r is not None]
    return rates[-1] if rates else None


def _run_once(args: argparse.Namespace, processes: int, threads: int, run_dir: Path) -> dict:
    command = [sys.executable, "-m", "medsemgan.cli", "train", "gan", "--config", str(args.config),
               "--out", str(run_dir), "--kimg", str(args.images / 1000), "--processes", str(processes),
               "--threads", str(threads)]
    if args.data:
        command += ["--data", str(args.data)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"train gan ({processes} x {threads}) failed with exit code {done.returncode}:\n"
                           + done.stderr[-2000:])
    return {"seconds": seconds, "images_per_second": args.images / seconds, "steady_images_per_second": _steady_rate(run_dir)}


def run(args: argparse.Namespace) -> dict:
    cores = args.cores or os.cpu_count() or 1
    if args.processes < 2:
        raise SystemExit("bench throughput: --processes must be at least 2 (the single layout is the baseline)")
    layouts = {"single": (1, cores), "multi": (args.processes, max(1, cores // args.processes))}
    runs: dict[str, list[dict]] = {name: [] for name in layouts}
    with tempfile.TemporaryDirectory(prefix="bench_throughput_") as scratch:
        base = Path(args.keep) if args.keep else Path(scratch)
        for repeat in range(args.repeats):
            for name, (processes, threads) in layouts.items():
                runs[name].append(_run_once(args, processes, threads, base / f"{name}_{repeat}"))
    best = {name: max(r["images_per_second"] for r in results) for name, results in runs.items()}
    return {
        "benchmark": "throughput",
        "config": str(args.config),
        "images_per_run": args.images,
        "repeats": args.repeats,
        "layouts": {name: {"processes": p, "threads_per_process": t} for name, (p, t) in layouts.items()},
        "images_per_second_single": round(best["single"], 4),
        "images_per_second_multi": round(best["multi"], 4),
        "speedup": round(best["multi"] / best["single"], 3),
        "runs": runs,
        "cpu": cpu_model(),
        "cores": cores,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": sys.version.split()[0],
    }
