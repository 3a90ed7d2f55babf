"""Process-level tuning for the engine's entry points (CLI, app, server, benchmarks).

An explanation writes every layer's attention into one fresh ``[B, L, H, N, N]`` buffer: 22 MB
per ViT-B/16 image, 179 MB for a batch of 8. glibc serves blocks that large with ``mmap`` and
gives them back to the kernel when freed, so every call page-faults its buffer in again; on a
2-core VM that cost 3–6 % of a ViT-B/16 forward at batch 8 (``bench/explain_overhead.py
--no-tune-allocator`` shows it). :func:`tune_allocator` makes glibc serve all blocks from the
heap and keep up to 1 GiB of freed heap, so repeated explanations reuse warm pages. The cost:
the process holds on to up to 1 GiB it no longer uses.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
_TUNED: list[bool] = []


def tune_allocator() -> bool:
    """Tune glibc malloc once per process (no-op elsewhere); returns whether it applied."""
    if _TUNED:
        return _TUNED[0]
    ok = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6")
            ok = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**30))
        except (OSError, AttributeError):
            ok = False
    _TUNED.append(ok)
    return ok


def release_memory() -> bool:
    """Give freed heap memory back to the kernel now (glibc ``malloc_trim``; no-op elsewhere).

    Called after a large transient allocation (a decoded 40-megapixel upload, say), so a
    process that keeps freed heap for speed (:func:`tune_allocator`) does not keep that peak
    for ever: glibc returns the free pages of every arena, not only the top of the heap.
    Takes a few milliseconds.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False
