"""Finding and reading the YAML configuration files (``medsemgan/configs/<name>.yaml`` or a path).

Each layer checks its own sections; this module only turns a name or path into a file and the file
into a mapping, with the same errors everywhere.
"""

from __future__ import annotations

import os
from pathlib import Path

from medsemgan.errors import InputError
from medsemgan.paths import CONFIG_DIR


def config_path(name_or_path: str | os.PathLike) -> Path:
    """``cpu128`` -> medsemgan/configs/cpu128.yaml; anything with a suffix or slash is a path."""
    text = os.fspath(name_or_path)
    if os.sep in text or "/" in text or text.endswith((".yaml", ".yml")):
        path = Path(text)
    else:
        path = CONFIG_DIR / f"{text}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise InputError(path, f"no such configuration file (shipped names: {', '.join(known) or 'none'})")
    return path


def read_yaml_mapping(path: str | os.PathLike, expected: str) -> dict:
    """The file's top-level mapping (empty file: ``{}``); ``expected`` words the error when the
    file holds something else (e.g. "expected a mapping with sections model:, data:, training:")."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise InputError(path, f"not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise InputError(path, expected)
    return raw
