"""Token norms: the residual stream's token norms after every block and their high-norm
outliers (Darcet et al., "Vision Transformers Need Registers", ICLR 2024;
:func:`vitviz.analysis.norms.token_norms`, through the backend).

Every layer's token norms go to the canvas once (``[L, N]``, one row per layer); the layer
changes in the browser, and the canvas reports it so a link keeps it. A second canvas, linked
to the first, marks the outliers.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from vitviz.analysis.norms import DEFAULT_K  # numpy only
from vitviz.results import TokenNorms
from vitviz.ui import canvas, depth, session
from vitviz.ui.context import ViewContext
from vitviz.ui.i18n import fill, raw, t
from vitviz.ui.session import KEEP

ID = "Token norms"
ORDER = 56  # its place among the view buttons: after the Logit lens (54), before Features (60)


def _remember_layer(key: str, layers: int) -> None:
    """Canvas callback: keep the layer the canvas shows (and put it in the URL)."""
    chosen = (st.session_state.get(key) or {}).get("selection") or {}
    try:
        layer = int(chosen["layer"])
    except (KeyError, TypeError, ValueError):
        return
    if 0 <= layer < layers:
        st.session_state["norms_layer"] = layer
        session.keep_in_url("norms_layer", str(layer), str(layers - 1))


def render(ctx: ViewContext) -> None:
    """Draw the view."""
    if not ctx.backend.offers("token_norms"):
        st.info(t("norms.remote" if ctx.info.remote else "norms.not_offered"))
        return
    low, high = depth.K_RANGE
    session.number("norms_k", low, high)
    fresh = {"value": DEFAULT_K} if "norms_k" not in st.session_state else {}
    k = st.slider(
        t("norms.k"),
        low,
        high,
        step=0.5,
        **fresh,
        key="norms_k",
        help=t("norms.k_help"),
        persist_state=KEEP,
    )
    session.keep_in_url("norms_k", session.url_text(float(k)), session.url_text(DEFAULT_K))
    st.caption(t("norms.rule", k=f"{k:g}"))
    result = depth.attempt(lambda: depth.norms(ctx, k), "norms.wait", "norms.failed")
    if result is None:
        return
    layers = result.norms.shape[0]
    depth.seed_int("norms_layer", 0, layers - 1)
    layer = st.session_state.get("norms_layer", layers - 1)
    layer = layer if isinstance(layer, int) and 0 <= layer < layers else layers - 1
    session.keep_in_url("norms_layer", str(layer), str(layers - 1))  # a bad link's is dropped
    common = dict(layer=layer, link="norms", report=True, max_size=300)
    left, right = st.columns(2)
    with left:
        data = canvas.payload(
            ctx.expl.image,
            ctx.layout,
            depth.norms_rows(result),
            title=fill("norms.title"),
            value_name=t("norms.value"),
            filename=f"{ctx.stem}-norms",
            **common,
        )
        data["text"]["to_extra"] = t("norms.prefix")  # the strip shows norms, not attention
        canvas.attention_canvas(
            "norms-canvas", data, on_selection=lambda: _remember_layer("norms-canvas", layers)
        )
    with right:
        data = canvas.payload(
            ctx.expl.image,
            ctx.layout,
            depth.outlier_rows(result),
            title=fill("norms.outliers_title", k=f"{k:g}"),
            value_name=t("norms.outlier_value"),
            filename=f"{ctx.stem}-outliers",
            scale=(0.0, 1.0),
            **common,
        )
        data["text"]["to_extra"] = t("norms.prefix_outliers")
        canvas.attention_canvas(
            "norms-outliers", data, on_selection=lambda: _remember_layer("norms-outliers", layers)
        )
    st.plotly_chart(share_figure(result), key="norms-share", config={"displayModeBar": False})
    if result.attention_share is not None:
        st.markdown(
            t(
                "norms.attention_share",
                share=f"{result.attention_share:.1%}",
                count=int(np.asarray(result.outliers)[-1].sum()),
                layer=layers - 1,
            )
        )
    if result.registers.shape[1]:
        st.plotly_chart(
            registers_figure(result), key="norms-registers", config={"displayModeBar": False}
        )
        st.caption(t("norms.registers_caption"))
    else:
        st.caption(t("norms.no_registers"))
    _downloads(ctx, result, k, layer)


def _downloads(ctx: ViewContext, result: TokenNorms, k: float, layer: int) -> None:
    """The norms as CSV and npz, the chosen layer's map as SVG (:mod:`vitviz.output.research`),
    with their settings."""
    from vitviz.output import research

    settings = depth.settings(ctx, ID, "token norms", {"k": k, "layer": layer})
    grid = tuple(ctx.layout.grid)
    title = f"{t('view.norms')} · {ctx.image_name}"
    depth.download_row(
        ctx.stem,
        "norms",
        [
            (
                t("norms.download_csv"),
                "csv",
                lambda: research.norms_csv(result, settings),
                "text/csv",
            ),
            (
                t("norms.download_npz"),
                "npz",
                lambda: research.research_npz(result, settings),
                "application/octet-stream",
            ),
            (
                t("norms.download_svg", layer=layer),
                "svg",
                lambda: research.norms_svg(result, layer, grid, title=title),
                "image/svg+xml",
            ),
        ],
    )


def share_figure(result: TokenNorms) -> go.Figure:
    """The share of patch tokens that are outliers, per layer."""
    layers = list(range(len(result.share)))
    fig = go.Figure(
        go.Scatter(
            x=layers,
            y=np.asarray(result.share, np.float64),
            mode="lines+markers",
            name=t("norms.share"),
            hovertemplate=raw("norms.hover_share") + "<extra></extra>",
        )
    )
    fig.update_layout(
        height=240,
        margin=dict(l=10, r=10, t=10, b=10),
        xaxis=dict(title=t("norms.layer"), dtick=1),
        yaxis=dict(title=t("norms.share"), tickformat=".0%", rangemode="tozero"),
    )
    return fig


def registers_figure(result: TokenNorms) -> go.Figure:
    """Each register token's norm per layer, beside the median patch token's."""
    regs = np.asarray(result.registers, np.float64)
    layers = list(range(regs.shape[0]))
    median = np.median(np.asarray(result.norms, np.float64)[:, result.num_prefix :], axis=1)
    fig = go.Figure()
    for r in range(regs.shape[1]):
        fig.add_trace(
            go.Scatter(
                x=layers,
                y=regs[:, r],
                mode="lines+markers",
                name=f"REG{r + 1}",
                hovertemplate=raw("norms.hover_norm") + "<extra></extra>",
            )
        )
    fig.add_trace(
        go.Scatter(
            x=layers,
            y=median,
            mode="lines",
            name=t("norms.median"),
            line=dict(color="#555", dash="dot"),
            hovertemplate=raw("norms.hover_norm") + "<extra></extra>",
        )
    )
    fig.update_layout(
        height=260,
        margin=dict(l=10, r=10, t=10, b=10),
        xaxis=dict(title=t("norms.layer"), dtick=1),
        yaxis=dict(title=t("norms.value_axis"), rangemode="tozero"),
        legend=dict(orientation="h", y=-0.3),
    )
    return fig
