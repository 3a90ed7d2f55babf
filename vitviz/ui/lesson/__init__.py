"""Lesson mode: the ViT step by step on the current image and model, for a projector.

``?lesson=1`` opens it (``&step=N`` at step N, counted from 1); Previous / Next, the step
numbers and the ← → keys move through the nine steps of :mod:`vitviz.ui.lesson.steps`. The
chosen patch is the Patch explorer's (one ``patch`` for both, in the URL), so it carries from
step to step. Large type for 1280×800 with the sidebar collapsed.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from vitviz.ui import session
from vitviz.ui.context import ViewContext
from vitviz.ui.i18n import t
from vitviz.ui.lesson import controls
from vitviz.ui.lesson.steps import STEPS, load

STYLE = "<style>" + (Path(__file__).resolve().parent / "page.css").read_text() + "</style>"


def requested() -> bool:
    """Whether lesson mode is on (this session's switch, or ``?lesson=1`` on its first run)."""
    state = st.session_state
    if "lesson" not in state:
        state["lesson"] = st.query_params.get("lesson") == "1"
    return bool(state["lesson"])


def switch(where=st) -> bool:
    """The lesson switch (kept in the URL as ``lesson=1``)."""
    on = where.toggle(t("page.lesson_on"), key="lesson", help=t("page.lesson_help"))
    session.keep_in_url("lesson", "1" if on else "0", "0")
    if not on:  # the step belongs to the lesson's link only
        session.keep_in_url("step", "1", "1")
    return bool(on)


def current_step() -> int:
    """The step shown (0-based), from this session or the URL's ``step`` (1-based)."""
    state = st.session_state
    if "lesson_step" not in state:
        try:
            state["lesson_step"] = int(st.query_params.get("step", "1")) - 1
        except ValueError:
            state["lesson_step"] = 0
    step = state["lesson_step"]
    step = step if isinstance(step, int) and 0 <= step < len(STEPS) else 0
    state["lesson_step"] = step
    return step


def _go() -> None:
    """Navigation callback: open the step the browser asked for."""
    target = (st.session_state.get("lesson-nav") or {}).get("go")
    if isinstance(target, int) and 0 <= target < len(STEPS):
        st.session_state["lesson_step"] = target
        session.keep_in_url("step", str(target + 1), "1")


@st.fragment
def render(ctx: ViewContext) -> None:
    """The lesson: step title and navigation on one line, then the step."""
    st.markdown(STYLE, unsafe_allow_html=True)
    step = current_step()
    session.keep_in_url("step", str(step + 1), "1")
    titles = [t(f"lesson.{name}_title") for name, _ in STEPS]
    with st.container(key="lesson-main"):
        nav, switch_column = st.columns([5, 1], vertical_alignment="center")
        with nav:
            words = {"prev": t("lesson.prev"), "next": t("lesson.next")}
            controls.nav("lesson-nav", step, titles, words, _go)
        if not switch(switch_column):
            st.rerun()  # the whole page, not just this fragment: back to the views
        st.markdown(f"## {step + 1}. {titles[step]}")
        with st.container(key=f"lesson-step-{step + 1}"):
            try:
                STEPS[step][1](load(ctx))
            finally:  # Streamlit keeps ctx to rerun this fragment: not the attention
                ctx.release()
