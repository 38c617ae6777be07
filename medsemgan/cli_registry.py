"""Sub-command registries: a table ``name -> (module, one-line help)`` turned into argparse
sub-parsers, each filled by its module's ``add_arguments(parser)``.

Used by ``medsemgan`` itself (verbs), ``medsemgan train WHAT`` and ``medsemgan bench WHAT``.
Modules are imported only when their sub-parser is filled, so a registry can name heavy layers.
"""

from __future__ import annotations

import argparse
import importlib
from types import ModuleType

Registry = dict[str, tuple[str, str]]


def add_subcommands(parser: argparse.ArgumentParser, registry: Registry, *, dest: str, module_key: str,
                    metavar: str = "WHAT", only: str | None = None) -> None:
    """One required sub-command per registry entry; the chosen entry's module name is stored in
    ``args.<module_key>``. With ``only``, just that entry's module is imported (the others get a
    bare sub-parser: enough for ``--help`` and for argparse to accept the name).

    ``module_key`` must differ between nested registries: a sub-parser's defaults overwrite the
    parent's attribute of the same name.
    """
    sub = parser.add_subparsers(dest=dest, metavar=metavar)
    sub.required = True
    for name, (module_name, help_text) in registry.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if only is None or name == only:
            importlib.import_module(module_name).add_arguments(sub_parser)
        sub_parser.set_defaults(**{module_key: module_name})


def chosen_module(args: argparse.Namespace, module_key: str) -> ModuleType:
    """The module of the sub-command ``args`` was parsed for."""
    return importlib.import_module(getattr(args, module_key))
