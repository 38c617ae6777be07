"""``medsemgan install-bundle``: install (or check) a bundle in the folder medsemgan finds by default.

::

    medsemgan install-bundle SOURCE [--dest DIR] [--force]
    medsemgan install-bundle --verify [DIR]

``SOURCE`` is a bundle folder, a ``.zip``/``.tar.gz``/``.tgz`` archive of one (the bundle at the
top or in one sub-folder, as model-zoo archives are), a ``file://`` URL of either, or an
``http(s)://`` URL of an archive (the only case that needs a network). Every file listed in the
bundle's ``large_files.yml`` is checked against its sha256, in the source and again after the
copy; the bundle is copied into a temporary folder beside the destination and renamed into place
only when everything matched, so a failed install leaves nothing behind (and an existing bundle
untouched). The default destination is :func:`medsemgan.paths.user_bundle_dir`
(``~/.cache/torch/hub/bundle/medsemgan_liver``), where ``segment``, ``demo`` and the Python API look
when neither ``--bundle`` nor ``$MEDSEMGAN_BUNDLE`` is given. See docs/install.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from medsemgan.bundle.large_files import read_large_files, verify_bundle
from medsemgan.errors import InputError

log = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")
# Outputs a bundle folder may hold from local runs (bundles/medsemgan_liver/.gitignore): not copied.
SKIP_NAMES = {"eval", "runs", "__pycache__", ".git", ".gitignore"}


def _is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def _local_source(source: str, scratch: Path) -> Path:
    """A local path for ``source`` (path, file:// URL, or an http(s) archive downloaded into ``scratch``)."""
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme in ("http", "https"):
        name = Path(parsed.path).name
        if not _is_archive(name):
            raise InputError(source, f"a URL must name an archive ({', '.join(ARCHIVE_SUFFIXES)})")
        target = scratch / name
        try:
            with urllib.request.urlopen(source, timeout=60) as response, open(target, "wb") as out:  # noqa: S310
                shutil.copyfileobj(response, out)
        except OSError as err:
            raise InputError(source, f"download failed: {err} (offline? pass a local folder or archive instead)") from None
        return target
    if parsed.scheme and len(parsed.scheme) > 1:  # 'c:' on Windows is a drive, not a scheme
        raise InputError(source, f"unsupported URL scheme {parsed.scheme!r} (a path, file:// or http(s)://)")
    return Path(os.path.expanduser(source))


def _safe_members(names: list[str], archive: Path) -> None:
    for name in names:
        parts = Path(name).parts
        if Path(name).is_absolute() or ".." in parts:
            raise InputError(archive, f"archive member {name!r} would land outside the bundle")


def _extract(archive: Path, scratch: Path) -> Path:
    out = scratch / "extracted"
    out.mkdir()
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                _safe_members(zf.namelist(), archive)
                zf.extractall(out)
        else:
            with tarfile.open(archive) as tf:
                members = tf.getmembers()
                _safe_members([m.name for m in members], archive)
                if any(m.issym() or m.islnk() or m.isdev() for m in members):
                    raise InputError(archive, "archive holds links or devices; a bundle holds plain files")
                if sys.version_info >= (3, 12):
                    tf.extractall(out, filter="data")
                else:
                    tf.extractall(out)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as err:
        raise InputError(archive, f"cannot read the archive: {err}") from None
    return out


def _bundle_root(folder: Path, source: str) -> Path:
    """``folder`` itself or its single sub-folder, whichever holds ``configs/`` and ``models/``."""
    def is_bundle(p: Path) -> bool:
        return (p / "configs").is_dir() and (p / "models").is_dir()

    if is_bundle(folder):
        return folder
    children = [c for c in folder.iterdir() if c.is_dir() and not c.name.startswith((".", "__"))]
    if len(children) == 1 and is_bundle(children[0]):
        return children[0]
    raise InputError(source, "not a bundle: no configs/ and models/ folders (at the top or in one sub-folder)")


def resolve_source(source: str, scratch: Path) -> Path:
    """The bundle root of ``source`` (extracted into ``scratch`` if it is an archive)."""
    local = _local_source(source, scratch)
    if not local.exists():
        raise InputError(local, "does not exist")
    if local.is_file():
        if not _is_archive(local.name):
            raise InputError(local, f"expected a bundle folder or an archive ({', '.join(ARCHIVE_SUFFIXES)})")
        return _bundle_root(_extract(local, scratch), str(local))
    return _bundle_root(local, str(local))


def _copy_bundle(src: Path, dst: Path) -> None:
    def ignore(directory: str, names: list[str]) -> set[str]:
        return {n for n in names if n in SKIP_NAMES or n.startswith(".")} if Path(directory) == src else \
            {n for n in names if n == "__pycache__"}

    shutil.copytree(src, dst, ignore=ignore)


def install_bundle(source: str | os.PathLike, dest: str | os.PathLike | None = None, force: bool = False) -> dict:
    """Verify ``source`` and copy it to ``dest`` (default: the user bundle folder); see the module doc."""
    from medsemgan.paths import user_bundle_dir

    dest = Path(dest).expanduser() if dest is not None else user_bundle_dir()
    dest_parent = dest.parent
    dest_parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".medsemgan-install-", dir=dest_parent) as scratch_name:
        scratch = Path(scratch_name)
        root = resolve_source(os.fspath(source), scratch)
        if dest.exists() and dest.resolve() == root.resolve():
            checked = verify_bundle(dest)
            return {"bundle": str(dest), "action": "verified in place", "files": checked}
        entries = read_large_files(root)
        verify_bundle(root, entries)  # a bad source is refused before anything is written
        if dest.exists():
            if not force:
                try:
                    checked = verify_bundle(dest, entries)
                except InputError as err:
                    raise InputError(dest, f"a different or damaged bundle is installed here ({err.problem}); "
                                           "pass --force to replace it") from None
                return {"bundle": str(dest), "action": "already installed (same weights)", "files": checked}
        staged = scratch / "bundle"
        _copy_bundle(root, staged)
        checked = verify_bundle(staged, entries)  # the copy, not just the source
        old = None
        if dest.exists():
            old = scratch / "previous"
            os.replace(dest, old)
        try:
            os.replace(staged, dest)
        except OSError:
            if old is not None:
                os.replace(old, dest)
            raise
    return {"bundle": str(dest), "action": "installed", "source": os.fspath(source), "files": checked}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", nargs="?", default=None,
                        help="bundle folder, .zip/.tar.gz archive, file:// or http(s):// URL of one")
    parser.add_argument("--dest", default=None,
                        help="install here (default: ~/.cache/torch/hub/bundle/medsemgan_liver, "
                             "the folder medsemgan and monai.bundle look in)")
    parser.add_argument("--force", action="store_true", help="replace a different bundle already at --dest")
    parser.add_argument("--verify", action="store_true",
                        help="only check a bundle (SOURCE, else the one medsemgan would use) against its "
                             "large_files.yml")


def run(args: argparse.Namespace) -> int:
    from medsemgan.paths import bundle_dir, missing_bundle_hint

    if args.verify:
        if args.dest:
            raise InputError(None, "--verify checks SOURCE (or the default bundle); it takes no --dest")
        bundle = bundle_dir(args.source)
        if not bundle.is_dir():
            raise InputError(bundle, f"bundle folder does not exist: {missing_bundle_hint()}")
        result = {"bundle": str(bundle), "action": "verified", "files": verify_bundle(bundle)}
    else:
        if args.source is None:
            raise InputError(None, "give the bundle to install (a folder, archive or URL), or --verify")
        result = install_bundle(args.source, args.dest, args.force)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    log.info("%s: %s (%d weight files, sha256 checked)", result["bundle"], result["action"], len(result["files"]))
    return 0
