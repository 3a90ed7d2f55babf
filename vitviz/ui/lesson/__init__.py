"""Lesson mode: the ViT step by step on the current image and model, for a projector.

``?lesson=1`` opens it (``&step=N`` at step N, counted from 1); Previous / Next, the step
numbers and the ← → keys move through the steps of :mod:`vitviz.ui.lesson.steps`. The chosen
patch is the Patch explorer's (one ``patch`` for both, in the URL), so it carries from step to
step. Large type for 1280×800 with the sidebar collapsed (every text at least 18 px).

What a class must know before any step comes above the steps, in the lesson's own type: random
weights as a red notice, a model that did not load (in the catalog's words, the loader's English
detail folded away), and the camera's state (no photo yet: the lesson shows a sample; a photo is
never in a link, so a link opens the same step on a sample).
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from vitviz.errors import VitvizError
from vitviz.ui import i18n, resources, session
from vitviz.ui.context import ViewContext
from vitviz.ui.i18n import t
from vitviz.ui.lesson import controls
from vitviz.ui.lesson.steps import STEPS, load
from vitviz.ui.text import plain

STYLE = "<style>" + (Path(__file__).resolve().parent / "page.css").read_text() + "</style>"


def requested() -> bool:
    """Whether lesson mode is on (this session's switch, or ``?lesson=1`` on its first run)."""
    state = st.session_state
    if "lesson" not in state:
        state["lesson"] = st.query_params.get("lesson") == "1"
    return bool(state["lesson"])


def switch(where=st) -> bool:
    """The lesson switch (kept in the URL as ``lesson=1``)."""
    on = where.toggle(
        t("page.lesson_on"), key="lesson", help=t("page.lesson_help"), persist_state=session.KEEP
    )
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


def keep_load_failure(failure: tuple[str, VitvizError] | None) -> None:
    """The page's model-load failure of this run (the model's name and the error), for the
    lesson to say above its steps."""
    st.session_state["lesson_load_failure"] = failure


def failure_words(name: str, err: BaseException) -> tuple[str, str | None]:
    """A model that did not load, in the page's language: the sentence, and the loader's own
    (English) detail to fold away, or None when the catalog words the error by its code alone
    (the memory budget's refusals)."""
    words = t("lesson.load_failed", name=name)
    code = getattr(err, "code", "other")
    if i18n.has(f"error_code.{code}") and "{detail}" not in i18n.raw(f"error_code.{code}"):
        return f"{words} {i18n.error_text(err)}", None
    return words, plain(err)


def notices(ctx: ViewContext) -> None:
    """Above the steps: random weights (red), a failed model load (compact, the English
    detail folded), the camera's state."""
    warning = ctx.info.weights.warning
    if warning:
        st.error(resources.weights_warning(warning), icon="⚠️")
    failure = st.session_state.get("lesson_load_failure")
    if failure:
        words, detail = failure_words(*failure)
        with st.container(key="lesson-load-failure"):
            st.error(words, icon="⚠️")
            if detail:
                with st.expander(t("lesson.load_details"), expanded=False):
                    st.text(detail)
    camera = {
        "waiting": t("lesson.camera_waiting"),
        "photo": t("lesson.camera_photo"),
    }.get(st.session_state.get("lesson_camera"))
    if camera:
        st.caption("📷 " + camera)


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
        notices(ctx)
        st.markdown(f"## {step + 1}. {titles[step]}")
        with st.container(key=f"lesson-step-{step + 1}"):
            try:
                STEPS[step][1](load(ctx))
            finally:  # Streamlit keeps ctx to rerun this fragment: not the attention
                ctx.release()
