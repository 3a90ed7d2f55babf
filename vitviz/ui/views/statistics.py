"""Head statistics: mean attention distance against depth, attention entropy, the table of
every head, and "Does a head matter?" (head ablation, :mod:`vitviz.ui.ablation_panel`).

Plotly serves here (scatter plots); clicking a head opens its map in the Heads view.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from vitviz import methods
from vitviz.ui import ablation_panel, figures, session
from vitviz.ui.context import ViewContext
from vitviz.ui.i18n import t

ID = "Head statistics"
ORDER = 50  # its place among the view buttons


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
    _table(ctx)
    ablation_panel.panel(ctx, on_point=_jump, on_row=_open_row)


def _open_row(key: str, table: dict) -> None:
    """Table callback: the selected row's head opens in the Heads view."""
    rows = ((st.session_state.get(key) or {}).get("selection") or {}).get("rows") or []
    if rows:
        row = int(rows[0])
        session.set_selection(table["layer"][row], table["head"][row])
        st.session_state["view"] = "Heads"


def _table(ctx: ViewContext) -> None:
    """Every head as a sortable row with the kind its numbers say (click a row to open it)."""
    from vitviz.methods import statistics as rules

    table = ctx.entry.get("head-table", lambda: methods.head_table(ctx.attn, ctx.layout))
    kinds = {k: t(f"heads_table.kind_{k.replace(' ', '_')}") for k in methods.HEAD_KINDS}
    st.caption(
        t(
            "heads_table.caption",
            sink=f"{rules.SINK_SHARE:.0%}",
            self=f"{rules.SELF_SHARE:.0%}",
            local=f"{rules.LOCAL_RATIO:.0%}",
            uniform=f"{rules.uniform_distance(ctx.layout):.0f}",
        )
    )
    columns = {
        t("heads_table.layer"): table["layer"],
        t("heads_table.head"): table["head"],
        t("heads_table.distance"): [round(v, 1) for v in table["mean_distance"]],
        t("heads_table.entropy"): [round(v, 3) for v in table["entropy"]],
        t("heads_table.to_prefix"): [round(v, 3) for v in table["to_prefix"]],
        t("heads_table.to_self"): [round(v, 3) for v in table["to_self"]],
        t("heads_table.kind"): [kinds[k] for k in table["kind"]],
    }
    st.download_button(
        t("heads_table.download"),
        data=lambda: head_csv(table),
        file_name=f"{ctx.stem}-heads.csv",
        mime="text/csv",
        on_click="ignore",
        key="dl-heads-csv",
    )
    st.dataframe(
        columns,
        key="head_table",
        on_select=lambda: _open_row("head_table", table),
        selection_mode="single-row",
        hide_index=True,
        height=280,
    )


def head_csv(table: dict) -> str:
    """The head table as CSV (machine-readable column names, one row per head; every field
    quoted, no cell a formula: :func:`vitviz.output.exports.csv_text`)."""
    from vitviz.output.exports import csv_text

    names = ["layer", "head", "mean_distance", "entropy", "to_prefix", "to_self", "kind"]
    return csv_text([names, *zip(*(table[n] for n in names), strict=True)])
