"""Lazy build, cache and fallback for the compiled ops (CPU extension and CUDA extension).

Nothing is compiled at import. The first call of an op that wants a compiled path calls
:func:`extension`, which

1. returns ``None`` at once when ``MEDSEMGAN_OPS=reference`` (the reference path is forced);
2. returns the module cached in this process, or ``None`` when this process already failed to
   build it (a failure is remembered: one warning, never a retry per call);
3. imports an earlier build from the cache directory when one exists for the same key (hash of
   the sources, torch and CUDA versions, compiler flags, CPU features): no compiler, no ninja;
4. otherwise builds with ninja through :func:`torch.utils.cpp_extension.load` into a fresh
   private directory and renames it into place. A build killed half-way leaves only its private
   directory behind (removed later once stale), never a lock that makes the next build hang.

``MEDSEMGAN_OPS``: ``auto`` (default) compiled when it builds, otherwise the reference with one
warning; ``reference`` never builds; ``fused`` requires the compiled path and raises
:class:`OpsBuildError` if it cannot be built.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import platform
import shutil
import sys
import sysconfig
import threading
import time
import uuid
import warnings
from pathlib import Path
from types import ModuleType

import torch

from medsemgan.paths import OPS_SOURCE_DIR

log = logging.getLogger(__name__)

ENV_MODE = "MEDSEMGAN_OPS"
ENV_CACHE = "MEDSEMGAN_OPS_CACHE"
MODES = ("auto", "reference", "fused")

SOURCE_DIR = OPS_SOURCE_DIR  # medsemgan/ops/csrc: package data, present in an installed wheel too
HEADERS = ("ops_common.h", "bias_act.h", "upfirdn2d.h", "binding_common.h")
SOURCES: dict[str, tuple[str, ...]] = {
    "cpu": ("cpu_ops.cpp",),
    "cuda": ("cuda_ops.cpp", "bias_act_kernel.cu", "upfirdn2d_kernel.cu"),
}
EXTRA_HEADERS: dict[str, tuple[str, ...]] = {"cpu": (), "cuda": ("cuda_launch.h",)}

# -march=native is safe because the CPU's feature flags are part of the cache key.
CPU_CFLAGS = ("-O3", "-march=native", "-fopenmp-simd")
CUDA_CFLAGS = ("-O3",)
CUDA_NVCC_FLAGS = ("-O3",)

STALE_BUILD_SECONDS = 30 * 60  # a private build dir this old belongs to a killed build

_lock = threading.RLock()
_modules: dict[str, ModuleType] = {}
_failures: dict[str, str] = {}


class OpsBuildError(RuntimeError):
    """The compiled ops could not be built while ``MEDSEMGAN_OPS=fused`` requires them."""


def mode() -> str:
    """The value of ``MEDSEMGAN_OPS`` ('auto' when unset); an unknown value is an error."""
    value = os.environ.get(ENV_MODE, "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"{ENV_MODE}={value!r} is not one of {', '.join(MODES)}")
    return value


def cache_root() -> Path:
    """``$MEDSEMGAN_OPS_CACHE``, else ``<medsemgan cache>/ops`` (survives between runs)."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env)
    from medsemgan.paths import cache_dir

    return cache_dir() / "ops"


def _cpu_fingerprint() -> str:
    """CPU model and feature flags: a build with -march=native must not move to another CPU."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    wanted = []
    for line in text.splitlines():
        if line.startswith(("model name", "flags")):
            wanted.append(line)
            if len(wanted) == 2:
                break
    return "\n".join(wanted)


def cache_key(kind: str, source_dir: Path | None = None) -> str:
    """Hash of everything a build depends on; any change gives a new build directory."""
    source_dir = SOURCE_DIR if source_dir is None else source_dir
    h = hashlib.sha256()
    for name in sorted(HEADERS + EXTRA_HEADERS[kind] + SOURCES[kind]):
        h.update(name.encode() + b"\0" + (source_dir / name).read_bytes() + b"\0")
    h.update(f"torch={torch.__version__};cuda={torch.version.cuda};py={sys.version_info[:2]}".encode())
    h.update(repr(_build_flags(kind)).encode())
    if kind == "cpu":
        h.update(_cpu_fingerprint().encode())
    else:
        h.update(os.environ.get("TORCH_CUDA_ARCH_LIST", "").encode())
    return h.hexdigest()[:20]


def _build_flags(kind: str) -> dict:
    if kind == "cpu":
        return {"extra_cflags": list(CPU_CFLAGS)}
    return {"extra_cflags": list(CUDA_CFLAGS), "extra_cuda_cflags": list(CUDA_NVCC_FLAGS)}


def module_name(kind: str, key: str) -> str:
    return f"medsemgan_ops_{kind}_{key}"


def _import_built(name: str, directory: Path) -> ModuleType | None:
    for candidate in directory.glob(f"{name}*.so"):
        spec = importlib.util.spec_from_file_location(name, candidate)
        if spec is None or spec.loader is None:
            continue
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return None


def _remove_stale_builds(root: Path) -> None:
    now = time.time()
    for old in root.glob(".build-*"):
        try:
            if now - old.stat().st_mtime > STALE_BUILD_SECONDS:
                shutil.rmtree(old, ignore_errors=True)
                log.info("removed stale op build directory %s", old)
        except OSError:
            pass


def _ensure_ninja_on_path() -> None:
    # Ninja lives beside the running interpreter (a venv's bin/), which need not be on PATH.
    bin_dirs = [str(Path(sys.executable).parent), sysconfig.get_path("scripts")]
    path = os.environ.get("PATH", "").split(os.pathsep)
    for directory in reversed(bin_dirs):
        if directory and directory not in path:
            path.insert(0, directory)
    os.environ["PATH"] = os.pathsep.join(path)


def build(kind: str, verbose: bool = False) -> ModuleType:
    """Import the cached build of ``kind`` ('cpu' or 'cuda') or compile it now; raises on failure."""
    if kind not in SOURCES:
        raise ValueError(f"unknown extension kind {kind!r}")
    key = cache_key(kind)
    name = module_name(kind, key)
    root = cache_root()
    final = root / f"{kind}-{key}"
    if final.is_dir():
        module = _import_built(name, final)
        if module is not None:
            return module
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(root)
    _ensure_ninja_on_path()
    from torch.utils import cpp_extension

    private = root / f".build-{kind}-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    private.mkdir(parents=True)
    started = time.perf_counter()
    log.info("building medsemgan %s ops (first use; cached in %s)", kind, final)
    try:
        module = cpp_extension.load(
            name=name,
            sources=[str(SOURCE_DIR / s) for s in SOURCES[kind]],
            extra_include_paths=[str(SOURCE_DIR)],
            build_directory=str(private),
            with_cuda=(kind == "cuda"),
            verbose=verbose,
            **_build_flags(kind),
        )
    except BaseException:
        shutil.rmtree(private, ignore_errors=True)
        raise
    log.info("built medsemgan %s ops in %.1f s", kind, time.perf_counter() - started)
    try:
        os.rename(private, final)
    except OSError:
        # Another process finished the same build first (or an old broken one is in the way).
        if _import_built(name, final) is None:
            shutil.rmtree(final, ignore_errors=True)
            try:
                os.rename(private, final)
            except OSError:
                pass
        shutil.rmtree(private, ignore_errors=True)
    return module


def _warn_fallback(kind: str, reason: str) -> None:
    lines = [line for line in reason.strip().splitlines() if line.strip()]
    first_line = lines[0][:300] if lines else "unknown error"
    warnings.warn(
        f"medsemgan: the compiled {kind} ops could not be built ({first_line}); using the "
        f"pure-PyTorch reference ops instead (slower, same results). Set {ENV_MODE}=reference to "
        f"silence this, or {ENV_MODE}=fused to make it an error.",
        RuntimeWarning,
        stacklevel=3,
    )


def extension(kind: str) -> ModuleType | None:
    """The compiled module for ``kind``, or ``None`` when the reference path must be used."""
    current = mode()
    if current == "reference":
        return None
    module = _modules.get(kind)
    if module is not None:
        return module
    if kind in _failures:
        if current == "fused":
            raise OpsBuildError(f"medsemgan {kind} ops failed to build earlier: {_failures[kind]}")
        return None
    with _lock:
        if kind in _modules:
            return _modules[kind]
        if kind in _failures:
            return extension(kind)
        try:
            _modules[kind] = build(kind)
        except Exception as err:  # noqa: BLE001 - any build failure means "use the reference"
            _failures[kind] = f"{type(err).__name__}: {err}"
            log.debug("medsemgan %s ops build failed", kind, exc_info=True)
            if current == "fused":
                raise OpsBuildError(f"medsemgan {kind} ops could not be built: {_failures[kind]}") from err
            _warn_fallback(kind, str(err))
            return None
    return _modules[kind]


def status() -> dict:
    """What this process has loaded or failed to build (for benchmarks and bug reports)."""
    return {
        "mode": mode(),
        "loaded": sorted(_modules),
        "failed": dict(_failures),
        "cache_root": str(cache_root()),
    }


def reset() -> None:
    """Forget loaded modules and failures (tests)."""
    with _lock:
        _modules.clear()
        _failures.clear()
