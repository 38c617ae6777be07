"""``medsemgan train WHAT``: the training verbs.

``gan`` is the semi-supervised joint GAN (this module). Other trainers (``encoder``, ``unet``)
register in ``TRAINERS`` below: a module with ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import json
import sys

from medsemgan.cli_registry import add_subcommands, chosen_module

# what -> (module, help). The GAN's subcommand lives here; others add a line.
TRAINERS: dict[str, tuple[str, str]] = {
    "gan": ("medsemgan.training.cli_gan", "train the joint image-label StyleGAN2 (semi-supervised)"),
    "encoder": ("medsemgan.training.encoder", "train the image -> W+ encoder for a trained generator"),
    "unet": ("medsemgan.training.unet", "train the supervised 2-D U-Net baseline on the same labeled slices"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_subcommands(parser, TRAINERS, dest="trainer", module_key="_train_module")


def run(args: argparse.Namespace) -> int:
    return int(chosen_module(args, "_train_module").run(args) or 0)


def print_summary(summary: dict) -> None:
    """One JSON object on stdout (progress and logs go to stderr)."""
    printable = {k: v for k, v in summary.items() if isinstance(v, (str, int, float, bool, dict, type(None)))}
    json.dump(printable, sys.stdout, indent=2)
    sys.stdout.write("\n")
