"""What the page loads and keeps for all its sessions: models, inputs, explanations, relevance.

Everything here is shared by every browser session of one server process and bounded in bytes
(:class:`vitviz.ui.state.PageCaches`); a slow step shows a spinner with its time.
"""

from __future__ import annotations

import gc
import secrets
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import streamlit as st

from vitviz import models
from vitviz.backends import Backend, local_backend
from vitviz.backends.remote import RemoteBackend
from vitviz.engine.runtime import release_memory
from vitviz.errors import MemoryBusy, MemoryRefused, VitvizError, WeightsFileError
from vitviz.inputs.assets import ASSETS
from vitviz.inputs.images import DecodedImage, decode_image
from vitviz.memory.admission import Reservation
from vitviz.memory.cache import ByteLRU, nbytes
from vitviz.memory.cost import (
    REMOTE_PREFIX,
    ModelShape,
    WorkCost,
    answer_cost,
    explanation_cost,
    model_cost,
    size_text,
)
from vitviz.results import (
    FEATURE_NORM,
    Anatomy,
    ClassRelevance,
    ImageExplanation,
    TokenFeatures,
)
from vitviz.ui import i18n
from vitviz.ui.encoded import encode
from vitviz.ui.i18n import t
from vitviz.ui.state import Entry, PageCaches, PageLimits
from vitviz.ui.text import plain

if TYPE_CHECKING:
    from vitviz.backends.local import LocalBackend
SAMPLES = {  # file → catalog key of its title
    "chelsea.png": "sample.chelsea",
    "coffee.png": "sample.coffee",
    "astronaut.png": "sample.astronaut",
    "rocket.jpg": "sample.rocket",
    "hubble_deep_field.jpg": "sample.hubble",
    "demo-scene-1.png": "sample.scene1",
    "demo-scene-2.png": "sample.scene2",
    "demo-scene-3.png": "sample.scene3",
}
SAMPLES = {k: v for k, v in SAMPLES.items() if (ASSETS / k).is_file()}
MODEL_LOADS = threading.BoundedSemaphore(1)  # one model built at a time per page process


@st.cache_resource(show_spinner=False)
def page_caches() -> PageCaches:
    """Models, model inputs, explanations and class relevance of this server process."""
    try:
        limits = PageLimits.from_env()
    except VitvizError as err:  # the operator's VITVIZ_*_MB or VITVIZ_MAX_PARAMS is malformed
        st.error(t("error.misconfigured", detail=plain(err)))
        st.stop()
    gc.collect()
    gc.freeze()  # libraries are here for good: later collections skip them (~0.5 ms, not 190)
    return PageCaches(limits)


@st.cache_resource(show_spinner=False)
def load_failures() -> ByteLRU[tuple[tuple[str, str, dict[str, object]] | str, float]]:
    """Recent model-loading failures, so a broken choice is not retried on every rerun
    (bounded in bytes: names come from visitors and links)."""
    return ByteLRU(2**20)


@st.cache_resource(show_spinner=False, ttl=300)
def default_model() -> tuple[str, str | None]:
    """ViT-B/16 when its weights are cached or downloadable, else the demo model and why (a
    catalog key: ``default.offline`` or ``default.no_internet``)."""
    spec = models.CURATED["vit-b16"]
    if models.cached_weights(spec.timm_name) is not None:
        return "vit-b16", None
    where = models.download_location(spec.timm_name)
    if not models.hub_offline() and models.hub_reachable(where):
        return "vit-b16", None
    return "demo", "default.offline" if models.hub_offline() else "default.no_internet"


@contextmanager
def admitted(cost: WorkCost, alongside: int = 0) -> Iterator[Reservation]:
    """Run work of ``cost`` within the page's memory budget (:class:`MemoryBudget`): refused
    at once if it could never fit, else it waits its turn and the visitor sees the queue.

    Raises:
        MemoryRefused / MemoryBusy: said on the page by :func:`vitviz.ui.i18n.error_text`.
    """
    budget = page_caches().memory
    slot = st.empty()

    def waiting(ahead: int, seconds: float) -> None:
        slot.info(
            t(
                "busy.memory_wait",
                ahead=ahead,
                size=size_text(cost.peak),
                used=size_text(budget.used),
                capacity=size_text(budget.capacity),
                seconds=f"{seconds:.0f}",
            ),
            icon="⏳",
        )

    try:
        with budget.admit(cost.peak, cost.what, alongside=alongside, on_wait=waiting) as res:
            slot.empty()
            yield res
    finally:
        slot.empty()


def model_bytes(backend: Backend) -> int:
    """Bytes of the model a backend runs in this process (0 for a server's)."""
    shape = backend.memory_shape()
    return 0 if shape is None else shape.params * 4


def held_by_run(backend: Backend, input_hw: tuple[int, int]) -> int:
    """What a page run holds while it asks for more work on its image: the model and the
    explanation it shows (with its views' arrays); none of it can be dropped meanwhile."""
    shown = work_cost(backend, input_hw)
    return model_bytes(backend) + shown.kept + shown.parts.get("views", 0)


class Busy(Exception):
    """Another visitor's job of the same kind held its :class:`JobSlot` longer than the wait
    allowed: the visitor is told to try again (the job is not started)."""


class JobSlot:
    """One heavy job of a kind at a time per page process (a trust check, a head ablation, a
    lens or norms run), whoever asks: a class opening the same panel together queues instead
    of multiplying the work."""

    def __init__(self) -> None:
        self._sem = threading.BoundedSemaphore(1)

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take the slot (as :meth:`threading.Semaphore.acquire`)."""
        return self._sem.acquire(blocking, timeout if blocking else None)

    def release(self) -> None:
        """Give the slot back."""
        self._sem.release()

    def busy(self) -> bool:
        """Whether another job holds the slot now."""
        if self._sem.acquire(blocking=False):
            self._sem.release()
            return False
        return True

    @contextmanager
    def held(self, wait_s: float) -> Iterator[None]:
        """Inside the ``with``: the slot, waited for at most ``wait_s`` seconds.

        Raises:
            Busy: the slot stayed taken for ``wait_s``.
        """
        if not self._sem.acquire(timeout=wait_s):
            raise Busy
        try:
            yield
        finally:
            self._sem.release()


@contextmanager
def admitted_work(
    backend: Backend,
    input_hw: tuple[int, int],
    cost: Callable[[ModelShape, tuple[int, int]], WorkCost],
) -> Iterator[None]:
    """Inside the ``with``: the bytes of ``cost(shape, input_hw)`` admitted within the page's
    budget beside what the page run holds (:func:`admitted`), for a model in this process; a
    server's work is its own (nothing admitted here)."""
    shape = backend.memory_shape()
    if shape is None:
        yield
        return
    with admitted(cost(shape, input_hw), alongside=held_by_run(backend, input_hw)):
        yield


def work_cost(
    backend: Backend, input_hw: tuple[int, int], classes: int = 0, negative: bool = False
) -> WorkCost:
    """What explaining one image of ``input_hw`` pixels will hold on this page, with the
    page's methods on the result: the model's whole work in this process, or what the page
    keeps of a server's answer (see :mod:`vitviz.memory.cost`)."""
    shape = backend.memory_shape()
    if shape is not None:
        return explanation_cost(shape, input_hw, classes=classes, negative=negative, views=True)
    info = backend.info()
    shape = ModelShape(info.layers, info.heads, 0, 0, 0, REMOTE_PREFIX, tuple(info.patch_size))
    return answer_cost(shape, input_hw, classes=classes, views=True)


def get_backend(name: str, weights: str | None, random_weights: bool) -> LocalBackend:
    """One loaded model per (name, weights) and process, within the page's size limits.

    Models are built one at a time and admitted by bytes within the page's memory budget (its
    parameters, and a second copy while a weights file is read); a loaded model stays counted
    until it is evicted and no session uses it any more.
    """
    caches = page_caches()

    def load() -> LocalBackend:
        cost = model_cost(models.model_parameters(name), reading_weights=not random_weights)
        with MODEL_LOADS, admitted(cost) as res:
            backend = local_backend(
                name,
                weights=weights,
                random_weights=random_weights,
                max_params=caches.limits.max_params,
            )
            res.keep(backend, backend.held_bytes())
        return backend

    return caches.models.get_or_compute((name, weights, random_weights), load)


def model_title(key: str) -> str:
    """A curated model's name in the page's language."""
    return t(f"model.{key}.title") if i18n.has(f"model.{key}.title") else models.CURATED[key].title


def model_description(key: str) -> str:
    """A curated model's line in the page's language."""
    spec = models.CURATED[key]
    return t(f"model.{key}.line") if i18n.has(f"model.{key}.line") else spec.description


def weights_note(note: str) -> str:
    """A model's note (the demo model's limits) in the page's language."""
    if note == models.DEMO_NOTE:
        return t("facts.demo_note")
    return plain(note[0].upper() + note[1:])


def weights_warning(warning: str) -> str:
    """A model's warning (random weights) in the page's language."""
    return t("facts.random_warning") if warning == models.RANDOM_WARNING else plain(warning)


BY_CODE = frozenset({"weights_unreachable", "weights_none"})
"""Loader error codes the page words by code: their way out is ``--weights FILE`` on the
command line, the weights-file choice here. Other loader errors read as the loader said them."""


def for_the_page(message: str, code: str = "other", fields: dict[str, object] | None = None) -> str:
    """A loader's error (its English ``message``, ``code`` and ``fields``) in the page's
    words: the catalog's ``error_code.<code>`` for the codes in :data:`BY_CODE`, else the
    message."""
    if code in BY_CODE:
        return t(f"error_code.{code}", **(fields or {}))
    return message


def load_with_progress(name: str, weights: str | None, random_weights: bool) -> LocalBackend:
    """Load a model; when its weights must be downloaded, show the download's progress."""
    key = (name, weights, random_weights)
    loaded = page_caches().models.get(key)
    if loaded is not None:  # the usual case: every rerun of every session
        return loaded
    failed = load_failures().get(key)
    if failed and time.time() - failed[1] < 300:
        if isinstance(failed[0], str):  # "file"
            raise VitvizError(t("error.weights_file", path=weights))
        raise VitvizError(for_the_page(*failed[0]))
    try:
        # before anything is downloaded or built (the loader checks again, for files)
        models.check_model_size(name, page_caches().limits.max_params)
        if weights is None and not random_weights:
            plan = models.weights_plan(name)
            if plan.startswith("download") and models.hub_reachable():
                _download(name)
        with st.spinner(t("busy.loading", name=plain(name)), show_time=True):
            backend = get_backend(name, weights, random_weights)
    except (MemoryRefused, MemoryBusy):  # the page's budget, not the model: not remembered
        raise
    except WeightsFileError:  # one answer, whatever is at that path: no file-existence oracle
        load_failures().put(key, ("file", time.time()))
        raise VitvizError(t("error.weights_file", path=weights)) from None
    except VitvizError as err:  # kept as the loader said it: each page words it in its language
        said = (str(err), err.code, dict(err.fields))  # the words, code and fields, no frames
        load_failures().put(key, (said, time.time()))
        raise VitvizError(for_the_page(*said)) from None
    load_failures().discard(lambda k: k == key)
    return backend


def _download(name: str) -> None:
    bar = st.progress(0.0, text=t("busy.download", name=plain(name)))
    script_thread = threading.current_thread()
    last = [-1.0]

    def report(done: int, total: int | None) -> None:
        if threading.current_thread() is not script_thread or not total:
            return
        frac = min(1.0, done / total)
        if frac - last[0] >= 0.01 or frac == 1.0:
            last[0] = frac
            done_mb, total_mb = f"{done / 2**20:.0f}", f"{total / 2**20:.0f}"
            text = t("busy.download_mb", name=plain(name), done=done_mb, total=total_mb)
            bar.progress(frac, text=text)

    try:
        models.download_weights(name, report)
    finally:  # a failed download leaves no stale bar behind
        bar.empty()


def _session_key() -> str:
    return st.session_state.setdefault("session_key", secrets.token_hex(16))


def remember_upload(name: str, data: bytes) -> bool:
    """Keep this session's last image (an upload, a frozen live frame) in the process's
    byte-bounded cache, not in the session: many visitors' photos cannot add up beyond its
    share of ``VITVIZ_CACHE_MB``. One image never empties the whole share: a larger one is not
    kept (returns False)."""
    kept = page_caches().uploads
    if len(data) > kept.max_bytes // 2:
        return False
    kept.put(_session_key(), (name, data))
    return True


def remembered_upload() -> tuple[str, bytes] | None:
    """This session's last kept image (name, bytes), if it is still in the cache."""
    return page_caches().uploads.get(_session_key())


# Wrappers of a loaded CLIP model per label set (a few tensors each), dropped with the model:
# the keys are weak, and a wrapper holds the model's tower but not its LocalBackend.
_TYPED: weakref.WeakKeyDictionary[LocalBackend, OrderedDict[str, LocalBackend]] = (
    weakref.WeakKeyDictionary()
)
_TYPED_LOCK = threading.Lock()
TYPED_PER_MODEL = 8


def typed_classes(backend: LocalBackend, labels: list[str], template: str | None) -> LocalBackend:
    """A CLIP model scoring the typed ``labels`` (sharing the loaded weights; each label's text
    features are encoded once and kept in the model's own byte-bounded cache). Models with
    fixed classes come back as they are. The last :data:`TYPED_PER_MODEL` wrappers of each
    model are kept (weakly keyed by the model, so they never keep an evicted model alive); the
    labels are checked where the wrapper is made (:meth:`LoadedModel.with_labels`)."""
    if not backend.offers("typed_labels"):
        return backend
    from vitviz.inputs import prompts

    key = prompts.label_set(list(labels), template or prompts.DEFAULT_TEMPLATE)
    with _TYPED_LOCK:  # one wrapper per (model, label set): the live view keeps its explainer
        known = _TYPED.setdefault(backend, OrderedDict())
        if key in known:
            known.move_to_end(key)
            return known[key]
    with st.spinner(t("busy.text"), show_time=True):
        try:
            typed = backend.with_labels(labels, template)
        except Exception as err:  # e.g. out of memory in the text tower: said, not raised
            st.error(t("sidebar.clip_bad", detail=plain(err)))
            return backend
    with _TYPED_LOCK:
        known[key] = typed
        while len(known) > TYPED_PER_MODEL:
            known.popitem(last=False)
    return typed


@st.cache_resource(show_spinner=False, ttl=60, max_entries=8)
def get_remote(url: str, token: str) -> RemoteBackend:
    """A client of a vitviz server (its model description is re-read every minute).

    ``token`` is passed explicitly ("" for none): the client never falls back to this
    machine's ``VITVIZ_TOKEN`` (see :class:`vitviz.ui.servers.ServerPolicy`).
    """
    return RemoteBackend(url, token=token)


def model_input(image_digest: str, data: bytes, name: str, backend: Backend) -> DecodedImage:
    """An image decoded and reduced at once to the model's input (kept in memory only).

    The full-size pixels live only while decoding: what is cached is bounded by the model's
    input size, whatever the upload's.
    """
    key = (image_digest, backend.geometry.key)
    return page_caches().images.get_or_compute(
        key, lambda: decode_image(data, name, reduce=backend.geometry)
    )


def _explain_once(backend: Backend, image) -> ImageExplanation:
    """Explain one model input within the page's memory budget; first free what earlier
    runs of this page left behind.

    Every run of this script is a new module whose functions and globals form reference
    cycles, so the explanations an old run shows (evicted from the cache since) stay alive
    until Python's cyclic collector runs, which can be many uploads later. Collect them
    now (cheap: :func:`page_caches` froze the libraries out of the collector's way), and
    give the freed heap back to the kernel after the forward pass. The explanation stays
    counted in the budget for as long as it lives (cached or shown).
    """
    gc.collect()
    cost = work_cost(backend, (image.size[1], image.size[0]))
    with admitted(cost, alongside=model_bytes(backend)) as res:
        result = backend.explain([image], seen=True)[0]
        # the views' arrays are made from it later, on any rerun: counted with it
        res.keep(result, nbytes(result) + cost.parts.get("views", 0))
    release_memory()
    return result


def explanation(model_id: str, image_digest: str, backend: Backend, image):
    """The cached entry of this (model, image), explained once (with a spinner)."""
    cache = page_caches().explanations
    with st.spinner(t("busy.explain"), show_time=True):
        return cache.get(model_id, image_digest, lambda: _explain_once(backend, image))


def class_relevance(
    model_id: str,
    image_digest: str,
    backend: Backend,
    image,
    cls: int,
    top: list[int],
    negative: bool = False,
) -> ClassRelevance:
    """What the class maps read of ``∂y_c/∂A`` for one class of this image, cached.

    The first request computes the top-5 classes (and ``cls``) from one forward pass with one
    backward pass each, so switching among them is instant; any other class costs one forward
    and one backward pass. Sessions asking for the same class at once compute it once; the
    cache is bounded in bytes. ``negative``: "why not" the class (the relevance of ``-y_c``);
    ``cls`` is :data:`vitviz.engine.gradients.FEATURE_NORM` for a backbone's class-free target.
    """
    cache = page_caches().relevance
    key = (model_id, image_digest, cls, negative)
    hit = cache.get(key)
    if hit is not None:
        return hit

    def compute() -> ClassRelevance:
        others = [c for c in top if c != cls and (model_id, image_digest, c, negative) not in cache]
        wanted = None if cls == FEATURE_NORM else cls  # the backbone's one target
        hw = (image.size[1], image.size[0])
        cost = work_cost(backend, hw, classes=1 + len(others), negative=negative)
        with admitted(cost, alongside=held_by_run(backend, hw)) as admission:
            # the relevance only: the page has the explanation already
            rels = backend.explain_classes(
                [image], [[wanted, *others]], seen=True, negative=negative
            )[0].relevance
            for rel in rels:
                admission.keep(rel, nbytes(rel))
        for rel in rels[1:]:
            cache.put((model_id, image_digest, rel.index, negative), rel)
        return rels[0]

    with st.spinner(t("busy.gradients"), show_time=True):
        try:
            return cache.get_or_compute(key, compute)
        except (MemoryRefused, MemoryBusy) as err:  # too large, or the page too busy
            st.error(i18n.error_text(err))
            st.stop()
        except VitvizError as err:  # e.g. the server went away: say so, keep the page
            st.error(t("error.class_map", detail=plain(err)))
            st.stop()
    raise AssertionError("unreachable")


def token_features(entry: Entry, backend: Backend, image) -> TokenFeatures:
    """The last layer's token features of this (model, image), computed once (one forward
    pass, with a spinner) and cached with its explanation, as the lesson's embeddings are.

    Raises:
        VitvizError: the backend cannot give them (e.g. a server without ``/v1/features``).
    """
    with st.spinner(t("features.busy"), show_time=True):
        return entry.get("features", lambda: backend.features(image))


@st.cache_resource(show_spinner=False, max_entries=8)
def model_anatomy(model_id: str, _backend: Backend) -> Anatomy:
    """Patch-embedding filters and position similarity of a loaded model."""
    return _backend.anatomy()


@st.cache_resource(show_spinner=False)
def gallery_thumbnails() -> dict[str, bytes]:
    """Small previews of the sample images, encoded once for every visitor's runs."""
    import cv2

    out = {}
    for name in SAMPLES:
        img = decode_image((ASSETS / name).read_bytes(), name).image
        rgb = np.asarray(img.convert("RGB"))
        h, w = rgb.shape[:2]
        s = min(h, w)
        crop = rgb[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
        out[name] = encode(cv2.resize(crop, (96, 96), interpolation=cv2.INTER_AREA))
    return out
