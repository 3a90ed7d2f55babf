"""The sidebar: where the model runs, which model, and which image."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import streamlit as st

from vitviz import models
from vitviz.errors import VitvizError
from vitviz.results import ModelInfo
from vitviz.ui import downloads, resources, session
from vitviz.ui.servers import ServerPolicy
from vitviz.ui.session import KEEP, URL
from vitviz.ui.text import plain

UPLOAD_TYPES = ["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"]
OTHER_TIMM, WEIGHTS_FILE = "__timm__", "__file__"
BACKENDS = {"local": "In this process", "server": "On a vitviz server"}


@dataclass
class Selection:
    """What the sidebar asks for."""

    backend_kind: str
    server_url: str
    typed_token: str
    choice: str
    name: str
    weights: str | None
    random_weights: bool
    source: str
    data: bytes | None = None
    image_name: str | None = None
    note: str | None = None


def policy() -> ServerPolicy:
    """The operator's server policy, or a clear stop when it is malformed."""
    try:
        return ServerPolicy.from_env()
    except VitvizError as err:  # the operator's VITVIZ_SERVER or allow-list is malformed
        st.error(plain(f"This page is misconfigured: {err}"))
        st.stop()
    raise AssertionError("unreachable")


def render(default_model: str, pol: ServerPolicy) -> Selection:
    """Draw the model and image sections; return what they say."""
    with st.sidebar:
        st.subheader("Model")
        sel = _model(default_model, pol)
        st.subheader("Image")
        sel.source = st.radio(
            "Image source",
            ["Samples", "Upload", "Camera"],
            horizontal=True,
            key="source",
            bind=URL,
            persist_state=KEEP,
        )
        if sel.source == "Upload":
            _upload(sel)
        elif sel.source == "Camera":
            camera = st.camera_input("Take a photo", key="camera")
            if camera is not None:
                sel.data, sel.image_name = camera.getvalue(), "camera.jpg"
    return sel


def _model(default_model: str, pol: ServerPolicy) -> Selection:
    if pol.server_only:
        kind = "server"
    else:
        first = {} if "backend_kind" in st.session_state else {"index": 1 if pol.default else 0}
        kind = st.radio(
            "Run the model",
            list(BACKENDS),
            **first,
            format_func=BACKENDS.get,
            horizontal=True,
            key="backend_kind",
            persist_state=KEEP,
        )
    sel = Selection(kind, "", "", default_model, default_model, None, False, "Samples")
    if pol.server_only:
        sel.server_url = pol.default or ""
    elif kind == "server":
        if pol.any_url:
            sel.server_url = st.text_input(
                "Server URL", pol.default or "http://127.0.0.1:8000", key="server_url"
            ).strip()
        else:
            if st.session_state.get("server_url") not in pol.allowed:
                if st.session_state.get("server_url"):
                    st.warning("That server is not one of this page's; showing its own.")
                st.session_state["server_url"] = pol.allowed[0]
            sel.server_url = st.selectbox("Server", pol.allowed, key="server_url")
        sel.typed_token = st.text_input(
            "Token (if the server needs one)",
            type="password",
            key="server_token",
            help="Empty: no token, or this page's own token when the server is its own.",
        ).strip()
    if kind == "server":
        st.caption("The server decides the model: `python -m vitviz serve --model NAME`.")
        return sel
    choices = [*models.CURATED, OTHER_TIMM, WEIGHTS_FILE]
    if st.session_state.pop("model_reset", False):  # the last choice failed to load
        st.session_state["model"] = "demo"
    titles = {k: s.title for k, s in models.CURATED.items()}
    titles |= {
        OTHER_TIMM: "Any timm ViT, by name…",
        WEIGHTS_FILE: resources.WEIGHTS_FILE_TITLE,
    }
    # a link may name a curated model or "any timm ViT", never a file on this machine
    linkable = [c for c in choices if c != WEIGHTS_FILE]
    if "model" not in st.session_state and st.query_params.get("model") in linkable:
        st.session_state["model_chosen"] = True  # a link named it
    session.choice("model", choices if "model" in st.session_state else linkable, default_model)
    sel.choice = sel.name = st.selectbox(
        "Model",
        choices,
        format_func=lambda k: titles[k],
        key="model",
        label_visibility="collapsed",
        persist_state=KEEP,
        on_change=lambda: st.session_state.update(model_chosen=True),
    )
    # The default depends on this machine (ViT-B/16 online, the demo offline): once a person
    # or a link has named a model, the URL keeps naming it.
    named = st.session_state.get("model_chosen", False)
    linked = sel.choice if sel.choice in linkable else default_model
    session.keep_in_url("model", linked, None if named else default_model)
    if sel.choice in models.CURATED:
        st.caption(models.CURATED[sel.choice].description)
    elif sel.choice == OTHER_TIMM:
        sel.name = st.text_input(
            "timm model name",
            "vit_small_patch16_224.augreg_in21k_ft_in1k",
            key="timm_name",
            bind=URL,
            persist_state=KEEP,
        ).strip()
        st.caption("Any timm ViT with global attention (ViT, DeiT, DINO, EVA, BEiT …).")
    else:  # never from the URL: a link must not make the page read a file
        sel.name = st.text_input(
            "timm architecture of the file", "vit_base_patch16_224", key="file_arch"
        ).strip()
        sel.weights = st.text_input("Weights file (.safetensors, .pth or .bin)", "") or None
    sel.random_weights = st.toggle(
        "Random weights (architecture test)",
        key="random_weights",
        help="Skip the weights: the maps and predictions are then meaningless.",
        bind=URL,
        persist_state=KEEP,
    )
    return sel


def _upload(sel: Selection) -> None:
    upload = st.file_uploader("Your image", type=UPLOAD_TYPES, key="upload")
    # the last upload is kept in the process's byte-bounded cache, not in the session: many
    # visitors' photos cannot add up beyond its share of VITVIZ_CACHE_MB
    kept = resources.page_caches().uploads
    session_key = st.session_state.setdefault("session_key", secrets.token_hex(16))
    if upload is not None:
        data = upload.getvalue()
        sel.data, sel.image_name = data, upload.name
        if len(data) <= kept.max_bytes // 2:  # one photo never empties the whole share
            kept.put(session_key, (upload.name, data))
        return
    remembered = kept.get(session_key)
    if remembered:
        sel.image_name, sel.data = remembered
        sel.note = f"Showing your last upload, {remembered[0]}; drop another image to replace it."
        st.caption(plain(sel.note))


def model_facts(info: ModelInfo) -> None:
    """Which weights are in use, where they came from, the device and the backend."""
    with st.sidebar:
        w = info.weights
        where = downloads.display_location(w)
        st.caption(
            (f"**Model:** {plain(info.title)}  \n" if info.remote else "")
            + f"**Weights:** {plain(w.source)}"
            + (f" — {plain(where)}" if where else "")
            + ("  (on the server)" if info.remote else "")
            + f"  \n**Device:** {info.device_label}  \n"
            + (f"**Backend:** server {info.backend}" if info.remote else "**Backend:** in-process")
        )
        if w.note:
            st.info(plain(w.note[0].upper() + w.note[1:]))
