"""A bundle's ``large_files.yml``: every weight file with its sha256, as MONAI model-zoo bundles list them.

The file sits at the bundle root, where ``python -m monai.bundle download_large_files --bundle_path
BUNDLE`` looks for it, in the model zoo's format::

    large_files:
      - path: models/generator.pt
        url: ""                  # no download host: `medsemgan install-bundle` copies from a folder/archive
        hash_val: 31486acf...
        hash_type: sha256

``medsemgan export`` rewrites it after writing weights; ``medsemgan install-bundle`` checks every
entry before a bundle is installed (and ``--verify`` checks an installed one).
"""

from __future__ import annotations

import os
from pathlib import Path

from medsemgan.errors import InputError

LARGE_FILES_NAME = "large_files.yml"
WEIGHT_SUFFIXES = (".pt", ".ts", ".onnx", ".safetensors")
HEADER = (
    "# Every weight file of this bundle with its sha256 (MONAI model-zoo format; written by `medsemgan export`).\n"
    "# `medsemgan install-bundle SOURCE` checks each one before installing a bundle;\n"
    "# `python -m monai.bundle download_large_files --bundle_path BUNDLE` checks them too (no url: nothing to download).\n"
)


def large_files_path(bundle: str | os.PathLike) -> Path:
    return Path(bundle) / LARGE_FILES_NAME


def weight_files(bundle: str | os.PathLike) -> list[str]:
    """Bundle-relative paths of the weight files under ``models/`` (sorted)."""
    models = Path(bundle) / "models"
    if not models.is_dir():
        return []
    return sorted(f"models/{p.name}" for p in models.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


def read_large_files(bundle: str | os.PathLike) -> list[dict]:
    """The entries of ``large_files.yml`` (``path``, ``hash_val``, ``hash_type``, ``url``), checked."""
    import yaml

    path = large_files_path(bundle)
    if not path.is_file():
        raise InputError(path, "missing: a bundle lists its weight files with their sha256 here")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise InputError(path, f"not valid YAML: {err}") from None
    entries = raw.get("large_files") if isinstance(raw, dict) else None
    if not isinstance(entries, list) or not entries:
        raise InputError(path, "expected a mapping with a non-empty 'large_files:' list")
    for entry in entries:
        if not isinstance(entry, dict) or not entry.get("path") or not entry.get("hash_val"):
            raise InputError(path, f"every entry needs path: and hash_val:, got {entry!r}")
        if str(entry.get("hash_type", "sha256")).lower() != "sha256":
            raise InputError(path, f"{entry['path']}: only sha256 hashes are supported, got {entry['hash_type']!r}")
        relative = Path(str(entry["path"]))
        if relative.is_absolute() or ".." in relative.parts:
            raise InputError(path, f"{entry['path']}: paths must stay inside the bundle")
    return entries


def write_large_files(bundle: str | os.PathLike) -> Path:
    """(Re)write ``large_files.yml`` from the weight files now in ``models/`` (atomically)."""
    from medsemgan.io_utils import atomic_path, file_sha256

    bundle = Path(bundle)
    lines = [HEADER.rstrip("\n"), "large_files:"]
    for rel in weight_files(bundle):
        lines += [f"  - path: {rel}", '    url: ""', f"    hash_val: {file_sha256(bundle / rel)}",
                  "    hash_type: sha256"]
    with atomic_path(large_files_path(bundle)) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return large_files_path(bundle)


def verify_bundle(bundle: str | os.PathLike, entries: list[dict] | None = None) -> list[dict]:
    """Check every listed file exists under ``bundle`` with its sha256; raise naming the first bad one.

    Also refuses a weight file in ``models/`` that the list does not name (it could not be verified).
    Returns ``[{"path", "sha256", "bytes"}]``.
    """
    from medsemgan.io_utils import file_sha256

    bundle = Path(bundle)
    entries = read_large_files(bundle) if entries is None else entries
    listed = {str(Path(str(e["path"]))) for e in entries}
    unlisted = [rel for rel in weight_files(bundle) if str(Path(rel)) not in listed]
    if unlisted:
        raise InputError(bundle / unlisted[0], f"weight file not listed in {LARGE_FILES_NAME} (cannot be verified)")
    checked = []
    for entry in entries:
        path = bundle / str(entry["path"])
        if not path.is_file():
            raise InputError(path, f"missing (listed in {LARGE_FILES_NAME})")
        digest = file_sha256(path)
        if digest != str(entry["hash_val"]).lower():
            raise InputError(path, f"sha256 {digest[:16]}... does not match {LARGE_FILES_NAME} "
                                   f"({str(entry['hash_val'])[:16]}...): corrupt or replaced file")
        checked.append({"path": str(entry["path"]), "sha256": digest, "bytes": path.stat().st_size})
    return checked
