"""Patch explorer: click a patch to see what it attends to, per layer and head or rolled out."""

from __future__ import annotations

import streamlit as st

from vitviz import methods
from vitviz.ui import canvas, session, widgets
from vitviz.ui.context import ViewContext
from vitviz.ui.i18n import fill, t
from vitviz.ui.session import KEEP

ID = "Patch explorer"
ORDER = 40  # its place among the view buttons


def render(ctx: ViewContext) -> None:
    """Draw the view."""
    expl, layout, info = ctx.expl, ctx.layout, ctx.info
    query = methods.first_of_kind("query")  # the registry's patch map (one patch's row)
    patch = session.patch(layout.num_patches, layout.grid)
    r, c = divmod(patch, layout.grid[1])
    rolled = st.toggle(t("patches.rolled"), key="rolled", persist_state=KEEP)
    st.caption(t("patches.click", patch=patch, row=r, column=c))
    if rolled:
        rows = methods.compute_row(query, expl.attention, layout, patch=patch, rolled=True)
        extra = dict(title=fill("patches.title_rolled", patch=patch))
    else:
        rows = ctx.query_rows(patch)
        layer, head, fusion = session.selection(info.layers, info.heads)
        extra = dict(
            heads=info.heads,
            layer=layer,
            head=head,
            fusion=fusion,
            reset=session.take_reset(),
            report=True,
            title=fill("patches.title", patch=patch),
        )
    data = canvas.payload(
        expl.image,
        layout,
        rows,
        clickable=True,
        selected=patch,
        filename=f"{ctx.stem}-patch{patch}",
        max_size=340,
        **extra,
    )
    canvas.attention_canvas(
        "patch-canvas",
        data,
        on_patch=lambda: session.remember_patch("patch-canvas"),
        on_selection=lambda: session.remember_selection("patch-canvas"),
    )
    if rolled:
        grid = methods.to_grid(rows, layout)
        chosen = {"patch": patch, "rolled": True}
    else:
        layer, head, fusion = session.selection(info.layers, info.heads)
        grid = methods.to_grid(rows[layer, methods.head_slot(info.heads, head, fusion)], layout)
        chosen = {"patch": patch, "layer": layer, "head": head if head >= 0 else None}
        chosen["fusion"] = fusion
    settings = widgets.map_settings(ctx, ID, query, chosen)
    widgets.map_exports(ctx, grid, f"patch{patch}", settings)
