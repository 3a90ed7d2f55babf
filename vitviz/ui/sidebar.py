"""The sidebar: where the model runs, which model, and which image."""

from __future__ import annotations

import re
from dataclasses import dataclass

import streamlit as st

from vitviz import models
from vitviz.errors import VitvizError
from vitviz.memory.cost import size_text
from vitviz.models.families import lookup
from vitviz.output.provenance import display_location
from vitviz.results import ModelInfo
from vitviz.ui import i18n, resources, session
from vitviz.ui.i18n import t
from vitviz.ui.servers import ServerPolicy
from vitviz.ui.session import KEEP, URL
from vitviz.ui.text import plain

UPLOAD_TYPES = ["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"]
OTHER_TIMM, OTHER_HF, WEIGHTS_FILE = "__timm__", "__hf__", "__file__"
# a Hugging Face hub id as a visitor may type it: owner/name, never a path on this machine
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
BACKENDS = ("local", "server")
SOURCES = ("Samples", "Upload", "Camera", "Live")  # stable values (in the URL); shown translated


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
    labels: list[str] | None = None  # typed classes (CLIP), checked
    template: str | None = None


def policy() -> ServerPolicy:
    """The operator's server policy, or a clear stop when it is malformed."""
    try:
        return ServerPolicy.from_env()
    except VitvizError as err:  # the operator's VITVIZ_SERVER or allow-list is malformed
        st.error(t("error.misconfigured", detail=plain(err)))
        st.stop()
    raise AssertionError("unreachable")


def render(default_model: str, pol: ServerPolicy) -> Selection:
    """Draw the model and image sections; return what they say."""
    with st.sidebar:
        st.subheader(t("sidebar.model"))
        sel = _model(default_model, pol)
        st.subheader(t("sidebar.image"))
        session.choice("source", SOURCES, SOURCES[0])
        sel.source = st.radio(
            t("sidebar.source"),
            SOURCES,
            format_func={s: t(f"sidebar.source_{s.lower()}") for s in SOURCES}.get,
            horizontal=True,
            key="source",
            persist_state=KEEP,
        )
        session.keep_in_url("source", sel.source, SOURCES[0])
        if sel.source == "Upload":
            _upload(sel)
        elif sel.source == "Camera":
            camera = st.camera_input(t("sidebar.camera"), key="camera")
            if camera is not None:
                sel.data, sel.image_name = camera.getvalue(), "camera.jpg"
        _camera_in_lesson(sel)
    return sel


def _camera_in_lesson(sel: Selection) -> None:
    """The lesson never waits for a photo: until one is taken (and on a link, which never
    holds one) it goes on with a sample, and it says so (``lesson_camera``)."""
    from vitviz.ui import lesson

    state = None
    if sel.source == "Camera" and lesson.requested():
        state = "photo" if sel.data is not None else "waiting"
        if sel.data is None:
            sel.source = "Samples"  # for the page only: the radio and the URL keep the camera
    st.session_state["lesson_camera"] = state


def language() -> str:
    """The language switch: the browser's language until one is picked; a picked one is kept
    in the URL (``?lang=``) so a shared link opens in it."""
    state = st.session_state
    names = i18n.languages()
    if "lang" not in state:
        linked = st.query_params.get("lang")
        state["lang_chosen"] = linked in names
        state["lang"] = linked if state["lang_chosen"] else i18n.from_locale(st.context.locale)
    lang = st.sidebar.segmented_control(
        "Language / 語言",
        list(names),
        format_func=names.get,
        key="lang",
        required=True,
        persist_state=KEEP,
        label_visibility="collapsed",
        on_change=lambda: state.update(lang_chosen=True),
    )
    session.keep_in_url("lang", lang, None if state.get("lang_chosen") else lang)
    return lang


def _model(default_model: str, pol: ServerPolicy) -> Selection:
    if pol.server_only:
        kind = "server"
    else:
        first = {} if "backend_kind" in st.session_state else {"index": 1 if pol.default else 0}
        kind = st.radio(
            t("sidebar.run_where"),
            BACKENDS,
            **first,
            format_func={k: t(f"sidebar.backend_{k}") for k in BACKENDS}.get,
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
                t("sidebar.server_url"), pol.default or "http://127.0.0.1:8000", key="server_url"
            ).strip()
        else:
            if st.session_state.get("server_url") not in pol.allowed:
                if st.session_state.get("server_url"):
                    st.warning(t("sidebar.server_not_allowed"))
                st.session_state["server_url"] = pol.allowed[0]
            sel.server_url = st.selectbox(t("sidebar.server"), pol.allowed, key="server_url")
        sel.typed_token = st.text_input(
            t("sidebar.token"),
            type="password",
            key="server_token",
            help=t("sidebar.token_help"),
        ).strip()
    if kind == "server":
        st.caption(t("sidebar.server_model"))
        return sel
    choices = [*models.CURATED, OTHER_TIMM, OTHER_HF, WEIGHTS_FILE]
    if st.session_state.pop("model_reset", False):  # the last choice failed to load
        st.session_state["model"] = "demo"
    titles = {k: resources.model_title(k) for k in models.CURATED}
    titles |= {
        OTHER_TIMM: t("sidebar.any_timm"),
        OTHER_HF: t("sidebar.any_hf"),
        WEIGHTS_FILE: t("sidebar.weights_file"),
    }
    # a link may name a curated model or "any timm ViT", never a file on this machine
    linkable = [c for c in choices if c != WEIGHTS_FILE]
    if "model" not in st.session_state and st.query_params.get("model") in linkable:
        st.session_state["model_chosen"] = True  # a link named it
    session.choice("model", choices if "model" in st.session_state else linkable, default_model)
    sel.choice = sel.name = st.selectbox(
        t("sidebar.model"),
        choices,
        format_func=titles.get,
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
        st.caption(resources.model_description(sel.choice))
        if lookup(sel.choice)[0].typed_labels:
            _typed_classes(sel)
    elif sel.choice == OTHER_TIMM:
        sel.name = st.text_input(
            t("sidebar.timm_name"),
            "vit_small_patch16_224.augreg_in21k_ft_in1k",
            key="timm_name",
            bind=URL,
            persist_state=KEEP,
        ).strip()
        st.caption(t("sidebar.timm_help"))
        if not lookup(sel.name)[0].typed_on_page:  # "hf:…" could name a folder here
            st.error(t("sidebar.timm_only"))
            sel.name = "demo"
    elif sel.choice == OTHER_HF:
        hub_id = st.text_input(
            t("sidebar.hf_id"),
            "google/vit-base-patch16-224",
            key="hf_id",
            max_chars=193,
            bind=URL,
            persist_state=KEEP,
        ).strip()
        st.caption(t("sidebar.hf_help"))
        if HUB_ID.fullmatch(hub_id) and ".." not in hub_id:
            sel.name = f"hf:{hub_id}"
        else:
            st.error(t("sidebar.hf_bad_id"))
            sel.name = "demo"
    else:  # never from the URL: a link must not make the page read a file
        sel.name = st.text_input(
            t("sidebar.file_arch"), "vit_base_patch16_224", key="file_arch"
        ).strip()
        sel.weights = st.text_input(t("sidebar.file_path"), "") or None
        if not lookup(sel.name)[0].page_weights_file:  # a file holds timm weights only
            st.error(t("sidebar.timm_only"))
            sel.name, sel.weights = "demo", None
    sel.random_weights = st.toggle(
        t("sidebar.random"),
        key="random_weights",
        help=t("sidebar.random_help"),
        bind=URL,
        persist_state=KEEP,
    )
    return sel


def _typed_classes(sel: Selection) -> None:
    """CLIP: the classes to score, one per line, and the prompt each one is put in (both in
    the URL; untrusted text, checked by :mod:`vitviz.inputs.prompts`)."""
    from vitviz.inputs import prompts

    text = st.text_area(
        t("sidebar.clip_labels"),
        "\n".join(prompts.DEFAULT_LABELS),
        key="clip_labels",
        height=150,
        max_chars=prompts.MAX_LABELS * (prompts.MAX_LABEL_CHARS + 1),
        help=t("sidebar.clip_labels_help", most=prompts.MAX_LABELS),
        bind=URL,
        persist_state=KEEP,
    )
    template = st.text_input(
        t("sidebar.clip_template"),
        prompts.DEFAULT_TEMPLATE,
        key="clip_template",
        max_chars=prompts.MAX_TEMPLATE_CHARS,
        help=t("sidebar.clip_template_help"),
        bind=URL,
        persist_state=KEEP,
    )
    sel.labels, sel.template, problem = read_typed(text, template)
    if problem:
        st.error(problem)


def read_typed(text: str | None, template: str | None) -> tuple[list[str], str, str | None]:
    """Typed classes (one per line, or comma-separated) and a prompt, checked: ``(labels,
    template, None)``, or CLIP's everyday classes and prompt with what was wrong, in words."""
    from vitviz.errors import OptionsError
    from vitviz.inputs import prompts

    try:
        labels = prompts.check_labels(prompts.split_labels(text or ""))
        checked = prompts.check_template(template)
        if len(labels) < 2:
            raise OptionsError(t("sidebar.clip_two"))
    except OptionsError as err:
        problem = t("sidebar.clip_bad", detail=plain(err))
        return list(prompts.DEFAULT_LABELS), prompts.DEFAULT_TEMPLATE, problem
    return labels, checked, None


def _upload(sel: Selection) -> None:
    upload = st.file_uploader(t("sidebar.upload"), type=UPLOAD_TYPES, key="upload")
    if upload is not None:
        data = upload.getvalue()
        sel.data, sel.image_name = data, upload.name
        resources.remember_upload(upload.name, data)
        return
    remembered = resources.remembered_upload()
    if remembered:
        sel.image_name, sel.data = remembered
        st.caption(t("sidebar.last_upload", name=plain(remembered[0])))


def model_facts(info: ModelInfo) -> None:
    """Which weights are in use, where they came from, the device and the backend."""
    with st.sidebar:
        w = info.weights
        where = display_location(w)
        lines = [t("facts.model", name=plain(info.title))] if info.remote else []
        source = t(f"facts.source_{w.source}") if i18n.has(f"facts.source_{w.source}") else w.source
        weights = plain(source) + (f" — {plain(where)}" if where else "")
        lines.append(t("facts.weights_remote" if info.remote else "facts.weights", what=weights))
        lines.append(t("facts.device", device=plain(info.device_label)))
        lines.append(
            t("facts.backend_server", kind=plain(info.backend))
            if info.remote
            else t("facts.backend_local")
        )
        mem = resources.page_caches().memory.snapshot()
        lines.append(
            t(
                "facts.memory",
                used=size_text(mem["used"]),
                capacity=size_text(mem["capacity"]),
                budget=size_text(mem["total"]),
                waiting=mem["waiting"],
            )
        )
        st.caption("  \n".join(lines))
        if w.note:
            st.info(resources.weights_note(w.note))
