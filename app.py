"""vitviz — the interactive Vision Transformer attention explorer: ``streamlit run app.py``.

The page is composed here from ``vitviz.ui`` (figures, anatomy, caches, downloads) and the
engine (``vitviz.backends``, ``vitviz.methods``). The model runs once per (model, image); every
other interaction only recomputes maps from the cached attention.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import streamlit as st

from vitviz import methods, models, render
from vitviz.backends import Backend
from vitviz.backends.local import LocalBackend
from vitviz.backends.remote import RemoteBackend
from vitviz.errors import VitvizError, WeightsFileError
from vitviz.images import DecodedImage, decode_image
from vitviz.results import Anatomy, ClassRelevance, ImageExplanation
from vitviz.runtime import release_memory, tune_allocator
from vitviz.ui import downloads, figures, pipeline, widgets
from vitviz.ui.servers import ServerPolicy
from vitviz.ui.state import Entry, ExplanationCache, PageCaches, PageLimits, digest

ASSETS = Path(__file__).parent / "assets"
SAMPLES = {
    "chelsea.png": "Chelsea the cat",
    "coffee.png": "A cup of coffee",
    "astronaut.png": "Astronaut Eileen Collins",
    "rocket.jpg": "A rocket on the launch pad",
    "hubble_deep_field.jpg": "Hubble deep field",
    "demo-scene-1.png": "Demo scene 1 (textures)",
    "demo-scene-2.png": "Demo scene 2 (textures)",
    "demo-scene-3.png": "Demo scene 3 (textures)",
}
SAMPLES = {k: v for k, v in SAMPLES.items() if (ASSETS / k).is_file()}
UPLOAD_TYPES = ["jpg", "jpeg", "png", "webp", "bmp", "gif"]
VIEWS = ["How ViT sees this image", "Heads", "Rollout", "Patch explorer", "Head statistics"]
OTHER_TIMM, WEIGHTS_FILE = "__timm__", "__file__"
# widget values that must survive while their view is hidden
PERSISTENT = (
    "model",
    "random_weights",
    "layer",
    "head",
    "fusion",
    "patch",
    "rolled",
    "discard",
    "start_layer",
    "roll_fusion",
    "why_class",
    "target_class",
    "class_method",
    # the widgets drawn from the method registry (vitviz.ui.widgets.method_options)
    *(f"{name}-{o.name}" for name, m in methods.METHODS.items() for o in m.options),
)

tune_allocator()
st.set_page_config(
    page_title="vitviz — ViT attention explorer",
    page_icon=str(ASSETS / "favicon.png"),
    layout="wide",
    initial_sidebar_state="expanded",
)
for _key in PERSISTENT:
    if _key in st.session_state:
        st.session_state[_key] = st.session_state[_key]
for _key in ("fusion", "roll_fusion"):
    st.session_state.setdefault(_key, "mean")
st.session_state.setdefault("class_method", "chefer")


# ----------------------------------------------------------------------------- process caches


@st.cache_resource(show_spinner=False)
def page_caches() -> PageCaches:
    """Models, model inputs, explanations and class relevance of this server process."""
    try:
        limits = PageLimits.from_env()
    except VitvizError as err:  # the operator's VITVIZ_*_MB or VITVIZ_MAX_PARAMS is malformed
        st.error(f"This page is misconfigured: {err}")
        st.stop()
    gc.collect()
    gc.freeze()  # libraries are here for good: later collections skip them (~0.5 ms, not 190)
    return PageCaches(limits)


def explanation_cache() -> ExplanationCache:
    """Explanations shared by every session of this server process."""
    return page_caches().explanations


@st.cache_resource(show_spinner=False)
def load_failures() -> dict[tuple, tuple[str, float]]:
    """Recent model-loading failures, so a broken choice is not retried on every rerun."""
    return {}


MODEL_LOADS = threading.BoundedSemaphore(1)  # one model built at a time per page process


def get_backend(name: str, weights: str | None, random_weights: bool) -> LocalBackend:
    """One loaded model per (name, weights) and process, within the page's size limits.

    Models are built one at a time, so visitors choosing different models at once cannot add
    up their memory beyond one model over the cache's budget.
    """
    caches = page_caches()

    def load() -> LocalBackend:
        with MODEL_LOADS:
            return LocalBackend.from_name(
                name,
                weights=weights,
                random_weights=random_weights,
                max_params=caches.limits.max_params,
            )

    return caches.models.get_or_compute((name, weights, random_weights), load)


@st.cache_resource(show_spinner=False, ttl=300)
def default_model() -> tuple[str, str | None]:
    """ViT-B/16 when its weights are cached or downloadable, else the demo model and why."""
    spec = models.CURATED["vit-b16"]
    if models.cached_weights(spec.timm_name) is not None:
        return "vit-b16", None
    where = models.download_location(spec.timm_name)
    if not models.hub_offline() and models.hub_reachable(where):
        return "vit-b16", None
    why = "offline mode is on" if models.hub_offline() else "there is no internet"
    return "demo", (
        f"ViT-B/16's ImageNet weights are not on this machine and {why}: showing vitviz's "
        "demo model, trained on synthetic textures. Online, pick ViT-B/16 to download it."
    )


def explain_once(backend: Backend, image) -> ImageExplanation:
    """Explain one model input; first free what earlier runs of this page left behind.

    Every run of this script is a new module whose functions and globals form reference
    cycles, so the explanations an old run shows (evicted from the cache since) stay alive
    until Python's cyclic collector runs, which can be many uploads later. Collect them
    now (cheap: :func:`page_caches` froze the libraries out of the collector's way), and
    give the freed heap back to the kernel after the forward pass.
    """
    gc.collect()
    result = backend.explain([image], seen=True)[0]
    release_memory()
    return result


def model_input(image_digest: str, data: bytes, name: str, backend: Backend) -> DecodedImage:
    """An image decoded and reduced at once to the model's input (kept in memory only).

    The full-size pixels live only while decoding: what is cached is bounded by the model's
    input size, whatever the upload's.
    """
    key = (image_digest, backend.geometry.key)
    return page_caches().images.get_or_compute(
        key, lambda: decode_image(data, name, reduce=backend.geometry)
    )


@st.cache_resource(show_spinner=False, max_entries=8)
def model_anatomy(model_id: str, _backend: Backend) -> Anatomy:
    """Patch-embedding filters and position similarity of a loaded model."""
    return _backend.anatomy()


@st.cache_resource(show_spinner=False, ttl=60, max_entries=8)
def get_remote(url: str, token: str) -> RemoteBackend:
    """A client of a vitviz server (its model description is re-read every minute).

    ``token`` is passed explicitly ("" for none): the client never falls back to this
    machine's ``VITVIZ_TOKEN`` (see :class:`vitviz.ui.servers.ServerPolicy`).
    """
    return RemoteBackend(url, token=token)


@st.cache_resource(show_spinner=False)
def gallery_thumbnails() -> dict[str, np.ndarray]:
    """Small previews of the sample images."""
    import cv2

    out = {}
    for name in SAMPLES:
        img = decode_image((ASSETS / name).read_bytes(), name).image
        rgb = np.asarray(img.convert("RGB"))
        h, w = rgb.shape[:2]
        s = min(h, w)
        crop = rgb[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
        out[name] = cv2.resize(crop, (96, 96), interpolation=cv2.INTER_AREA)
    return out


# ----------------------------------------------------------------------------- helpers


def clamp_state(key: str, lo: int, hi: int, default: int) -> None:
    """Keep a stored slider value inside this model's range (models differ in depth)."""
    value = st.session_state.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        st.session_state[key] = default


def load_with_progress(name: str, weights: str | None, random_weights: bool) -> LocalBackend:
    """Load a model; when its weights must be downloaded, show the download's progress."""
    key = (name, weights, random_weights)
    failed = load_failures().get(key)
    if failed and time.time() - failed[1] < 300:
        raise VitvizError(failed[0])
    try:
        # before anything is downloaded or built (the loader checks again, for files)
        models.check_model_size(name, page_caches().limits.max_params)
        if weights is None and not random_weights:
            plan = models.weights_plan(name)
            if plan.startswith("download") and models.hub_reachable():
                _download(name)
        with st.spinner(f"Loading {name}…"):
            backend = get_backend(name, weights, random_weights)
    except WeightsFileError:  # one answer, whatever is at that path: no file-existence oracle
        message = (
            f"“{weights}” is not a readable weights file: give the path of a .safetensors, "
            ".pth or .bin file holding a model's tensors, on the machine running this page"
        )
        load_failures()[key] = (message, time.time())
        raise VitvizError(message) from None
    except VitvizError as err:
        load_failures()[key] = (str(err), time.time())
        raise
    load_failures().pop(key, None)
    return backend


def _download(name: str) -> None:
    bar = st.progress(0.0, text=f"Downloading the weights of {name}…")
    script_thread = threading.current_thread()
    last = [-1.0]

    def report(done: int, total: int | None) -> None:
        if threading.current_thread() is not script_thread or not total:
            return
        frac = min(1.0, done / total)
        if frac - last[0] >= 0.01 or frac == 1.0:
            last[0] = frac
            mb = f"{done / 2**20:.0f} of {total / 2**20:.0f} MB"
            bar.progress(frac, text=f"Downloading the weights of {name}: {mb}")

    try:
        models.download_weights(name, report)
    finally:  # a failed download leaves no stale bar behind
        bar.empty()


def clicked_index(chart_key: str) -> int | None:
    """Index of the marker clicked in a chart (its patch, or its cell in a mosaic)."""
    event = st.session_state.get(chart_key)
    points = (event or {}).get("selection", {}).get("points", []) if event else []
    for point in points:
        for name in ("point_index", "point_number", "pointIndex", "pointNumber"):
            if isinstance(point.get(name), int):
                return int(point[name])
    return None


def select_on_click(chart_key: str, decode: Callable[[int], dict[str, int]]) -> None:
    """Callback for clickable figures: store what the clicked marker stands for."""
    index = clicked_index(chart_key)
    if index is not None:
        for state_key, value in decode(index).items():
            st.session_state[state_key] = value


def jump_to_head(chart_key: str, heads: int) -> None:
    """Clicking a head in the statistics opens its map in the Heads view."""
    index = clicked_index(chart_key)
    if index is not None:
        layer, head = divmod(index, heads)
        st.session_state.update(layer=layer, head=head, view="Heads")


def show_map(
    entry: Entry,
    values: np.ndarray,
    disp: figures.Display,
    *,
    key: str,
    value_name: str,
    selected: int | None = None,
    on_click: Callable[[int], dict[str, int]] | None = None,
    height: int = 400,
) -> np.ndarray:
    """Draw a patch map as a hoverable (and optionally clickable) figure; returns the picture."""
    expl = entry.explanation
    factor = figures.display_scale(expl.layout.image_size)
    picture = figures.overlay_image(
        expl.image, values, expl.layout, disp, selected=selected, factor=factor
    )
    fig = figures.patch_figure(picture, expl.layout, values, value_name=value_name, height=height)
    if on_click:
        st.plotly_chart(
            fig,
            key=key,
            on_select=lambda: select_on_click(key, on_click),
            selection_mode="points",
            config={"displayModeBar": False},
        )
    else:
        st.plotly_chart(fig, key=key, config={"displayModeBar": False})
    return picture


def show_prefix(entry: Entry, row: np.ndarray, what: str, key: str) -> None:
    """The strip of class/distillation/register tokens for a row of attention."""
    layout = entry.explanation.layout
    if layout.num_prefix:
        st.caption(f"{what} given to the extra tokens (not on the image):")
        fig = figures.prefix_strip(layout, row, what)
        st.plotly_chart(fig, key=key, config={"displayModeBar": False})


def head_options(num_heads: int) -> list[int | None]:
    """Head choices: all heads fused, or one."""
    return [None, *range(num_heads)]


def class_picker(expl, labels: list[str], context: str) -> int:
    """Pick the class to explain: the top-5 first, then every label (type to search)."""
    top = [p.index for p in expl.predictions]
    rest = sorted((i for i in range(len(labels)) if i not in top), key=lambda i: labels[i].lower())
    probs = np.exp(expl.logits - expl.logits.max())
    probs /= probs.sum()
    if st.session_state.get("class_context") != context or st.session_state.get(
        "target_class"
    ) not in range(len(labels)):
        st.session_state["class_context"] = context  # a new image or model: its top class
        st.session_state["target_class"] = top[0]
    return st.selectbox(
        "Why this class? (top 5 first; type to search all)",
        top + rest,
        format_func=lambda i: f"{labels[i]} — {probs[i]:.1%}",
        key="target_class",
    )


def class_relevance(
    model_id: str, image_digest: str, backend: Backend, image, cls: int, top: list[int]
) -> ClassRelevance:
    """What the class maps read of ``∂y_c/∂A`` for one class of this image, cached.

    The first request computes the top-5 classes (and ``cls``) from one forward pass with one
    backward pass each, so switching among them is instant; any other class costs one forward
    and one backward pass. Sessions asking for the same class at once compute it once; the
    cache is bounded in bytes.
    """
    cache = page_caches().relevance
    key = (model_id, image_digest, cls)
    hit = cache.get(key)
    if hit is not None:
        return hit

    def compute() -> ClassRelevance:
        others = [c for c in top if c != cls and (model_id, image_digest, c) not in cache]
        res = backend.explain_classes([image], [[cls, *others]], seen=True)[0]
        for rel in res.relevance[1:]:
            cache.put((model_id, image_digest, rel.index), rel)
        return res.relevance[0]

    with st.spinner("Computing the class gradients (one forward, one backward per class)…"):
        try:
            return cache.get_or_compute(key, compute)
        except VitvizError as err:  # e.g. the server went away: say so, keep the page
            st.error(f"Could not compute the class map: {err}")
            st.stop()
    raise AssertionError("unreachable")


# ----------------------------------------------------------------------------- sidebar

defaults = default_model()
choices = [*models.CURATED, OTHER_TIMM, WEIGHTS_FILE]
titles = {k: s.title for k, s in models.CURATED.items()}
titles |= {OTHER_TIMM: "Any timm ViT, by name…", WEIGHTS_FILE: "A weights file on this machine…"}

try:
    POLICY = ServerPolicy.from_env()
except VitvizError as err:  # the operator's VITVIZ_SERVER or allow-list is malformed
    st.error(f"This page is misconfigured: {err}")
    st.stop()
SERVER_DEFAULT = POLICY.default or ""
# a classroom deployment: the page only talks to that server (no models, no file paths here)
SERVER_ONLY = POLICY.server_only
BACKENDS = {"local": "In this process", "server": "On a vitviz server"}

with st.sidebar:
    st.subheader("Model")
    if SERVER_ONLY:
        backend_kind = "server"
    else:
        backend_kind = st.radio(
            "Run the model",
            list(BACKENDS),
            index=1 if SERVER_DEFAULT else 0,
            format_func=BACKENDS.get,
            horizontal=True,
            key="backend_kind",
        )
    server_url, typed_token = "", ""
    choice, name, weights_path, random_weights = defaults[0], defaults[0], None, False
    if SERVER_ONLY:
        server_url = SERVER_DEFAULT
    elif backend_kind == "server":
        if POLICY.any_url:
            server_url = st.text_input(
                "Server URL", SERVER_DEFAULT or "http://127.0.0.1:8000", key="server_url"
            ).strip()
        else:
            if st.session_state.get("server_url") not in POLICY.allowed:
                if st.session_state.get("server_url"):
                    st.warning("That server is not one of this page's; showing its own.")
                st.session_state["server_url"] = POLICY.allowed[0]
            server_url = st.selectbox("Server", POLICY.allowed, key="server_url")
        typed_token = st.text_input(
            "Token (if the server needs one)",
            type="password",
            key="server_token",
            help="Empty: no token, or this page's own token when the server is its own.",
        ).strip()
    if backend_kind == "server":
        st.caption("The server decides the model: `python -m vitviz serve --model NAME`.")
    else:
        choice = st.selectbox(
            "Model",
            choices,
            index=choices.index(defaults[0]),
            format_func=lambda k: titles[k],
            key="model",
            label_visibility="collapsed",
        )
        name, weights_path = choice, None
        if choice in models.CURATED:
            st.caption(models.CURATED[choice].description)
        elif choice == OTHER_TIMM:
            name = st.text_input("timm model name", "vit_small_patch16_224.augreg_in21k_ft_in1k")
            st.caption("Any timm ViT with global attention (ViT, DeiT, DINO, EVA, BEiT …).")
        else:
            name = st.text_input("timm architecture of the file", "vit_base_patch16_224")
            weights_path = st.text_input("Weights file (.safetensors, .pth or .bin)", "") or None
        random_weights = st.toggle(
            "Random weights (architecture test)",
            key="random_weights",
            help="Skip the weights: the maps and predictions are then meaningless.",
        )

    st.subheader("Image")
    source = st.radio(
        "Image source", ["Samples", "Upload", "Camera"], horizontal=True, key="source"
    )
    upload = camera = None
    if source == "Upload":
        upload = st.file_uploader("Your image", type=UPLOAD_TYPES, key="upload")
    elif source == "Camera":
        camera = st.camera_input("Take a photo", key="camera")

    st.subheader("Display")
    disp = figures.Display(
        colormap=st.selectbox("Colormap", list(render.COLORMAPS), key="colormap"),
        alpha=st.slider("Overlay opacity", 0.0, 1.0, 0.6, 0.05, key="alpha"),
        smooth=st.toggle("Smooth maps (off: one block per patch)", key="smooth"),
        grid=st.toggle("Patch grid", key="grid"),
    )

# ----------------------------------------------------------------------------- model

st.markdown(
    "<style>[data-testid='stMainBlockContainer']{padding-top:2.6rem;padding-bottom:1rem}</style>",
    unsafe_allow_html=True,
)
st.markdown("#### vitviz — what does the Vision Transformer look at?")
if defaults[1] and backend_kind != "server" and choice == "demo":
    st.info(defaults[1], icon="ℹ️")

fallback_reason = None
try:
    if backend_kind == "server":
        try:
            url = POLICY.check(server_url)
            backend = get_remote(url, POLICY.token_for(url, typed_token))
        except VitvizError as err:
            name, weights_path, random_weights = "the server", None, False
            raise VitvizError(f"{err}. Check the URL, or choose “In this process”") from None
    elif choice == WEIGHTS_FILE and weights_path is None and not random_weights:
        raise VitvizError("enter the path of a weights file in the sidebar (or pick a model)")
    else:
        backend = load_with_progress(name, weights_path, random_weights)
except VitvizError as err:
    fallback_reason = str(err)
    st.error(f"Could not load {name}: {err}")
    if SERVER_ONLY:  # never run a model on this machine: wait for the server
        st.caption("This page only works with its server; try again in a moment.")
        st.stop()
    st.caption("Showing the vitviz demo model instead, in this process.")
    name, weights_path, random_weights, backend_kind = "demo", None, False, "local"
    try:
        backend = load_with_progress("demo", None, False)
    except VitvizError as err2:  # even the bundled model is missing
        st.error(str(err2))
        st.stop()

info = backend.info()
model_id = f"{info.timm_name}|{info.weights.source}|{info.weights.location}"
if backend_kind == "server":
    name = info.name
    model_id = f"{info.backend}|{model_id}"
layers, heads = info.layers, info.heads

with st.sidebar:
    w = info.weights
    where = downloads.display_location(w)
    remote = backend_kind == "server"
    st.caption(
        (f"**Model:** {info.title}  \n" if remote else "")
        + f"**Weights:** {w.source}"
        + (f" — `{where}`" if where else "")
        + ("  (on the server)" if remote else "")
        + f"  \n**Device:** {info.device_label}  \n"
        + (f"**Backend:** server {info.backend}" if remote else "**Backend:** in-process")
    )
    if w.warning:
        st.warning(w.warning)
    if w.note:
        st.info(w.note[0].upper() + w.note[1:])

# ----------------------------------------------------------------------------- image

if source == "Samples":
    default_sample = "demo-scene-1.png" if name == "demo" else "chelsea.png"
    sample = st.session_state.get("sample") or default_sample
    if sample not in SAMPLES:
        sample = next(iter(SAMPLES))
    data, image_name = (ASSETS / sample).read_bytes(), sample
elif source == "Upload" and upload is not None:
    data, image_name = upload.getvalue(), upload.name
elif source == "Camera" and camera is not None:
    data, image_name = camera.getvalue(), "camera.jpg"
else:
    data = image_name = None

if source == "Samples":
    with st.sidebar.expander("Sample gallery", expanded=False):
        thumbs = gallery_thumbnails()
        cols = st.columns(2)
        for i, (fname, title) in enumerate(SAMPLES.items()):
            with cols[i % 2]:
                st.image(thumbs[fname], caption=title, width="stretch")
                if st.button("Use", key=f"use-{fname}", width="stretch"):
                    st.session_state["sample"] = fname
                    st.rerun()

if data is None:
    st.info(
        "Drop an image in the sidebar (jpg, png, webp, bmp or gif), take a photo, "
        "or choose a sample."
    )
    st.stop()

cache = explanation_cache()
image_digest = digest(data)
try:
    decoded = model_input(image_digest, data, image_name, backend)
    entry = cache.get(model_id, image_digest, lambda: explain_once(backend, decoded.image))
except VitvizError as err:
    st.error(str(err))
    st.caption("The page keeps working: choose another image or a sample.")
    st.stop()

expl = entry.explanation
layout = expl.layout
attn = expl.attention
top_classes = [p.index for p in expl.predictions]

# ----------------------------------------------------------------------------- page

if st.session_state.get("view") not in VIEWS:
    st.session_state["view"] = "Rollout"
view = st.segmented_control("View", VIEWS, key="view", label_visibility="collapsed")
view = view or "Rollout"
left, right = st.columns([1, 2.4], gap="medium")
with left:
    h, w_ = layout.image_size
    st.image(expl.image, caption=f"What the model sees ({w_}×{h} px)", width="stretch")
    if expl.predictions:
        st.markdown("**Prediction**")
        for p in expl.predictions:
            st.progress(min(1.0, p.probability), text=f"{p.label} — {p.probability:.1%}")
    else:
        st.info(
            "This model is a self-supervised backbone: it has no classifier, so it makes no "
            "prediction. Its attention still shows what it groups together — the DINO mask in "
            "the Rollout view is the classic demo."
        )
    for note in decoded.notes:
        st.caption(note)

with right:
    clamp_state("layer", 0, layers - 1, layers - 1)
    clamp_state("start_layer", 0, layers - 1, 0)
    if st.session_state.get("head") not in head_options(heads):
        st.session_state["head"] = None
    clamp_state("patch", 0, layout.num_patches - 1, layout.num_patches // 2 + layout.grid[1] // 2)
    download_map: np.ndarray | None = None
    map_title = ""

    if view == "Rollout":
        # the rollout's own options, drawn from the registry (keys kept for links and tests)
        keys = {"fusion": "roll_fusion", "discard": "discard", "start_layer": "start_layer"}
        sizes = dict(layers=layers, heads=heads, patches=layout.num_patches)
        columns = st.columns(len(methods.METHODS["rollout"].options))
        opts = {
            o.name: widgets.option_widget(o, keys[o.name], where=col, **sizes)
            for o, col in zip(methods.METHODS["rollout"].options, columns, strict=True)
        }
        row = np.asarray(methods.compute_row("rollout", attn, layout, **opts))
        values = row[layout.num_prefix :].reshape(layout.grid)
        t1, t2 = st.columns(2)
        show_mask = t1.toggle(
            "DINO-style mask", help="The smallest set of patches holding most of the attention"
        )
        why = t2.toggle(
            "Why this class? (class-specific map)",
            key="why_class",
            disabled=not expl.predictions,
            help="Gradient-weighted attention for one class (needs a classifier)",
        )
        if why and expl.predictions:
            k1, k2 = st.columns([2, 1])
            with k1:
                cls = class_picker(expl, backend.labels, model_id + image_digest)
            class_methods = {n: m.title for n, m in methods.METHODS.items() if m.needs_gradients}
            cm = k2.segmented_control(
                "Method", list(class_methods), format_func=class_methods.get, key="class_method"
            )
            cm = cm if cm in class_methods else "chefer"
            # options the rollout controls above already set are shared; others get widgets
            copts = widgets.method_options(methods.METHODS[cm], cm, opts, **sizes)
            grads = class_relevance(
                model_id, image_digest, backend, decoded.image, cls, top_classes
            )
            cvals = np.asarray(methods.compute_map(cm, attn, layout, grads=grads, **copts))
            c_map, c_cls = st.columns(2)
            with c_map:
                st.caption("Rollout: where attention flows (the same for every class)")
                show_map(entry, values, disp, key="rollout", value_name="rollout", height=340)
            with c_cls:
                st.caption(f"Why “{backend.labels[cls]}”: {class_methods[cm]}")
                download_map = show_map(
                    entry, cvals, disp, key="class-map", value_name="relevance", height=340
                )
            map_title = f"{cm}-class{cls}"
        elif show_mask:
            c_map, c_mask = st.columns(2)
            with c_map:
                download_map = show_map(
                    entry, values, disp, key="rollout", value_name="rollout", height=360
                )
            with c_mask:
                thr = st.slider("Mass kept", 0.1, 1.0, 0.6, 0.05, key="mask_threshold")
                src = st.radio(
                    "Mask of", ["last layer's attention", "rollout"], horizontal=True, key="msrc"
                )
                mopts = dict(source="attention" if src.startswith("last") else "rollout")
                mopts |= dict(opts) if mopts["source"] == "rollout" else {"layer": -1}
                mvals = np.asarray(
                    methods.compute_map("mask", attn, layout, threshold=thr, **mopts)
                )
                mask_disp = figures.Display(disp.colormap, 0.55, False, disp.grid)
                show_map(entry, mvals, mask_disp, key="mask", value_name="in mask", height=300)
        else:
            download_map = show_map(entry, values, disp, key="rollout", value_name="rollout")
        show_prefix(entry, row, "Rollout", "rollout-prefix")
        map_title = map_title or "rollout"

    elif view == "Heads":
        c1, c2, c3, c4 = st.columns([2, 1.3, 1.3, 1.3])
        layer = c1.slider("Layer", 0, layers - 1, key="layer")
        head = c2.selectbox("Head", head_options(heads), format_func=widgets.head_label, key="head")
        fusion = c3.segmented_control("Fusion", methods.FUSIONS, key="fusion") or "mean"
        c4.toggle("Why this class?", key="why_class", disabled=not expl.predictions)
        all_maps = entry.get(
            "readout_maps",
            lambda: np.stack(
                [
                    np.asarray(methods.compute_map("attention", attn, layout, layer=li, head=hi))
                    for li in range(layers)
                    for hi in range(heads)
                ]
            ).reshape(layers, heads, *layout.grid),
        )
        row = np.asarray(
            methods.compute_row("attention", attn, layout, layer=layer, head=head, fusion=fusion)
        )
        values = row[layout.num_prefix :].reshape(layout.grid)
        big, grid_col = st.columns([1, 1])
        with big:
            st.caption(f"Layer {layer}, {widgets.head_label(head)}: what the readout attends to")
            download_map = show_map(
                entry, values, disp, key="head-map", value_name="attention", height=360
            )
            show_prefix(entry, row, "Attention", "head-prefix")
        why = bool(expl.predictions) and st.session_state.get("why_class", False)
        with grid_col:
            if why:
                cls = class_picker(expl, backend.labels, model_id + image_digest)
                grads = class_relevance(
                    model_id, image_digest, backend, decoded.image, cls, top_classes
                )
                gvals = np.asarray(
                    methods.compute_map(
                        "attn-grad",
                        attn,
                        layout,
                        grads=grads,
                        layer=layer,
                        head=head,
                        fusion=fusion,
                    )
                )
                st.caption(f"Why “{backend.labels[cls]}”: attention × gradient of this head")
                show_map(
                    entry, gvals, disp, key="head-class-map", value_name="relevance", height=300
                )
        with grid_col if not why else st.container():
            st.caption("All layers × heads (click one to open it)")
            tile = max(24, min(64, 560 // max(heads, 1)))
            grid_img = entry.get(
                ("model-view", disp, tile),
                lambda: figures.mosaic(
                    figures.map_tiles(expl.image, all_maps.reshape(-1, *layout.grid), disp, tile),
                    heads,
                    gap=2,
                ),
            )
            ll, hh = np.meshgrid(np.arange(layers), np.arange(heads), indexing="ij")
            fig = figures.mosaic_figure(
                grid_img,
                (tile, tile),
                heads,
                np.column_stack([ll.ravel(), hh.ravel()]),
                "layer %{customdata[0]}, head %{customdata[1]}",
                gap=2,
                height=360,
            )
            st.plotly_chart(
                fig,
                key="model-view",
                on_select=lambda: select_on_click(
                    "model-view",
                    lambda i: dict(zip(("layer", "head"), divmod(i, heads), strict=True)),
                ),
                selection_mode="points",
                config={"displayModeBar": False},
            )
        st.caption(f"Layer {layer}: its {heads} heads side by side (click one to open it)")
        row_tile = max(48, min(120, 900 // max(heads, 1)))
        row_img = entry.get(
            ("layer-view", layer, disp, row_tile),
            lambda: figures.mosaic(
                figures.map_tiles(expl.image, all_maps[layer], disp, row_tile), heads, gap=4
            ),
        )
        fig = figures.mosaic_figure(
            row_img,
            (row_tile, row_tile),
            heads,
            np.column_stack([np.full(heads, layer), np.arange(heads)]),
            "layer %{customdata[0]}, head %{customdata[1]}",
            height=row_img.shape[0] + 4,
        )
        st.plotly_chart(
            fig,
            key="layer-view",
            on_select=lambda: select_on_click("layer-view", lambda i: {"head": i}),
            selection_mode="points",
            config={"displayModeBar": False},
        )
        map_title = f"layer{layer}-" + ("fused-" + fusion if head is None else f"head{head}")

    elif view == "Patch explorer":
        c1, c2, c3, c4 = st.columns([2, 1.3, 1.2, 1.2])
        rolled = c4.toggle("Rolled out", key="rolled", help="Follow attention through all layers")
        layer = c1.slider("Layer", 0, layers - 1, key="layer", disabled=rolled)
        head = c2.selectbox(
            "Head", head_options(heads), format_func=widgets.head_label, key="head", disabled=rolled
        )
        fusion = c3.segmented_control("Fusion", methods.FUSIONS, key="fusion") or "mean"
        patch = int(st.session_state["patch"])
        r, c = divmod(patch, layout.grid[1])
        pick, result = st.columns(2)
        with pick:
            st.caption(f"Click a patch — selected: patch {patch} (row {r}, column {c})")
            show_map(
                entry,
                np.zeros(layout.grid),
                figures.Display(disp.colormap, 0.0, False, True),
                key="patch-picker",
                value_name="",
                selected=patch,
                on_click=lambda i: {"patch": i},
                height=360,
            )
        opts = dict(patch=patch, fusion=fusion, rolled=rolled)
        if not rolled:
            opts |= dict(layer=layer, head=head)
        row = np.asarray(methods.compute_row("query", attn, layout, **opts))
        values = row[layout.num_prefix :].reshape(layout.grid)
        with result:
            what = "rolled out" if rolled else f"layer {layer}, {widgets.head_label(head)}"
            st.caption(f"What patch {patch} attends to ({what})")
            download_map = show_map(
                entry,
                values,
                disp,
                key="patch-map",
                value_name="attention",
                selected=patch,
                height=360,
            )
            show_prefix(entry, row, "Attention", "patch-prefix")
        map_title = f"patch{patch}"

    elif view == "Head statistics":
        stats = entry.get(
            "statistics",
            lambda: {
                "distance": np.asarray(methods.mean_attention_distance(attn, layout)),
                "entropy": np.asarray(methods.attention_entropy(attn, layout)),
            },
        )
        sel = (st.session_state["layer"], st.session_state.get("head") or 0)
        c1, c2 = st.columns(2)
        with c1:
            st.caption(
                "Mean attention distance: how far (in pixels) each head looks, by depth. "
                "Click a head to open its map."
            )
            st.plotly_chart(
                figures.distance_figure(stats["distance"], sel),
                key="distance",
                on_select=lambda: jump_to_head("distance", heads),
                selection_mode="points",
                config={"displayModeBar": False},
            )
        with c2:
            st.caption(
                "Attention entropy (nats): low = sharp, focused heads; high = spread out. "
                "Click a head to open its map."
            )
            st.plotly_chart(
                figures.entropy_figure(stats["entropy"]),
                key="entropy",
                on_select=lambda: jump_to_head("entropy", heads),
                selection_mode="points",
                config={"displayModeBar": False},
            )

    else:  # How ViT sees this image
        try:
            facts = model_anatomy(model_id, backend)
        except VitvizError as err:
            st.error(f"Could not read the model's anatomy: {err}")
            st.stop()
        factor = figures.display_scale(layout.image_size)
        cfg = info.input_config
        st.markdown(
            f"**1. Resize and crop.** The image becomes {w_}×{h} px "
            f"({cfg.get('interpolation', 'bicubic')} resize, crop {cfg.get('crop_pct', 1.0)}), "
            "then each colour channel is normalised with the model's mean and std."
        )
        st.markdown(
            f"**2. Cut into patches.** A {layout.grid[0]}×{layout.grid[1]} grid of "
            f"{layout.patch_size[0]}×{layout.patch_size[1]} px patches, numbered in reading order."
        )
        st.image(figures.numbered_grid(expl.image, layout, factor), width=420)
        extra = ", ".join(figures.token_labels(layout)) or "no extra tokens"
        st.markdown(
            f"**3. Flatten into a sequence.** {layout.num_tokens} tokens: {extra} first, then "
            f"the {layout.num_patches} patches, left to right, top to bottom."
        )
        st.image(figures.token_sequence(expl.image, layout), width="stretch")
        if facts.filters is not None:
            st.markdown(
                f"**4. Patch embedding.** Every patch is multiplied by {facts.width} learned "
                "filters. These are their first principal components (what the filters mostly "
                "detect: colour blobs, edges, stripes)."
            )
            st.image(figures.filters_mosaic(facts.filters), width="stretch")
        else:
            st.markdown("**4. Patch embedding.** This model embeds patches through a CNN.")
        if facts.position_similarity is not None:
            st.markdown(
                "**5. Position embeddings.** Each small square is one patch position; its "
                "colours show how similar its learned position embedding is to every other "
                "position's (yellow = similar). A trained ViT learns the 2-D grid by itself."
            )
            st.image(
                figures.position_mosaic(facts.position_similarity, facts.position_grid),
                width=420,
            )
        else:
            st.markdown("**5. Position embeddings.** This model has no learned absolute ones.")
        st.markdown("**6. Encoder → readout → head.**")
        top = None
        if expl.predictions:
            top = f"{expl.predictions[0].label} ({expl.predictions[0].probability:.0%})"
        st.graphviz_chart(pipeline.pipeline_dot(info, layout, facts.width, top))

    # downloads
    stem = f"{downloads.safe_stem(image_name)}-{downloads.safe_stem(info.name)}"
    d1, d2, d3 = st.columns(3)
    if download_map is not None:
        d1.download_button(
            "Overlay (PNG)",
            data=lambda pic=download_map: render.to_png(pic),
            file_name=f"{stem}-{map_title}.png",
            mime="image/png",
            on_click="ignore",
            key="dl-png",
        )
    d2.download_button(
        "Attention arrays (.npz)",
        data=lambda: downloads.attention_npz(expl, info, image_name),
        file_name=f"{stem}-attention.npz",
        mime="application/octet-stream",
        on_click="ignore",
        key="dl-npz",
    )
    d3.download_button(
        "Predictions (JSON)",
        data=lambda: downloads.predictions_json(expl, info, image_name),
        file_name=f"{stem}-predictions.json",
        mime="application/json",
        on_click="ignore",
        key="dl-json",
    )
