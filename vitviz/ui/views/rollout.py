"""Rollout: attention flow through the layers, DINO's mask, and "why this class?".

The rollout's options come from the method registry; the map is recomputed on the server (it
needs every layer) and drawn by the canvas. The mask and the class-specific map can be shown
together, side by side.
"""

from __future__ import annotations

import streamlit as st

from vitviz import methods
from vitviz.ui import canvas, resources, session, trust_panel, widgets
from vitviz.ui.context import ViewContext
from vitviz.ui.i18n import class_label, t
from vitviz.ui.session import KEEP

ID = "Rollout"
KEYS = {"fusion": "roll_fusion", "discard": "discard", "start_layer": "start_layer"}


def render(ctx: ViewContext) -> None:
    """Draw the view."""
    expl, layout, info = ctx.expl, ctx.layout, ctx.info
    sizes = dict(layers=info.layers, heads=info.heads, patches=layout.num_patches)
    spec = methods.METHODS["rollout"]
    columns = st.columns([1.4] + [1] * (len(spec.options) - 1))  # fusion's three buttons fit
    opts = {
        o.name: widgets.option_widget(o, KEYS[o.name], where=col, **sizes)
        for o, col in zip(spec.options, columns, strict=True)
    }
    row = methods.compute_row("rollout", expl.attention, layout, **opts)
    t1, t2, t3 = st.columns(3)
    show_mask = t1.toggle(
        t("rollout.mask"),
        key="mask_on",
        help=t("rollout.mask_help"),
        persist_state=KEEP,
    )
    why = widgets.why_toggle(ctx, t("rollout.why"), "why_class", t2)
    judge = t3.toggle(
        t("rollout.trust"),
        key="trust_on",
        help=t("rollout.trust_help"),
        disabled=not expl.predictions,
        persist_state=KEEP,
    ) and bool(expl.predictions)
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
    download = (methods.to_grid(row, layout), "rollout")
    judged = (download[0], "rollout", t("method.rollout"), ctx.top_classes[0] if judge else -1)
    if mask is not None:
        with cols[1]:
            _mask(ctx, *mask, size)
    if klass is not None:
        with cols[-1]:
            download = _class_map(ctx, *klass, size)
        cls, cm = klass[0], klass[1]  # the class map is the one judged when it is shown
        judged = (download[0], cm, class_methods()[cm], cls)
    widgets.overlay_download(ctx, *download)
    if judge:
        trust_panel.panel(ctx, *judged)


def _mask_settings(opts: dict) -> tuple[float, dict]:
    c1, c2 = st.columns(2)
    thr = c1.slider(
        t("option.threshold.title"), 0.1, 1.0, 0.6, 0.05, key="mask_threshold", persist_state=KEEP
    )
    src = c2.radio(
        t("option.source.title"),
        ["last", "rollout"],
        format_func={s: t(f"rollout.source_{s}") for s in ("last", "rollout")}.get,
        horizontal=True,
        key="mask_source",
        persist_state=KEEP,
    )
    if src == "last":
        return thr, {"source": "attention", "layer": -1}
    return thr, {"source": "rollout", **opts}


def _mask(ctx: ViewContext, thr: float, mopts: dict, size: int) -> None:
    row = methods.compute_row("mask", ctx.expl.attention, ctx.layout, threshold=thr, **mopts)
    data = canvas.payload(
        ctx.expl.image,
        ctx.layout,
        row,
        title=t(f"rollout.mask_title_{mopts['source']}", share=f"{thr:.0%}"),
        value_name=t("canvas.in_mask"),
        filename=f"{ctx.stem}-mask",
        max_size=size,
    )
    canvas.attention_canvas("mask", data)


def class_methods() -> dict[str, str]:
    """The registry's class-specific methods (read each run: plugins may register more)."""
    return {
        n: widgets.method_title(n, m.title) for n, m in methods.METHODS.items() if m.needs_gradients
    }


def _class_settings(ctx: ViewContext, opts: dict, sizes: dict) -> tuple[int, str, dict]:
    titles = class_methods()
    session.choice("class_method", list(titles), "chefer")
    c1, c2 = st.columns([3, 2])
    with c1:
        cls = widgets.class_picker(ctx)
    with c2:
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
    return cls, cm, widgets.method_options(methods.METHODS[cm], cm, opts, **sizes)


def _class_map(ctx: ViewContext, cls: int, cm: str, copts: dict, size: int):
    expl, layout = ctx.expl, ctx.layout
    rel = resources.class_relevance(
        ctx.model_id, ctx.image_digest, ctx.backend, ctx.decoded.image, cls, ctx.top_classes
    )
    row = methods.compute_row(cm, expl.attention, layout, grads=rel, **copts)
    data = canvas.payload(
        expl.image,
        layout,
        row,
        title=t(
            "rollout.class_title",
            label=class_label(ctx.labels[cls], cls),
            method=class_methods()[cm],
        ),
        value_name=t("canvas.relevance"),
        filename=f"{ctx.stem}-{cm}-class{cls}",
        max_size=size,
    )
    canvas.attention_canvas("class-map", data)
    return methods.to_grid(row, layout), f"{cm}-class{cls}"
