"""Process-level tuning for the engine's entry points (CLI, app, server, benchmarks).

An explanation keeps every layer's attention alive until the end of the forward pass and then
stacks it into one ``[B, L, H, N, N]`` tensor: for ViT-B/16 that is 22 MB of fresh memory per
image. With glibc's default settings, freed memory at the top of the heap is returned to the
kernel (trimmed) and then page-faulted back in on the next call, which on a 2-core VM cost
about 6 % of a ViT-B/16 forward (``bench/explain_overhead.py --no-tune-allocator`` shows it).
:func:`tune_allocator` keeps up to 1 GiB of freed heap for reuse and serves blocks up to
32 MiB from the heap, so repeated explanations reuse warm pages.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
_TUNED: list[bool] = []


def tune_allocator() -> bool:
    """Tune glibc malloc once per process (no-op elsewhere); returns whether it applied."""
    if _TUNED:
        return _TUNED[0]
    ok = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6")
            ok = bool(libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20)) and bool(
                libc.mallopt(M_TRIM_THRESHOLD, 2**30)
            )
        except (OSError, AttributeError):
            ok = False
    _TUNED.append(ok)
    return ok
