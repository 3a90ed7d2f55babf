"""What the HTTP server does with a request, without Ray or FastAPI: the testable core.

A request becomes a :class:`Job` (decoded image plus validated options). :meth:`Engine.run`
explains a list of jobs in as few batches as it can: plain jobs in one ``explain`` call,
class-specific jobs in one ``explain_classes`` call (class lists padded to the longest,
gradient layers merged). When a batch fails, its jobs are retried one by one, so one bad job
never takes its batch-mates down. :meth:`Engine.encode` turns a result into the binary
response of :mod:`vitviz.wire`.
"""

from __future__ import annotations

import hmac
import json
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydantic import ValidationError

from vitviz import methods, wire
from vitviz.backends.capabilities import SERVED
from vitviz.backends.local import LocalBackend
from vitviz.errors import ImageTooLarge, OptionsError, VitvizError
from vitviz.inputs.classes import resolve_class
from vitviz.inputs.images import decode_image
from vitviz.memory.cost import WorkCost, size_text
from vitviz.results import ClassExplanation, ImageExplanation
from vitviz.server.options import (
    AblationOptions,
    ExplainOptions,
    LensOptions,
    NormsOptions,
    Settings,
    TextRelevanceOptions,
    TrustOptions,
    refusal,
)
from vitviz.wire import API_VERSION

__all__ = [
    "API_VERSION",
    "AblationOptions",
    "ApiError",
    "Engine",
    "ExplainOptions",
    "Job",
    "LensOptions",
    "NormsOptions",
    "Settings",
    "TextRelevanceOptions",
    "TrustOptions",
    "check_token",
]

MAX_TRUST_MAPS = 64  # maps one trust request may compare with occlusion
JSON_NUMBER_BYTES = 25  # the most characters JSON gives one float ("-1.2345678901234567e-05,")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class ApiError(Exception):
    """An error answered as ``{"error": {"code", "message"}}`` with an HTTP status."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON body."""
        return {"error": {"code": self.code, "message": self.message}}


def check_token(expected: str | None, authorization: str | None) -> None:
    """Raise 401 unless ``authorization`` is ``Bearer <expected>`` (constant-time compare)."""
    if not expected:
        return
    given = (authorization or "").strip()
    scheme, _, value = given.partition(" ")
    ok = hmac.compare_digest(value.strip().encode(), expected.encode())
    if scheme.lower() != "bearer" or not ok:
        raise ApiError(
            401,
            "unauthorized",
            "this server needs a token: send 'Authorization: Bearer <token>' "
            "(the vitviz client reads it from VITVIZ_TOKEN or --token)",
            {"WWW-Authenticate": "Bearer"},
        )


class Admission:
    """A bounded count of requests in a replica; over the limit means 503 + Retry-After."""

    def __init__(self, limit: int, retry_after_s: int, what: str = "requests in progress") -> None:
        self.limit, self.retry_after_s = max(1, int(limit)), max(1, int(retry_after_s))
        self.what = what
        self.active = 0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        """Take a slot, or raise 503 when none is free."""
        with self._lock:
            if self.active >= self.limit:
                raise ApiError(
                    503,
                    "busy",
                    f"the server is busy ({self.active} {self.what}); "
                    f"retry in {self.retry_after_s} s",
                    {"Retry-After": str(self.retry_after_s)},
                )
            self.active += 1

    def release(self) -> None:
        """Give a slot back."""
        with self._lock:
            self.active -= 1

    def __enter__(self) -> Admission:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclass
class Job:
    """One explain request, validated.

    Attributes:
        image: the model's input: resized and cropped right after decoding (or by the
            client), so a queued job holds the model's input size, never the upload's.
        options: the request's options (top_k, attention, dtype, gradients, negative …).
        classes: the classes asked for, resolved: class indices, None for the top prediction.
        layers: layers whose gradients are computed, as indices from 0 (all when empty).
    """

    image: Image.Image
    options: ExplainOptions = field(default_factory=ExplainOptions)
    classes: list[int | None] = field(default_factory=list)
    layers: list[int] = field(default_factory=list)


def options_error(errors: Sequence[Any]) -> ApiError:
    """The API's error for options that failed validation (see
    :func:`vitviz.server.options.refusal`): 422 for a wrong type, 400 for a wrong choice."""
    status, message = refusal(errors)
    return ApiError(status, "bad_option", message)


def explain_options(options: ExplainOptions | None = None, **values: Any) -> ExplainOptions:
    """``options``, or the options ``values`` give (field names or query names), validated;
    the API's 400/422 when they are wrong."""
    if options is not None:
        return options
    try:
        return ExplainOptions.model_validate(values)
    except ValidationError as err:
        raise options_error(err.errors()) from None


@dataclass
class Outcome:
    """A job's result, or the error that stopped it."""

    result: ImageExplanation | ClassExplanation | None = None
    error: ApiError | None = None


def method_listing() -> dict[str, dict[str, Any]]:
    """Every registered method, in display order, with its title, kind and options (the
    ``methods`` of the ``/v1/model`` body)."""
    return {
        name: {
            "title": m.title,
            "description": m.description,
            "kind": m.kind,
            "needs_gradients": m.needs_gradients,
            "options": {
                o.name: {"kind": o.kind, "default": o.default, "help": o.help} for o in m.options
            },
        }
        for name, m in methods.of_kind().items()
    }


class Engine:
    """The model of one replica and everything a request needs from it."""

    def __init__(self, settings: Settings, backend: LocalBackend | None = None) -> None:
        self.settings = settings
        if backend is None:
            if settings.threads or settings.device in ("auto", "cpu"):
                import torch

                torch.set_num_threads(settings.threads or os.cpu_count() or 1)
            from vitviz.inputs.prompts import split_labels
            from vitviz.models import load_model

            loaded = load_model(
                settings.model,
                weights=settings.weights,
                random_weights=settings.random_weights,
                device=settings.device,
                precision=settings.precision,
            )
            labels = settings.labels
            if isinstance(labels, str):  # a config file's "cat,dog,teapot"
                labels = split_labels(labels)
            if labels is not None or settings.template is not None:
                loaded = loaded.with_labels(labels, settings.template)
            backend = LocalBackend(loaded, batch_size=settings.max_batch_size)
        self.backend = backend
        self.model = backend.info()
        self.name: str = self.model.name
        self._lock = threading.Lock()  # one forward at a time per replica
        self.batches = self.jobs = self.largest_batch = 0

    def stats(self) -> dict[str, int]:
        """Batches run, jobs explained and the largest batch, since this replica started."""
        return {"batches": self.batches, "jobs": self.jobs, "largest_batch": self.largest_batch}

    def info(self) -> dict[str, Any]:
        """Model description, API version, methods and limits (the ``/v1/model`` body)."""
        info = self.model.to_dict()
        info.pop("backend")
        if info["weights"]["location"]:  # the file's name, never the server's directories
            info["weights"]["location"] = Path(str(info["weights"]["location"])).name
        return {
            "api_version": API_VERSION,
            **info,
            "labels": self.backend.labels,
            "capabilities": self.capabilities(),
            "methods": method_listing(),
            "limits": self.settings.limits(),
        }

    def capabilities(self) -> list[str]:
        """What this server offers over HTTP (the ``capabilities`` of ``/v1/model``): every
        capability the API carries that the model has (text relevance: CLIP only)."""
        return [c for c in SERVED if self.backend.offers(c)]

    def _offered(self, capability: str) -> None:
        if capability not in self.capabilities():
            raise ApiError(
                400,
                "not_offered",
                f"this server's model ({self.name}) does not offer {capability.replace('_', ' ')}",
            )

    def trust_answer(self, body: bytes, options: TrustOptions) -> dict[str, Any]:
        """Deletion/insertion curves, their random baseline, occlusion and the maps' Spearman
        correlations (:meth:`LocalBackend.trust`) as JSON; 400 for a body that is not a trust
        request on the model's input, a class the model lacks or maps off its patch grid."""
        self._offered("trust")
        if len(body) > self.settings.max_upload_bytes:
            raise too_large(len(body), self.settings.max_upload_bytes)
        try:
            pixels, maps = wire.decode_trust_request(body)
        except wire.WireError as err:
            raise ApiError(
                400, "bad_request", f"a trust request vitviz cannot read: {err}"
            ) from None
        h, w = pixels.shape[:2]
        if h * w > self.settings.max_pixels:
            raise ApiError(413, "image_too_large", f"the image has {w}×{h} px, too many")
        image = Image.fromarray(pixels)
        if not self.backend.geometry.is_seen(image):
            raise ApiError(
                400,
                "bad_option",
                f"trust needs the model's input: the image is {w}×{h} px, not a resized and "
                "cropped input of this model",
            )
        if not self.model.classes:
            raise ApiError(
                400, "bad_option", f"trust curves need a classifier, and {self.name} has none"
            )
        if not 0 <= options.target < self.model.classes:
            raise ApiError(
                400,
                "bad_option",
                f"class {options.target} does not exist: the model has {self.model.classes}",
            )
        grid = self.backend.loaded.layout((h, w)).grid
        if len(maps) > MAX_TRUST_MAPS:
            raise ApiError(400, "bad_option", f"at most {MAX_TRUST_MAPS} maps per trust request")
        for name, values in maps.items():
            if values.shape != tuple(grid):
                raise ApiError(
                    400,
                    "bad_option",
                    f"the map {name!r} has shape {values.shape}, not this input's "
                    f"{grid[0]}×{grid[1]} patch grid",
                )
        if options.main not in maps:
            raise ApiError(400, "bad_option", f"main={options.main!r} is not one of the maps sent")
        batch = min(options.batch, self.settings.max_batch_size)
        with self._lock:
            report = self.backend.trust(
                image,
                options.target,
                maps,
                options.main,
                steps=options.steps,
                seeds=options.seeds,
                batch=batch,
                seen=True,
            )
        return {"api_version": API_VERSION, **wire.trust_to_dict(report)}

    def text_relevance_answer(self, body: bytes, options: TextRelevanceOptions) -> dict[str, Any]:
        """A CLIP caption's tokens for ``label`` and their share of the relevance for the
        image–text similarity (:meth:`LocalBackend.text_relevance`, text layers from
        ``start_layer`` on) as JSON; 400 for another model, a bad label or start layer, or a
        body that is not the model's input."""
        self._offered("text_relevance")
        image = self._model_input(body, "text relevance")
        with self._lock:
            try:
                pieces = self.backend.text_relevance(
                    image, options.label, seen=True, start_layer=options.start_layer
                )
            except OptionsError as err:
                raise ApiError(400, "bad_option", str(err)) from None
        return {
            "api_version": API_VERSION,
            "label": options.label,
            "start_layer": options.start_layer,
            "tokens": [[str(w), float(v)] for w, v in pieces],
        }

    # -- inside the heads (issue 24): head ablation, the logit lens, token norms -------------
    def _fits(self, cost: WorkCost, answer: int, way_out: str) -> None:
        """400 before any work when ``cost`` passes ``max_work_bytes`` or ``answer`` bytes pass
        ``max_answer_bytes``; the message names the sizes and ``way_out``."""
        limit = self.settings.max_work_bytes
        if cost.peak > limit:
            raise ApiError(
                400,
                "work_too_large",
                f"this {cost.what} would hold {cost.describe()}, over this server's limit of "
                f"{size_text(limit)} per request; {way_out}",
            )
        if answer > self.settings.max_answer_bytes:
            raise ApiError(
                400,
                "answer_too_large",
                f"this {cost.what}'s answer would be {size_text(answer)}, over this server's "
                f"limit of {size_text(self.settings.max_answer_bytes)}",
            )

    @staticmethod
    def _json(answer: dict[str, Any]) -> bytes:
        """An answer as JSON bytes (every float's digits kept; a NaN is the server's bug)."""
        body = {"api_version": API_VERSION, **answer}
        return json.dumps(body, allow_nan=False, separators=(",", ":")).encode()

    def ablation_answer(self, body: bytes, options: AblationOptions) -> bytes:
        """Each head's and each layer's effect on a class when removed
        (:meth:`LocalBackend.ablate_heads`) as JSON (:meth:`HeadAblation.to_dict`); at most
        ``max_batch_size`` copies per forward; 400 for a class the model lacks, a body that is
        not the model's input, or work over ``max_work_bytes`` (before any work)."""
        from vitviz.memory.cost import ablation_cost

        self._offered("head_ablation")
        image = self._model_input(body, "head ablation")
        classes = self.model.classes
        if not 0 <= options.target < classes:
            raise ApiError(
                400,
                "bad_option",
                f"class {options.target} does not exist: the model has {classes} classes "
                f"(0 to {classes - 1})",
            )
        batch = min(options.batch, self.settings.max_batch_size)
        shape, hw = self.backend.memory_shape(), (image.size[1], image.size[0])
        fitting = [b for b in range(batch, 0, -1) if self._within(ablation_cost(shape, hw, b))]
        way_out = (
            f"ask for batch={fitting[0]} or fewer ablated copies per forward"
            if fitting
            else "this model cannot be ablated on this server, even one copy per forward"
        )
        heads = self.model.layers * (self.model.heads + 2)
        self._fits(ablation_cost(shape, hw, batch), 4 * JSON_NUMBER_BYTES * heads, way_out)
        with self._lock:
            try:
                result = self.backend.ablate_heads(
                    image, options.target, kind=options.kind, batch=batch
                )
            except VitvizError as err:  # options, or a model whose modules it cannot read
                raise _refused(err) from None
        return self._json(result.to_dict())

    def _within(self, cost: WorkCost) -> bool:
        return cost.peak <= self.settings.max_work_bytes

    def lens_answer(self, body: bytes, options: LensOptions) -> bytes:
        """The logit lens (:meth:`LocalBackend.logit_lens`) as JSON
        (:func:`vitviz.wire.lens_to_dict`: the full ``[L, C]`` logits included); 400 for a
        body that is not the model's input or work over the limits (before any work)."""
        from vitviz.memory.cost import lens_cost

        self._offered("logit_lens")
        image = self._model_input(body, "the logit lens")
        layers, classes = self.model.layers, self.model.classes
        cost = lens_cost(self.backend.memory_shape(), (image.size[1], image.size[0]), classes)
        k = min(options.top_k, classes)
        answer = JSON_NUMBER_BYTES * layers * (classes + 2 * k + 2) + 4096
        self._fits(cost, answer, "this model's logit lens needs a server with a higher limit")
        with self._lock:
            try:
                lens = self.backend.logit_lens(image, top_k=options.top_k)
            except VitvizError as err:  # options, or a model whose modules it cannot read
                raise _refused(err) from None
        return self._json(wire.lens_to_dict(lens))

    def norms_answer(self, body: bytes, options: NormsOptions) -> bytes:
        """Every token's residual-stream norm per layer, its outliers above ``k ×`` the median
        and their share of the readout's attention (:meth:`LocalBackend.token_norms`) as JSON
        (:func:`vitviz.wire.norms_to_dict`); 400 for a body that is not the model's input or
        work over the limits (before any work)."""
        from vitviz.memory.cost import norms_cost

        self._offered("token_norms")
        image = self._model_input(body, "token norms")
        hw = (image.size[1], image.size[0])
        layout = self.backend.loaded.layout(hw)
        cost = norms_cost(self.backend.memory_shape(), hw)
        answer = JSON_NUMBER_BYTES * self.model.layers * 3 * layout.num_tokens + 4096
        self._fits(cost, answer, "use a server with a higher limit or a smaller input")
        with self._lock:
            try:
                norms = self.backend.token_norms(image, k=options.k)
            except VitvizError as err:  # options, or a model whose modules it cannot read
                raise _refused(err) from None
        return self._json(wire.norms_to_dict(norms, layout))

    def anatomy_message(self) -> bytes:
        """Patch-embedding filters and position similarity as a binary message."""
        a = self.backend.anatomy()
        header = {
            "api_version": API_VERSION,
            "width": a.width,
            "patch_size": list(a.patch_size),
            "position_grid": None if a.position_grid is None else list(a.position_grid),
        }
        arrays: dict[str, np.ndarray] = {}
        if a.filters is not None:
            arrays["filters"] = a.filters.astype(np.uint8)
            arrays["filter_variance"] = np.asarray(a.filter_variance, dtype=np.float32)
        if a.position_similarity is not None:
            arrays["position_similarity"] = a.position_similarity.astype(np.float32)
        return wire.encode(header, arrays)

    def _decode(self, body: bytes, reduce: Any) -> Image.Image:
        """An uploaded image (reduced at once by ``reduce``), or the API's 400/413 saying why
        it cannot be used."""
        if len(body) > self.settings.max_upload_bytes:
            raise too_large(len(body), self.settings.max_upload_bytes)
        try:
            decoded = decode_image(
                body, "the uploaded image", max_pixels=self.settings.max_pixels, reduce=reduce
            )
        except ImageTooLarge as err:
            raise ApiError(413, "image_too_large", str(err)) from None
        except VitvizError as err:
            raise ApiError(400, "bad_image", str(err)) from None
        return decoded.image

    def _model_input(self, body: bytes, what: str) -> Image.Image:
        """An uploaded model input (resized and cropped already); 400 when it is not one."""
        image = self._decode(body, None)
        if not self.backend.geometry.is_seen(image):
            w, h = image.size
            raise ApiError(
                400,
                "bad_option",
                f"{what} need the model's input: the image is {w}×{h} px, not a resized and "
                "cropped input of this model",
            )
        return image

    def embeddings_message(self, body: bytes) -> bytes:
        """One model input's patch, position and token vectors (the lesson's steps 3–5) as a
        binary message, float16; 400 unless the body is an image of the model's input size."""
        vectors = self.backend.embeddings(self._model_input(body, "embeddings"))
        header = {
            "api_version": API_VERSION,
            "num_prefix": vectors.num_prefix,
            "norm_pre": vectors.norm_pre,
        }
        arrays: dict[str, np.ndarray] = {}
        for name in ("pixels", "patches", "positions", "tokens", "features"):
            value = getattr(vectors, name)
            if value is not None:
                arrays |= wire.pack_array(name, value, "float16")
        return wire.encode(header, arrays)

    def features_message(self, body: bytes) -> bytes:
        """One model input's token features after the last block (``forward_features``) as a
        binary message: float16 with one scale per token (no overflow, float16's relative
        precision); 400 unless the body is an image of the model's input size."""
        features = self.backend.features(self._model_input(body, "features"))
        header = {
            "api_version": API_VERSION,
            "layout": features.layout.to_dict(),
            "norm": features.norm,
        }
        return wire.encode(header, wire.pack_array("tokens", features.tokens, "float16-scaled"))

    def make_job(self, body: bytes, options: ExplainOptions | None = None, **values: Any) -> Job:
        """Decode one request and check its options against the model; 400 with a clear
        message when it is wrong.

        ``options``: validated already (the endpoint's); else ``values`` are validated as
        :class:`ExplainOptions`. The image is reduced to the model's input as it is decoded,
        and the answer's size is checked against ``max_answer_bytes`` before any model work.
        """
        options = explain_options(options, **values)
        top_k = options.top_k
        most = max(50, len(self.backend.labels or []))
        if not 1 <= top_k <= most:
            raise ApiError(400, "bad_option", f"top_k must be between 1 and {most}, got {top_k}")
        if len(body) > self.settings.max_upload_bytes:
            raise too_large(len(body), self.settings.max_upload_bytes)
        wanted = self._classes(options.classes)
        layers = options.layers
        num_layers = self.model.layers
        for layer in layers:
            if not -num_layers <= layer < num_layers:
                raise ApiError(
                    400, "bad_option", f"layer {layer} does not exist: the model has {num_layers}"
                )
        picked = sorted({layer % num_layers for layer in layers}) if layers else []
        geometry = self.backend.geometry
        image = self._decode(body, None if options.seen else geometry)
        w, h = image.size
        if options.seen and not geometry.is_seen(image):
            raise ApiError(
                400,
                "bad_option",
                f"seen=true but the image is {w}×{h} px, not a resized and cropped input of "
                "this model; send the original image without seen",
            )
        job = Job(image, options, wanted, picked)
        size = self.answer_bytes(job)
        if size > self.settings.max_answer_bytes:
            raise ApiError(
                400,
                "answer_too_large",
                f"this answer would be {size / 2**20:.0f} MiB, over this server's limit of "
                f"{self.settings.max_answer_bytes / 2**20:.0f} MiB; ask for fewer classes or "
                "layers, gradients=relevance, attention=readout or a smaller dtype",
            )
        return job

    def answer_bytes(self, job: Job) -> int:
        """The size of ``job``'s answer, from the model's shape (before any work)."""
        w, h = job.image.size
        o = job.options
        n = self.backend.loaded.layout((h, w)).num_tokens
        num_layers, heads = self.model.layers, self.model.heads
        item = {"float32": 4, "float16": 2, "uint8": 1}[o.dtype]
        size = w * h * 3 + 4 * (self.model.classes + 2 * num_layers * heads + n) + 64 * 1024
        size += {"full": n * n, "readout": n, "none": 0}[o.attention] * num_layers * heads * item
        k = len(job.classes)
        if k:
            wide = 4 if o.dtype == "float32" else 2
            size += k * (4 * num_layers * n * n * wide + 4 * n * (num_layers * (heads + 3) + 1))
            if o.gradients == "full":
                size += k * len(job.layers or range(num_layers)) * heads * n * n * wide
        return size

    def _classes(self, classes: Sequence[str]) -> list[int | None]:
        if not classes:
            return []
        labels = self.backend.labels
        if not labels:  # a backbone: its one class-free target, the readout feature's norm
            if any(str(spec).strip().lower() != "top" for spec in classes):
                raise ApiError(
                    400,
                    "bad_option",
                    "this model has no classifier, so it explains no class; class=top explains "
                    "its class-free target, the readout feature's norm",
                )
            return [None] * min(len(classes), 16)
        if len(classes) > 16:
            raise ApiError(400, "bad_option", "at most 16 classes per request")
        out: list[int | None] = []
        for spec in classes:
            if str(spec).strip().lower() == "top":
                out.append(None)
                continue
            try:
                out.append(resolve_class(spec, labels))
            except OptionsError as err:
                raise ApiError(400, "bad_option", str(err)) from None
        return out

    def run(self, jobs: Sequence[Job]) -> list[Outcome]:
        """Explain jobs in as few forward passes as possible; errors stay per job."""
        self.batches += 1
        self.jobs += len(jobs)
        self.largest_batch = max(self.largest_batch, len(jobs))
        outcomes = [Outcome() for _ in jobs]
        plain = [i for i, j in enumerate(jobs) if not j.classes]
        classed = [i for i, j in enumerate(jobs) if j.classes]
        for group, fn in ((plain, self._plain), (classed, self._classed)):
            if not group:
                continue
            try:
                results = fn([jobs[i] for i in group])
            except Exception:  # the batch failed: find out which job, keep the others
                results = []
                for i in group:
                    try:
                        results.extend(fn([jobs[i]]))
                    except Exception as err:  # reported to that client only
                        results.append(_as_api_error(err))
            for i, res in zip(group, results, strict=True):
                if isinstance(res, ApiError):
                    outcomes[i].error = res
                else:
                    outcomes[i].result = res
        return outcomes

    def _plain(self, jobs: Sequence[Job]) -> list[ImageExplanation]:
        top_k = max(j.options.top_k for j in jobs)
        with self._lock:
            return self.backend.explain([j.image for j in jobs], top_k=top_k, seen=True)

    def _classed(self, jobs: Sequence[Job]) -> list[ClassExplanation]:
        """Class jobs in forward passes of at most ``max_batch_size`` (image, class) pairs.

        Each pass holds every pair's relevance (and, for ``gradients=full`` jobs, their
        gradients), so the pairs, not the images, bound a batch's memory.
        """
        out: list[ClassExplanation | None] = [None] * len(jobs)
        for negative in (False, True):  # one sign per pass: -y_c is another backward target
            group = [i for i, j in enumerate(jobs) if j.options.negative == negative]
            for chunk in _class_chunks([jobs[i] for i in group], self.settings.max_batch_size):
                done = self._class_pass([jobs[group[i]] for i in chunk], negative)
                for i, res in zip(chunk, done, strict=True):
                    out[group[i]] = res
        return [r for r in out if r is not None]

    def _class_pass(self, jobs: Sequence[Job], negative: bool) -> list[ClassExplanation]:
        num_layers = self.model.layers
        layers = sorted({layer for j in jobs for layer in (j.layers or range(num_layers))})
        k = max(len(j.classes) for j in jobs)
        padded = [j.classes + [j.classes[-1]] * (k - len(j.classes)) for j in jobs]
        with self._lock:
            res = self.backend.explain_classes(
                [j.image for j in jobs],
                padded,
                layers=layers,
                top_k=max(j.options.top_k for j in jobs),
                seen=True,
                full_gradients=any(j.options.gradients == "full" for j in jobs),
                negative=negative,
            )
        out = []
        for job, r in zip(jobs, res, strict=True):
            n = len(job.classes)
            grads = None
            if job.options.gradients == "full" and r.gradients is not None:
                grads = r.gradients[:n]
            relevance = r.relevance[:n]
            if job.layers and job.layers != layers:  # what this job asked for, not its batch's
                relevance = [rel.only(job.layers) for rel in relevance]
            out.append(
                ClassExplanation(r.explanation, r.classes[:n], r.labels[:n], relevance, grads)
            )
        return out

    def encode(self, job: Job, result: ImageExplanation | ClassExplanation) -> bytes:
        """The binary response for one job (see :mod:`vitviz.wire` and the README)."""
        classed = result if isinstance(result, ClassExplanation) else None
        expl = classed.explanation if classed else result
        attn, layout = expl.attention, expl.layout
        header: dict[str, Any] = {
            "api_version": API_VERSION,
            "model": self.name,
            "predictions": [p.to_dict() for p in expl.predictions[: job.options.top_k]],
            "layout": layout.to_dict(),
            "input_size": list(expl.image.shape[:2]),
            "attention": job.options.attention,
        }
        arrays: dict[str, np.ndarray] = {"image": expl.image.astype(np.uint8)}
        if expl.logits is not None:
            arrays["logits"] = np.asarray(expl.logits, dtype=np.float32)
        if job.options.attention == "full":  # the client derives the rest from the tensor
            arrays |= wire.pack_array("attention", attn, job.options.dtype)
        else:
            rollout = methods.compute_row("rollout", attn, layout)
            arrays["rollout"] = np.asarray(rollout, dtype=np.float32)
            for name, fn in methods.STATISTICS.items():
                arrays[name] = np.asarray(fn(attn, layout), dtype=np.float32)
        if job.options.attention == "readout":
            readout = np.einsum("n,lhnm->lhm", layout.readout_weights(), attn)
            arrays |= wire.pack_array("readout", readout, job.options.dtype)
        if classed is not None:
            layers = job.layers or list(range(self.model.layers))
            header |= {
                "classes": classed.classes,
                "class_labels": classed.labels,
                "gradient_layers": layers,
                "negative": job.options.negative,
            }
            arrays |= wire.encode_relevance(classed.relevance, job.options.dtype)
            if job.options.gradients == "full" and classed.gradients is not None:
                enc = "float32" if job.options.dtype == "float32" else "float16-scaled"
                grads = classed.gradients[:, layers]
                arrays |= wire.pack_array("gradients", grads, enc, scale_axes=2)
        return wire.encode(header, arrays)


def _class_chunks(jobs: Sequence[Job], budget: int) -> Iterator[list[int]]:
    """Indices of class jobs in runs whose (image, class) pairs stay within ``budget``.

    Class lists are padded to the longest of their run, so a run of n jobs with at most k
    classes costs n·k pairs; a single job always runs, whatever its count.
    """
    chunk: list[int] = []
    widest = 0
    for i, job in enumerate(jobs):
        k = max(widest, len(job.classes))
        if chunk and (len(chunk) + 1) * k > budget:
            yield chunk
            chunk, k = [], len(job.classes)
        chunk.append(i)
        widest = k
    if chunk:
        yield chunk


def too_large(size: int, limit: int) -> ApiError:
    """413 for a body over the upload limit."""
    return ApiError(
        413,
        "upload_too_large",
        f"the request body is {size / 2**20:.1f} MiB, over this server's limit of "
        f"{limit / 2**20:.1f} MiB; send a smaller or more compressed image",
    )


def _refused(err: VitvizError) -> ApiError:
    """400 for an engine's refusal: ``bad_option`` for options, ``bad_request`` otherwise."""
    return ApiError(400, "bad_option" if isinstance(err, OptionsError) else "bad_request", str(err))


def _as_api_error(err: Exception) -> ApiError:
    if isinstance(err, ApiError):
        return err
    if isinstance(err, VitvizError):
        return ApiError(400, "bad_request", str(err))
    return ApiError(500, "internal", f"the server failed on this image ({type(err).__name__})")
