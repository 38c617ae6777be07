"""Where things live: the shared data, the repository, the default bundle."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
CONFIG_DIR = PACKAGE_DIR / "configs"
DEFAULT_BUNDLE_DIR = REPO_DIR / "bundles" / "medsemgan_liver"


def data_root() -> Path | None:
    """The real studies: ``$MEDSEMGAN_DATA`` if set, else ``../shared/data`` beside the repository.

    Returns ``None`` when neither exists, so callers can skip or explain instead of crashing.
    """
    env = os.environ.get("MEDSEMGAN_DATA")
    candidates = [Path(env)] if env else [REPO_DIR.parent / "shared" / "data"]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    return None


def cache_dir() -> Path:
    """A writable cache (e.g. unpacked IRCAD masks); never inside ``../shared``."""
    path = Path(os.environ.get("MEDSEMGAN_CACHE", Path.home() / ".cache" / "medsemgan"))
    path.mkdir(parents=True, exist_ok=True)
    return path
