"""``medsemgan bench train [--config FILE]``: seconds per 1000 images of a full GAN training step.

Two trainers with identical initial weights run side by side in one process, interleaved
iteration by iteration so that load on a shared machine hits both alike:

- ``fast``: every speed lever of the configuration on (``training.fast: true``);
- ``reference``: every lever off (fp32, contiguous layout, ``MEDSEMGAN_OPS=reference``).

A cycle is ``--iterations`` consecutive iterations (default 16 = the R1 interval), so each cycle
contains exactly its share of lazy regularisation steps (R1 once per 16, path length once per 4);
the first iteration of each trainer (all regularisers, allocator warm-up) is not timed. Reported:
the best of ``--repeats`` cycles, in wall-clock seconds (``s_per_kimg_*``, ``speedup``) and in
CPU seconds of the process (``cpu_s_per_kimg_*``, ``speedup_cpu_time``; with one thread the
latter is what the step costs, whatever else runs on the machine). The
training pool is synthetic phantoms at the model's resolution: the step cost does not depend on
the pixels, and the benchmark then runs without the data.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from medsemgan.machine import cpu_model
from medsemgan.training.config import LEVER_KEYS, levers_from, load_config
from medsemgan.runtime import restores_torch_threads


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="cpu128", help="configuration name or YAML file (default cpu128)")
    parser.add_argument("--iterations", type=int, default=16, help="iterations per timed cycle (default 16)")
    parser.add_argument("--repeats", type=int, default=2, help="timed cycles per variant (default 2)")
    parser.add_argument("--batch", type=int, default=None, help="override training.batch_size")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time each lever alone on top of the reference path")


def _variant_config(base: dict, fast: bool, only: str | None = None) -> dict:
    config = copy.deepcopy(base)
    t = config["training"]
    t["fast"] = fast
    t["levers"] = {} if only is None else {only: True}
    t["progress"] = t["tensorboard"] = False
    return config


def _make_trainer(config: dict, initial_state: tuple[dict, dict, dict], tensors):
    from medsemgan.training.gan import GanTrainer
    from medsemgan.training.run import build_networks

    G, D_image, D_joint = build_networks(config)
    for net, state in zip((G, D_image, D_joint), initial_state):
        net.load_state_dict(state)
    return GanTrainer(config, (G, D_image, D_joint), tensors)


def _timed_step(trainer) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one iteration."""
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    sync()
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.step()
    sync()
    return time.perf_counter() - wall, time.process_time() - cpu


@restores_torch_threads
def run(args: argparse.Namespace) -> dict:
    from medsemgan.ops import loader
    from medsemgan.training.run import build_networks, seed_everything
    from medsemgan.training.synthetic import synthetic_tensors

    if args.threads:
        torch.set_num_threads(args.threads)
    base = load_config(args.config)
    base["training"]["device"] = args.device
    if args.batch:
        base["training"]["batch_size"] = args.batch
    nets = build_networks(base)
    initial = tuple(copy.deepcopy(n.state_dict()) for n in nets)
    resolution = nets[0].resolution
    tensors = synthetic_tensors(resolution, unlabeled=64, labeled=8, seed=0)

    variants = {"fast": _variant_config(base, True), "reference": _variant_config(base, False)}
    if args.breakdown:
        for lever in LEVER_KEYS:
            if lever != "compile":
                variants[f"only_{lever}"] = _variant_config(base, False, only=lever)
    trainers = {}
    for name, config in variants.items():
        seed_everything(0)
        trainers[name] = _make_trainer(config, initial, tensors)
        trainers[name].step()  # untimed warm-up: first-use op builds, allocator, all regularisers
    # Interleaved iteration by iteration (every variant at the same iteration index, so the same
    # regularisers are due), summed per cycle; the best cycle is the one least disturbed by other
    # load on a shared machine.
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name in variants:
            wall[name].append(0.0)
            cpu[name].append(0.0)
        for _ in range(args.iterations):
            for name, trainer in trainers.items():
                w, c = _timed_step(trainer)
                wall[name][-1] += w
                cpu[name][-1] += c

    images = args.iterations * int(base["training"]["batch_size"])
    s_per_kimg = {name: min(ts) / images * 1000 for name, ts in wall.items()}
    cpu_per_kimg = {name: min(ts) / images * 1000 for name, ts in cpu.items()}
    result = {
        "benchmark": "train",
        "config": base["model"].get("name"),
        "resolution": resolution,
        "batch_size": int(base["training"]["batch_size"]),
        "iterations_per_cycle": args.iterations,
        "repeats": args.repeats,
        "s_per_kimg_fast": round(s_per_kimg["fast"], 2),
        "s_per_kimg_reference": round(s_per_kimg["reference"], 2),
        "speedup": round(s_per_kimg["reference"] / s_per_kimg["fast"], 3),
        "levers_fast": levers_from(variants["fast"]["training"]),
        "cpu_s_per_kimg_fast": round(cpu_per_kimg["fast"], 2),
        "cpu_s_per_kimg_reference": round(cpu_per_kimg["reference"], 2),
        "speedup_cpu_time": round(cpu_per_kimg["reference"] / cpu_per_kimg["fast"], 3),
        "cycle_wall_seconds": {name: [round(t, 3) for t in ts] for name, ts in wall.items()},
        "cycle_cpu_seconds": {name: [round(t, 3) for t in ts] for name, ts in cpu.items()},
        "device": args.device,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "ops": loader.status(),
    }
    if args.breakdown:
        result["s_per_kimg_only"] = {
            name[len("only_"):]: round(v, 2) for name, v in s_per_kimg.items() if name.startswith("only_")
        }
    return result
