"""The package's layering (issue 18): no import cycle between inference modules, and inference,
evaluation and models never import the training layer."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "medsemgan"


def imported_modules(path: Path) -> set[str]:
    """Every ``medsemgan...`` module a file imports, at any depth (function-level imports too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("medsemgan"):
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("medsemgan"))
    return out


def test_model_and_options_do_not_import_segment():
    for name in ("model.py", "options.py"):
        assert "medsemgan.inference.segment" not in imported_modules(PACKAGE / "inference" / name), name


@pytest.mark.parametrize("layer", ["inference", "evaluation", "models", "data", "ops"])
def test_lower_layers_do_not_import_training(layer):
    offenders = {str(p.relative_to(PACKAGE)): sorted(m for m in imported_modules(p) if m.startswith("medsemgan.training"))
                 for p in sorted((PACKAGE / layer).rglob("*.py"))}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_subpackage_imports_a_private_name_of_another():
    """Private names stay inside their subpackage (training once reached into inference.model)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        mine = "medsemgan." + path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("medsemgan") \
                    and not node.module.startswith(mine):
                found += [f"{path.relative_to(PACKAGE)}: {node.module}.{a.name}" for a in node.names
                          if a.name.startswith("_") and a.name != "__version__"]
    assert found == []


def test_importing_the_model_loads_neither_segment_nor_training():
    code = ("import sys, medsemgan.inference.model, medsemgan.inference.unet; "
            "print(sorted(m for m in sys.modules if m.startswith(('medsemgan.inference.segment', 'medsemgan.training'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
