"""``medsemgan bench WHAT``: each benchmark prints one JSON object on stdout.

A benchmark module ``medsemgan.bench.<what>`` provides ``add_arguments(parser)`` and
``run(args) -> dict``.
"""

from __future__ import annotations

import argparse
import importlib
import json

# what -> (module, help). Add a benchmark here when its module exists.
BENCHMARKS: dict[str, tuple[str, str]] = {
    "ops": ("medsemgan.bench.ops", "custom ops (bias_act, upfirdn2d): compiled CPU path vs reference"),
    "model": ("medsemgan.bench.model", "networks per configuration: parameters, FLOPs, G/D step times, fused vs reference ops, modulated-conv forms"),
    "infer": ("medsemgan.bench.infer", "segmentation speed: seconds per MRI/CT volume, batched vs one slice at a time"),
    "train": ("medsemgan.bench.train", "GAN training step: s/kimg with all speed levers vs the reference path"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="benchmark", metavar="WHAT")
    sub.required = True
    for name, (module_name, help_text) in BENCHMARKS.items():
        bench_parser = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module_name).add_arguments(bench_parser)
        bench_parser.set_defaults(_bench_module=module_name)


def run(args: argparse.Namespace) -> int:
    result = importlib.import_module(args._bench_module).run(args)
    print(json.dumps(result, indent=2))
    return 0
