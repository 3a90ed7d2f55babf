"""The attention canvas: maps drawn in the browser, the way bertviz keeps attention in the page.

Python sends, once per (image, model, settings), the compact rows a view needs — for the Heads
view every layer × head readout row plus the fused ones (``L·(H+3)·N`` floats, ~35 K for
ViT-B/16) — with the model's input image and the colormaps. The browser then changes layer,
head, fusion, colormap, opacity, smooth/blocky and the patch grid, shows hover values, the
layers × heads mosaic and a colour legend, all without a server round trip. Only clicks that
need new data (a query patch) go back to Python, and the selection is reported (debounced) so
the URL and the downloads follow.

The element carries what it shows as attributes (``data-layer``, ``data-head``,
``data-checksum`` — the sum of the drawn values —, ``data-state``, ``data-hover``), so tests
and ``bench/browser_latency.py`` wait on real state. Component code is fixed; data from the
model or the user is only drawn or set as text (``canvas.js``).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from vitviz.layout import TokenLayout
from vitviz.memory.cache import ByteLRU
from vitviz.output import render
from vitviz.ui import i18n
from vitviz.ui.components import component

_HERE = Path(__file__).resolve().parent
# fixed code shipped with vitviz; the data it draws never becomes HTML (canvas.js)
_COMPONENT = component("vitviz_attention_canvas", _HERE / "canvas.js", _HERE / "canvas.css")
DISPLAY_DEFAULTS = {"colormap": "inferno", "alpha": 0.6, "smooth": False, "grid": False}
# the canvas's own words (catalog keys ``canvas.<name>``), sent with its data
WORDS = (
    "layer_label", "layer_n", "head_label", "head_n", "all", "all_title", "all_fused",
    "fusion_label", "fusion_mean", "fusion_max", "fusion_min", "colormap", "opacity", "smooth",
    "grid", "enlarge", "smaller", "save", "to_extra", "mosaic", "cell", "hover",
)  # fmt: skip


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


@lru_cache(maxsize=1)
def _luts() -> dict[str, str]:
    return {name: _b64(render.colormap_lut(name)) for name in render.COLORMAPS}


_IMAGE_URIS: ByteLRU[str] = ByteLRU(8 * 2**20)  # shared by sessions, bounded in bytes


def image_uri(image: np.ndarray) -> str:
    """The model's input as a JPEG data URI (cached by content: views redraw one image often)."""
    pixels = np.ascontiguousarray(image, np.uint8)
    key = (hashlib.sha256(pixels.tobytes()).hexdigest(), pixels.shape)
    return _IMAGE_URIS.get_or_compute(
        key,
        lambda: (
            "data:image/jpeg;base64," + base64.b64encode(render.to_jpeg(pixels)).decode("ascii")
        ),
    )


def payload(
    image: np.ndarray,
    layout: TokenLayout,
    rows: np.ndarray,
    *,
    heads: int = 0,
    layer: int = 0,
    head: int = -1,
    fusion: str = "mean",
    title: str = "",
    value_name: str | None = None,
    mosaic: bool = False,
    clickable: bool = False,
    selected: int = -1,
    link: str | None = None,
    report: bool = False,
    filename: str = "vitviz-map",
    max_size: int = 400,
    reset: bool = False,
    scale: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """The canvas's data.

    Args:
        image: the model's input (RGB uint8).
        layout: its token layout.
        rows: full token rows: ``[N]`` for one map, or ``[L, H + 3, N]`` (heads, then mean,
            max, min fused; :func:`vitviz.methods.head_rows`) when ``heads`` > 0.
        heads: H, or 0 for a single map per layer.
        layer, head, fusion: what to show first (head -1 is the fused map).
        title: caption; ``{layer}`` and ``{head}`` are filled in by the browser.
        mosaic: draw every layer × head as small clickable maps.
        clickable: clicking a patch sends it back to Python (trigger ``patch``).
        selected: the patch to outline (-1 for none).
        link: canvases with the same link share their layer/head/fusion in the browser.
        report: send the selection back (state ``selection``) when the person pauses.
        reset: apply ``layer``/``head``/``fusion`` even if the browser shows others.
        scale: the colour scale's ``(low, high)`` (e.g. one shared by two panels); None:
            each map's own minimum and maximum.
    """
    rows = np.asarray(rows, np.float32)
    if rows.ndim == 1:
        rows = rows[None, None, :]
    elif rows.ndim == 2:
        rows = rows[:, None, :]
    p = layout.num_prefix
    maps = rows[..., p:]
    prefix = rows[..., :p]
    maps_b64 = _b64(maps.astype("<f4"))
    prefix_b64 = _b64(prefix.astype("<f4")) if p else None
    pixels = np.ascontiguousarray(image, np.uint8).tobytes()  # the whole image: same maps,
    ident = hashlib.sha1(  # another photo must still redraw its backdrop
        maps_b64.encode() + (prefix_b64 or "").encode() + hashlib.sha256(pixels).digest()
    ).hexdigest()[:16]
    labels = {"cls": "CLS", "dist": "DIST", "reg": "REG"}
    return {
        "id": ident,
        "image": image_uri(image),
        "size": list(image.shape[:2]),
        "grid": list(layout.grid),
        "maps": maps_b64,
        "prefix": prefix_b64,
        "prefix_labels": [labels[k] for k in layout.prefix] if p else None,
        "layers": int(rows.shape[0]),
        "heads": int(heads),
        "layer": int(layer) % int(rows.shape[0]),
        "head": int(head) if heads else -1,
        "fusion": fusion,
        "title": title,
        "value_name": value_name or i18n.t("canvas.attention"),
        "mosaic": bool(mosaic and heads),
        "clickable": bool(clickable),
        "selected": int(selected),
        "link": link,
        "report": bool(report),
        "filename": filename,
        "max_size": int(max_size),
        "reset": bool(reset),
        "scale": None if scale is None else [float(scale[0]), float(scale[1])],
        "luts": _luts(),
        "display": dict(DISPLAY_DEFAULTS),
        "text": {w: i18n.fill(f"canvas.{w}") for w in WORDS},
    }


def attention_canvas(
    key: str,
    data: dict[str, Any],
    *,
    on_patch: Callable[[], None] | None = None,
    on_selection: Callable[[], None] | None = None,
) -> Any:
    """Mount the canvas; its result holds ``patch`` (a click) and ``selection`` (reported)."""
    callbacks: dict[str, Any] = {}
    if on_patch is not None:
        callbacks["on_patch_change"] = on_patch
    if on_selection is not None:
        callbacks["on_selection_change"] = on_selection
    return _COMPONENT(key=key, data=data, **callbacks)


def decode(data: dict[str, Any]) -> dict[str, np.ndarray]:
    """The arrays of a canvas's data, as the browser decodes them (for tests and exports).

    Returns ``maps [L, S, gh·gw]`` and, with prefix tokens, ``prefix [L, S, P]``.
    """
    layers = int(data["layers"])
    slots = int(data["heads"]) + 3 if data["heads"] else 1
    maps = np.frombuffer(base64.b64decode(data["maps"]), "<f4").reshape(layers, slots, -1)
    out = {"maps": maps}
    if data.get("prefix"):
        prefix = np.frombuffer(base64.b64decode(data["prefix"]), "<f4")
        out["prefix"] = prefix.reshape(layers, slots, -1)
    return out
