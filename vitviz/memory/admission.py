"""Admission by bytes: one memory budget for everything a process does for its visitors.

A page shared with a class runs every visitor's explanation, class maps, trust check, live
stream and model load in one process. A limit on parameters or on cache entries does not
bound that: what an explanation holds grows with N² tokens, and explanations of different
images run at once. :class:`MemoryBudget` is a weighted semaphore counted in bytes:

* work states its peak before it starts (:mod:`vitviz.memory.cost`); work that could never fit,
  even with everything else gone, is refused at once (:class:`~vitviz.errors.MemoryRefused`);
* work that fits waits its turn, first come first served, and its caller is told its place
  in the queue while it waits (``on_wait``); past ``timeout`` it gives up
  (:class:`~vitviz.errors.MemoryBusy`), never hangs;
* what the work leaves behind (an explanation, a loaded model) stays counted for as long as
  the object lives (:meth:`Reservation.keep`, a :func:`weakref.finalize` gives it back), so
  caches and sessions holding results are part of the count, not beside it;
* when the head of the queue does not fit, the budget asks its reclaimers (the page's caches)
  to drop what they keep, runs the garbage collector and returns freed heap to the kernel.

The budget's lock is only ever held for arithmetic: reclaimers, the collector and ``on_wait``
run outside it, and finalizers only take it to subtract, so no lock order can invert.
"""

from __future__ import annotations

import gc
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from vitviz.engine.runtime import release_memory
from vitviz.errors import MemoryBusy, MemoryRefused
from vitviz.memory.cost import MB, size_text

TRIM_ABOVE = 16 * MB  # give freed heap back to the kernel after releasing more than this


def process_rss() -> int:
    """This process's resident memory in bytes (``VmRSS``; 0 where ``/proc`` is missing)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def machine_memory() -> int:
    """Memory this process may use: physical memory, or a smaller cgroup limit."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path, encoding="ascii") as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:
            total = int(text)
    return int(total)


@dataclass
class Reservation:
    """Bytes admitted for one piece of work (see :meth:`MemoryBudget.admit`)."""

    budget: MemoryBudget
    nbytes: int
    what: str
    waited: float = 0.0  # seconds spent in the queue
    kept: int = field(default=0)

    def keep(self, obj: object, nbytes: int) -> None:
        """Keep ``nbytes`` of this reservation counted for as long as ``obj`` lives (the
        work's result); the rest is given back when the work ends."""
        nbytes = max(0, min(int(nbytes), self.nbytes - self.kept))
        if nbytes:
            self.kept += nbytes
            self.budget._hold(obj, nbytes)


class MemoryBudget:
    """A weighted semaphore in bytes, shared by every thread of a process.

    Args:
        total: the budget for the whole process (e.g. ``VITVIZ_PAGE_MEMORY_MB``).
        base: bytes the process holds before any work (libraries, the server itself) plus
            a margin for what is not counted (sessions, allocator slack); work gets
            ``total − base``.
        timeout: seconds a piece of work may wait for memory before :class:`MemoryBusy`.
    """

    def __init__(self, total: int, base: int = 0, timeout: float = 120.0) -> None:
        self.total, self.base, self.timeout = int(total), int(base), float(timeout)
        self._cond = threading.Condition(threading.RLock())
        self._queue: deque[object] = deque()
        self._reclaimers: list[Callable[[int], int]] = []
        self.used = 0  # bytes admitted and not yet given back
        self.peak = 0  # most bytes ever admitted at once
        self.waits = 0  # pieces of work that had to wait
        self.refused = 0  # pieces of work refused as too large

    @property
    def capacity(self) -> int:
        """Bytes all work together may hold."""
        return max(0, self.total - self.base)

    @property
    def waiting(self) -> int:
        """Pieces of work waiting for memory now."""
        with self._cond:
            return len(self._queue)

    def add_reclaimer(self, reclaim: Callable[[int], int]) -> None:
        """``reclaim(n)`` drops up to ``n`` bytes of kept things (caches) when work waits;
        it returns the bytes it dropped (they come back once nobody else holds them)."""
        self._reclaimers.append(reclaim)

    def check(self, nbytes: int, what: str, alongside: int = 0) -> None:
        """Refuse work of ``nbytes`` that could never fit beside ``alongside`` bytes that must
        stay (e.g. the model it runs on).

        Raises:
            MemoryRefused: naming the sizes.
        """
        if int(nbytes) + int(alongside) > self.capacity:
            with self._cond:
                self.refused += 1
            available = max(0, self.capacity - int(alongside))
            raise MemoryRefused(
                f"{what} would hold {size_text(nbytes)}, more than the "
                f"{size_text(available)} this process has for one piece of work (its memory "
                f"budget is {size_text(self.total)}): use a smaller input size, the command "
                "line, or a vitviz server with more memory",
                what,
                int(nbytes),
                available,
                self.total,
            )

    @contextmanager
    def admit(
        self,
        nbytes: int,
        what: str,
        *,
        alongside: int = 0,
        on_wait: Callable[[int, float], None] | None = None,
        timeout: float | None = None,
    ) -> Iterator[Reservation]:
        """Hold ``nbytes`` while the ``with`` block runs, waiting for them first if needed.

        ``on_wait(ahead, seconds)`` is called (about four times a second, in this thread)
        while the work waits: how many wait before it and for how long it has waited.

        Raises:
            MemoryRefused: it could never fit (:meth:`check`).
            MemoryBusy: it waited longer than ``timeout`` (default: the budget's).
        """
        self.check(nbytes, what, alongside)
        res = Reservation(self, int(nbytes), what)
        limit = self.timeout if timeout is None else timeout
        res.waited = self._acquire(res.nbytes, on_wait, limit)
        try:
            yield res
        finally:
            self.release(res.nbytes - res.kept)

    def _acquire(
        self, nbytes: int, on_wait: Callable[[int, float], None] | None, timeout: float
    ) -> float:
        ticket = object()
        start = time.monotonic()
        waited = False
        with self._cond:
            self._queue.append(ticket)
        try:
            while True:
                with self._cond:
                    head = self._queue[0] is ticket
                    if head and self.used + nbytes <= self.capacity:
                        self._take(nbytes)
                        self._queue.popleft()
                        self._cond.notify_all()
                        if waited:
                            self.waits += 1
                        return time.monotonic() - start
                    ahead = self._queue.index(ticket)
                    short = self.used + nbytes - self.capacity
                if head and self._reclaim(short):
                    continue  # something was freed: look again before waiting
                elapsed = time.monotonic() - start
                if elapsed > timeout:
                    raise MemoryBusy(
                        f"waited {elapsed:.0f} s for {size_text(nbytes)} of memory while "
                        "others' work ran; try again in a moment",
                        nbytes,
                        elapsed,
                    )
                waited = True
                if on_wait is not None:
                    on_wait(ahead, elapsed)
                with self._cond:
                    self._cond.wait(0.25)
        finally:
            with self._cond:
                if ticket in self._queue:
                    self._queue.remove(ticket)
                    self._cond.notify_all()

    def _reclaim(self, short: int) -> bool:
        """Ask the reclaimers for ``short`` bytes, collect garbage; whether ``used`` fell."""
        before, need = self.used, short
        for reclaim in self._reclaimers:  # in the order added: cheapest to lose first
            if need <= 0:
                break
            need -= max(0, int(reclaim(need)))
        gc.collect()
        release_memory()
        return self.used < before

    def _take(self, nbytes: int) -> None:
        with self._cond:
            self.used += nbytes
            self.peak = max(self.peak, self.used)

    def release(self, nbytes: int) -> None:
        """Give ``nbytes`` back (and freed heap to the kernel when that is much)."""
        if nbytes <= 0:
            return
        with self._cond:
            self.used = max(0, self.used - int(nbytes))
            self._cond.notify_all()
        if nbytes >= TRIM_ABOVE:
            release_memory()

    def hold(self, obj: object, nbytes: int) -> None:
        """Count ``nbytes`` for as long as ``obj`` lives, without waiting (for things that
        exist already, e.g. an answer a server sent)."""
        self._take(int(nbytes))
        self._hold(obj, int(nbytes))

    def _hold(self, obj: object, nbytes: int) -> None:
        weakref.finalize(obj, self.release, nbytes)

    def snapshot(self) -> dict[str, int]:
        """Numbers for status lines and benchmarks."""
        with self._cond:
            return {
                "total": self.total,
                "base": self.base,
                "capacity": self.capacity,
                "used": self.used,
                "peak": self.peak,
                "waiting": len(self._queue),
                "waits": self.waits,
                "refused": self.refused,
            }
