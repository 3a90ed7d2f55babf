"""Compare: two maps side by side with shared controls — two models on one image, two images
on one model, or two methods on one explanation.

Panel A is the page's model and image. Panel B is another sample (the default: it costs one
explanation), another curated model (run in this process, loaded only when asked for), or
another method. One set of method options drives both panels, carried to B's model by
:func:`vitviz.analysis.comparison.carry_options`: a layer to the same relative depth, a head B lacks
to B's fused heads, a patch to the same place on B's grid. The mode, B's model, image and
methods, every option and the shared colour scale are in the URL, so a link reopens the
comparison. Each panel's title names what differs; with two methods, the model and image both
share are said once above them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import streamlit as st

from vitviz import methods
from vitviz.analysis.comparison import carry_options
from vitviz.errors import VitvizError
from vitviz.methods import Method, Option
from vitviz.models.registry import CURATED
from vitviz.results import FEATURE_NORM, ModelInfo
from vitviz.ui import canvas, resources, session, widgets
from vitviz.ui.context import ViewContext
from vitviz.ui.i18n import error_text, t
from vitviz.ui.session import KEEP
from vitviz.ui.sidebar import read_typed
from vitviz.ui.text import plain

ID = "Compare"
ORDER = 70  # its place among the view buttons
MODES = ("models", "images", "methods")
PREFIX = "cmp"  # option widgets are keyed cmp-<method>-<option>; in the URL as cmp.<option>


@dataclass
class Panel:
    """One side: a model's explanation of an image, and how to name it."""

    ctx: ViewContext
    name: str  # the model, image or method this panel stands for

    @property
    def info(self) -> ModelInfo:
        """The panel's model."""
        return self.ctx.info


def render(ctx: ViewContext) -> None:
    """Draw the view."""
    session.choice("cmp_mode", list(MODES), "images")
    mode = st.segmented_control(
        t("compare.mode"),
        list(MODES),
        format_func={m: t(f"compare.mode_{m}") for m in MODES}.get,
        key="cmp_mode",
        required=True,
        persist_state=KEEP,
    )
    session.keep_in_url("cmp_mode", mode, "images")
    a = Panel(ctx, _model_title(ctx.info) if mode == "models" else _image_title(ctx.image_name))
    # one colour scale for both panels (off by default: each its own); in the URL when on
    session.flag("cmp_shared_scale")
    shared_scale = st.toggle(
        t("compare.shared_scale"),
        key="cmp_shared_scale",
        help=t("compare.shared_scale_help"),
        persist_state=KEEP,
    )
    session.keep_flag("cmp_shared_scale", bool(shared_scale))
    b = {"models": _other_model, "images": _other_image, "methods": lambda c: Panel(c, "")}[mode](
        ctx
    )
    if b is None:
        return
    titles = method_choices()
    names = list(titles)
    session.choice("cmp_method", names, methods.DEFAULT_METHOD)
    if mode == "methods":
        session.choice("cmp_method_b", names, _second_default(ctx))
        c1, c2 = st.columns(2)
        first = c1.selectbox(
            t("compare.method_a"),
            names,
            format_func=titles.get,
            key="cmp_method",
            persist_state=KEEP,
        )
        second = c2.selectbox(
            t("compare.method_b"),
            names,
            format_func=titles.get,
            key="cmp_method_b",
            persist_state=KEEP,
        )
        session.keep_in_url("cmp_method_b", second, _second_default(ctx))
        a.name, b.name = titles[first], titles[second]  # what differs: each panel's method
    else:
        first = second = st.selectbox(
            t("compare.method"), names, format_func=titles.get, key="cmp_method", persist_state=KEEP
        )
    session.keep_in_url("cmp_method", first, methods.DEFAULT_METHOD)
    opts = _options(ctx, methods.METHODS[first], methods.METHODS[second])
    if mode == "methods":  # the titles name each method; the model and image said once
        same = (_model_title(ctx.info), _image_title(ctx.image_name))
        st.caption(t("compare.shared", what=" · ".join(same)))
    maps = []
    for panel, method in ((a, first), (b, second)):
        sizes = (
            (ctx.info.layers, ctx.info.heads, ctx.layout),
            (panel.info.layers, panel.info.heads, panel.ctx.layout),
        )  # carry_options takes the method's own options from opts
        maps.append(_compute(panel, method, carry_options(method, opts, *sizes)))
    patches = [m[0][p.ctx.layout.num_prefix :] for p, m in zip((a, b), maps, strict=True) if m]
    scale = joint_scale(patches) if shared_scale else None  # the values the canvas colours
    left, right = st.columns(2)
    for panel, method, where, key, done in zip(
        (a, b), (first, second), (left, right), ("cmp-a", "cmp-b"), maps, strict=True
    ):
        with where:
            if done is not None:
                _draw(panel, method, *done, key, scale)
    if mode == "models" and ctx.info.layers != b.info.layers:
        st.caption(t("compare.depth_note", a=ctx.info.layers, b=b.info.layers))


def method_choices() -> dict[str, str]:
    """Compare's methods and their titles: every registered method, in display order."""
    return {n: widgets.method_title(n, m.title) for n, m in methods.of_kind().items()}


def _second_default(ctx: ViewContext) -> str:
    """Side B's method when two methods are compared: the first class-specific method where
    there are classes, else the first class-agnostic one."""
    return methods.first_of_kind("class" if ctx.labels else "attention")


def _other_model(ctx: ViewContext) -> Panel | None:
    """Panel B for two models: a curated model, run in this process, on the same image."""
    if ctx.info.remote:
        st.info(t("compare.remote"))
        return None
    keys = list(CURATED)
    current = next((k for k in keys if CURATED[k].timm_name == ctx.info.timm_name), None)
    default = "dino-s16" if current != "dino-s16" else "vit-b16"
    session.choice("cmp_model", keys, default)
    c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
    key = c1.selectbox(
        t("compare.model_b"),
        keys,
        format_func={k: resources.model_title(k) for k in keys}.get,
        key="cmp_model",
        persist_state=KEEP,
    )
    session.keep_in_url("cmp_model", key, default)
    if "cmp_random" not in st.session_state:  # a link's choice, on this session's first run
        st.session_state["cmp_random"] = st.query_params.get("cmp_random") == "1"
    random = c2.toggle(
        t("compare.random"), key="cmp_random", help=t("compare.random_help"), persist_state=KEEP
    )
    session.keep_in_url("cmp_random", "1" if random else "0", "0")
    from vitviz.ui.page import model_key

    try:
        backend = resources.load_with_progress(key, None, bool(random))
        if backend.offers("typed_labels"):  # CLIP: the classes typed in the sidebar, if any
            labels, template, _ = read_typed(  # the problem, if any, is said in the sidebar
                st.session_state.get("clip_labels"), st.session_state.get("clip_template")
            )
            backend = resources.typed_classes(backend, labels, template)
        info = backend.info()
        mid = model_key(info)
        decoded = resources.model_input(ctx.image_digest, ctx.source, ctx.image_name, backend)
        entry = resources.explanation(mid, ctx.image_digest, backend, decoded.image)
    except VitvizError as err:
        st.error(t("compare.load_failed", name=resources.model_title(key), detail=error_text(err)))
        return None
    if info.weights.warning:
        st.caption("⚠️ " + t("compare.random_note", name=plain(info.name)))
    other = ViewContext(
        backend, info, mid, ctx.image_digest, ctx.image_name, decoded, entry, ctx.source
    )
    return Panel(other, _model_title(info))


def _other_image(ctx: ViewContext) -> Panel | None:
    """Panel B for two images: a sample, explained by the page's model."""
    names = list(resources.SAMPLES)
    default = next((n for n in names if n != ctx.image_name), names[0])
    session.choice("cmp_sample", names, default)
    name = st.selectbox(
        t("compare.image_b"),
        names,
        format_func={n: t(resources.SAMPLES[n]) for n in names}.get,
        key="cmp_sample",
        persist_state=KEEP,
    )
    session.keep_in_url("cmp_sample", name, default)
    from vitviz.ui.state import digest

    data = (resources.ASSETS / name).read_bytes()
    image_digest = digest(data)
    try:
        decoded = resources.model_input(image_digest, data, name, ctx.backend)
        entry = resources.explanation(ctx.model_id, image_digest, ctx.backend, decoded.image)
    except VitvizError as err:
        st.error(error_text(err))
        return None
    other = ViewContext(
        ctx.backend, ctx.info, ctx.model_id, image_digest, name, decoded, entry, data
    )
    return Panel(other, _image_title(name))


def _model_title(info: ModelInfo) -> str:
    """A curated model's title in the page's language; another by its (escaped) name."""
    return resources.model_title(info.name) if info.name in CURATED else plain(info.name)


def _image_title(name: str) -> str:
    """A sample's title in the page's language; another image by its (escaped) name."""
    return t(resources.SAMPLES[name]) if name in resources.SAMPLES else plain(name)


def _options(ctx: ViewContext, first: Method, second: Method) -> dict[str, Any]:
    """One widget per option of the two methods (on panel A's model); each in the URL."""
    sizes = dict(layers=ctx.info.layers, heads=ctx.info.heads, patches=ctx.layout.num_patches)
    spec: dict[str, Option] = {o.name: o for o in (*first.options, *second.options)}
    for name, option in spec.items():  # a link's values, on this session's first run
        key = f"{PREFIX}-{name}"
        text = st.query_params.get(f"{PREFIX}.{name}")
        if key not in st.session_state and text is not None:
            value = session.option_from_url(option, text, **sizes)
            if value is not None:
                st.session_state[key] = value
    merged = Method("compare", "", "", lambda *a, **k: None, tuple(spec.values()))
    values = widgets.method_options(merged, PREFIX, {}, **sizes)
    for name, option in spec.items():
        default = session.option_default(option, sizes["layers"])
        shown = session.url_text(values[name])
        session.keep_in_url(f"{PREFIX}.{name}", shown, session.url_text(default))
    return values


def joint_scale(maps: list[np.ndarray]) -> tuple[float, float] | None:
    """One colour scale for the maps shown: the lowest and highest value of them all."""
    if not maps:
        return None
    return float(min(m.min() for m in maps)), float(max(m.max() for m in maps))


def _compute(panel: Panel, method: str, opts: dict[str, Any]) -> tuple[np.ndarray, str] | None:
    """One panel's map ``[gh, gw]`` and what it shows besides its name (layer, class); None
    (and the error said) when the method fails."""
    ctx, spec = panel.ctx, methods.METHODS[method]
    grads, target = None, ""
    if spec.needs_gradients:
        cls = ctx.top_classes[0] if ctx.top_classes else FEATURE_NORM
        grads = ctx.relevance(cls, spec.negative(opts))
        target = t("compare.target", label=ctx.class_title(cls))
    try:
        row = methods.compute_row(method, ctx.attn, ctx.layout, grads=grads, **opts)
    except VitvizError as err:
        st.error(error_text(err))
        return None
    depth = ""
    if "layer" in opts and opts["layer"] is not None:
        depth = t("compare.layer_of", layer=int(opts["layer"]), layers=ctx.info.layers)
    # the panel's name is what differs (a model, an image, a method); a method not already
    # named is added, so each canvas (and its saved PNG) says what it shows
    method_title = widgets.method_title(method, spec.title)
    shown = (panel.name, "" if panel.name == method_title else method_title, depth, target)
    title = " · ".join(p for p in shown if p)
    return np.asarray(row), title


def _draw(
    panel: Panel,
    method: str,
    row: np.ndarray,
    title: str,
    key: str,
    scale: tuple[float, float] | None,
) -> None:
    """One panel's map, titled with what differs from the other panel."""
    ctx, spec = panel.ctx, methods.METHODS[method]
    data = canvas.payload(
        ctx.expl.image,
        ctx.layout,
        row,
        title=title,
        value_name=t("canvas.relevance") if spec.needs_gradients else None,
        filename=f"{ctx.stem}-{method}",
        max_size=300,
        scale=scale,
    )
    canvas.attention_canvas(key, data)
