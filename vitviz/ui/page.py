"""The page's frame: configuration, the model and image in use, the header, the image column."""

from __future__ import annotations

import streamlit as st

from vitviz import models
from vitviz.backends import Backend
from vitviz.errors import VitvizError
from vitviz.results import ModelInfo
from vitviz.ui import downloads, resources, session
from vitviz.ui.context import ViewContext
from vitviz.ui.servers import ServerPolicy
from vitviz.ui.sidebar import WEIGHTS_FILE, Selection
from vitviz.ui.state import digest
from vitviz.ui.text import plain

TITLE = "vitviz — what does the Vision Transformer look at?"


def configure() -> None:
    """Page config and the few style rules the page needs."""
    st.set_page_config(
        page_title="vitviz — ViT attention explorer",
        page_icon=str(resources.ASSETS / "favicon.png"),
        layout="wide",
        initial_sidebar_state="expanded",
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
                sel.name = "the server"
                raise VitvizError(f"{err}. Check the URL, or choose “In this process”") from None
        elif sel.choice == WEIGHTS_FILE and sel.weights is None and not sel.random_weights:
            st.info("Enter the path of a weights file in the sidebar; meanwhile, the demo model.")
            chosen = resources.load_with_progress("demo", None, False)
        else:
            chosen = resources.load_with_progress(sel.name, sel.weights, sel.random_weights)
    except VitvizError as err:
        if pol.server_only:  # never run a model on this machine: wait for the server
            st.error(plain(f"Could not load {sel.name}: {err}"))
            st.caption("This page only works with its server; try again in a moment.")
            st.stop()
        if sel.backend_kind != "server" and sel.choice in models.CURATED and sel.choice != "demo":
            # the picker then names the model in use; the reason stays on screen (a typed
            # name or file stays in its field, to be corrected)
            st.session_state["load_error"] = plain(f"Could not load {sel.name}: {err}")
            st.session_state["model_reset"] = True
            st.rerun()
        st.error(plain(f"Could not load {sel.name}: {err}"))
        st.caption("Showing the vitviz demo model instead, in this process.")
        try:
            chosen = resources.load_with_progress("demo", None, False)
        except VitvizError as err2:  # even the bundled model is missing
            st.error(plain(err2))
            st.stop()
    info = chosen.info()
    model_id = f"{info.timm_name}|{info.weights.source}|{info.weights.location}"
    if info.remote:
        model_id = f"{info.backend}|{model_id}"
    return chosen, info, model_id


def header(info: ModelInfo, why_default: str | None) -> None:
    """The title, then what a person must know before reading any map."""
    st.markdown(f"#### {TITLE}")
    failed = st.session_state.pop("load_error", None)
    if failed:
        st.error(failed)
        st.caption("Showing the vitviz demo model instead, in this process.")
    if info.weights.warning:  # random weights: say so where the maps are
        st.warning(info.weights.warning, icon="⚠️")
    elif why_default and info.name == "demo" and not info.remote and not failed:
        st.info(why_default, icon="ℹ️")


def image(sel: Selection, info: ModelInfo) -> tuple[bytes, str]:
    """The image's bytes and name: a sample (with the gallery), an upload or a photo."""
    if sel.source == "Samples":
        names = list(resources.SAMPLES)
        default = "demo-scene-1.png" if info.name == "demo" else "chelsea.png"
        name = session.sample(default if default in names else names[0], names)
        with st.sidebar.expander("Sample gallery", expanded=False):
            thumbs = resources.gallery_thumbnails()
            cols = st.columns(2)
            for i, (fname, title) in enumerate(resources.SAMPLES.items()):
                with cols[i % 2]:
                    st.image(thumbs[fname], caption=title, width="stretch")
                    st.button(
                        "Use",
                        key=f"use-{fname}",
                        width="stretch",
                        on_click=session.choose_sample,
                        args=(fname,),
                    )
        return (resources.ASSETS / name).read_bytes(), name
    if sel.data is None:
        st.info(
            "Drop an image in the sidebar (jpg, png, webp, bmp, gif or tiff), take a photo, "
            "or choose a sample."
        )
        st.stop()
    return sel.data, sel.image_name or "image"


def context(chosen: Backend, info: ModelInfo, model_id: str, data: bytes, name: str) -> ViewContext:
    """Decode, reduce and explain the image (once per model and image)."""
    image_digest = digest(data)
    try:
        decoded = resources.model_input(image_digest, data, name, chosen)
        entry = resources.explanation(model_id, image_digest, chosen, decoded.image)
    except VitvizError as err:
        st.error(plain(err))
        st.caption("The page keeps working: choose another image or a sample.")
        st.stop()
    return ViewContext(chosen, info, model_id, image_digest, name, decoded, entry)


def image_column(ctx: ViewContext, note: str | None) -> None:
    """The image as the model sees it, the prediction, conversion notes and downloads."""
    expl, layout, decoded = ctx.expl, ctx.layout, ctx.decoded
    h, w = layout.image_size
    st.image(expl.image, caption=f"What the model sees ({w}×{h} px)", width="stretch")
    ow, oh = decoded.original_size
    if abs(ow / oh - w / h) > 0.01:
        st.caption(
            f"Your image is {ow}×{oh} px: the model sees its centre {w}×{h} crop, so the "
            "edges are not part of any map."
        )
    if note:
        st.caption(plain(note))
    if expl.predictions:
        st.markdown("**Prediction**")
        for p in expl.predictions:
            st.progress(min(1.0, p.probability), text=plain(f"{p.label} — {p.probability:.1%}"))
    else:
        st.info(
            "This model is a self-supervised backbone: it has no classifier, so it makes no "
            "prediction. Its attention still shows what it groups together — the DINO mask in "
            "the Rollout view is the classic demo."
        )
    for text in decoded.notes:
        st.caption(plain(text))
    files = (
        ("Attention arrays (.npz)", downloads.attention_npz, "attention.npz", "npz"),
        ("Predictions (JSON)", downloads.predictions_json, "predictions.json", "json"),
    )
    for column, (label, make, suffix, kind) in zip(st.columns(2), files, strict=True):
        column.download_button(
            label,
            data=lambda make=make: make(expl, ctx.info, ctx.image_name),
            file_name=f"{ctx.stem}-{suffix}",
            mime="application/json" if kind == "json" else "application/octet-stream",
            on_click="ignore",
            key=f"dl-{kind}",
        )
