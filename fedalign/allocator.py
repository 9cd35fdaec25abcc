"""Keep glibc's heap from returning and re-faulting training buffers every step.

glibc malloc serves blocks above its mmap threshold (128 KiB at start) with
fresh mmaps and hands free memory at the top of the heap back to the kernel
once it exceeds the trim threshold. Both thresholds grow only when a large
mmapped block happens to be freed, so how fast a process trains depends on
its allocation history: a Ray client actor measured ~1.1 million page faults
per 20 local trainings of the CIFAR-10 CNN (every activation buffer faulted
in and zeroed again each step, ~10 % of its CPU in the kernel, ~15-35 %
slower training) where a plain process training the same clients had 26
thousand (docs/sweep.md, "Simulation overhead").

`keep_heap_warm()` sets the thresholds glibc's own heuristic ends at on
64-bit Linux (mmap 32 MiB, trim 2 x that) from the start, once per process:
blocks up to 32 MiB are reused from the heap, larger ones still come from and
go back to the kernel. Held alone, that keeps a process at its largest heap
ever (a client actor grew from ~0.6 to ~0.95 GiB PSS), so `@reuses_heap`
(on `fedalign.training.train` and `evaluate`) also hands the free heap back
with `malloc_trim` when the call returns: buffers are reused within one
local training, and an idle actor holds what it held before. It changes
allocation speed only, never a result. On a C library without `mallopt` it
does nothing; `FEDALIGN_MALLOC_TUNING=0` turns it off (e.g. to measure the
default allocator).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from collections.abc import Callable
from typing import TypeVar

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit
TRIM_THRESHOLD_BYTES = 2 * MMAP_THRESHOLD_BYTES  # glibc raises trim to 2 x mmap threshold
ENV_SWITCH = "FEDALIGN_MALLOC_TUNING"

_state: dict[str, object] = {}
F = TypeVar("F", bound=Callable)


def keep_heap_warm() -> bool:
    """Set glibc's mmap/trim thresholds once per process; True when they are set."""
    if "applied" not in _state:
        _state["applied"] = _apply()
    return _state["applied"]


def release_free_heap() -> None:
    """Return the heap's free pages to the kernel (after `keep_heap_warm` only)."""
    if _state.get("applied"):
        _state["malloc_trim"](0)


def reuses_heap(fn: F) -> F:
    """Run `fn` with buffers reused from the heap; give the free heap back when it returns."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        keep_heap_warm()
        try:
            return fn(*args, **kwargs)
        finally:
            release_free_heap()

    return wrapper  # type: ignore[return-value]


def _apply() -> bool:
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): leave the allocator alone
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    malloc_trim.argtypes = (ctypes.c_size_t,)
    _state["malloc_trim"] = malloc_trim
    # mallopt returns 1 on success; set mmap first: setting either fixes both (no dynamic growth)
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
