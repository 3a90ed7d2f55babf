"""The lesson's steps on scale: this model's parameters by part against ViT-B/L/H, a sentence
beside this image's patches, and one pass over every patch against a next-token loop.

Numbers come from :mod:`vitviz.engine.sizes` (:meth:`~vitviz.backends.local.LocalBackend.
parameter_parts` for the model's own count, cached with the explanation) and the layout.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from vitviz.engine.sizes import forward_passes, standard_sizes, text_vs_image
from vitviz.errors import VitvizError
from vitviz.memory.cost import token_cost
from vitviz.results import ParameterCount
from vitviz.ui import encoded, figures
from vitviz.ui.i18n import error_text, t
from vitviz.ui.lesson.block import style

if TYPE_CHECKING:
    from vitviz.ui.lesson.steps import Lesson

PARTS: dict[str, str] = {
    "patch_embed": "lesson.part_patch_embed",
    "pos_embed": "lesson.part_pos_embed",
    "cls_token": "lesson.part_cls_token",
    "reg_token": "lesson.part_reg_token",
    "dist_token": "lesson.part_dist_token",
    "norm_pre": "lesson.part_norm_pre",
    "attention": "lesson.part_attention",
    "mlp": "lesson.part_mlp",
    "norms": "lesson.part_norms",
    "layer_scale": "lesson.part_layer_scale",
    "block_other": "lesson.part_block_other",
    "final_norm": "lesson.part_final_norm",
    "fc_norm": "lesson.part_fc_norm",
    "attn_pool": "lesson.part_attn_pool",
    "head": "lesson.part_head",
    "head_dist": "lesson.part_head_dist",
    "other": "lesson.part_other",
}
"""Each part of :func:`vitviz.engine.sizes.parameter_parts` and its words."""


def _width(lesson: Lesson) -> int | None:
    if lesson.vectors is not None:
        return int(lesson.vectors.tokens.shape[1])
    return lesson.anatomy.width if lesson.anatomy is not None else None


def parameter_rows(count: ParameterCount, layers: int) -> list[tuple[str, int, int | None]]:
    """``(part, count, per block or None)`` in the model's order, summed over the blocks."""
    per_block: dict[str, int] = {}
    for p in count.parts:
        if p.layer is not None:
            per_block.setdefault(p.part, p.count)
    rows = []
    for part, n in count.by_part().items():
        each = per_block.get(part)
        uniform = each is not None and each * layers == n
        rows.append((part, n, each if uniform else None))
    return rows


def parameters(lesson: Lesson) -> ParameterCount | None:
    """This model's parameters by part (cached), or None with the reason shown."""
    ctx = lesson.ctx
    try:
        if not ctx.backend.offers("parameter_parts"):
            why = "lesson.no_vectors_server" if ctx.info.remote else "lesson.no_vectors_offered"
            detail = t(why)
        else:
            return ctx.entry.get("lesson-parameters", ctx.backend.parameter_parts)
    except VitvizError as err:
        detail = error_text(err)
    st.info(t("lesson.no_vectors", detail=detail))
    return None


def step_sizes(lesson: Lesson) -> None:
    """This model's parameters by part, the standard ViT sizes, N² for this image."""
    info, layout = lesson.ctx.info, lesson.ctx.layout
    count = parameters(lesson)
    left, right = st.columns([1.1, 1], gap="large")
    with left:
        if count is not None:
            lines = [t("lesson.sizes_header"), "|---|---:|---:|"]
            for part, n, each in parameter_rows(count, info.layers):
                name = t(PARTS[part]) if part in PARTS else part
                if each is not None:
                    name = t("lesson.sizes_per_block", part=name, layers=info.layers, each=each)
                lines.append(f"| {name} | {n:,} | {n / count.total:.1%} |")
            lines.append(f"| **{t('lesson.sizes_total')}** | **{count.total:,}** | 100% |")
            st.markdown("\n".join(lines))
    with right:
        d = _width(lesson)
        lines = [t("lesson.sizes_standard_header"), "|---|---:|---:|---:|---:|---:|"]
        for s in standard_sizes():
            lines.append(
                f"| {s.name} | {s.width} | {s.depth} | {s.heads} | {s.tokens} | {s.params:,} |"
            )
        total = f"{count.total:,}" if count is not None else "—"
        lines.append(
            f"| **{t('lesson.sizes_this_model')}** | {d if d is not None else '—'} | "
            f"{info.layers} | {info.heads} | {layout.num_tokens} | **{total}** |"
        )
        st.markdown("\n".join(lines))
        cost = token_cost(
            layout.image_size, layout.patch_size, layout.num_prefix, info.layers, info.heads
        )
        block = f"{12 * d * d + 13 * d:,}" if d is not None else "12·D² + 13·D"
        st.markdown(
            t(
                "lesson.sizes_text",
                n=layout.num_tokens,
                entries=f"{cost.entries:,}",
                d=d if d is not None else "D",
                block=block,
                cost_step=lesson.number("cost"),
                cost_title=t("lesson.cost_title"),
            )
        )


PIECE = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]|[^\W\d_]+|\d+|[^\w\s]", re.UNICODE)


def word_pieces(sentence: str, longest: int = 6) -> list[str]:
    """A naive split for display: each Chinese character, each run of letters or digits, each
    punctuation mark; a word longer than ``longest`` letters is cut into pieces (the later ones
    marked ``##``, as BERT's word pieces are). Illustrative, not any model's tokenizer."""
    out: list[str] = []
    for piece in PIECE.findall(sentence):
        if len(piece) <= longest or not piece.isalpha():
            out.append(piece)
            continue
        out.append(piece[:longest])
        out += [f"##{piece[i : i + longest]}" for i in range(longest, len(piece), longest)]
    return out


def step_text(lesson: Lesson) -> None:
    """A sentence's tokens beside this image's patches: 1-D positions, the 2-D grid flattened."""
    ctx, layout = lesson.ctx, lesson.ctx.layout
    d = _width(lesson)
    tv = text_vs_image(layout, d if d is not None else 0)
    pieces = ["[CLS]", *word_pieces(t("lesson.text_sentence"))]
    gh, gw = tv.grid
    r, c = divmod(lesson.patch, gw)
    left, right = st.columns([1, 1], gap="large")
    with left:
        st.markdown(f"“{t('lesson.text_sentence')}”")
        st.markdown(" · ".join(f"{i}\u2009`{p}`" for i, p in enumerate(pieces)))
        st.caption(t("lesson.text_pieces_caption", count=len(pieces)))
        st.markdown(
            t(
                "lesson.text_text",
                words=len(pieces),
                max=tv.text_tokens,
                text_d=tv.text_width,
            )
        )
    with right:
        picture = encoded.cached(
            ctx,
            "token-sequence-text",
            lambda: figures.token_sequence(ctx.expl.image, layout, per_row=28, tile=18, gap=2),
        )
        encoded.show(st, picture)
        st.markdown(
            t(
                "lesson.text_image",
                t=tv.tokens,
                extra=tv.extra,
                patches=tv.patches,
                gh=gh,
                gw=gw,
                d=d if d is not None else "D",
                patch=lesson.patch,
                row=r,
                column=c,
                position=int(tv.grid_positions()[r, c]),
            )
        )


def passes_figure(tokens: int) -> go.Figure:
    """Attention scores computed so far, pass after pass: the ViT's one pass against a
    next-token loop over the same N tokens (with and without a KV cache)."""
    n = int(tokens)
    i = np.arange(1, n + 1, dtype=np.float64)
    passes = forward_passes(n)
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=i,
            y=np.cumsum(i * i),
            name=t("lesson.passes_uncached"),
            mode="lines",
            line={"color": "#bdbdbd", "width": 3},
        )
    )
    fig.add_trace(
        go.Scatter(
            x=i,
            y=np.cumsum(i),
            name=t("lesson.passes_loop"),
            mode="lines",
            line={"color": "#e6550d", "width": 4},
        )
    )
    fig.add_trace(
        go.Scatter(
            x=[1],
            y=[passes.vit_entries],
            name=t("lesson.passes_vit"),
            mode="markers",
            marker={"color": "#1f77b4", "size": 18},
        )
    )
    fig.update_xaxes(title_text=t("lesson.passes_axis_passes"), range=[-0.04 * n, n * 1.04])
    fig.update_yaxes(title_text=t("lesson.passes_axis_scores"), type="log", dtick=1, tickformat=",")
    return style(fig, 360)


def step_passes(lesson: Lesson) -> None:
    """All at once: one pass over every patch, not a loop that predicts the next one."""
    info, layout = lesson.ctx.info, lesson.ctx.layout
    n = layout.num_tokens
    passes = forward_passes(n)
    pixels = token_cost((224, 224), (1, 1), layout.num_prefix, info.layers, info.heads)
    by_pixel = forward_passes(pixels.patches)
    left, right = st.columns([1.1, 1], gap="large")
    with left:
        st.plotly_chart(passes_figure(n), key="lesson-passes", config={"displayModeBar": False})
        st.caption(t("lesson.passes_caption", t=n))
    with right:
        st.markdown(
            t(
                "lesson.passes_text",
                t=n,
                vit=passes.vit_passes,
                loop=passes.autoregressive_passes,
                entries=f"{passes.vit_entries:,}",
                cached=f"{passes.cached_entries:,}",
                pixel_tokens=f"{pixels.tokens:,}",
                pixel_entries=f"{pixels.entries:,}",
                pixel_passes=f"{by_pixel.autoregressive_passes:,}",
            )
        )
