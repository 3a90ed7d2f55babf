"""``RemoteBackend``: the :class:`vitviz.backends.Backend` protocol over HTTP to a vitviz server.

The client resizes and crops each image itself with the geometry the server reports (the same
code the server would run), sends the model's input as a PNG and asks for the full attention.
Several images are sent at once (the server batches them); a busy server's 503 is retried
after its Retry-After.

Precision: every map the page draws from a server's answer must equal the in-process one,
and some maps rank entries (rollout's discard ratio, DINO's masks, gradient rollout's
discard), which float16 rounding reorders (see :mod:`vitviz.wire`). So the client asks
for ``dtype=float32`` by default: attention, class relevance and gradients arrive exactly as
the server's engine computed them, and every method and option gives the in-process map (a
ViT-B/16 answer: 22 MB instead of 11 MB; the page held float32 attention anyway). Each answer
is checked to be in the encoding asked for, and is read into one buffer that the attention
views in place, so an explanation holds one copy of its answer and nothing more.
``dtype="float16"`` halves the bytes for clients that can live with float16 precision and do
not rank entries.
"""

from __future__ import annotations

import io
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, NoReturn

import numpy as np
import requests
from PIL import Image
from requests.adapters import HTTPAdapter

from vitviz import wire
from vitviz.backends.capabilities import SERVED, SERVED_SINCE, Capability, check_capability
from vitviz.errors import ImageError, OptionsError, ServerError
from vitviz.inputs.geometry import InputGeometry
from vitviz.layout import TokenLayout
from vitviz.results import (
    Anatomy,
    ClassExplanation,
    HeadAblation,
    ImageExplanation,
    LogitLens,
    ModelInfo,
    Prediction,
    TokenEmbeddings,
    TokenFeatures,
    TokenNorms,
    TrustReport,
)
from vitviz.wire import API_VERSION, OLDEST_API_VERSION

__all__ = ["API_VERSION", "Precision", "RemoteBackend", "explain_query"]

_IMAGE_CODES = {"bad_image", "image_too_large", "upload_too_large"}
Precision = Literal["float32", "float16"]  # the dtypes this client asks for (wire.ArrayDtype)
# how each precision's arrays travel: the attention rows or tensor, and the class arrays
_ENCODINGS: dict[str, tuple[str, str]] = {
    "float32": ("float32", "float32"),
    "float16": ("float16", "float16-scaled"),
}
_SLACK = 16 * 2**20  # an answer may pass the server's declared limit by this much


class RemoteBackend:
    """A client of ``python -m vitviz serve``; the same methods as ``LocalBackend``.

    Args:
        url: the server's base URL, e.g. ``http://gpu-box:8000``.
        token: bearer token (default ``$VITVIZ_TOKEN``).
        timeout: seconds to wait for one answer.
        batch_size: images in flight at once.
        retries: how often a busy (503) answer is retried.
        dtype: ``float32`` (exact: every map equals the in-process engine's) or ``float16``
            (half the bytes; maps that rank entries, such as discard and masks, may differ).
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 120.0,
        batch_size: int = 8,
        retries: int = 5,
        dtype: Precision = "float32",
    ) -> None:
        if dtype not in _ENCODINGS:
            raise OptionsError(f"dtype must be float32 or float16, got {dtype!r}")
        self.dtype: Precision = dtype
        url = url.strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ServerError(f"server URL {url!r} must start with http:// or https://")
        self.url = url
        self.token = token if token is not None else (os.environ.get("VITVIZ_TOKEN") or None)
        self.timeout = timeout
        self.batch_size = max(1, int(batch_size))
        self.retries = retries
        self._http = requests.Session()
        # no ~/.netrc or proxy settings of this machine: the URL may come from a page visitor
        self._http.trust_env = False
        pool = max(16, self.batch_size)
        self._http.mount("http://", HTTPAdapter(pool_connections=2, pool_maxsize=pool))
        self._http.mount("https://", HTTPAdapter(pool_connections=2, pool_maxsize=pool))
        if self.token:
            self._http.headers["Authorization"] = f"Bearer {self.token}"
        r = self._request("GET", "/v1/model", timeout=min(timeout, 15.0))
        try:
            self._info = r.json()
            if "input_config" not in self._info or "labels" not in self._info:
                raise KeyError("input_config")
        except (ValueError, KeyError, TypeError):
            self._http.close()
            raise ServerError(
                f"{url} answered, but not as a vitviz server: check the URL and port"
            ) from None
        version = self._info.get("api_version")
        if (
            not isinstance(version, int)
            or isinstance(version, bool)
            or not OLDEST_API_VERSION <= version <= API_VERSION
        ):
            self._http.close()
            raise ServerError(
                f"the server at {url} speaks API version {version}, this client version "
                f"{API_VERSION} (and servers back to version {OLDEST_API_VERSION}); use matching "
                "vitviz versions"
            )
        self.api_version: int = version
        try:
            self._model = ModelInfo.from_dict({**self._info, "backend": self.url})
            self._capabilities = frozenset(str(c) for c in self._info["capabilities"])
        except (KeyError, TypeError, ValueError):
            self._http.close()
            raise ServerError(f"{url} describes its model in a way vitviz cannot read") from None
        self._geometry = InputGeometry.from_info(self._model)
        self._anatomy: Anatomy | None = None

    # -- protocol --------------------------------------------------------------------------
    def info(self) -> ModelInfo:
        """The server's model description, with ``backend`` set to the URL."""
        return self._model

    def offers(self, capability: Capability) -> bool:
        """Whether the server lists ``capability`` in its ``/v1/model`` description (only what a
        server can offer counts: the rest needs the model in this process) and its API version
        carries it (:data:`~vitviz.backends.capabilities.SERVED_SINCE`)."""
        check_capability(capability)
        if self.api_version < SERVED_SINCE.get(capability, 0):
            return False
        return capability in SERVED and capability in self._capabilities

    def _need(self, capability: Capability) -> None:
        if self.offers(capability):
            return
        what = capability.replace("_", " ")
        since = SERVED_SINCE.get(capability, 0)
        if capability in SERVED and self.api_version < since:
            raise OptionsError(
                f"the vitviz server at {self.url} speaks API version {self.api_version}, which "
                f"has no {what} (it came with version {since}): update vitviz on the server"
            )
        raise OptionsError(f"the vitviz server at {self.url} does not offer {what}")

    @property
    def template(self) -> None:
        """The server's prompt template is not sent: None."""
        return None

    def memory_shape(self) -> None:
        """None: the model runs on the server; only its answers are held here."""
        return None

    @property
    def geometry(self) -> InputGeometry:
        """The served model's resize and crop (applied here before sending)."""
        return self._geometry

    @property
    def limits(self) -> dict[str, Any]:
        """The server's limits (upload size, batch size, timeout, token required)."""
        return dict(self._info["limits"])

    @property
    def labels(self) -> list[str] | None:
        """Class names of the served model (None without a classifier)."""
        return self._info.get("labels")

    def anatomy(self) -> Anatomy:
        """The model's filters and position similarity, fetched once."""
        if self._anatomy is None:
            r = self._request("GET", "/v1/model/anatomy")
            header, arrays = self._decode(r)
            grid = header.get("position_grid")
            self._anatomy = Anatomy(
                width=int(header["width"]),
                patch_size=tuple(header["patch_size"]),
                filters=arrays.get("filters"),
                filter_variance=arrays.get("filter_variance"),
                position_similarity=arrays.get("position_similarity"),
                position_grid=None if grid is None else tuple(grid),
            )
        return self._anatomy

    def explain(
        self, images: Sequence[Image.Image], *, top_k: int = 5, seen: bool = False
    ) -> list[ImageExplanation]:
        """One explanation per image (the full attention, in :attr:`dtype` on the wire).

        ``seen``: the images are already the model's input (see :attr:`geometry`).
        """
        params = self._full(top_k)

        def one(image: Image.Image) -> ImageExplanation:
            header, arrays = self._explain(image, params, seen)
            self._check(header, ("attention",))
            return self._explanation(header, arrays)

        return self._map(one, images)

    def _full(self, top_k: int) -> dict[str, Any]:
        """What the page asks for: the model's input, the whole attention in :attr:`dtype`."""
        return explain_query(top_k=top_k, attention="full", dtype=self.dtype)

    def _check(self, header: dict[str, Any], names: Sequence[str], classed: bool = False) -> None:
        """Refuse an answer whose arrays are not in the encoding asked for (a server that
        rounds would give maps that differ from the in-process engine's)."""
        want = _ENCODINGS[self.dtype][1 if classed else 0]
        for name in names:
            got = wire.encoding(header, name)
            if got != want:
                raise ServerError(
                    f"the vitviz server at {self.url} sent {name!r} as {got or 'nothing'}, not "
                    f"the {want} asked for, so its maps would not equal this engine's; use "
                    "matching vitviz versions"
                )

    def _post_model_input(
        self, path: str, image: Image.Image, what: str
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """POST one model input (resized and cropped already) as PNG; the decoded answer."""
        if not self.geometry.is_seen(image):
            raise OptionsError(f"{what} need the model's input (resized and cropped)")
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="PNG", compress_level=1)
        return self._decode(self._request("POST", path, data=buf.getvalue(), stream=True))

    def embeddings(self, image: Image.Image) -> TokenEmbeddings:
        """One model input's patch, position and token vectors (float16 on the wire)."""
        header, arrays = self._post_model_input("/v1/embeddings", image, "embeddings")

        def get(name: str) -> np.ndarray | None:
            return None if name not in arrays else np.asarray(arrays[name], dtype=np.float32)

        return TokenEmbeddings(
            pixels=get("pixels"),
            patches=get("patches"),
            positions=get("positions"),
            tokens=get("tokens"),
            num_prefix=int(header["num_prefix"]),
            features=get("features"),
            norm_pre=bool(header.get("norm_pre", False)),
        )

    def features(self, image: Image.Image) -> TokenFeatures:
        """One model input's token features after the last block (float16 with one scale
        per token on the wire)."""
        header, arrays = self._post_model_input("/v1/features", image, "features")
        try:
            layout = TokenLayout.from_dict(header["layout"])
            tokens = np.asarray(arrays["tokens"], dtype=np.float32)
            if tokens.ndim != 2 or tokens.shape[0] != layout.num_tokens:
                raise ValueError(f"tokens {tokens.shape} for {layout.num_tokens} tokens")
            if not np.isfinite(tokens).all():
                raise ValueError("tokens that are not finite numbers")
        except (KeyError, TypeError, ValueError) as err:
            raise ServerError(f"{self.url} sent features vitviz cannot read ({err})") from None
        norm = header.get("norm")
        return TokenFeatures(tokens=tokens, layout=layout, norm=None if norm is None else str(norm))

    def readout(
        self, image: Image.Image, *, top_k: int = 5, seen: bool = False
    ) -> tuple[list[Prediction], TokenLayout, np.ndarray]:
        """The light answer for streams: predictions, the layout and the readout's attention
        rows ``[L, H, N]`` in :attr:`dtype` (what raw attention maps show; 1/N of the full
        tensor: 113 KB in float32 for ViT-B/16)."""
        params = explain_query(top_k=top_k, attention="readout", dtype=self.dtype)
        header, arrays = self._explain(image, params, seen)
        self._check(header, ("readout",))
        return (
            [Prediction(**p) for p in header["predictions"]],
            TokenLayout.from_dict(header["layout"]),
            np.array(arrays["readout"], dtype=np.float32),  # a copy: the answer can go
        )

    def explain_classes(
        self,
        images: Sequence[Image.Image],
        classes: Sequence[Sequence[int | None]],
        *,
        layers: Sequence[int] | None = None,
        top_k: int = 5,
        seen: bool = False,
        full_gradients: bool = False,
        negative: bool = False,
    ) -> list[ClassExplanation]:
        """Explanations plus each class's relevance (None: the top prediction; ``negative``:
        "why not" each class).

        ``full_gradients`` also fetches ``∂y_c/∂A`` (large; the server may refuse it past its
        answer limit). Every array is copied out of the answer, so keeping one class's
        relevance does not keep the attention and the other classes alive.
        """
        if len(classes) != len(images):
            raise OptionsError(f"{len(images)} images but {len(classes)} class lists")

        def one(pair: tuple[Image.Image, Sequence[int | None]]) -> ClassExplanation:
            image, wanted = pair
            params = explain_query(
                top_k=top_k,
                attention="full",
                dtype=self.dtype,
                classes=wanted,
                layers=layers,
                gradients="full" if full_gradients else "relevance",
                negative=negative,
            )
            header, arrays = self._explain(image, params, seen)
            self._check(header, ("attention",))
            self._check(header, ("relevance_fused", "relevance_chefer"), classed=True)
            if full_gradients:
                self._check(header, ("gradients",), classed=True)
            expl = self._explanation(header, arrays, copy=True)
            try:
                relevance = wire.decode_relevance(header, arrays)
            except wire.WireError as err:
                raise ServerError(f"{self.url} sent an answer vitviz cannot read: {err}") from None
            grads = None
            if full_gradients:
                stored = arrays.get("gradients")
                if stored is None:
                    raise ServerError(f"{self.url} sent no gradients although they were asked for")
                grads = np.zeros((stored.shape[0], *expl.attention.shape), dtype=np.float32)
                grads[:, header["gradient_layers"]] = stored
            return ClassExplanation(
                expl, header["classes"], header["class_labels"], relevance, grads
            )

        return self._map(one, list(zip(images, classes, strict=True)))

    def text_relevance(
        self, image: Image.Image, label: str, *, seen: bool = False, start_layer: int = 0
    ) -> list[tuple[str, float]]:
        """A CLIP caption's tokens for ``label`` and their share of the relevance (text layers
        from ``start_layer`` on), computed by the server; the answer is checked (the label and
        start layer asked for, strings, finite shares in [0, 1] summing to 1)."""
        self._need("text_relevance")
        model_input = self._model_input(image, seen)
        params: dict[str, Any] = {"label": label}
        if start_layer != 0:  # the default stays out: a server before the option answers too
            params["start_layer"] = int(start_layer)
        answer = self._json("/v1/text-relevance", model_input, params)
        try:
            if answer.get("label") != label:
                raise wire.WireError(f"it answered for the label {answer.get('label')!r}")
            if answer.get("start_layer", 0) != start_layer:
                raise wire.WireError(
                    f"it answered from text layer {answer.get('start_layer', 0)!r}, "
                    f"not {start_layer}"
                )
            return wire.text_relevance_from_list(answer.get("tokens"))
        except wire.WireError as err:
            raise ServerError(
                f"{self.url} sent a text relevance answer vitviz cannot read: {err}"
            ) from None

    def trust(
        self,
        image: Image.Image,
        target: int,
        maps: Mapping[str, np.ndarray],
        main: str,
        *,
        steps: int = 16,
        seeds: int = 3,
        batch: int = 16,
        seen: bool = False,
    ) -> TrustReport:
        """Deletion and insertion curves of ``maps[main]``, the random baseline, occlusion and
        the maps' correlations, computed by the server; the answer is checked against what was
        asked (``steps + 1`` finite points per curve, occlusion on the patch grid, one
        correlation per map)."""
        self._need("trust")
        if main not in maps:
            raise OptionsError(f"the map {main!r} to judge is not among the maps given")
        model_input = self._model_input(image, seen)
        grids = {name: np.asarray(values, np.float64) for name, values in maps.items()}
        shapes = {g.shape for g in grids.values()}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise OptionsError("the maps to judge must be 2-D patch grids of one shape")
        (grid,) = shapes
        body = wire.encode_trust_request(np.asarray(model_input, np.uint8), grids)
        params = {"class": int(target), "main": main, "steps": steps, "seeds": seeds}
        params["batch"] = batch
        answer = self._json("/v1/trust", body, params)
        try:
            report = wire.trust_from_dict(answer, steps=steps, grid=grid, names=list(grids))
        except wire.WireError as err:
            raise ServerError(f"{self.url} sent a trust answer vitviz cannot read: {err}") from None
        if report.target != int(target):
            raise ServerError(f"{self.url} sent the trust curves of class {report.target}")
        return report

    # -- plumbing --------------------------------------------------------------------------
    def _model_input(self, image: Image.Image, seen: bool) -> Image.Image:
        """The model's input for ``image`` (resized and cropped here unless ``seen``)."""
        if seen:
            if not self.geometry.is_seen(image):
                raise OptionsError(
                    f"an image of {image.size[0]}×{image.size[1]} px is not a resized and "
                    "cropped input of this model; send the original image instead"
                )
            return image.convert("RGB")
        return self.geometry(image)

    def _json(self, path: str, body: Image.Image | bytes, params: dict[str, Any]) -> dict[str, Any]:
        """POST a body (an image goes as PNG) and read a JSON object answer."""
        if isinstance(body, Image.Image):
            buf = io.BytesIO()
            body.save(buf, format="PNG", compress_level=1)
            body = buf.getvalue()
        r = self._request("POST", path, params=params, data=body)
        try:
            answer = r.json(parse_constant=_not_finite)
        except ValueError:
            answer = None
        finally:
            r.close()
        if not isinstance(answer, dict):
            raise ServerError(f"{self.url} sent an answer to {path} that is not a JSON object")
        return answer

    def _map(self, fn: Any, items: Sequence[Any]) -> list[Any]:
        if len(items) <= 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(min(self.batch_size, len(items))) as pool:
            return list(pool.map(fn, items))

    def _explain(
        self, image: Image.Image, params: dict[str, Any], seen: bool = False
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        model_input = self._model_input(image, seen)
        buf = io.BytesIO()
        model_input.save(buf, format="PNG", compress_level=1)
        r = self._request("POST", "/v1/explain", params=params, data=buf.getvalue(), stream=True)
        return self._decode(r)

    def _decode(self, r: requests.Response) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        try:
            return wire.decode(self._body(r))
        except wire.WireError as err:
            raise ServerError(f"{self.url} sent an answer vitviz cannot read: {err}") from None

    def _body(self, r: requests.Response) -> bytearray:
        """An answer's bytes in one writable buffer, which the decoded arrays view in place
        (no second copy); refused past the server's declared answer limit."""
        limit = int(self._info.get("limits", {}).get("max_answer_bytes") or 2**30) + _SLACK
        declared = r.headers.get("content-length", "")
        encoded = r.headers.get("content-encoding", "identity") not in ("", "identity")
        too_long = ServerError(
            f"the vitviz server at {self.url} sent an answer longer than its own limit of "
            f"{limit / 2**20:.0f} MiB"
        )
        try:
            if declared.isdigit() and not encoded:  # the usual case: filled in place
                size = int(declared)
                if size > limit:
                    raise too_long
                buf, pos = bytearray(size), 0
                with memoryview(buf) as view:
                    for chunk in r.iter_content(1 << 20):
                        if pos + len(chunk) > size:
                            raise ServerError(
                                f"the vitviz server at {self.url} sent more than the {size} B "
                                "it announced"
                            )
                        view[pos : pos + len(chunk)] = chunk
                        pos += len(chunk)
                if pos != size:
                    raise ServerError(f"the answer from {self.url} broke off ({pos} of {size} B)")
                return buf
            buf = bytearray()
            for chunk in r.iter_content(1 << 20):
                buf += chunk
                if len(buf) > limit:
                    raise too_long
            return buf
        except requests.RequestException as err:
            raise ServerError(
                f"the answer from the vitviz server at {self.url} broke off ({type(err).__name__})"
            ) from None
        finally:
            r.close()

    def close(self) -> None:
        """Close the connections to the server."""
        self._http.close()

    def block_steps(self, image: Image.Image, **_options: Any) -> NoReturn:
        """Not over a server: the lesson's look inside the blocks needs the model here.

        Raises:
            OptionsError: always.
        """
        raise OptionsError(
            "the steps inside the encoder block read the model's modules: they need the model "
            "in this process, not on a vitviz server"
        )

    def parameter_parts(self) -> NoReturn:
        """Not over a server: counting parameters by part needs the model here.

        Raises:
            OptionsError: always.
        """
        raise OptionsError(
            "counting the parameters by part reads the model's modules: it needs the model in "
            "this process, not on a vitviz server"
        )

    # -- inside the heads (issue 24): /v1/ablation, /v1/lens, /v1/norms (API version 5)
    def ablate_heads(
        self,
        image: Image.Image,
        target: int,
        *,
        kind: str = "zero",
        batch: int = 16,
        progress: Callable[[int, int], None] | None = None,
    ) -> HeadAblation:
        """Each head's and each layer's effect on class ``target`` of one seen image when
        removed, computed by the server in one request (``batch``: ablated copies per forward,
        at most the server's ``max_batch_size``); ``progress(0, total)`` is called before it
        and ``progress(total, total)`` after. The answer is checked against the model and the
        request (:func:`vitviz.wire.ablation_from_dict`)."""
        self._need("head_ablation")
        model_input = self._model_input(image, True)
        layers, heads = self._model.layers, self._model.heads
        total = layers * heads + layers
        if progress is not None:
            progress(0, total)
        params = {"class": int(target), "kind": kind, "batch": int(batch)}
        answer = self._json("/v1/ablation", model_input, params)
        try:
            result = wire.ablation_from_dict(
                answer, layers=layers, heads=heads, target=int(target), kind=kind, batch=int(batch)
            )
        except wire.WireError as err:
            raise ServerError(
                f"{self.url} sent a head ablation answer vitviz cannot read: {err}"
            ) from None
        if progress is not None:
            progress(total, total)
        return result

    def logit_lens(self, image: Image.Image, *, top_k: int = 5) -> LogitLens:
        """The model's final norm and head read after every block, for one seen image, computed
        by the server (the full ``[L, C]`` logits come too); the answer is checked against the
        model (:func:`vitviz.wire.lens_from_dict`)."""
        self._need("logit_lens")
        model_input = self._model_input(image, True)
        answer = self._json("/v1/lens", model_input, {"top_k": int(top_k)})
        try:
            return wire.lens_from_dict(
                answer, layers=self._model.layers, classes=self._model.classes, top_k=int(top_k)
            )
        except wire.WireError as err:
            raise ServerError(
                f"{self.url} sent a logit lens answer vitviz cannot read: {err}"
            ) from None

    def token_norms(self, image: Image.Image, *, k: float = 3.0) -> TokenNorms:
        """Every token's residual-stream norm per layer of one seen image, its high-norm
        outliers and their share of the readout's last-layer attention, computed by the server
        (``k`` above 1); the answer is checked against the model and the input's patch grid
        (:func:`vitviz.wire.norms_from_dict`)."""
        self._need("token_norms")
        model_input = self._model_input(image, True)
        w, h = model_input.size
        ph, pw = self._model.patch_size
        answer = self._json("/v1/norms", model_input, {"k": float(k)})
        try:
            norms, _layout = wire.norms_from_dict(
                answer,
                layers=self._model.layers,
                grid=(h // ph, w // pw),
                patch_size=(ph, pw),
                k=float(k),
            )
        except wire.WireError as err:
            raise ServerError(
                f"{self.url} sent a token norms answer vitviz cannot read: {err}"
            ) from None
        return norms

    def _explanation(
        self, header: dict[str, Any], arrays: dict[str, np.ndarray], copy: bool = False
    ) -> ImageExplanation:
        """The explanation in an answer. Its float32 attention views the answer's buffer in
        place (nearly all of it) unless ``copy``; float16 attention is widened to float32."""
        logits = arrays.get("logits")
        layout = TokenLayout.from_dict(header["layout"])
        attention = arrays["attention"]
        n = layout.num_tokens
        if attention.shape != (self._model.layers, self._model.heads, n, n):
            raise ServerError(
                f"the vitviz server at {self.url} sent attention of shape {attention.shape} "
                f"for a model of {self._model.layers} layers, {self._model.heads} heads and "
                f"{n} tokens"
            )
        take = np.array if copy else np.asarray
        return ImageExplanation(
            image=np.array(arrays["image"], dtype=np.uint8),
            layout=layout,
            attention=take(attention, dtype=np.float32),
            logits=None if logits is None else np.array(logits, dtype=np.float32),
            predictions=[Prediction(**p) for p in header["predictions"]],
        )

    def _request(
        self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any
    ) -> requests.Response:
        """One call, with 503 retried after Retry-After; errors become one clear line."""
        url = self.url + path
        for attempt in range(self.retries + 1):
            try:
                r = self._http.request(
                    method,
                    url,
                    timeout=timeout or self.timeout,
                    allow_redirects=False,  # a vitviz server never redirects; the token stays
                    **kwargs,
                )
            except requests.Timeout:
                raise ServerError(
                    f"the vitviz server at {self.url} did not answer within "
                    f"{timeout or self.timeout:g} s"
                ) from None
            except requests.RequestException as err:
                raise ServerError(
                    f"could not reach the vitviz server at {self.url} ({type(err).__name__}); "
                    "check the address and that `python -m vitviz serve` runs there"
                ) from None
            if r.status_code == 503 and attempt < self.retries:
                r.close()  # a streamed answer's connection goes back to the pool
                time.sleep(_retry_after(r))
                continue
            if r.ok and not r.is_redirect:
                return r
            raise _error(self.url, r)
        raise AssertionError("unreachable")


def explain_query(
    *,
    top_k: int,
    attention: wire.Attention,
    dtype: wire.ArrayDtype,
    seen: bool = True,
    classes: Sequence[int | None] = (),
    layers: Sequence[int] | None = None,
    gradients: wire.Gradients = "relevance",
    negative: bool = False,
) -> dict[str, Any]:
    """The query of ``POST /v1/explain`` (the server's ``vitviz.server.options.ExplainOptions``,
    which ``tests/test_serve_options.py`` checks this agrees with); defaults are left out.

    ``classes``: class indices, None for the top prediction; ``layers``: None for all.
    """
    params: dict[str, Any] = {"attention": attention, "dtype": dtype, "top_k": top_k}
    if seen:
        params["seen"] = "true"
    if layers is not None:
        params["layer"] = [int(x) for x in layers]
    if gradients != "relevance":
        params["gradients"] = gradients
    if negative:
        params["negative"] = "true"
    if classes:
        params["class"] = ["top" if c is None else str(c) for c in classes]
    return params


def _not_finite(name: str) -> float:
    """JSON's ``NaN``/``Infinity`` read as NaN, which every answer's check refuses."""
    return math.nan


def _retry_after(r: requests.Response) -> float:
    try:
        return min(30.0, max(0.1, float(r.headers.get("Retry-After", "1"))))
    except ValueError:
        return 1.0


def _error(url: str, r: requests.Response) -> Exception:
    """The exception for a refused request, with the server's own message."""
    try:
        err = r.json()["error"]
        code, message = err["code"], err["message"]
    except (ValueError, KeyError, TypeError):
        what = {
            301: "it redirects elsewhere; give the address it redirects to",
            302: "it redirects elsewhere; give the address it redirects to",
            307: "it redirects elsewhere; give the address it redirects to",
            308: "it redirects elsewhere; give the address it redirects to",
            404: "no such page: is the URL a vitviz server (python -m vitviz serve)?",
            502: "a proxy in front of it could not reach it",
            503: "it is busy or still starting; try again in a moment",
            504: "it took too long to answer",
        }.get(r.status_code, "an unexpected answer")
        return ServerError(f"the vitviz server at {url} answered HTTP {r.status_code}: {what}")
    if code in _IMAGE_CODES:
        return ImageError(message)
    if code == "bad_option":
        return OptionsError(message)
    return ServerError(f"the vitviz server at {url} refused: {message} (HTTP {r.status_code})")
