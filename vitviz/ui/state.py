"""Process-wide caches behind the page: explanations per (model, image), computed once.

Streamlit reruns the whole script on every interaction. The model is loaded once per process
(``st.cache_resource`` in ``app.py``); an explanation is computed once per (model, image) and
kept here, with whatever is derived from it (statistics, mosaics), so changing a view, layer,
head, colormap, opacity or patch never runs the model again. ``model_calls`` counts the real
computations, for tests and ``bench/interaction.py``.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from vitviz.backend import ImageExplanation


@dataclass
class Entry:
    """One cached explanation and the things derived from it, by key."""

    explanation: ImageExplanation
    derived: dict[Hashable, Any] = field(default_factory=dict)

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """A derived value, computed on first use (keep keys small; values are shared)."""
        if key not in self.derived:
            if len(self.derived) > 64:  # bounded: display settings make new keys
                self.derived.pop(next(iter(self.derived)))
            self.derived[key] = compute()
        return self.derived[key]


class ExplanationCache:
    """A small LRU of explanations shared by all sessions of this process."""

    def __init__(self, capacity: int = 12) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, str], Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.model_calls = 0

    def get(
        self, model_id: str, image_digest: str, compute: Callable[[], ImageExplanation]
    ) -> Entry:
        """The entry for this model and image, running ``compute`` only on a miss."""
        key = (model_id, image_digest)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        explanation = compute()  # outside the lock: other sessions keep being served
        with self._lock:
            self.model_calls += 1
            entry = self._items.get(key) or Entry(explanation)
            self._items[key] = entry
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
            return entry

    def __len__(self) -> int:
        return len(self._items)


def digest(data: bytes) -> str:
    """Content hash of an image's bytes (the cache key; the bytes themselves stay in memory)."""
    return hashlib.sha256(data).hexdigest()
