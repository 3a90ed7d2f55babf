"""The lesson's steps inside one encoder block, on this image and model.

The residual stream (what each 多頭自注意力 and MLP sub-block adds to the chosen patch's and the
readout token's vector), layer normalisation of one token and the MLP on one token. Every
number comes from :meth:`~vitviz.backends.local.LocalBackend.block_steps`: one forward pass of
this image, cached with the explanation per (patch, layer); a rerun runs nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from vitviz.errors import VitvizError
from vitviz.results import BlockSteps
from vitviz.ui.i18n import error_text, t
from vitviz.ui.lesson.pictures import vector_strip

if TYPE_CHECKING:
    from vitviz.ui.lesson.steps import Lesson

FONT = 18  # plot text on the projector (the page's own text is 20–21 px)
LAYER_KEY = "lesson_block_layer"


def style(fig: go.Figure, height: int) -> go.Figure:
    """Large type, small margins, the legend above the plot."""
    fig.update_layout(
        height=height,
        font={"size": FONT},
        margin={"l": 10, "r": 10, "t": 10, "b": 10},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0, "font": {"size": FONT}},
        hoverlabel={"font": {"size": FONT}},
    )
    fig.update_xaxes(title_font={"size": FONT}, tickfont={"size": FONT})
    fig.update_yaxes(title_font={"size": FONT}, tickfont={"size": FONT})
    return fig


def strip(vector: np.ndarray, scale: float | None = None) -> np.ndarray:
    """A vector as a band about 576 px wide (48 or 96 values a row)."""
    cols, cell = (48, (10, 12)) if vector.size <= 384 else (96, (6, 6))
    return vector_strip(vector, cols=cols, cell=cell, scale=scale)


def token_name(lesson: Lesson, token: int) -> str:
    """``[CLS]`` (or the prefix token's name) or "patch n" for a sequence position."""
    layout = lesson.ctx.layout
    if token < layout.num_prefix:
        return f"[{layout.prefix[token].upper()}]"
    return t("lesson.block_patch", patch=token - layout.num_prefix)


def chosen_layer(lesson: Lesson) -> int:
    """The block whose norm and MLP are shown: the slider's, else the middle one."""
    layers = lesson.ctx.info.layers
    layer = st.session_state.get(LAYER_KEY, layers // 2)
    return layer if isinstance(layer, int) and 0 <= layer < layers else layers // 2


def layer_slider(lesson: Lesson) -> int:
    """The slider choosing the block shown (kept while the lesson moves between steps)."""
    layers = lesson.ctx.info.layers
    st.session_state[LAYER_KEY] = chosen_layer(lesson)  # a widget's value outlives its step
    return int(st.slider(t("lesson.block_layer"), 0, layers - 1, key=LAYER_KEY))


def block_data(lesson: Lesson, layer: int | None = None) -> BlockSteps | None:
    """This image's block steps for the chosen patch (one forward pass, cached), or None
    with the reason shown."""
    ctx = lesson.ctx
    layout = ctx.layout
    layer = chosen_layer(lesson) if layer is None else layer
    token = layout.num_prefix + lesson.patch
    tokens = [*layout.readout_tokens, token]
    backend = ctx.backend
    try:
        if not backend.offers("block_steps"):
            why = "lesson.no_vectors_server" if ctx.info.remote else "lesson.no_vectors_offered"
            return _unavailable(t(why))
        return ctx.entry.get(
            ("lesson-block", lesson.patch, layer),
            lambda: backend.block_steps(ctx.decoded.image, tokens=tokens, layer=layer, token=token),
        )
    except VitvizError as err:
        return _unavailable(error_text(err))


def _unavailable(detail: str) -> None:
    st.info(t("lesson.no_vectors", detail=detail))
    return None


def _honest(lesson: Lesson) -> None:
    if lesson.kind == "random":
        st.caption(t("lesson.block_random"))
    elif lesson.kind == "demo":
        st.caption(t("lesson.block_demo"))


def stream_figure(lesson: Lesson, data: BlockSteps) -> go.Figure:
    """‖x‖ of each followed token entering block 0, then after every sub-block."""
    r = data.residual
    layers = r.entering.shape[0]
    x = [0.0] + [v for i in range(layers) for v in (i + 0.5, i + 1.0)]
    fig = go.Figure()
    for k, token in enumerate(r.tokens):
        y = [r.entering[0, k]]
        for i in range(layers):
            y += [r.after_attention[i, k], r.after_mlp[i, k]]
        fig.add_trace(
            go.Scatter(x=x, y=np.round(y, 4), name=token_name(lesson, token), mode="lines+markers")
        )
    fig.update_xaxes(title_text=t("lesson.block_axis_depth"), dtick=1, range=[-0.2, layers + 0.2])
    fig.update_yaxes(title_text="‖x‖", rangemode="tozero")
    return style(fig, 240)


def update_figure(lesson: Lesson, data: BlockSteps) -> go.Figure:
    """‖update‖ / ‖x‖ per block: what attention and the MLP add, for each followed token."""
    r = data.residual
    layers = np.arange(r.entering.shape[0])
    fig = go.Figure()
    colours = {"attention": ("#1f77b4", "#9ecae1"), "mlp": ("#e6550d", "#fdae6b")}
    for k, token in enumerate(r.tokens):
        patch = token >= lesson.ctx.layout.num_prefix
        name = token_name(lesson, token)
        for part, ratio, key in (
            ("attention", r.attention_ratio, "lesson.block_adds_attention"),
            ("mlp", r.mlp_ratio, "lesson.block_adds_mlp"),
        ):
            fig.add_trace(
                go.Bar(
                    x=layers,
                    y=np.round(ratio[:, k], 4),
                    name=t(key, token=name),
                    marker_color=colours[part][0 if patch else 1],
                )
            )
    fig.update_layout(barmode="group", bargap=0.2)
    fig.update_xaxes(title_text=t("lesson.block_axis_layer"), dtick=1)
    fig.update_yaxes(title_text=t("lesson.block_axis_ratio"), type="log", dtick=1)
    return style(fig, 240)


def step_block(lesson: Lesson) -> None:
    """The block: x + attention(norm x), then + MLP(norm x); the residual stream here."""
    info = lesson.ctx.info
    data = block_data(lesson)
    if data is not None:
        left, right = st.columns(2, gap="medium")
        config = {"displayModeBar": False}
        left.plotly_chart(stream_figure(lesson, data), key="lesson-stream", config=config)
        right.plotly_chart(update_figure(lesson, data), key="lesson-updates", config=config)
        r = data.residual
        k = len(r.tokens) - 1  # the chosen patch
        path = [r.entering[0, k], *r.after_mlp[:, k]]
        st.caption(
            t(
                "lesson.block_numbers",
                token=token_name(lesson, r.tokens[k]),
                path=" → ".join(f"{v:.2f}" for v in path),
            )
        )
    a = data.anatomy if data is not None else None
    d = a.width if a is not None else _width(lesson)
    heads = a.heads if a is not None else info.heads
    dk = a.head_dim if a is not None else (d // heads if isinstance(d, int) else "D/H")
    left, right = st.columns([1.3, 1], gap="large")
    with left:
        st.markdown(t("lesson.block_text", layers=info.layers, heads=heads, d=d, dk=dk))
    with right:
        st.markdown(t("lesson.block_prenorm"))
        _honest(lesson)


def _width(lesson: Lesson) -> int | str:
    if lesson.vectors is not None:
        return int(lesson.vectors.tokens.shape[1])
    return lesson.anatomy.width if lesson.anatomy is not None else "D"


def step_norm(lesson: Lesson) -> None:
    """Layer normalisation of the chosen patch before attention in one block."""
    left, right = st.columns([1.35, 1], gap="large")
    with right:
        layer = layer_slider(lesson)
    data = block_data(lesson, layer)
    if data is None:
        return
    n = data.norm
    name = token_name(lesson, n.token)
    with left:
        st.image(strip(n.before))
        st.caption(
            t(
                "lesson.norm_before",
                token=name,
                d=n.before.size,
                layer=layer,
                low=f"{n.before.min():.2f}",
                high=f"{n.before.max():.2f}",
            )
        )
        st.markdown("#### ↓\u2003(x − μ) / σ")
        st.image(strip(n.normalized))
        st.markdown("#### ↓\u2003γ · x̂ + β")
        st.image(strip(n.after))
        st.caption(t("lesson.norm_after", low=f"{n.after.min():.2f}", high=f"{n.after.max():.2f}"))
    with right:
        gamma = n.gamma if n.gamma is not None else np.ones(1)
        beta = n.beta if n.beta is not None else np.zeros(1)
        if n.mean is None:  # RMSNorm: no mean subtracted
            st.markdown(t("lesson.norm_rms", std=f"{n.std:.3f}"))
        else:
            st.markdown(
                t(
                    "lesson.norm_text",
                    mean=f"{n.mean:.3f}",
                    std=f"{n.std:.3f}",
                    d=n.before.size,
                    g_low=f"{gamma.min():.2f}",
                    g_high=f"{gamma.max():.2f}",
                    b_low=f"{beta.min():.2f}",
                    b_high=f"{beta.max():.2f}",
                )
            )
        st.caption(t("lesson.norm_where", layer=layer))


def _activation(name: str) -> str:
    return t("lesson.gelu") if name == "GELU" else name


def step_mlp(lesson: Lesson) -> None:
    """The MLP on the chosen patch: D → hidden → D, and the same on the token alone."""
    left, right = st.columns([1.35, 1], gap="large")
    with right:
        layer = layer_slider(lesson)
    data = block_data(lesson, layer)
    if data is None:
        return
    m, a = data.mlp, data.anatomy
    name = token_name(lesson, m.token)
    act = _activation(m.activation)
    with left:
        st.image(strip(m.input))
        st.caption(t("lesson.mlp_input", token=name, d=m.width))
        if m.pre_activation.size:
            st.markdown(f"#### ↓\u2003{m.width} → {m.hidden}")
            st.image(strip(m.post_activation))
            st.caption(t("lesson.mlp_hidden", hidden=m.hidden, act=act))
        st.markdown(f"#### ↓\u2003{m.hidden} → {m.width}")
        st.image(strip(m.output))
        st.caption(t("lesson.mlp_output", d=m.width))
    with right:
        small = int((np.abs(m.post_activation) < 0.05).sum()) if m.post_activation.size else 0
        st.markdown(
            t(
                "lesson.mlp_text",
                d=m.width,
                hidden=m.hidden,
                ratio=f"{m.ratio:g}",
                act=act,
                weights=f"{2 * m.width * m.hidden + m.hidden + m.width:,}",
                small=small,
                t=a.tokens,
                heads=a.heads,
            )
        )
        st.caption(t("lesson.mlp_alone", token=name, error=f"{m.independence_error:.1e}"))
