"""The ``medsemgan`` command.

Each verb lives in the layer that owns it; this module only routes. A verb module provides
``add_arguments(parser)`` and ``run(args) -> int`` and is imported lazily, so ``medsemgan info``
does not pay for importing the models.
"""

from __future__ import annotations

import argparse
import logging
import sys

from medsemgan import __version__
from medsemgan.cli_registry import add_subcommands, chosen_module
from medsemgan.errors import InputError
from medsemgan.runtime import keep_freed_memory

# verb -> (module, one-line help). Add a verb here when its module exists and works.
COMMANDS: dict[str, tuple[str, str]] = {
    "bench": ("medsemgan.bench.cli", "measure speed: ops, model, train, infer"),
    "demo": ("medsemgan.bundle.demo", "segment the sample study shipped with the bundle (and real studies if present)"),
    "info": ("medsemgan.data.info", "describe a CT/MRI volume as JSON: format, shape, spacing, orientation, modality, series"),
    "install-bundle": ("medsemgan.bundle.install", "install or check a bundle (folder, archive or URL) in the default folder, sha256-verified"),
    "export": ("medsemgan.bundle.export", "put trained generator/encoder weights into a bundle (fp16, with provenance)"),
    "evaluate": ("medsemgan.evaluation.evaluate", "score masks: Dice, RAVD, ASSD, MSSD, HD95 (CHAOS)"),
    "segment": ("medsemgan.inference.segment", "segment the liver: NIfTI/NRRD/DICOM study in, NIfTI mask out"),
    "train": ("medsemgan.training.cli", "train models: gan (encoder, unet as they land)"),
    "report": ("medsemgan.evaluation.report", "CT -> MRI cross-modality report: methods x label budgets, Dice table, figures"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with ``only``, import just that verb's module (fast start-up)."""
    parser = argparse.ArgumentParser(
        prog="medsemgan",
        description="Semi-supervised liver segmentation in CT and MRI (SemanticGAN-style).",
    )
    parser.add_argument("--version", action="version", version=f"medsemgan {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    add_subcommands(parser, COMMANDS, dest="command", module_key="_module", metavar="COMMAND", only=only)
    return parser


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    # Importing every verb's module (torch, MONAI, ...) costs seconds: build only the one asked for.
    chosen = next((w for w in words if not w.startswith("-")), None)
    parser = build_parser(chosen if chosen in COMMANDS else None)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    module = chosen_module(args, "_module")
    keep_freed_memory()
    try:
        return int(module.run(args) or 0)
    except InputError as err:
        print(f"medsemgan {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"medsemgan {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
