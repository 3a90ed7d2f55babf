"""Heads: one layer's heads, all layers × heads (bertviz's model view), any head large.

Every layer × head readout row goes to the browser once; layer, head and fusion change there.
With "Why this class?", a second canvas, linked to the first, shows attention × gradient of
the same head for a class.
"""

from __future__ import annotations

from vitviz import methods
from vitviz.ui import canvas, session, widgets
from vitviz.ui.context import ViewContext
from vitviz.ui.i18n import fill, t

ID = "Heads"
ORDER = 20  # its place among the view buttons


def render(ctx: ViewContext) -> None:
    """Draw the view."""
    expl, layout, info = ctx.expl, ctx.layout, ctx.info
    rows = ctx.entry.get("head-rows", lambda: methods.head_rows(expl.attention, layout))
    layer, head, fusion = session.selection(info.layers, info.heads)
    reset = session.take_reset()
    common = dict(heads=info.heads, layer=layer, head=head, fusion=fusion, reset=reset)
    why = widgets.why_toggle(ctx, t("heads.why"), "heads_why")
    data = canvas.payload(
        expl.image,
        layout,
        rows,
        title=fill("heads.title"),
        mosaic=True,
        link="heads",
        report=True,
        filename=f"{ctx.stem}-heads",
        max_size=300,
        **common,
    )
    canvas.attention_canvas(
        "heads-canvas", data, on_selection=lambda: session.remember_selection("heads-canvas")
    )
    if why:
        cls = widgets.class_picker(ctx)
        rel = ctx.relevance(cls)
        label = ctx.class_title(cls)
        class_data = canvas.payload(
            expl.image,
            layout,
            methods.class_head_rows(rel),
            title=fill("heads.class_title", label=label),
            value_name=t("canvas.relevance"),
            link="heads",
            filename=f"{ctx.stem}-attn-grad-class{cls}",
            max_size=300,
            **common,
        )
        canvas.attention_canvas("heads-class-canvas", class_data)
    layer, head, fusion = session.selection(info.layers, info.heads)
    grid = methods.to_grid(rows[layer, methods.head_slot(info.heads, head, fusion)], layout)
    chosen = {"layer": layer, "head": head if head >= 0 else None, "fusion": fusion}
    widgets.map_exports(
        ctx,
        grid,
        f"layer{layer}-head{head}" if head >= 0 else f"layer{layer}-{fusion}",
        widgets.map_settings(ctx, ID, "attention", chosen),
    )
