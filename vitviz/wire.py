"""The binary format of the HTTP API: a JSON header plus raw little-endian arrays.

A message is ``MAGIC`` (8 bytes), the header length as a little-endian uint32, the header
(UTF-8 JSON) and the array bytes. ``header["arrays"]`` maps each array's name to
``{"dtype", "shape", "offset", "nbytes"}`` (offset counted from the end of the header) and,
for scaled arrays, ``"scale"``: the name of a float32 array broadcast against it. A value is
``stored × scale`` for float16 and ``stored / 255 × scale`` for uint8. Any language reads it
with a JSON parser and a typed-array view; :func:`decode` is the Python reader. The writer
pads the header with spaces and starts every array at a multiple of :data:`ALIGN` bytes from
the message's start, so a reader can view each array in place (a JavaScript
``Float32Array`` needs a multiple of 4); readers only ever follow ``offset``.

Encodings (:func:`pack_array`):
    ``float32``: exact.
    ``float16``: for attention probabilities (relative error ≤ 2⁻¹¹).
    ``float16-scaled``: float16 of ``x / max|x|`` per leading index (one scale per
        ``[k, l]`` for gradients), so tiny gradients neither underflow nor overflow.
    ``uint8``: ``round(255 · x / max(x))`` per row (lossy: absolute error ≤ max/510 per row).

Precision. float16 is within 2⁻¹¹ of every entry, and so is every map that is a sum or
product of entries, but some maps *rank* entries: rollout's discard ratio zeroes each fused
layer's lowest entries and DINO's mask keeps the largest patches. Rounding to float16 makes
ties and reorders near-ties, so different entries are discarded (random ViT-B/16, min fusion,
discard 0.9: the map off by 0.15 of its maximum; masks flipping 2 of 196 patches), and
float16-scaled relevance puts Chefer's relevance off by ~2e-3. Only float32 makes every map
equal the in-process engine's whatever the options, so the page's client
(:class:`~vitviz.backends.remote.RemoteBackend`) asks for ``dtype=float32``: a ViT-B/16
answer is 22 MB instead of 11 MB. Lossless compression would not pay: byte-shuffled zlib
keeps 70 % of float32 attention (random ViT-B/16) and costs ~1 s of CPU per answer on a
2-core machine. float16 stays the server's default, for light clients that do not rank.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from vitviz.inputs.classes import probabilities
from vitviz.results import (
    ABLATIONS,
    ClassRelevance,
    Curve,
    HeadAblation,
    LogitLens,
    TokenNorms,
    TrustReport,
)

API_VERSION = 5
"""The HTTP API's version. 3: per-layer Chefer relevance, "why not" (negative),
/v1/features; 4: /v1/trust, /v1/text-relevance and the ``capabilities`` of /v1/model;
5: /v1/ablation, /v1/lens and /v1/norms (nothing else changed, so a version 5 client still
uses a version 4 server for what it has: :data:`OLDEST_API_VERSION`)."""
OLDEST_API_VERSION = 4
"""The oldest server version a client of :data:`API_VERSION` talks to (older ones lack the
``capabilities`` a client needs to know what it may ask)."""
MAGIC = b"VITVIZ1\n"
MEDIA_TYPE = "application/x-vitviz"
DTYPES = ("float32", "float16", "float16-scaled", "uint8")
ALIGN = 64  # every array starts at a multiple of this many bytes from the message's start
_STORED = {"float32", "float16", "uint8"}
# the values of an explain request's options (server: vitviz.server.options.ExplainOptions)
Attention = Literal["none", "readout", "full"]  # which attention an answer carries
ArrayDtype = Literal["float16", "uint8", "float32"]  # how its attention arrays are encoded
Gradients = Literal["relevance", "full"]  # what a class answer carries besides its relevance


class WireError(ValueError):
    """A message is not in the vitviz binary format."""


def pack_array(name: str, x: np.ndarray, encoding: str, scale_axes: int | None = None) -> dict:
    """Arrays (one, or two with the scale) that carry ``x`` in ``encoding``.

    ``scale_axes`` is how many leading axes get their own scale (float16-scaled; default:
    all but the last, as for uint8).
    """
    x = np.asarray(x)
    if encoding == "float32":
        return {name: np.asarray(x, dtype="<f4")}  # float32 already: no copy
    if encoding == "float16":
        return {name: _half(x)}
    if encoding not in ("float16-scaled", "uint8"):
        raise ValueError(f"unknown encoding {encoding!r}: use one of {', '.join(DTYPES)}")
    x = x.astype(np.float32)
    axes = x.ndim - 1 if scale_axes is None else scale_axes
    reduce = tuple(range(axes, x.ndim))
    if encoding == "uint8":
        peak = x.max(axis=reduce, keepdims=True) if x.size else np.ones((1,) * x.ndim)
        scale = np.where(peak > 0, peak, 1.0).astype(np.float32)
        stored = np.clip(np.rint(x / scale * 255.0), 0, 255).astype(np.uint8)
    else:
        peak = np.abs(x).max(axis=reduce, keepdims=True) if x.size else np.ones((1,) * x.ndim)
        scale = np.where(peak > 0, peak, 1.0).astype(np.float32)
        stored = _half(x / scale)
    return {name: stored, f"{name}_scale": scale.astype("<f4")}


def _half(x: np.ndarray) -> np.ndarray:
    """float16 copy of ``x`` (torch's conversion is ~8× faster than numpy's when present)."""
    try:
        import torch

        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).half().numpy()
    except ImportError:
        return x.astype("<f2")


def encode(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> bytes:
    """One message: ``header`` (JSON-ready) plus ``arrays``; ``*_scale`` arrays link up.

    Arrays start at multiples of :data:`ALIGN` bytes; the message is the only copy made of
    them (float32 and uint8 arrays are read in place).
    """
    table: dict[str, dict[str, Any]] = {}
    views: list[np.ndarray] = []
    offset = 0
    for name, arr in arrays.items():
        arr = np.ascontiguousarray(arr)
        if arr.dtype.name not in _STORED:
            raise ValueError(f"array {name!r} is {arr.dtype}; store float32, float16 or uint8")
        arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        offset += -offset % ALIGN
        table[name] = {
            "dtype": arr.dtype.name,
            "shape": list(arr.shape),
            "offset": offset,
            "nbytes": arr.nbytes,
        }
        views.append(arr)
        offset += arr.nbytes
    for name, entry in table.items():
        if f"{name}_scale" in table and not name.endswith("_scale"):
            entry["scale"] = f"{name}_scale"
    head = json.dumps({**header, "arrays": table}, separators=(",", ":")).encode()
    head += b" " * (-(len(MAGIC) + 4 + len(head)) % ALIGN)  # JSON allows trailing spaces
    chunks: list[Any] = [MAGIC, struct.pack("<I", len(head)), head]
    end = 0
    for entry, arr in zip(table.values(), views, strict=True):
        chunks.append(bytes(entry["offset"] - end))
        chunks.append(memoryview(arr.reshape(-1)).cast("B") if arr.size else b"")
        end = entry["offset"] + entry["nbytes"]
    return b"".join(chunks)


def decode(message: bytes | bytearray | memoryview) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Header and arrays of a message; scaled arrays come back as float32 values.

    Unscaled arrays are views of ``message`` (no copy; writable when ``message`` is, e.g. a
    ``bytearray``), so they keep the whole message alive; an array a writer did not align is
    copied.

    Raises:
        WireError: the bytes are not a well-formed message.
    """
    try:
        return _decode(message)
    except WireError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise WireError(f"malformed message ({type(exc).__name__}: {exc})") from None


def _decode(
    message: bytes | bytearray | memoryview,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    view = memoryview(message)
    if bytes(view[: len(MAGIC)]) != MAGIC or len(view) < len(MAGIC) + 4:
        raise WireError("not a vitviz message (bad magic): is the URL a vitviz server?")
    (size,) = struct.unpack("<I", view[len(MAGIC) : len(MAGIC) + 4])
    start = len(MAGIC) + 4
    try:
        header = json.loads(bytes(view[start : start + size]))
    except ValueError as exc:
        raise WireError(f"the message header is not JSON ({exc})") from None
    body = view[start + size :]
    raw: dict[str, np.ndarray] = {}
    for name, entry in header.get("arrays", {}).items():
        if entry["dtype"] not in _STORED:
            raise WireError(f"array {name!r} has unknown dtype {entry['dtype']!r}")
        lo, n = int(entry["offset"]), int(entry["nbytes"])
        if lo < 0 or lo + n > len(body):
            raise WireError(f"array {name!r} runs past the end of the message (truncated?)")
        dtype = np.dtype(entry["dtype"]).newbyteorder("<")
        arr = np.frombuffer(body[lo : lo + n], dtype=dtype).reshape(entry["shape"])
        raw[name] = arr if arr.flags.aligned else arr.copy()
    arrays: dict[str, np.ndarray] = {}
    for name, arr in raw.items():
        if name.endswith("_scale") and name[: -len("_scale")] in raw:
            continue
        scale_name = header["arrays"][name].get("scale")
        if scale_name:
            scale = raw[scale_name].astype(np.float32)
            values = arr.astype(np.float32)
            arrays[name] = values / 255.0 * scale if arr.dtype == np.uint8 else values * scale
        else:
            arrays[name] = arr
    return header, arrays


def encoding(header: dict[str, Any], name: str) -> str | None:
    """How a decoded message carried array ``name`` (one of :data:`DTYPES`; None if absent).

    A client checks it against what it asked for: only ``float32`` is exact.
    """
    entry = header.get("arrays", {}).get(name)
    if not isinstance(entry, dict):
        return None
    dtype = str(entry.get("dtype"))
    if dtype == "float16" and entry.get("scale"):
        return "float16-scaled"
    return dtype


def encode_relevance(relevance: Sequence[ClassRelevance], dtype: str) -> dict[str, np.ndarray]:
    """Wire arrays of some classes' relevance (see :class:`~vitviz.results.ClassRelevance`).

    ``relevance_fused`` ``[K, 3, L, N, N]`` and ``relevance_chefer`` ``[K, L, N, N]`` go as
    float16 scaled per (class, [fusion,] layer) unless ``dtype`` is float32; the small row
    arrays go as float32. Whether they are "why not" relevance is the header's ``negative``.
    """
    enc = "float32" if dtype == "float32" else "float16-scaled"
    fused = np.stack([r.fused for r in relevance])
    arrays = pack_array("relevance_fused", fused, enc, scale_axes=3)
    chefer = np.stack([r.chefer for r in relevance])
    arrays |= pack_array("relevance_chefer", chefer, enc, scale_axes=2)
    arrays["relevance_heads"] = np.stack([r.heads for r in relevance]).astype(np.float32)
    arrays["relevance_fused_rows"] = np.stack([r.fused_rows for r in relevance]).astype(np.float32)
    return arrays


def decode_relevance(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> list[ClassRelevance]:
    """The classes' relevance from a class answer (the inverse of :func:`encode_relevance`).

    Each array is copied out of the message, so keeping one class's relevance never keeps
    the whole answer (the attention and the other classes) alive.

    Raises:
        WireError: the answer lacks or mangles the relevance arrays.
    """
    try:
        layers = tuple(int(x) for x in header["gradient_layers"])
        pairs = list(zip(header["classes"], header["class_labels"], strict=True))
        negative = bool(header.get("negative", False))
        return [
            ClassRelevance(
                index=int(c),
                label=str(label),
                layers=layers,
                chefer=np.array(arrays["relevance_chefer"][k], np.float32),
                fused=np.array(arrays["relevance_fused"][k], np.float32),
                heads=np.array(arrays["relevance_heads"][k], np.float32),
                fused_rows=np.array(arrays["relevance_fused_rows"][k], np.float32),
                negative=negative,
            )
            for k, (c, label) in enumerate(pairs)
        ]
    except (KeyError, IndexError, TypeError, ValueError) as err:
        raise WireError(f"the class answer lacks its relevance arrays ({err!r})") from None


def encode_trust_request(image: np.ndarray, maps: Mapping[str, np.ndarray]) -> bytes:
    """The body of ``POST /v1/trust``: the model's input ``[H, W, 3]`` uint8 as array
    ``image`` and the maps (name → ``[gh, gw]``) in the header as exact JSON numbers."""
    grids = {str(k): np.asarray(v, np.float64).tolist() for k, v in maps.items()}
    return encode({"maps": grids}, {"image": np.asarray(image, np.uint8)})


def decode_trust_request(body: bytes) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The image and the maps of a ``POST /v1/trust`` body (see :func:`encode_trust_request`).

    Raises:
        WireError: not such a message, or maps that are not finite 2-D grids.
    """
    header, arrays = decode(body)
    image = arrays.get("image")
    if image is None or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise WireError("the trust request carries no [H, W, 3] uint8 array 'image'")
    grids = header.get("maps")
    if not isinstance(grids, dict) or not grids:
        raise WireError("the trust request carries no maps")
    maps: dict[str, np.ndarray] = {}
    for name, values in grids.items():
        try:
            grid = np.asarray(values, np.float64)
        except (TypeError, ValueError):
            raise WireError(f"the map {name!r} is not a grid of numbers") from None
        if grid.ndim != 2 or not np.isfinite(grid).all():
            raise WireError(f"the map {name!r} is not a 2-D grid of finite numbers")
        maps[str(name)] = grid
    return np.ascontiguousarray(image), maps


def _curve_dict(curve: Curve) -> dict[str, list[float]]:
    return {
        "fractions": [float(x) for x in curve.fractions],
        "probabilities": [float(x) for x in curve.probabilities],
    }


def trust_to_dict(report: TrustReport) -> dict[str, Any]:
    """A trust report as JSON numbers (exact: JSON keeps every float64 digit)."""
    return {
        "class": int(report.target),
        "deletion": _curve_dict(report.deletion),
        "insertion": _curve_dict(report.insertion),
        "random_deletion": _curve_dict(report.random_deletion),
        "random_insertion": _curve_dict(report.random_insertion),
        "occlusion": np.asarray(report.occlusion, np.float64).tolist(),
        "correlations": {k: float(v) for k, v in report.correlations.items()},
    }


def trust_from_dict(
    data: Mapping[str, Any], *, steps: int, grid: tuple[int, int], names: Sequence[str]
) -> TrustReport:
    """The inverse of :func:`trust_to_dict`, checked against what was asked: curves of
    ``steps + 1`` finite points, occlusion of shape ``grid``, one correlation per name.

    Raises:
        WireError: an answer that is malformed or does not match the request.
    """
    try:

        def curve(key: str) -> Curve:
            part = data[key]
            f = np.asarray(part["fractions"], np.float64)
            p = np.asarray(part["probabilities"], np.float64)
            if f.shape != (steps + 1,) or p.shape != (steps + 1,):
                raise WireError(
                    f"the {key} curve has {f.size} fractions and {p.size} probabilities, "
                    f"not the {steps + 1} points of {steps} steps"
                )
            if not (np.isfinite(f).all() and np.isfinite(p).all()):
                raise WireError(f"the {key} curve has values that are not finite numbers")
            return Curve(f, p)

        curves = [
            curve(k) for k in ("deletion", "insertion", "random_deletion", "random_insertion")
        ]
        occlusion = np.asarray(data["occlusion"], np.float64)
        if occlusion.shape != tuple(grid) or not np.isfinite(occlusion).all():
            raise WireError(
                f"the occlusion map has shape {occlusion.shape}, not the {grid[0]}×{grid[1]} "
                "patch grid, or values that are not finite numbers"
            )
        raw = data["correlations"]
        if not isinstance(raw, dict) or sorted(raw) != sorted(names):
            raise WireError("the correlations do not name the maps that were sent")
        correlations = {str(k): float(v) for k, v in raw.items()}
        if not all(math.isfinite(v) for v in correlations.values()):
            raise WireError("a correlation is not a finite number")
        return TrustReport(int(data["class"]), *curves, occlusion, correlations)
    except WireError:
        raise
    except (KeyError, TypeError, ValueError) as err:
        raise WireError(f"a malformed trust answer ({type(err).__name__}: {err})") from None


def text_relevance_from_list(pieces: Any) -> list[tuple[str, float]]:
    """A text relevance answer's ``tokens`` (``[[token, share], …]``), checked: strings and
    finite shares in [0, 1] that sum to 1 (or are all 0).

    Raises:
        WireError: anything else.
    """
    if not isinstance(pieces, list) or not pieces:
        raise WireError("the text relevance answer lists no tokens")
    out: list[tuple[str, float]] = []
    for piece in pieces:
        if (
            not isinstance(piece, list | tuple)
            or len(piece) != 2
            or not isinstance(piece[0], str)
            or not isinstance(piece[1], int | float)
            or isinstance(piece[1], bool)
        ):
            raise WireError(f"a text relevance entry {piece!r} is not [token, share]")
        share = float(piece[1])
        if not math.isfinite(share) or not -1e-6 <= share <= 1 + 1e-6:
            raise WireError(f"the token {piece[0]!r} has a share of {share}, not one in [0, 1]")
        out.append((piece[0], share))
    total = sum(v for _, v in out)
    if not (abs(total - 1.0) < 1e-4 or total == 0.0):
        raise WireError(f"the token shares sum to {total:.4f}, not 1")
    return out


# ----------------------------------------------------------------------------- inside the heads
# /v1/ablation, /v1/lens and /v1/norms answer JSON (exact: JSON keeps every float64 digit, and
# a float32 written as a float64 comes back as the same float32). Each reader checks an answer
# against the model and the request, so a wrong answer is an error, never a wrong picture.


def _array(data: Mapping[str, Any], key: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """``data[key]`` as a finite array of ``shape`` (a :class:`WireError` saying what is off)."""
    value = data[key]
    if value is None or isinstance(value, str | bytes | dict):
        raise WireError(f"{key} is not an array of numbers")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except ValueError:  # ragged rows, or something that is not a number
        raise WireError(f"{key} is not numbers of shape {shape}") from None
    if arr.shape != shape:
        raise WireError(f"{key} has shape {arr.shape}, not {shape}")
    if not np.isfinite(arr).all():
        raise WireError(f"{key} has values that are not finite numbers")
    return arr.astype(dtype)


def _int(data: Mapping[str, Any], key: str, lo: int, hi: int) -> int:
    """``data[key]``: an integer in ``[lo, hi]`` (JSON true/false and 3.0 are not)."""
    value = data[key]
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise WireError(f"{key} is {value!r}, not an integer in [{lo}, {hi}]")
    return value


def _ints(
    data: Mapping[str, Any], key: str, shape: tuple[int, ...], lo: int, hi: int
) -> np.ndarray:
    """``data[key]``: integers in ``[lo, hi]`` of ``shape``."""
    arr = np.asarray(data[key], dtype=object)
    if arr.shape != shape:
        raise WireError(f"{key} has shape {arr.shape}, not {shape}")
    for v in arr.flat:
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise WireError(f"{key} holds {v!r}, not an integer in [{lo}, {hi}]")
    return arr.astype(np.int64)


def _in_unit(arr: np.ndarray, key: str, lo: float = 0.0) -> None:
    """Probabilities (or their changes, ``lo = -1``) within ``[lo, 1]``, to rounding."""
    if arr.size and (arr.min() < lo - 1e-9 or arr.max() > 1 + 1e-9):
        raise WireError(f"{key} has values outside [{lo:g}, 1]")


def _checked(what: str, read: Any) -> Any:
    try:
        return read()
    except WireError:
        raise
    except (KeyError, TypeError, ValueError, OverflowError, AttributeError) as err:
        raise WireError(f"a malformed {what} answer ({type(err).__name__}: {err})") from None


def ablation_from_dict(
    data: Mapping[str, Any], *, layers: int, heads: int, target: int, kind: str, batch: int
) -> HeadAblation:
    """The inverse of :meth:`HeadAblation.to_dict`, checked against the model (``layers``,
    ``heads``) and the request: its class and kind, finite Δs of shape ``[L, H]`` and ``[L]``
    (probability Δs in [-1, 1]), a clean probability in [0, 1], a batch of 1 to ``batch`` and
    the forwards that batch takes.

    Raises:
        WireError: anything else.
    """

    def read() -> HeadAblation:
        if data["class"] != target or isinstance(data["class"], bool):
            raise WireError(f"it answered for class {data['class']!r}, not {target}")
        if data["kind"] != kind or kind not in ABLATIONS:
            raise WireError(f"it answered a {data['kind']!r} ablation, not {kind!r}")
        clean = data["clean"]
        logit = _array(clean, "logit", (), np.float64)
        probability = _array(clean, "probability", (), np.float64)
        _in_unit(probability, "the clean probability")
        dy = _array(data, "delta_logit", (layers, heads), np.float64)
        dp = _array(data, "delta_probability", (layers, heads), np.float64)
        ly = _array(data, "layer_delta_logit", (layers,), np.float64)
        lp = _array(data, "layer_delta_probability", (layers,), np.float64)
        for arr, key in ((dp, "delta_probability"), (lp, "layer_delta_probability")):
            _in_unit(arr, key, -1.0)
        used = _int(data, "batch", 1, batch)
        forwards = _int(data, "forwards", 1, layers * heads + layers + 1)
        if forwards != math.ceil((layers * heads + layers + 1) / used):
            raise WireError(f"{forwards} forwards is not what a batch of {used} takes")
        return HeadAblation(
            target=target,
            kind=kind,
            clean_logit=float(logit),
            clean_probability=float(probability),
            logit=dy,
            probability=dp,
            layer_logit=ly,
            layer_probability=lp,
            batch=used,
            forwards=forwards,
        )

    return _checked("head ablation", read)


def lens_to_dict(lens: LogitLens) -> dict[str, Any]:
    """A logit lens as JSON numbers: :meth:`LogitLens.to_dict` plus the full ``[L, C]`` logits
    (float32 values, exact), which a caller needs to follow any class through the layers."""
    return {**lens.to_dict(), "logits": np.asarray(lens.logits, np.float32).tolist()}


def lens_from_dict(data: Mapping[str, Any], *, layers: int, classes: int, top_k: int) -> LogitLens:
    """The inverse of :func:`lens_to_dict`, checked against the model (``layers``, ``classes``)
    and ``top_k``: finite logits ``[L, C]``; top classes ``[L, min(k, C)]``, distinct indices
    of each layer's highest logits, highest first; probabilities the logits' softmax (to 1e-6);
    the final class the last layer's highest logit; its ranks those the logits give.

    Raises:
        WireError: anything else.
    """

    def read() -> LogitLens:
        k = min(int(top_k), classes)
        z = _array(data, "logits", (layers, classes), np.float32)
        top = _ints(data, "top", (layers, k), 0, classes - 1)
        if any(len(set(row.tolist())) != k for row in top):
            raise WireError("a layer's top classes repeat a class")
        ranked = np.take_along_axis(z, top, axis=1)
        if not np.array_equal(ranked[:, 0], z.max(axis=1)) or (np.diff(ranked, axis=1) > 0).any():
            raise WireError("a layer's top classes are not its highest logits, highest first")
        p = probabilities(z)
        top_probability = _array(data, "top_probability", (layers, k), np.float64)
        if np.abs(top_probability - np.take_along_axis(p, top, axis=1)).max(initial=0) > 1e-6:
            raise WireError("top_probability is not the softmax of the logits")
        final = _int(data, "final", 0, classes - 1)
        if z[-1, final] != z[-1].max():
            raise WireError(f"the final class {final} is not the last layer's highest logit")
        final_probability = _array(data, "final_probability", (layers,), np.float64)
        if np.abs(final_probability - p[:, final]).max(initial=0) > 1e-6:
            raise WireError("final_probability is not the softmax of the logits")
        rank = _ints(data, "final_rank", (layers,), 1, classes)
        if not np.array_equal(rank, 1 + (z > z[:, final : final + 1]).sum(axis=1)):
            raise WireError("final_rank is not the final class's rank among the logits")
        return LogitLens(z, top, top_probability, final, final_probability, rank)

    return _checked("logit lens", read)


def norms_to_dict(norms: TokenNorms, layout: Any) -> dict[str, Any]:
    """Token norms as JSON numbers (float32 values, exact; outliers as each layer's patch
    indices) with the token layout they were read with."""
    return {
        "k": float(norms.k),
        "layout": layout.to_dict(),
        "norms": np.asarray(norms.norms, np.float32).tolist(),
        "outliers": [np.flatnonzero(row).tolist() for row in norms.outliers],
        "attention_share": None if norms.attention_share is None else float(norms.attention_share),
        "registers": np.asarray(norms.registers, np.float32).tolist(),
        "num_prefix": int(norms.num_prefix),
    }


def norms_from_dict(
    data: Mapping[str, Any],
    *,
    layers: int,
    grid: tuple[int, int],
    patch_size: tuple[int, int],
    k: float,
) -> tuple[TokenNorms, Any]:
    """The inverse of :func:`norms_to_dict` and the token layout, checked against the model
    (``layers``, ``patch_size``), the input's patch ``grid`` and ``k``: non-negative finite norms
    ``[L, N]`` for the layout's N tokens, outliers that are distinct patch indices (fewer than
    half the patches: each is above k > 1 times the median), the registers' norms equal to the
    norms' register columns, an attention share in [0, 1].

    Raises:
        WireError: anything else.
    """
    from vitviz.layout import TokenLayout

    def read() -> tuple[TokenNorms, TokenLayout]:
        layout = TokenLayout.from_dict(data["layout"])
        if tuple(layout.grid) != tuple(grid) or tuple(layout.patch_size) != tuple(patch_size):
            raise WireError(
                f"its layout has a {layout.grid} grid of {layout.patch_size} px patches, not "
                f"this input's {tuple(grid)} of {tuple(patch_size)} px"
            )
        n, p = layout.num_tokens, layout.num_prefix
        if _int(data, "num_prefix", 0, n) != p:
            raise WireError(f"num_prefix {data['num_prefix']} is not the layout's {p}")
        if not isinstance(data["k"], int | float) or float(data["k"]) != float(k):
            raise WireError(f"it answered for k = {data['k']!r}, not {k}")
        values = _array(data, "norms", (layers, n), np.float32)
        if values.size and values.min() < 0:
            raise WireError("a norm is negative")
        patches = n - p
        raw = data["outliers"]
        if not isinstance(raw, list) or len(raw) != layers:
            raise WireError(f"outliers is not a list of {layers} layers")
        mask = np.zeros((layers, patches), dtype=bool)
        for layer, row in enumerate(raw):
            if not isinstance(row, list):
                raise WireError(f"the outliers of layer {layer} are not a list")
            idx = _ints({"row": row}, "row", (len(row),), 0, patches - 1)
            if len(set(idx.tolist())) != len(idx) or 2 * len(idx) > patches:
                raise WireError(f"the outliers of layer {layer} repeat or are too many")
            mask[layer, idx] = True
        reg = layout.token_indices("reg")
        registers = _array(data, "registers", (layers, len(reg)), np.float32)
        if not np.array_equal(registers, values[:, reg]):
            raise WireError("the registers' norms are not the norms of the register tokens")
        share = data["attention_share"]
        if share is not None:
            share = float(_array(data, "attention_share", (), np.float64))
            _in_unit(np.asarray(share), "attention_share")
        result = TokenNorms(
            norms=values,
            k=float(k),
            outliers=mask,
            share=mask.mean(axis=1),
            attention_share=share,
            registers=registers,
            num_prefix=p,
        )
        return result, layout

    return _checked("token norms", read)
