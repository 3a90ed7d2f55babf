"""The page's frame: configuration, the model and image in use, the header, the image column."""

from __future__ import annotations

import streamlit as st

from vitviz.backends import Backend
from vitviz.errors import MemoryBusy, MemoryRefused, VitvizError
from vitviz.models.registry import CURATED
from vitviz.results import ModelInfo
from vitviz.ui import downloads, encoded, resources, session
from vitviz.ui.context import ViewContext
from vitviz.ui.i18n import class_label, decoder_note, error_text, t
from vitviz.ui.servers import ServerPolicy
from vitviz.ui.sidebar import WEIGHTS_FILE, Selection
from vitviz.ui.state import digest
from vitviz.ui.text import plain


def configure(lesson: bool = False) -> None:
    """Page config and the few style rules the page needs (a lesson starts with the sidebar
    collapsed: the projector gets the whole width)."""
    st.set_page_config(
        page_title=t("page.browser_title"),
        page_icon=str(resources.ASSETS / "favicon.png"),
        layout="wide",
        initial_sidebar_state="collapsed" if lesson else "expanded",
    )
    st.markdown(
        "<style>[data-testid='stMainBlockContainer']{padding-top:2.6rem;padding-bottom:1rem}"
        # a view being switched to hides what is left of the old view until it is drawn
        "[class*='st-key-view-'][class*='-switch'] [data-stale='true']{display:none}"
        "</style>",
        unsafe_allow_html=True,
    )


def backend(sel: Selection, pol: ServerPolicy) -> tuple[Backend, ModelInfo, str]:
    """The backend asked for, or the demo model with the reason shown; its info and id."""
    try:
        if sel.backend_kind == "server":
            try:
                url = pol.check(sel.server_url)
                chosen = resources.get_remote(url, pol.token_for(url, sel.typed_token))
            except VitvizError as err:
                sel.name = t("page.the_server")
                raise VitvizError(t("error.server", detail=err)) from None
        elif sel.choice == WEIGHTS_FILE and sel.weights is None and not sel.random_weights:
            st.info(t("page.enter_weights"))
            chosen = resources.load_with_progress("demo", None, False)
        else:
            chosen = resources.load_with_progress(sel.name, sel.weights, sel.random_weights)
    except VitvizError as err:
        detail = load_detail(err)
        if pol.server_only:  # never run a model on this machine: wait for the server
            st.error(t("error.load", name=plain(sel.name), detail=detail))
            st.caption(t("page.server_only"))
            st.stop()
        if sel.backend_kind != "server" and sel.choice in CURATED and sel.choice != "demo":
            # the picker then names the model in use; the reason stays on screen (a typed
            # name or file stays in its field, to be corrected)
            st.session_state["load_error"] = t("error.load", name=plain(sel.name), detail=detail)
            st.session_state["load_failure"] = (plain(sel.name), err)  # the lesson's words
            st.session_state["model_reset"] = True
            st.rerun()
        if _lesson_on():  # the lesson says it above its steps, in its own words and type
            st.session_state["load_failure"] = (plain(sel.name), err)
        else:
            st.error(t("error.load", name=plain(sel.name), detail=detail))
            st.caption(t("page.demo_instead"))
        try:
            chosen = resources.load_with_progress("demo", None, False)
        except VitvizError as err2:  # even the bundled model is missing
            st.error(plain(err2))
            st.stop()
    if sel.labels is not None and chosen.offers("typed_labels"):
        chosen = resources.typed_classes(chosen, sel.labels, sel.template)
    info = chosen.info()
    return chosen, info, model_key(info)


def _lesson_on() -> bool:
    from vitviz.ui import lesson

    return lesson.requested()


def load_detail(err: VitvizError) -> str:
    """Why a model did not load, for the page: the memory budget's refusal in the page's
    words, any other reason as the loader said it."""
    if isinstance(err, (MemoryRefused, MemoryBusy)):
        return error_text(err)
    return plain(err)


def model_key(info: ModelInfo) -> str:
    """The id the page's caches know a model by (its weights and where it runs)."""
    key = f"{info.timm_name}|{info.weights.source}|{info.weights.location}|{info.label_set}"
    return f"{info.backend}|{key}" if info.remote else key


def header(info: ModelInfo, why_default: str | None) -> None:
    """The title, then what a person must know before reading any map."""
    from vitviz.ui import lesson

    on_projector = lesson.requested()  # the lesson draws its own switch and says what the
    if not on_projector:  # model can show in its steps
        title, switch = st.columns([4, 1], vertical_alignment="center")
        title.markdown(f"#### {t('page.title')}")
        lesson.switch(switch)
    failed = st.session_state.pop("load_error", None)
    failure = st.session_state.pop("load_failure", None)
    if on_projector:  # the lesson says these above its steps (random weights in red)
        lesson.keep_load_failure(failure)
        return
    if failed:
        st.error(failed)
        st.caption(t("page.demo_instead"))
    if info.weights.warning:  # random weights: say so where the maps are
        st.warning(resources.weights_warning(info.weights.warning), icon="⚠️")
    elif why_default and info.name == "demo" and not info.remote and not failed:
        st.info(t(why_default), icon="ℹ️")


def image(sel: Selection, info: ModelInfo) -> tuple[bytes, str]:
    """The image's bytes and name: a sample (with the gallery), an upload or a photo."""
    if sel.source == "Samples":
        names = list(resources.SAMPLES)
        default = "demo-scene-1.png" if info.name == "demo" else "chelsea.png"
        name = session.sample(default if default in names else names[0], names)
        with st.sidebar.expander(t("page.gallery"), expanded=False):
            thumbs = resources.gallery_thumbnails()
            cols = st.columns(2)
            for i, (fname, title) in enumerate(resources.SAMPLES.items()):
                with cols[i % 2]:
                    encoded.show(st, thumbs[fname], caption=t(title), width="stretch")
                    st.button(
                        t("page.use_sample"),
                        key=f"use-{fname}",
                        width="stretch",
                        on_click=session.choose_sample,
                        args=(fname,),
                    )
        return (resources.ASSETS / name).read_bytes(), name
    if sel.data is None:
        st.info(t("page.no_image"))
        st.stop()
    return sel.data, sel.image_name or "image"


def context(chosen: Backend, info: ModelInfo, model_id: str, data: bytes, name: str) -> ViewContext:
    """Decode, reduce and explain the image (once per model and image)."""
    image_digest = digest(data)
    try:
        decoded = resources.model_input(image_digest, data, name, chosen)
        entry = resources.explanation(model_id, image_digest, chosen, decoded.image)
    except VitvizError as err:
        st.error(error_text(err))
        st.caption(t("page.keeps_working"))
        st.stop()
    return ViewContext(chosen, info, model_id, image_digest, name, decoded, entry, data)


def image_column(ctx: ViewContext) -> None:
    """The image as the model sees it, the prediction, conversion notes and downloads."""
    expl, layout, decoded = ctx.expl, ctx.layout, ctx.decoded
    h, w = layout.image_size
    picture = encoded.cached(ctx, "input", lambda: ctx.expl.image)
    encoded.show(st, picture, caption=t("page.model_sees", w=w, h=h), width="stretch")
    ow, oh = decoded.original_size
    if abs(ow / oh - w / h) > 0.01:
        st.caption(t("page.crop_note", ow=ow, oh=oh, w=w, h=h))
    if expl.predictions:
        st.markdown(f"**{t('page.prediction')}**")
        for p in expl.predictions:
            name = plain(class_label(p.label, p.index, short=False))
            st.progress(min(1.0, p.probability), text=f"{name} — {p.probability:.1%}")
    else:
        st.info(t("page.no_classifier"))
    for text in decoded.notes:
        st.caption(decoder_note(text))
    files = (
        (t("page.download_npz"), downloads.attention_npz, "attention.npz", "npz"),
        (t("page.download_json"), downloads.predictions_json, "predictions.json", "json"),
    )
    for label, make, suffix, kind in files:  # one a row: the labels fit the narrow column
        st.download_button(
            label,
            data=lambda make=make: make(ctx.expl, ctx.info, ctx.image_name),
            file_name=f"{ctx.stem}-{suffix}",
            mime="application/json" if kind == "json" else "application/octet-stream",
            on_click="ignore",
            key=f"dl-{kind}",
        )
