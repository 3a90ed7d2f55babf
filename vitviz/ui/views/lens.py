"""Logit lens: when does the model know? The model's own final norm and head read after every
block (:func:`vitviz.engine.lens.logit_lens`, through the backend): a layers × classes heatmap
of the probabilities of every layer's top classes, and the predicted class's probability and
rank per layer.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from vitviz.results import LogitLens
from vitviz.ui import depth, session
from vitviz.ui.context import ViewContext
from vitviz.ui.i18n import raw, t
from vitviz.ui.session import KEEP
from vitviz.ui.text import plain

ID = "Logit lens"
ORDER = 54  # its place among the view buttons: after Head statistics (50), before Features (60)


def render(ctx: ViewContext) -> None:
    """Draw the view."""
    if not ctx.backend.offers("logit_lens"):
        st.info(t("lens.remote" if ctx.info.remote else "lens.not_offered"))
        return
    low, high, default = depth.TOP_K
    depth.seed_int("lens_top", low, high)
    fresh = {"value": default} if "lens_top" not in st.session_state else {}
    top_k = st.slider(
        t("lens.top_k"),
        low,
        high,
        **fresh,
        key="lens_top",
        help=t("lens.top_k_help"),
        persist_state=KEEP,
    )
    session.keep_in_url("lens_top", str(top_k), str(default))
    result = depth.attempt(lambda: depth.lens(ctx, top_k), "lens.wait", "lens.failed")
    if result is None:
        return
    columns, probs = depth.lens_columns(result)
    names = [ctx.class_title(c) for c in columns]
    st.plotly_chart(
        heatmap(result, columns, probs, names),
        key="lens-heatmap",
        config={"displayModeBar": False},
    )
    layers = probs.shape[0]
    settled = depth.settled_from(result)
    st.caption(
        t(
            "lens.caption",
            label=plain(names[0]),
            layer=layers - 1,
            settled=settled if settled is not None else layers - 1,
        )
    )
    st.plotly_chart(final_figure(result), key="lens-final", config={"displayModeBar": False})
    st.caption(t("lens.approximation"))
    _downloads(ctx, result, top_k)


def _downloads(ctx: ViewContext, result: LogitLens, top_k: int) -> None:
    """The lens as CSV, npz and SVG (:mod:`vitviz.output.research`), with its settings."""
    from vitviz.output import research

    settings = depth.settings(ctx, ID, "logit lens", {"top": top_k})
    labels = ctx.labels
    title = f"{t('view.lens')} · {ctx.image_name}"
    depth.download_row(
        ctx.stem,
        "lens",
        [
            (
                t("lens.download_csv"),
                "csv",
                lambda: research.lens_csv(result, labels, settings),
                "text/csv",
            ),
            (
                t("lens.download_npz"),
                "npz",
                lambda: research.research_npz(result, settings),
                "application/octet-stream",
            ),
            (
                t("lens.download_svg"),
                "svg",
                lambda: research.lens_svg(result, labels, title=title),
                "image/svg+xml",
            ),
        ],
    )


def heatmap(
    result: LogitLens, columns: list[int], probs: np.ndarray, names: list[str]
) -> go.Figure:
    """Layers (rows, the model's output last) × classes (the prediction first, outlined):
    each class's softmax probability read through the final norm and head."""
    layers = probs.shape[0]
    logits = np.asarray(result.logits, np.float64)[:, columns]
    text = [names for _ in range(layers)]
    fig = go.Figure(
        go.Heatmap(
            z=probs,
            x=list(range(len(columns))),
            y=list(range(layers)),
            text=text,
            customdata=logits,
            colorscale="Viridis",
            zmin=0.0,
            zmax=float(max(probs.max(), 1e-6)),
            colorbar=dict(title=dict(text=t("lens.probability"))),
            hovertemplate=raw("lens.hover") + "<extra></extra>",
        )
    )
    ticks = [f"★ {names[0]}", *names[1:]]
    rows = [str(layer) for layer in range(layers)]
    rows[-1] = t("lens.output_row", layer=layers - 1)
    fig.add_shape(  # the model's prediction
        type="rect",
        x0=-0.5,
        x1=0.5,
        y0=-0.5,
        y1=layers - 0.5,
        line=dict(color="#d62728", width=3),
        fillcolor="rgba(0,0,0,0)",
    )
    fig.update_layout(
        height=max(240, 28 * layers + 120),
        margin=dict(l=10, r=10, t=10, b=10),
        xaxis=dict(
            title=t("lens.classes"),
            tickmode="array",
            tickvals=list(range(len(names))),
            ticktext=ticks,
            tickangle=-35,
        ),
        yaxis=dict(
            title=t("lens.layer"),
            tickmode="array",
            tickvals=list(range(layers)),
            ticktext=rows,
            autorange="reversed",
        ),
    )
    return fig


def final_figure(result: LogitLens) -> go.Figure:
    """The predicted class's probability (left axis) and rank (right axis, 1 at the top) per
    layer."""
    layers = list(range(len(result.final_probability)))
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=layers,
            y=np.asarray(result.final_probability, np.float64),
            name=t("lens.final_probability"),
            mode="lines+markers",
            line=dict(color="#1f77b4"),
            hovertemplate=raw("lens.hover_probability") + "<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=layers,
            y=np.asarray(result.final_rank, np.int64),
            name=t("lens.final_rank"),
            mode="lines+markers",
            yaxis="y2",
            line=dict(color="#ff7f0e", dash="dot"),
            hovertemplate=raw("lens.hover_rank") + "<extra></extra>",
        )
    )
    fig.update_layout(
        height=260,
        margin=dict(l=10, r=10, t=10, b=10),
        xaxis=dict(title=t("lens.layer"), dtick=1),
        yaxis=dict(title=t("lens.probability"), range=[0, 1]),
        yaxis2=dict(  # rank 1 at the top, whole numbers
            title=t("lens.rank"),
            overlaying="y",
            side="right",
            tickformat="d",
            range=[float(np.max(result.final_rank)) + 0.5, 0.5],
        ),
        legend=dict(orientation="h", y=-0.3),
    )
    return fig
