"""One person's page state: what survives a view change, and what lives in the URL.

Widgets keep their value while hidden (``persist_state="session"``) and the ones a link should
reproduce are in the URL: plain values through ``bind="query-params"`` (image source, timm
name, random weights), choices by their stable id through :func:`choice` and
:func:`keep_in_url` (view, model, class method). What the canvas changes in the browser
(layer, head, fusion) and the query patch are not widgets; they are kept here and written to
the URL when the canvas reports them, so a reload or a shared link opens the same map.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import streamlit as st

from vitviz.methods import FUSIONS

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
