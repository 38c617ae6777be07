"""``medsemgan bench WHAT``: each benchmark prints one JSON object on stdout.

A benchmark module ``medsemgan.bench.<what>`` provides ``add_arguments(parser)`` and
``run(args) -> dict``.
"""

from __future__ import annotations

import argparse
import json

from medsemgan.cli_registry import add_subcommands, chosen_module

# what -> (module, help). Add a benchmark here when its module exists.
BENCHMARKS: dict[str, tuple[str, str]] = {
    "ops": ("medsemgan.bench.ops", "custom ops (bias_act, upfirdn2d): compiled CPU path vs reference"),
    "model": ("medsemgan.bench.model", "networks per configuration: parameters, FLOPs, G/D step times, fused vs reference ops, modulated-conv forms"),
    "infer": ("medsemgan.bench.infer", "segmentation speed: seconds per MRI/CT volume, batched vs one slice at a time"),
    "train": ("medsemgan.bench.train", "GAN training step: s/kimg with all speed levers vs the reference path"),
    "throughput": ("medsemgan.bench.throughput", "real `train gan` images/s: one process x all threads vs 2 processes (torchrun, gloo)"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_subcommands(parser, BENCHMARKS, dest="benchmark", module_key="_bench_module")


def run(args: argparse.Namespace) -> int:
    result = chosen_module(args, "_bench_module").run(args)
    print(json.dumps(result, indent=2))
    return 0
