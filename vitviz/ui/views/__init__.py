"""The page's views: one module each with ``ID`` (its stable name, in links) and ``render(ctx)``;
its button label is the catalog's ``view.<module>``.

Adding a view is one module here (with ``ID`` and ``ORDER``, its place among the buttons) and
its words in the catalogs: :data:`VIEWS` is every module of this package declaring ``ID``.
Each view runs as an ``st.fragment``: its own controls rerun it alone, not the sidebar,
decoding or model lookup.
"""

from __future__ import annotations

from types import ModuleType

import streamlit as st

from vitviz.discovery import modules_declaring
from vitviz.ui import i18n, session
from vitviz.ui.context import ViewContext
from vitviz.ui.i18n import t

VIEWS: dict[str, ModuleType] = {m.ID: m for m in modules_declaring(__name__, "ID")}
DEFAULT = "Rollout"


def slug(view: str) -> str:
    """A view's module name (its catalog key and container key)."""
    return VIEWS[view].__name__.rsplit(".", 1)[-1]


def picker() -> str:
    """The view buttons: one is always selected, and it is in the URL."""
    session.choice("view", list(VIEWS), DEFAULT)
    view = st.segmented_control(
        t("view.label"),
        list(VIEWS),
        format_func={v: t(f"view.{slug(v)}") for v in VIEWS}.get,
        key="view",
        required=True,
        persist_state=session.KEEP,
        label_visibility="collapsed",
    )
    session.keep_in_url("view", view, DEFAULT)
    return view


@st.fragment
def render(ctx: ViewContext) -> None:
    """The view buttons and the active view, as one fragment: switching views or using a
    view's controls reruns only this, not the sidebar, decoding or model lookup."""
    name = picker()
    # The run that switches views marks the view's container ("-switch"); the page's style
    # hides the old view's leftovers in it, so the new view's controls never sit over the
    # old view's maps while it is drawn (the browser otherwise keeps them until replaced).
    switch = st.session_state.get("view_drawn") not in (None, name)
    st.session_state["view_drawn"] = name
    # the language is part of the key: a language switch draws the view anew, never leaving
    # a canvas with the old language's words (seen once in ~8 switches in Chromium otherwise)
    key = f"view-{slug(name)}-{i18n.current()}" + ("-switch" if switch else "")
    try:
        with st.container(key=key):
            VIEWS[name].render(ctx)
    finally:  # Streamlit keeps ctx to rerun this fragment: it must not keep the attention
        ctx.release()
