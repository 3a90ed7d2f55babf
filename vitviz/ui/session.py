"""One person's page state: what survives a view change, and what lives in the URL.

Widgets keep their value while hidden (``persist_state="session"``) and the ones a link should
reproduce are in the URL: plain values through ``bind="query-params"`` (image source, timm
name, random weights), choices by their stable id through :func:`choice` and
:func:`keep_in_url` (view, model, class method), switches through :func:`flag` and
:func:`keep_flag`, method options through :func:`option_from_url` (every value a link gives
is checked: one out of range or unknown is ignored and the default shown). What the canvas
changes in the browser (layer, head, fusion) and the query patch are not widgets; they are
kept here and written to the URL when the canvas reports them, so a reload or a shared link
opens the same map.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import streamlit as st

from vitviz.methods import FUSIONS, Option

KEEP = "session"  # widgets: keep the value while the widget is hidden
URL = "query-params"  # widgets: the value is in the URL


def _url_int(name: str) -> int | None:
    text = st.query_params.get(name)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _set_url(name: str, value: Any) -> None:
    text = None if value is None else str(value)
    if st.query_params.get(name) != text:
        if text is None:
            st.query_params.pop(name, None)
        else:
            st.query_params[name] = text


def choice(key: str, choices: Sequence[str], default: str, url: bool = True) -> None:
    """Before a choice widget is drawn: give it a valid value, the URL's on a session's first
    run (when ``url``).

    Choice widgets are not ``bind``-ed: Streamlit would put the displayed label in the URL,
    and labels change (translations, titles); the URL keeps the stable id instead.
    """
    state = st.session_state
    if key not in state:
        wanted = st.query_params.get(key) if url else None
        state[key] = wanted if wanted in choices else default
    elif state[key] not in choices:
        state[key] = default


def keep_in_url(key: str, value: str, default: str | None) -> None:
    """Put a choice in the URL (left out when it is ``default``, to keep links short)."""
    _set_url(key, None if value == default else value)


def url_text(value: Any) -> str | None:
    """A widget's value as URL text (None: left out): flags 1/0, numbers shortest."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def option_default(option: Option, layers: int) -> Any:
    """An option's default as its widget shows it (a layer counted from the end: from 0)."""
    if option.kind == "layer" and isinstance(option.default, int):
        return option.default % layers
    if option.kind == "number":
        return float(option.default)
    return option.default


def option_from_url(option: Option, text: str | None, layers: int, heads: int, patches: int):
    """An option's value from a link's text, or None when the text is not a valid value (a
    link is untrusted: anything out of range or unknown is ignored)."""
    if text is None:
        return None
    try:
        if option.kind in ("layer", "patch"):
            value = int(text)
            top = layers if option.kind == "layer" else patches
            return value if 0 <= value < top else None
        if option.kind == "head":
            value = int(text)
            return value if 0 <= value < heads else None
        if option.kind == "number":
            number = float(text)
            low = float(option.low) if option.low is not None else 0.0
            high = float(option.high) if option.high is not None else 1.0
            return number if low <= number <= high else None  # NaN fails both
        if option.kind == "flag":
            return {"1": True, "0": False}.get(text)
        return text if text in option.choices else None
    except ValueError:
        return None


def seed(key: str, value: Any) -> None:
    """On a session's first run, a widget's value from a link (``value`` None: none given)."""
    if key not in st.session_state and value is not None:
        st.session_state[key] = value


def flag(key: str) -> None:
    """Before a toggle is drawn: on a session's first run, its value from the URL (1/0)."""
    seed(key, {"1": True, "0": False}.get(st.query_params.get(key, "")))


def keep_flag(key: str, value: bool) -> None:
    """Put a toggle in the URL when it is on (off, the default, is left out)."""
    _set_url(key, "1" if value else None)


def number(key: str, low: float, high: float) -> None:
    """Before a slider is drawn: on a session's first run, its value from the URL when it is
    a number in ``[low, high]``."""
    try:
        value = float(st.query_params.get(key, "nan"))
    except ValueError:
        return
    seed(key, value if low <= value <= high else None)


def selection(layers: int, heads: int) -> tuple[int, int, str]:
    """The layer, head (-1: fused) and fusion to open, from this session or the URL."""
    state = st.session_state
    layer = state.get("layer", _url_int("layer"))
    head = state.get("head", _url_int("head"))
    fusion = state.get("fusion", st.query_params.get("fusion"))
    layer = layer if isinstance(layer, int) and -layers <= layer < layers else layers - 1
    head = head if isinstance(head, int) and -1 <= head < heads else -1
    fusion = fusion if fusion in FUSIONS else "mean"
    return layer % layers, head, fusion


def remember_selection(key: str) -> None:
    """Canvas callback: keep what the canvas shows (and put it in the URL)."""
    chosen = (st.session_state.get(key) or {}).get("selection") or {}
    try:
        layer, head = int(chosen["layer"]), int(chosen["head"])
    except (KeyError, TypeError, ValueError):
        return
    fusion = chosen.get("fusion") if chosen.get("fusion") in FUSIONS else "mean"
    st.session_state.update(layer=layer, head=head, fusion=fusion)
    _set_url("layer", layer)
    _set_url("head", head if head >= 0 else None)
    _set_url("fusion", fusion if fusion != "mean" else None)


def set_selection(layer: int, head: int) -> None:
    """Open a layer and head (e.g. a head clicked in the statistics)."""
    st.session_state.update(layer=int(layer), head=int(head), canvas_reset=True)
    _set_url("layer", int(layer))
    _set_url("head", int(head) if head >= 0 else None)


def take_reset() -> bool:
    """Whether the canvases must show the stored selection even over the browser's own."""
    return bool(st.session_state.pop("canvas_reset", False))


def patch(num_patches: int, grid: tuple[int, int]) -> int:
    """The query patch (clamped to this grid; the centre by default)."""
    value = st.session_state.get("patch", _url_int("patch"))
    if not isinstance(value, int) or not 0 <= value < num_patches:
        value = (grid[0] // 2) * grid[1] + grid[1] // 2  # the middle row's middle patch
    return value


def remember_patch(key: str) -> None:
    """Canvas callback: a clicked patch becomes the query patch (and goes in the URL)."""
    value = (st.session_state.get(key) or {}).get("patch")
    if isinstance(value, int) and value >= 0:
        st.session_state["patch"] = value
        _set_url("patch", value)


def sample(default: str, names: list[str]) -> str:
    """The sample image shown (this session's choice, the URL's, or ``default``)."""
    value = st.session_state.get("sample") or st.query_params.get("sample")
    return value if value in names else default


def choose_sample(name: str) -> None:
    """Show another sample (and put it in the URL)."""
    st.session_state["sample"] = name
    _set_url("sample", name)
