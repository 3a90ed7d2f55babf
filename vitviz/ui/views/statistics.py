"""Head statistics: mean attention distance against depth, and attention entropy.

Plotly serves here (scatter plots); clicking a head opens its map in the Heads view.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from vitviz import methods
from vitviz.ui import figures, session
from vitviz.ui.context import ViewContext
from vitviz.ui.i18n import t

ID = "Head statistics"


def _clicked(event: object) -> int | None:
    points = ((event or {}).get("selection") or {}).get("points") or []  # type: ignore[union-attr]
    for point in points:
        for name in ("point_index", "point_number", "pointIndex", "pointNumber"):
            if isinstance(point.get(name), int):
                return int(point[name])
    return None


def _jump(key: str, heads: int) -> None:
    """Chart callback: a clicked head opens in the Heads view (before the view is drawn)."""
    index = _clicked(st.session_state.get(key))
    if index is not None:
        layer, head = divmod(index, heads)
        session.set_selection(layer, head)
        st.session_state["view"] = "Heads"


def render(ctx: ViewContext) -> None:
    """Draw the view."""
    attn, layout, info = ctx.attn, ctx.layout, ctx.info
    stats = ctx.entry.get(
        "statistics",
        lambda: {
            "distance": np.asarray(methods.mean_attention_distance(attn, layout)),
            "entropy": np.asarray(methods.attention_entropy(attn, layout)),
        },
    )
    layer, head, _ = session.selection(info.layers, info.heads)
    sel = (layer, max(head, 0))
    c1, c2 = st.columns(2)
    with c1:
        st.caption(t("statistics.distance"))
        st.plotly_chart(
            figures.distance_figure(stats["distance"], sel),
            key="distance",
            on_select=lambda: _jump("distance", info.heads),
            selection_mode="points",
            config={"displayModeBar": False},
        )
    with c2:
        st.caption(t("statistics.entropy"))
        st.plotly_chart(
            figures.entropy_figure(stats["entropy"]),
            key="entropy",
            on_select=lambda: _jump("entropy", info.heads),
            selection_mode="points",
            config={"displayModeBar": False},
        )
