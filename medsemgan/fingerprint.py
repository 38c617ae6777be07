"""Cache keys that follow what a cached value was computed from: the code and the input bytes.

* :func:`content_hash`: sha256 of a file's bytes (of every file below it, for a folder such as a
  DICOM series). Hashes are remembered by ``(path, size, mtime)``, in memory and in
  ``medsemgan.paths.cache_dir()/content_hashes.json``, so a file is read again only when it
  changes: re-keying a report over gigabytes of studies costs a ``stat`` per file.
* :func:`code_fingerprint`: sha256 over the source files of the named parts of the ``medsemgan``
  package (subpackages or modules) and the versions of the libraries that compute with them
  (torch, MONAI, numpy), so a code change that moves a number invalidates the values cached
  before it.

Used by the report's per-case cache (``medsemgan.evaluation.report_jobs``) and the slice caches
(``medsemgan.data.slices``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Iterable

from medsemgan.io_utils import atomic_path, file_sha256

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
# what counts as code in a part of the package (the ops' C++/CUDA sources included)
SOURCE_SUFFIXES = (".py", ".cpp", ".cu", ".h", ".cuh")
_STORE_NAME = "content_hashes.json"

_lock = threading.Lock()
_memory: dict[str, list] = {}  # resolved path -> [size, mtime_ns, sha256]
_store_loaded: set[Path] = set()


def _store_path() -> Path | None:
    try:
        from medsemgan.paths import cache_dir
        return cache_dir() / _STORE_NAME
    except OSError:  # no writable cache: remember in memory only
        return None


def _load_store(store: Path | None) -> None:
    if store is None or store in _store_loaded:
        return
    _store_loaded.add(store)
    try:
        entries = json.loads(store.read_text()) if store.is_file() else {}
    except (OSError, json.JSONDecodeError):
        entries = {}
    for path, entry in entries.items():
        if isinstance(entry, list) and len(entry) == 3:
            _memory.setdefault(path, entry)


def _save_store(store: Path | None) -> None:
    if store is None:
        return
    kept = {path: entry for path, entry in _memory.items() if os.path.exists(path)}  # forget deleted files
    try:
        with atomic_path(store) as tmp:
            tmp.write_text(json.dumps(kept, sort_keys=True))
    except OSError as err:  # a read-only cache only costs re-hashing next time
        log.debug("cannot save %s: %s", store, err)


def _file_hash(path: Path, dirty: list) -> str:
    key = str(path.resolve())
    stat = path.stat()
    entry = _memory.get(key)
    if entry is not None and entry[0] == stat.st_size and entry[1] == stat.st_mtime_ns:
        return entry[2]
    digest = file_sha256(path)
    _memory[key] = [stat.st_size, stat.st_mtime_ns, digest]
    dirty.append(key)
    return digest


def content_hash(path: str | os.PathLike) -> str:
    """sha256 (hex) of a file's bytes; of a folder, over its files' relative paths and hashes.

    Raises ``FileNotFoundError`` for a missing path. Remembered by (path, size, mtime): a file
    rewritten with the same size within the file system's time resolution keeps its old hash.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(path)
    with _lock:
        store = _store_path()
        _load_store(store)
        dirty: list = []
        if path.is_dir():
            digest = hashlib.sha256()
            for f in sorted(p for p in path.rglob("*") if p.is_file()):
                digest.update(f"{f.relative_to(path).as_posix()}\0{_file_hash(f, dirty)}\n".encode())
            result = digest.hexdigest()
        else:
            result = _file_hash(path, dirty)
        if dirty:
            _save_store(store)
    return result


def content_hashes(paths: Iterable[str | os.PathLike | None]) -> list[str | None]:
    """:func:`content_hash` of each path; None for a None or missing path."""
    return [content_hash(p) if p is not None and Path(p).exists() else None for p in paths]


def code_fingerprint(parts: Iterable[str], root: str | os.PathLike = PACKAGE_DIR,
                     libraries: bool = True) -> str:
    """sha256 (hex, 20 characters) over the source files of ``parts`` of the package below
    ``root``: subpackage folders (``"data"``) or modules (``"io_utils.py"``), with their paths;
    with ``libraries`` also the torch, MONAI and numpy versions. A part that does not exist
    counts as absent (so a module that moves changes the fingerprint, as it should)."""
    root = Path(root)
    digest = hashlib.sha256()
    for part in sorted(set(parts)):
        target = root / part
        files = sorted(p for p in target.rglob("*") if p.suffix in SOURCE_SUFFIXES and p.is_file()) \
            if target.is_dir() else ([target] if target.is_file() else [])
        digest.update(f"part {part} {len(files)}\n".encode())
        for f in files:
            digest.update(f"{f.relative_to(root).as_posix()}\0{content_hash(f)}\n".encode())
    if libraries:
        import monai
        import numpy
        import torch
        digest.update(f"torch {torch.__version__} monai {monai.__version__} numpy {numpy.__version__}".encode())
    return digest.hexdigest()[:20]
