"""``RemoteBackend``: the :class:`vitviz.backends.Backend` protocol over HTTP to a vitviz server.

The client resizes and crops each image itself with the geometry the server reports (the same
code the server would run), sends the model's input as a PNG and asks for the full attention
in float16, so the page and the CLI get what the in-process engine gives, to float16
precision. Several images are sent at once (the server batches them); a busy server's 503 is
retried after its Retry-After.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import requests
from PIL import Image
from requests.adapters import HTTPAdapter

from vitviz.errors import ImageError, OptionsError, ServerError
from vitviz.geometry import InputGeometry
from vitviz.layout import TokenLayout
from vitviz.results import (
    Anatomy,
    ClassExplanation,
    ImageExplanation,
    ModelInfo,
    Prediction,
    TokenEmbeddings,
    TokenFeatures,
)
from vitviz.server import wire

_IMAGE_CODES = {"bad_image", "image_too_large", "upload_too_large"}
API_VERSION = 3  # 3: per-layer Chefer relevance, "why not" (negative), /v1/features
# what the page needs: the model's input (resized here), the whole attention in float16
_FULL = {"attention": "full", "dtype": "float16", "seen": "true"}


class RemoteBackend:
    """A client of ``python -m vitviz serve``; the same methods as ``LocalBackend``.

    Args:
        url: the server's base URL, e.g. ``http://gpu-box:8000``.
        token: bearer token (default ``$VITVIZ_TOKEN``).
        timeout: seconds to wait for one answer.
        batch_size: images in flight at once.
        retries: how often a busy (503) answer is retried.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 120.0,
        batch_size: int = 8,
        retries: int = 5,
    ) -> None:
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
        if self._info.get("api_version") != API_VERSION:
            self._http.close()
            raise ServerError(
                f"the server at {url} speaks API version {self._info.get('api_version')}, "
                f"this client version {API_VERSION}; use matching vitviz versions"
            )
        try:
            self._model = ModelInfo.from_dict({**self._info, "backend": self.url})
        except (KeyError, TypeError, ValueError):
            self._http.close()
            raise ServerError(f"{url} describes its model in a way vitviz cannot read") from None
        self._geometry = InputGeometry.from_info(self._model)
        self._anatomy: Anatomy | None = None

    # -- protocol --------------------------------------------------------------------------
    def info(self) -> ModelInfo:
        """The server's model description, with ``backend`` set to the URL."""
        return self._model

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
        """One explanation per image (full attention, float16 on the wire).

        ``seen``: the images are already the model's input (see :attr:`geometry`).
        """
        params = _FULL | {"top_k": top_k}
        return self._map(lambda im: self._explanation(*self._explain(im, params, seen)), images)

    def _post_model_input(
        self, path: str, image: Image.Image, what: str
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """POST one model input (resized and cropped already) as PNG; the decoded answer."""
        if not self.geometry.is_seen(image):
            raise OptionsError(f"{what} need the model's input (resized and cropped)")
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="PNG", compress_level=1)
        return self._decode(self._request("POST", path, data=buf.getvalue()))

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
        rows ``[L, H, N]`` (what raw attention maps show; 1/N of the full tensor)."""
        params = {"attention": "readout", "dtype": "float16", "seen": "true", "top_k": top_k}
        header, arrays = self._explain(image, params, seen)
        return (
            [Prediction(**p) for p in header["predictions"]],
            TokenLayout.from_dict(header["layout"]),
            np.asarray(arrays["readout"], dtype=np.float32),
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
        answer limit).
        """
        if len(classes) != len(images):
            raise OptionsError(f"{len(images)} images but {len(classes)} class lists")
        base: dict[str, Any] = _FULL | {"top_k": top_k}
        if layers is not None:
            base["layer"] = [int(x) for x in layers]
        if full_gradients:
            base["gradients"] = "full"
        if negative:
            base["negative"] = "true"

        def one(pair: tuple[Image.Image, Sequence[int | None]]) -> ClassExplanation:
            image, wanted = pair
            params = dict(base, **{"class": ["top" if c is None else str(c) for c in wanted]})
            header, arrays = self._explain(image, params, seen)
            expl = self._explanation(header, arrays)
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

    # -- plumbing --------------------------------------------------------------------------
    def _map(self, fn: Any, items: Sequence[Any]) -> list[Any]:
        if len(items) <= 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(min(self.batch_size, len(items))) as pool:
            return list(pool.map(fn, items))

    def _explain(
        self, image: Image.Image, params: dict[str, Any], seen: bool = False
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        if seen:
            if not self.geometry.is_seen(image):
                raise OptionsError(
                    f"an image of {image.size[0]}×{image.size[1]} px is not a resized and "
                    "cropped input of this model; send the original image instead"
                )
            model_input = image.convert("RGB")
        else:
            model_input = self.geometry(image)
        buf = io.BytesIO()
        model_input.save(buf, format="PNG", compress_level=1)
        r = self._request("POST", "/v1/explain", params=params, data=buf.getvalue())
        return self._decode(r)

    def _decode(self, r: requests.Response) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        try:
            return wire.decode(r.content)
        except wire.WireError as err:
            raise ServerError(f"{self.url} sent an answer vitviz cannot read: {err}") from None

    def close(self) -> None:
        """Close the connections to the server."""
        self._http.close()

    @staticmethod
    def _explanation(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> ImageExplanation:
        logits = arrays.get("logits")
        return ImageExplanation(
            image=np.array(arrays["image"], dtype=np.uint8),
            layout=TokenLayout.from_dict(header["layout"]),
            attention=np.asarray(arrays["attention"], dtype=np.float32),
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
                time.sleep(_retry_after(r))
                continue
            if r.ok and not r.is_redirect:
                return r
            raise _error(self.url, r)
        raise AssertionError("unreachable")


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
