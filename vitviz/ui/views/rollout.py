"""Rollout: attention flow through the layers, DINO's mask, and "why this class?".

The rollout's options come from the method registry (a widget for each, whatever options it
has); the map is recomputed on the server (it needs every layer) and drawn by the canvas. The
mask and the class-specific map (any of the registry's class-specific methods) can be shown
together, side by side.
"""

from __future__ import annotations

import streamlit as st

from vitviz import methods
from vitviz.ui import canvas, session, trust_panel, widgets
from vitviz.ui.context import ViewContext
from vitviz.ui.i18n import t
from vitviz.ui.session import KEEP
from vitviz.ui.text import plain

ID = "Rollout"
ORDER = 30  # its place among the view buttons
METHOD = "rollout"  # the view's map
MASK = "mask"  # its mask (drawn with the view's own two controls)
# the widget keys the rollout's first options were given by hand, kept (a session's values
# and scripts' keys stay); any other option of the method gets "rollout-<name>"
KEPT_KEYS = {
    "fusion": "roll_fusion",
    "discard": "discard",
    "start_layer": "start_layer",
    "end_layer": "end_layer",
}


TOGGLES = ("mask_on", "trust_on", "strip_on")  # with why_class: in the URL when on
SOURCES = ("last", "rollout")  # what the mask is made from


def option_key(name: str) -> str:
    """The session key of the widget of the rollout's option ``name``."""
    return KEPT_KEYS.get(name, f"{METHOD}-{name}")


def render(ctx: ViewContext) -> None:
    """Draw the view."""
    expl, layout, info = ctx.expl, ctx.layout, ctx.info
    sizes = dict(layers=info.layers, heads=info.heads, patches=layout.num_patches)
    spec = methods.METHODS[METHOD]
    # two options a row, the first (fusion's three buttons) the wider: nothing is cut off
    columns = [
        col
        for first in range(0, len(spec.options), 2)
        for col in st.columns([1.4, 1] if first == 0 else [1, 1])
    ][: len(spec.options)]
    opts = {
        o.name: widgets.option_widget(o, option_key(o.name), where=col, url=True, **sizes)
        for o, col in zip(spec.options, columns, strict=True)
    }
    if {"start_layer", "end_layer"} <= set(opts) and opts["end_layer"] < opts["start_layer"]:
        st.error(t("rollout.end_before_start", start=opts["start_layer"], end=opts["end_layer"]))
        return
    row = ctx.entry.get(  # every visitor's rerun on this image and these options
        (METHOD, tuple(sorted(opts.items()))),
        lambda: methods.compute_row(METHOD, ctx.expl.attention, ctx.layout, **opts),
    )
    t1, t2 = st.columns(2)
    t3, t4 = st.columns(2)
    for key in TOGGLES:  # each switch is in the URL when on (a link's 1/0 opens it)
        session.flag(key)
    show_mask = t1.toggle(
        t("rollout.mask"),
        key="mask_on",
        help=t("rollout.mask_help"),
        persist_state=KEEP,
    )
    why = widgets.why_toggle(ctx, t("rollout.why"), "why_class", t2, url=True)
    judge_on = t3.toggle(
        t("rollout.trust"),
        key="trust_on",
        help=t("rollout.trust_help"),
        disabled=not expl.predictions,
        persist_state=KEEP,
    )
    judge = judge_on and bool(expl.predictions)
    strip = t4.toggle(
        t("rollout.strip"), key="strip_on", help=t("rollout.strip_help"), persist_state=KEEP
    )
    for key, on in (("mask_on", show_mask), ("trust_on", judge_on), ("strip_on", strip)):
        session.keep_flag(key, bool(on))
    # each map's settings span the view's width above the maps, so no label is squeezed
    mask = _mask_settings(opts) if show_mask else None
    klass = _class_settings(ctx, opts, sizes) if why else None
    panels = 1 + show_mask + why
    size = {1: 340, 2: 300, 3: 230}[panels]
    cols = st.columns(panels) if panels > 1 else [st.container()]
    with cols[0]:
        data = canvas.payload(
            expl.image,
            layout,
            row,
            title=t("rollout.title"),
            value_name=t("canvas.rollout"),
            filename=f"{ctx.stem}-rollout",
            max_size=size,
        )
        canvas.attention_canvas("rollout", data)
    grid = methods.to_grid(row, layout)
    title = widgets.method_title(METHOD, spec.title)
    # every map shown is exported (each its values and figure), the rollout first
    exported = [(grid, METHOD, widgets.map_settings(ctx, ID, METHOD, opts), title)]
    judged = (grid, METHOD, title, ctx.top_classes[0] if judge else -1)
    if mask is not None:
        with cols[1]:
            exported.append(_mask(ctx, *mask, size))
    if klass is not None:
        with cols[-1]:
            values, name, settings = _class_map(ctx, *klass, size)
        cls, cm = klass[0], klass[1]  # the class map is the one judged when it is shown
        exported.append((values, name, settings, _class_title(ctx, *klass)))
        if not methods.METHODS[cm].negative(klass[2]):  # a "why not" map lowers the class by
            judged = (values, cm, class_methods()[cm], cls)  # design: judge the rollout
    first, *others = exported
    # an expander, not a popover: open, it pushes what follows down instead of covering it
    # (the trust plot below)
    widgets.map_exports(ctx, *first[:3], heading=first[3], others=others, inline=True)
    if judge:
        trust_panel.panel(ctx, *judged)
    if strip:
        _strip(ctx, METHOD, None, opts, t("rollout.title"))
        if klass is not None and "end_layer" in methods.METHODS[klass[1]].defaults:
            cls, cm, copts = klass
            rel = _relevance(ctx, cls, cm, copts)
            _strip(ctx, cm, rel, copts, _class_title(ctx, cls, cm, copts))


def _mask_settings(opts: dict) -> tuple[float, dict]:
    c1, c2 = st.columns(2)
    session.number("mask_threshold", 0.1, 1.0)
    fresh = "mask_threshold" not in st.session_state
    thr = c1.slider(
        t("option.threshold.title"),
        0.1,
        1.0,
        0.6 if fresh else None,
        0.05,
        key="mask_threshold",
        persist_state=KEEP,
    )
    session.keep_in_url("mask_threshold", session.url_text(float(thr)), "0.6")
    session.choice("mask_source", list(SOURCES), "last")
    src = c2.radio(
        t("option.source.title"),
        list(SOURCES),
        format_func={s: t(f"rollout.source_{s}") for s in SOURCES}.get,
        horizontal=True,
        key="mask_source",
        persist_state=KEEP,
    )
    session.keep_in_url("mask_source", src, "last")
    if src == "last":
        return thr, {"source": "attention", "layer": -1}
    shared = methods.METHODS[MASK].defaults  # the rollout's options the mask takes too
    return thr, {"source": "rollout", **{k: v for k, v in opts.items() if k in shared}}


def _mask(ctx: ViewContext, thr: float, mopts: dict, size: int) -> tuple:
    """Draw the mask; its values, name, settings and title (for the exports)."""
    row = methods.compute_row(MASK, ctx.expl.attention, ctx.layout, threshold=thr, **mopts)
    title = t(f"rollout.mask_title_{mopts['source']}", share=f"{thr:.0%}")
    data = canvas.payload(
        ctx.expl.image,
        ctx.layout,
        row,
        title=title,
        value_name=t("canvas.in_mask"),
        filename=f"{ctx.stem}-mask",
        max_size=size,
    )
    canvas.attention_canvas("mask", data)
    settings = widgets.map_settings(ctx, ID, MASK, {"threshold": thr, **mopts})
    return methods.to_grid(row, ctx.layout), MASK, settings, title


def class_methods() -> dict[str, str]:
    """The registry's class-specific methods and their titles, in display order (read each
    run: plugins may register more)."""
    return {n: widgets.method_title(n, m.title) for n, m in methods.of_kind("class").items()}


def _class_settings(ctx: ViewContext, opts: dict, sizes: dict) -> tuple[int, str, dict]:
    titles = class_methods()
    session.choice("class_method", list(titles), "chefer")
    # the picker and the methods each get the full width: no method's name is cut off
    cls = widgets.class_picker(ctx, url=True)
    cm = st.segmented_control(
        t("rollout.method"),
        list(titles),
        format_func=titles.get,
        key="class_method",
        required=True,
        persist_state=KEEP,
    )
    session.keep_in_url("class_method", cm, "chefer")
    # options the rollout controls above already set are shared; others get widgets
    return cls, cm, widgets.method_options(methods.METHODS[cm], cm, opts, url=True, **sizes)


def _relevance(ctx: ViewContext, cls: int, cm: str, copts: dict):
    negative = methods.METHODS[cm].negative(copts)
    return ctx.relevance(cls, negative)


def _class_title(ctx: ViewContext, cls: int, cm: str, copts: dict) -> str:
    why_not = methods.METHODS[cm].negative(copts)
    key = "rollout.why_not_title" if why_not else "rollout.class_title"
    return t(key, label=ctx.class_title(cls), method=class_methods()[cm])


def _strip(ctx: ViewContext, method: str, grads, opts: dict, title: str) -> None:
    """The map "up to layer l" for every l from the start layer on, small, in rows."""
    from vitviz.output import render

    which = None if grads is None else (grads.index, grads.negative)
    layers, rows = ctx.entry.get(
        ("strip", method, repr(sorted(opts.items())), which),
        lambda: methods.compute_strip(method, ctx.attn, ctx.layout, grads=grads, **opts),
    )
    maps = methods.to_grid(rows, ctx.layout)
    images = [render.overlay(ctx.expl.image, m, alpha=0.6) for m in maps]
    st.markdown(t("rollout.strip_title", title=plain(title)))
    per_row = 6 if len(images) > 8 else len(images)
    for start in range(0, len(images), per_row):
        chunk = list(range(start, min(start + per_row, len(images))))
        st.image(
            [images[i] for i in chunk],
            caption=[t("rollout.strip_cell", layer=layers[i]) for i in chunk],
            width=110,
        )
    st.caption(t("rollout.strip_caption"))


def _class_map(ctx: ViewContext, cls: int, cm: str, copts: dict, size: int):
    expl, layout = ctx.expl, ctx.layout
    rel = _relevance(ctx, cls, cm, copts)
    row = methods.compute_row(cm, expl.attention, layout, grads=rel, **copts)
    data = canvas.payload(
        expl.image,
        layout,
        row,
        title=_class_title(ctx, cls, cm, copts),
        value_name=t("canvas.relevance"),
        filename=f"{ctx.stem}-{cm}-class{cls}",
        max_size=size,
    )
    canvas.attention_canvas("class-map", data)
    negative = methods.METHODS[cm].negative(copts)
    if ctx.info.label_set and 0 <= cls < len(ctx.labels) and not negative:
        _text_relevance(ctx, ctx.labels[cls])  # a typed label: its caption's words too
    settings = widgets.map_settings(ctx, ID, cm, copts, cls)
    return methods.to_grid(row, layout), f"{cm}-class{cls}", settings


def _text_relevance(ctx: ViewContext, label: str) -> None:
    """Which words of the label's caption made the image match it: Chefer et al.'s relevance
    in CLIP's text tower, one bar per token, cached with the explanation."""
    from vitviz.errors import VitvizError

    st.markdown(t("text_relevance.title", label=plain(label)))
    if not ctx.backend.offers("text_relevance"):
        st.caption(t("text_relevance.remote" if ctx.info.remote else "text_relevance.not_offered"))
        return
    first = text_start_layer()
    try:
        pieces = ctx.entry.get(
            ("text-relevance", label, first),
            lambda: ctx.backend.text_relevance(
                ctx.decoded.image, label, seen=True, start_layer=first
            ),
        )
    except VitvizError as err:  # e.g. a text tower it cannot read: say so, keep the map
        st.caption(t("text_relevance.unavailable", detail=plain(err)))
        return
    word, share = t("text_relevance.word"), t("text_relevance.share")
    top = max((v for _, v in pieces), default=0.0)
    st.dataframe(  # shown as data (the words are user text): never Markdown or HTML
        {word: [w for w, _ in pieces], share: [v for _, v in pieces]},
        hide_index=True,
        column_config={
            share: st.column_config.ProgressColumn(
                share, format="percent", min_value=0.0, max_value=max(top, 1e-9)
            )
        },
    )
    st.caption(t("text_relevance.caption"))


TEXT_START = "text_start_layer"  # its widget's key and URL key
# the engine's default (vitviz.models.clip_text.DEFAULT_START_LAYER, which the page may not
# import: model code), and the choices every text tower has. The page cannot learn the
# tower's depth through the Backend protocol, so a layer in between is for the API and CLI
TEXT_STARTS = (0, -1)  # every text layer (the default) / the last alone (Chefer's notebook)


def text_start_layer() -> int:
    """The first text layer of the caption's relevance: every layer (0, the default, as the
    image maps) or the last alone (-1, Chefer et al.'s CLIP notebook); in the URL when not
    the default."""
    values = list(TEXT_STARTS)
    linked = st.query_params.get(TEXT_START)
    session.seed(TEXT_START, int(linked) if linked in map(str, values) else None)
    if st.session_state.get(TEXT_START) not in values:
        st.session_state[TEXT_START] = values[0]
    first = st.segmented_control(
        t("text_relevance.start_layer"),
        values,
        format_func={0: t("text_relevance.every_layer"), -1: t("text_relevance.last_layer")}.get,
        key=TEXT_START,
        required=True,
        help=t("text_relevance.start_layer_help"),
        persist_state=KEEP,
    )
    first = int(first) if first in values else values[0]
    session.keep_in_url(TEXT_START, str(first), str(values[0]))
    return first
