"""A thread-safe LRU bounded in bytes, computing each missing key once (single flight).

The page keeps models, decoded images, explanations and class relevance for every browser
session of one server process. Counting entries does not bound memory (one ViT-B/16
explanation is 22 MB, a demo one 1 MB), so :class:`ByteLRU` measures what it holds with
:func:`nbytes` and evicts the least recently used entries past its byte budget. When several
sessions ask for the same missing key at once, one computes it and the others wait for that
result, so four students opening the same new photo run the model once.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

import numpy as np

V = TypeVar("V")


def nbytes(obj: Any, _seen: set[int] | None = None) -> int:
    """Approximate memory held by ``obj``: arrays, tensors, images, bytes and containers.

    numpy arrays and torch tensors count their data, PIL images ``width × height × bands``
    (× 4 for 32-bit modes), a torch module its parameters and buffers, dataclasses and
    plain containers the sum of their parts. Objects reached twice count once.
    """
    seen = set() if _seen is None else _seen
    if id(obj) in seen or obj is None:
        return 0
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes) if obj.base is None or id(obj.base) not in seen else 0
    if isinstance(obj, (bytes, bytearray, memoryview, str)):
        return len(obj)
    torch = sys.modules.get("torch")
    if torch is not None:
        if isinstance(obj, torch.Tensor):
            return int(obj.numel() * obj.element_size())
        if isinstance(obj, torch.nn.Module):
            tensors = [*obj.parameters(), *obj.buffers()]
            return sum(nbytes(t, seen) for t in tensors)
    image = sys.modules.get("PIL.Image")
    if image is not None and isinstance(obj, image.Image):
        w, h = obj.size
        wide = obj.mode in ("I", "F", "RGBA", "RGBX", "CMYK", "RGBa")
        return w * h * (4 if wide else len(obj.getbands()))
    if isinstance(obj, dict):
        return sum(nbytes(k, seen) + nbytes(v, seen) for k, v in obj.items())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return sum(nbytes(x, seen) for x in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return sum(nbytes(getattr(obj, f.name), seen) for f in dataclasses.fields(obj))
    own = getattr(obj, "__nbytes__", None)
    if callable(own):
        return int(own())
    state = getattr(obj, "__dict__", None)
    return nbytes(state, seen) if isinstance(state, dict) else 64


class ByteLRU(Generic[V]):
    """Least-recently-used cache whose entries together hold at most ``max_bytes``.

    A value larger than the whole budget is kept alone (everything else is evicted), so the
    cache holds at most ``max(max_bytes, its largest value)``: recomputing such a value on
    every use would cost far more than holding it.

    Args:
        max_bytes: the budget.
        sizeof: how to measure a value (default :func:`nbytes`).
    """

    def __init__(self, max_bytes: int, sizeof: Callable[[Any], int] = nbytes) -> None:
        self.max_bytes = int(max_bytes)
        self._sizeof = sizeof
        self._items: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._pending: dict[Hashable, Future] = {}
        self._lock = threading.Lock()
        self.nbytes = 0
        self.computations = 0  # how many times a compute function ran (tests, benchmarks)

    def get_or_compute(self, key: Hashable, compute: Callable[[], V]) -> V:
        """The value for ``key``; on a miss ``compute`` runs once however many threads ask.

        A failure is raised in every thread that waited for it and is not cached.
        """
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key][0]
            future = self._pending.get(key)
            owner = future is None
            if owner:
                future = self._pending[key] = Future()
        if not owner:
            return future.result()
        try:
            value = compute()
            with self._lock:
                self.computations += 1
                self._store(key, value)
        except BaseException as err:
            future.set_exception(err)
            raise
        else:
            future.set_result(value)
        finally:  # whatever happened, later callers must not wait on this future
            with self._lock:
                self._pending.pop(key, None)
        return value

    def get(self, key: Hashable, default: Any = None) -> V | Any:
        """The cached value (marked as recently used), or ``default``."""
        with self._lock:
            if key not in self._items:
                return default
            self._items.move_to_end(key)
            return self._items[key][0]

    def put(self, key: Hashable, value: V) -> None:
        """Store ``value`` (evicting the least recently used entries past the budget)."""
        with self._lock:
            self._store(key, value)

    def _store(self, key: Hashable, value: V) -> None:
        size = int(self._sizeof(value))
        old = self._items.pop(key, None)
        if old is not None:
            self.nbytes -= old[1]
        # evict first, so the count never passes the budget (unless one value is larger)
        while self._items and self.nbytes + size > self.max_bytes:
            _, (_, dropped) = self._items.popitem(last=False)
            self.nbytes -= dropped
        self._items[key] = (value, size)
        self.nbytes += size

    def evict(self, nbytes: int) -> int:
        """Drop least recently used entries until ``nbytes`` are dropped (or none is left);
        returns the bytes dropped (freed once nobody else holds those values)."""
        dropped = 0
        with self._lock:
            while self._items and dropped < nbytes:
                _, (_, size) = self._items.popitem(last=False)
                self.nbytes -= size
                dropped += size
        return dropped

    def discard(self, predicate: Callable[[Hashable], bool]) -> None:
        """Drop every entry whose key matches ``predicate``."""
        with self._lock:
            for key in [k for k in self._items if predicate(k)]:
                self.nbytes -= self._items.pop(key)[1]

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._items.clear()
            self.nbytes = 0

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def keys(self) -> list[Hashable]:
        """Keys from least to most recently used."""
        with self._lock:
            return list(self._items)

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self.keys())
