"""Process-wide settings that make the CPU loops faster; no effect on results.

glibc's allocator hands blocks above its mmap threshold (dynamic, at most 32 MiB) straight back
to the kernel when they are freed, and trims the top of the heap once it holds more than twice
that. PyTorch on the CPU has no caching allocator, so every optimisation step then re-allocates
its activations ([16, 48, 128, 128] in bfloat16 is 24 MiB) from fresh pages and pays a page fault
per 4 KiB on first touch. Fixing both thresholds keeps freed activation memory in the heap for
the next step: measured in ``docs/benchmarks.md`` (about 20-25 % off a 16-slice optimisation
step, slightly less for one slice). The cost is that the process keeps up to
``TRIM_THRESHOLD_BYTES`` of freed memory instead of returning it; peak memory does not grow.

This is what ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` in the environment do, set
from inside the process so that ``medsemgan`` and the bundle get it without a wrapper script.
Other allocators (macOS, musl, jemalloc/tcmalloc preloaded by the user) are left alone.

torch's thread count is process-wide too: :func:`restores_torch_threads` marks a function that may
change it (the ``--threads`` options of the benchmarks and the report) and puts it back when the
function returns, so a caller in the same process (a test, a notebook) keeps its own setting.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import sys
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)

log = logging.getLogger(__name__)

# mallopt parameter numbers from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc refuses an mmap threshold above HEAP_MAX / 2 = 32 MiB on 64-bit systems.
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
TRIM_THRESHOLD_BYTES = 1024 * 1024 * 1024
ENV_SWITCH = "MEDSEMGAN_KEEP_FREED_MEMORY"  # "0" turns the tuning off

_applied: bool | None = None


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # only glibc has it (musl does not)
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory() -> bool:
    """Keep freed blocks up to 32 MiB in the heap (see the module docstring). Returns whether
    the setting is in effect; safe to call more than once; ``MEDSEMGAN_KEEP_FREED_MEMORY=0``
    or a non-glibc platform leaves the allocator as it is."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return False
    libc = _glibc()
    if libc is None:
        return False
    ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    if not ok:
        log.debug("mallopt refused the allocator thresholds; leaving the allocator as it is")
    _applied = ok
    return ok


def restores_torch_threads(function: F) -> F:
    """Decorator: whatever ``function`` does to ``torch.set_num_threads``, the caller's thread
    count is back when it returns or raises."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        import torch

        before = torch.get_num_threads()
        try:
            return function(*args, **kwargs)
        finally:
            if torch.get_num_threads() != before:
                torch.set_num_threads(before)
    return wrapper  # type: ignore[return-value]
