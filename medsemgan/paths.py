"""Where things live: the shared data, the repository, the op sources, the bundle.

The bundle (weights + configuration, ``bundles/medsemgan_liver`` in a checkout) is found in this
order (:func:`bundle_dir`):

1. an explicit folder (``--bundle DIR``, ``--bundle_root`` of ``monai.bundle run``);
2. ``$MEDSEMGAN_BUNDLE``;
3. the repository's ``bundles/medsemgan_liver`` when medsemgan runs from a checkout;
4. the user folder :func:`user_bundle_dir`: ``<torch hub dir>/bundle/medsemgan_liver``, i.e.
   ``~/.cache/torch/hub/bundle/medsemgan_liver`` (``$TORCH_HOME`` and ``$XDG_CACHE_HOME`` move it),
   the folder where ``monai.bundle.download`` puts model-zoo bundles and where
   ``medsemgan install-bundle SOURCE`` installs one.

An installed wheel has no ``bundles/`` beside the package, so it uses 2 or 4. The op sources
(``medsemgan/ops/csrc``) and the configurations (``medsemgan/configs``) are package data and
travel with every installation.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent  # the checkout (for an installed wheel: site-packages)
CONFIG_DIR = PACKAGE_DIR / "configs"
OPS_SOURCE_DIR = PACKAGE_DIR / "ops" / "csrc"  # C++/CUDA sources of the compiled ops (package data)
BUNDLE_NAME = "medsemgan_liver"
REPO_BUNDLE_DIR = REPO_DIR / "bundles" / BUNDLE_NAME  # exists only in a checkout
BASELINES_DIR = REPO_DIR / "baselines"  # the report's U-Net baseline weights (checkout only)
ENV_BUNDLE = "MEDSEMGAN_BUNDLE"


def torch_hub_dir() -> Path:
    """``torch.hub.get_dir()`` without importing torch: ``$TORCH_HOME/hub``, else
    ``${XDG_CACHE_HOME:-~/.cache}/torch/hub``."""
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "torch")
    return Path(os.path.expanduser(torch_home)) / "hub"


def user_bundle_dir(name: str = BUNDLE_NAME) -> Path:
    """The default user folder of an installed bundle (MONAI's ``bundle_dir`` default)."""
    return torch_hub_dir() / "bundle" / name


def _is_bundle(path: Path) -> bool:
    return (path / "configs").is_dir() and (path / "models").is_dir()


def bundle_candidates() -> list[tuple[str, Path]]:
    """Where :func:`bundle_dir` looks when no folder is given, in order, with how each was chosen."""
    found = []
    env = os.environ.get(ENV_BUNDLE)
    if env:
        found.append((f"${ENV_BUNDLE}", Path(os.path.expanduser(env))))
    found.append(("the repository checkout", REPO_BUNDLE_DIR))
    found.append(("the user bundle folder", user_bundle_dir()))
    return found


def bundle_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The bundle folder to use (see the module docstring for the order).

    ``explicit`` and ``$MEDSEMGAN_BUNDLE`` are returned as given even when they do not exist (the
    caller's error then names them); otherwise the first existing candidate, else the user folder
    (which does not exist yet: ``medsemgan install-bundle`` creates it).
    """
    if explicit is not None and str(explicit) != "":
        return Path(os.path.expanduser(os.fspath(explicit)))
    env = os.environ.get(ENV_BUNDLE)
    if env:
        return Path(os.path.expanduser(env))
    for _, candidate in bundle_candidates():
        if _is_bundle(candidate):
            return candidate
    return user_bundle_dir()


def missing_bundle_hint() -> str:
    """What to tell a user whose bundle folder does not exist."""
    return (f"pass --bundle DIR, set ${ENV_BUNDLE}, or install one with `medsemgan install-bundle "
            f"PATH|URL` (into {user_bundle_dir()})")


def __getattr__(name: str):
    # DEFAULT_BUNDLE_DIR is resolved when read (it depends on $MEDSEMGAN_BUNDLE and on what is
    # installed), so `from medsemgan.paths import DEFAULT_BUNDLE_DIR` inside a function is current.
    if name == "DEFAULT_BUNDLE_DIR":
        return bundle_dir()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


def runs_dir() -> Path:
    """Default home of training runs: ``$MEDSEMGAN_RUNS``, else ``<cache>/runs``.

    Outside the checkout on purpose: a fresh clone (or ``git clean``) must not lose a run that
    spans several working sessions.
    """
    env = os.environ.get("MEDSEMGAN_RUNS")
    path = Path(env) if env else cache_dir() / "runs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_run_dir(name: str) -> Path:
    """``runs_dir() / name``: where ``medsemgan train ...`` writes when ``--out`` is not given."""
    return runs_dir() / name


def portable_path(path: str | os.PathLike, under: tuple[Path, ...] = (), *, tail: bool = False) -> str:
    """``path`` as a record that travels to other machines shows it (committed benchmark records,
    a bundle's provenance, a U-Net sidecar must not name this machine's folders).

    Relative to the first of ``under`` that holds it, else ``DATA/...`` under :func:`data_root`, else
    relative to the repository (a relative ``path`` is taken from the working folder). Otherwise as
    given, or with ``tail`` an absolute path's last two parts (``gan_1/checkpoint.pt``).
    """
    text = os.fspath(path)
    resolved = Path(text).resolve()
    root = data_root()
    bases = [(Path(base), "") for base in under]
    bases += [(root, "DATA/")] if root is not None else []
    bases.append((REPO_DIR, ""))
    for base, prefix in bases:
        try:
            return prefix + resolved.relative_to(base.resolve()).as_posix()
        except ValueError:
            continue
    return Path(*Path(text).parts[-2:]).as_posix() if tail and os.path.isabs(text) else text
