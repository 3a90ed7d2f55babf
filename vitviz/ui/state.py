"""Process-wide caches behind the page, bounded in bytes and safe for concurrent sessions.

Streamlit reruns the whole script on every interaction, and every browser session of one
server process shares what is cached here:

* models (:attr:`PageCaches.models`), bounded by their parameter bytes;
* images reduced to the model's input right after decoding (never the upload's full size);
* explanations per (model, image), computed once: changing a view, layer, head, colormap,
  opacity or patch never runs the model again; several sessions opening the same new image
  at once run it once (single flight);
* what is derived from an explanation (statistics, mosaics), and each class's relevance.

Each cache is a :class:`~vitviz.memory.cache.ByteLRU`; the budgets come from the environment
(:class:`PageLimits`). ``ExplanationCache.model_calls`` counts the real explanations (tests).
"""

from __future__ import annotations

import hashlib
import math
import os
import weakref
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from vitviz.errors import OptionsError
from vitviz.memory.cache import ByteLRU
from vitviz.results import ClassRelevance, ImageExplanation

MB = 2**20


@dataclass(frozen=True)
class PageLimits:
    """What one page process may hold, from the operator's environment.

    Attributes:
        max_params: largest model a visitor may load (``VITVIZ_MAX_PARAMS``, default 350 M:
            ViT-L/16 fits, ViT-H and the giant ViTs do not).
        model_bytes: loaded models kept (``VITVIZ_MODEL_CACHE_MB``, default 2048).
        cache_bytes: explanations, class relevance, derived figures and model-input images
            together with the uploads each session remembers (``VITVIZ_CACHE_MB``, default
            256), shared 60/20/5/5/10 %.
        memory_bytes: the whole page process's memory budget (``VITVIZ_PAGE_MEMORY_MB``,
            default half of the machine's memory, at least 2 GiB; :func:`default_memory`):
            model loads, explanations, class maps, trust checks and live streams are admitted
            by bytes within it (:class:`vitviz.memory.admission.MemoryBudget`).
        wait_s: how long work may wait for memory before the visitor is told the page is
            busy (``VITVIZ_MEMORY_WAIT_S``, default 120).
    """

    max_params: int = 350_000_000
    model_bytes: int = 2048 * MB
    cache_bytes: int = 256 * MB
    memory_bytes: int = 0  # 0: default_memory()
    wait_s: float = 120.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PageLimits:
        """Limits from ``VITVIZ_MAX_PARAMS``, ``VITVIZ_MODEL_CACHE_MB``, ``VITVIZ_CACHE_MB``,
        ``VITVIZ_PAGE_MEMORY_MB`` and ``VITVIZ_MEMORY_WAIT_S``.

        Raises:
            OptionsError: a value that is not a positive finite number.
        """
        env = os.environ if environ is None else environ

        def number(name: str, default: float) -> float:
            text = env.get(name, "").strip().replace("_", "")
            try:
                value = float(text) if text else default
            except ValueError:
                raise OptionsError(f"{name}={text!r} is not a number") from None
            if not math.isfinite(value) or value <= 0:
                raise OptionsError(f"{name} must be a positive number, got {text}")
            return value

        return cls(
            max_params=int(number("VITVIZ_MAX_PARAMS", cls.max_params)),
            model_bytes=int(number("VITVIZ_MODEL_CACHE_MB", cls.model_bytes / MB) * MB),
            cache_bytes=int(number("VITVIZ_CACHE_MB", cls.cache_bytes / MB) * MB),
            memory_bytes=int(number("VITVIZ_PAGE_MEMORY_MB", default_memory() / MB) * MB),
            wait_s=number("VITVIZ_MEMORY_WAIT_S", cls.wait_s),
        )


SLACK = 256 * MB
"""Memory the page budget leaves for what it does not count: Streamlit's sessions and
messages, thread stacks, the allocator's slack."""


def default_memory() -> int:
    """The page's default memory budget: half of the machine's memory (or of a smaller
    cgroup limit), at least 2 GiB."""
    from vitviz.memory.admission import machine_memory

    return max(2048 * MB, machine_memory() // 2)


class Entry:
    """One cached explanation and the things derived from it, by key.

    A page run holds its explanation (pinned) until :meth:`unpin` at the run's end; after
    that only a weak reference is kept, so a session's stored fragment (Streamlit keeps a
    fragment's arguments to rerun it) never keeps an explanation alive on its own: the cache
    decides, and the memory budget can drop it for someone else's work. The next access gets
    it back from the cache, computing it again if it was dropped (``fetch``).
    """

    def __init__(
        self,
        explanation: ImageExplanation,
        key: Hashable,
        derived: ByteLRU,
        fetch: Callable[[], ImageExplanation] | None = None,
    ) -> None:
        self._pin: ImageExplanation | None = explanation
        self._ref = weakref.ref(explanation)
        self._key = key
        self._derived = derived
        self._fetch = fetch

    @property
    def explanation(self) -> ImageExplanation:
        """The explanation, pinned for the rest of this run."""
        expl = self._pin if self._pin is not None else self._ref()
        if expl is None:
            if self._fetch is None:
                raise LookupError("this explanation was dropped and cannot be computed again")
            expl = self._fetch()
            self._ref = weakref.ref(expl)
        self._pin = expl
        return expl

    def unpin(self) -> None:
        """The run is over: keep only a weak reference (see the class docstring)."""
        self._pin = None

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """A derived value, computed once (bounded with every entry's, in bytes)."""
        return self._derived.get_or_compute((self._key, key), compute)


class ExplanationCache:
    """Explanations per (model, image) and what is derived from them, shared by all sessions."""

    def __init__(self, max_bytes: int = 160 * MB, derived_bytes: int = 24 * MB) -> None:
        self._items: ByteLRU[ImageExplanation] = ByteLRU(max_bytes)
        self.derived: ByteLRU[Any] = ByteLRU(derived_bytes)

    @property
    def model_calls(self) -> int:
        """Explanations computed so far (cache misses that ran the model)."""
        return self._items.computations

    def get(
        self, model_id: str, image_digest: str, compute: Callable[[], ImageExplanation]
    ) -> Entry:
        """The entry for this model and image, running ``compute`` once on a miss."""
        key = (model_id, image_digest)

        def fetch() -> ImageExplanation:
            return self._items.get_or_compute(key, compute)

        return Entry(fetch(), key, self.derived, fetch)

    @property
    def nbytes(self) -> int:
        """Bytes held by explanations and derived values."""
        return self._items.nbytes + self.derived.nbytes

    def __len__(self) -> int:
        return len(self._items)


class PageCaches:
    """Everything one page process keeps for its sessions, each part bounded in bytes."""

    def __init__(self, limits: PageLimits | None = None, base: int | None = None) -> None:
        from vitviz.memory.admission import MemoryBudget, process_rss

        self.limits = limits or PageLimits.from_env()
        memory = self.limits.memory_bytes or default_memory()
        # the process as it is now (libraries, Streamlit) plus SLACK is not for work
        base = (process_rss() if base is None else base) + SLACK
        self.memory = MemoryBudget(memory, base, timeout=self.limits.wait_s)
        total = self.limits.cache_bytes
        self.models: ByteLRU[Any] = ByteLRU(self.limits.model_bytes)
        self.explanations = ExplanationCache(int(total * 0.60), int(total * 0.05))
        self.relevance: ByteLRU[ClassRelevance] = ByteLRU(int(total * 0.20))
        self.images: ByteLRU[Any] = ByteLRU(int(total * 0.05))
        # each session's last upload by session key, so Upload → Samples → Upload keeps it
        self.uploads: ByteLRU[tuple[str, bytes]] = ByteLRU(int(total * 0.10))
        # when work waits for memory: drop kept results first, idle models last
        self.memory.add_reclaimer(self._drop_results)
        self.memory.add_reclaimer(self.models.evict)

    def _drop_results(self, need: int) -> int:
        """Evict kept explanations and class relevance (least recently used first)."""
        dropped = 0
        for cache in (self.explanations._items, self.relevance, self.explanations.derived):
            if dropped < need:
                dropped += cache.evict(need - dropped)
        return dropped

    @property
    def nbytes(self) -> int:
        """Bytes held by everything but the models."""
        parts = (self.explanations, self.relevance, self.images, self.uploads)
        return sum(p.nbytes for p in parts)


def digest(data: bytes) -> str:
    """Content hash of an image's bytes (the cache key; the bytes themselves stay in memory)."""
    return hashlib.sha256(data).hexdigest()
