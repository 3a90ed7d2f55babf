"""The lesson's steps, each one idea on this image and model with its real numbers.

Every number and picture comes from the cached explanation (attention, predictions, input), the
model's anatomy, or :meth:`~vitviz.backends.local.LocalBackend.embeddings` (this image's patch,
position and token vectors); nothing is illustrative. A step that needs the model's vectors says
so when the backend cannot give them, and the words change when the weights are random or the
demo model's (what a trained ImageNet model would show instead).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import streamlit as st

from vitviz import methods
from vitviz.errors import VitvizError
from vitviz.inputs.classes import probabilities
from vitviz.memory.cost import token_cost
from vitviz.results import Anatomy, TokenEmbeddings, flatten_patch
from vitviz.ui import encoded, figures, i18n, resources, session
from vitviz.ui.context import ViewContext
from vitviz.ui.i18n import class_label, error_text, t
from vitviz.ui.lesson.block import step_block, step_mlp, step_norm
from vitviz.ui.lesson.controls import picker as patch_picker
from vitviz.ui.lesson.pictures import (
    enlarged,
    map_over,
    patch_pixels,
    signed_colours,
    similarity_map,
    vector_strip,
)
from vitviz.ui.lesson.scale import step_passes, step_sizes, step_text
from vitviz.ui.session import KEEP
from vitviz.ui.text import plain


@dataclass
class Lesson:
    """What the steps share: the page context, the chosen patch and the model's vectors."""

    ctx: ViewContext
    patch: int
    anatomy: Anatomy | None
    vectors: TokenEmbeddings | None
    vectors_error: str | None

    @property
    def kind(self) -> str:
        """``random``, ``demo`` or ``trained``: how much the model's answers mean."""
        if self.ctx.info.weights.source == "random":
            return "random"
        return "demo" if self.ctx.info.name == "demo" else "trained"

    @staticmethod
    def number(name: str) -> int:
        """The 1-based number of the step ``name`` (steps refer to each other by number)."""
        return [n for n, _ in STEPS].index(name) + 1

    def honest(self, key: str) -> None:
        """A caption on what a trained ImageNet ViT would show, when this model is not one."""
        if self.kind != "trained":
            st.caption(t(f"lesson.{key}_{self.kind}"))


def load(ctx: ViewContext) -> Lesson:
    """The chosen patch, the anatomy and this image's vectors (cached with the explanation)."""
    patch = session.patch(ctx.layout.num_patches, ctx.layout.grid)
    try:
        anatomy = resources.model_anatomy(ctx.model_id, ctx.backend)
    except VitvizError:
        anatomy = None
    vectors, problem = None, None
    if not ctx.backend.offers("embeddings"):
        problem = t("lesson.no_vectors_server" if ctx.info.remote else "lesson.no_vectors_offered")
    else:
        try:
            vectors = ctx.entry.get("embeddings", lambda: ctx.backend.embeddings(ctx.decoded.image))
        except VitvizError as err:
            problem = error_text(err)
    return Lesson(ctx, patch, anatomy, vectors, problem)


def _where(lesson: Lesson) -> tuple[int, int]:
    return divmod(lesson.patch, lesson.ctx.layout.grid[1])


def _no_vectors(lesson: Lesson) -> bool:
    if lesson.vectors is None:
        st.info(t("lesson.no_vectors", detail=lesson.vectors_error or ""))
        return True
    return False


def _strip(vector: np.ndarray, scale: float | None = None) -> np.ndarray:
    """A D-vector as a band 576 px wide (48 or 96 values a row)."""
    cols, cell = (48, (10, 12)) if vector.size <= 384 else (96, (6, 6))
    return vector_strip(vector, cols=cols, cell=cell, scale=scale)


def _picker(lesson: Lesson, key: str, display: int) -> None:
    patch_picker(
        key,
        lesson.ctx.expl.image,
        lesson.ctx.layout,
        lesson.patch,
        on_patch=lambda: session.remember_patch(key),
        display=display,
    )
    r, c = _where(lesson)
    st.caption(t("lesson.chosen", patch=lesson.patch, row=r, column=c))


def crop_numbers(size: int, crop: float) -> tuple[int, int, int]:
    """What a crop ratio means for a ``size``-pixel input: the size the image is first resized
    to (``floor(size / crop)``, as timm does), the percentage of it the crop keeps, and the
    pixels cut off on each side."""
    crop = crop if crop > 0 else 1.0
    resized = max(size, int(size / crop))
    return resized, round(100 * size / resized), (resized - size) // 2


def step_input(lesson: Lesson) -> None:
    """1. The image as the model sees it."""
    ctx = lesson.ctx
    h, w = ctx.layout.image_size
    ow, oh = ctx.decoded.original_size
    cfg = ctx.info.input_config
    mean = ", ".join(f"{v:.3f}" for v in cfg.get("mean", (0.5, 0.5, 0.5)))
    std = ", ".join(f"{v:.3f}" for v in cfg.get("std", (0.5, 0.5, 0.5)))
    crop = float(cfg.get("crop_pct", 1.0))
    resized, pct, edge = crop_numbers(min(h, w), crop)
    left, right = st.columns([1, 1.5], gap="large")
    with left:
        picture = encoded.cached(ctx, "input", lambda: ctx.expl.image)
        encoded.show(st, picture, width=360, caption=t("lesson.input_caption", w=w, h=h))
    with right:
        st.markdown(
            t(
                "lesson.input_text",
                ow=ow,
                oh=oh,
                w=w,
                h=h,
                interpolation=i18n.interpolation(cfg.get("interpolation", "bicubic")),
                crop=f"{crop:.3g}",
                resized=resized,
                pct=pct,
                edge=edge,
                mean=mean,
                std=std,
            )
        )
        if lesson.vectors is not None:
            px = lesson.vectors.pixels
            st.markdown(t("lesson.input_range", low=f"{px.min():.2f}", high=f"{px.max():.2f}"))
            scale = float(np.abs(px).max())
            cols = st.columns(3)
            for i, col in enumerate(cols):
                encoded.show(
                    col,
                    encoded.cached(ctx, ("channel", i), lambda i=i: signed_colours(px[i], scale)),
                    width=150,
                    caption=t(f"lesson.channel_{i}"),
                )


def step_patches(lesson: Lesson) -> None:
    """2. Cutting into patches; one patch enlarged and flattened."""
    ctx = lesson.ctx
    layout = ctx.layout
    h, w = layout.image_size
    ph, pw = layout.patch_size
    gh, gw = layout.grid
    left, right = st.columns([1.05, 1], gap="medium")
    with left:
        _picker(lesson, "lesson-picker-2", 500)
    with right:
        st.markdown(
            t("lesson.patches_text", h=h, w=w, p=ph, n=layout.num_patches, gh=gh, gw=gw, pw=pw)
        )
        a, b = st.columns([1, 2.2])
        pixels = patch_pixels(ctx.expl.image, layout, lesson.patch)
        a.image(enlarged(pixels, 150), caption=t("lesson.patch_n", patch=lesson.patch))
        if lesson.vectors is not None:
            values = flatten_patch(lesson.vectors.pixels, lesson.patch, layout.grid, (ph, pw))
            b.image(vector_strip(values, cols=ph * pw // 2, cell=(7, 4)))
            b.caption(t("lesson.flat_caption", ph=ph, pw=pw, count=values.size))


def step_embedding(lesson: Lesson) -> None:
    """3. Patch embedding: this patch's P²·C values → its D numbers."""
    if _no_vectors(lesson):
        return
    ctx, v = lesson.ctx, lesson.vectors
    assert v is not None
    ph, pw = ctx.layout.patch_size
    values = flatten_patch(v.pixels, lesson.patch, ctx.layout.grid, (ph, pw))
    e = v.patches[lesson.patch]
    d = e.size
    left, right = st.columns([1.25, 1], gap="large")
    with left:
        st.image(vector_strip(values, cols=ph * pw // 2, cell=(6, 4)))
        st.caption(t("lesson.flat_caption", ph=ph, pw=pw, count=values.size))
        st.markdown("### ↓\u2003W · x + b")
        st.image(_strip(e))
        st.caption(t("lesson.embedding_caption", d=d, low=f"{e.min():.2f}", high=f"{e.max():.2f}"))
        lesson.honest("filters")
    with right:
        st.markdown(t("lesson.embedding_text", inputs=values.size, d=d, weights=values.size * d))
        if lesson.anatomy is not None and lesson.anatomy.filters is not None:
            st.image(figures.filters_mosaic(lesson.anatomy.filters[:16], size=44, cols=8))
            st.caption(t("lesson.filters_caption"))


def step_position(lesson: Lesson) -> None:
    """4. Position embedding: similarity of this position to all others, and the sum."""
    if _no_vectors(lesson):
        return
    ctx, v = lesson.ctx, lesson.vectors
    assert v is not None
    left, right = st.columns([1, 1.6], gap="large")
    anatomy = lesson.anatomy
    with left:
        same_grid = anatomy is not None and anatomy.position_grid == ctx.layout.grid
        if same_grid and anatomy.position_similarity is not None:
            sim = anatomy.position_similarity[lesson.patch]
            st.image(similarity_map(sim, lesson.patch, ctx.layout.grid, 300))
            st.caption(t("lesson.position_caption", patch=lesson.patch))
        else:
            st.info(t("lesson.no_positions"))
        lesson.honest("positions")
    with right:
        st.markdown(t("lesson.position_text"))
        e = v.patches[lesson.patch]
        if v.positions is not None:
            p = v.positions[lesson.patch]
            scale = float(max(np.abs(e).max(), np.abs(p).max(), np.abs(e + p).max()))
            for key, vec in (("strip_patch", e), ("strip_position", p), ("strip_sum", e + p)):
                st.image(_strip(vec, scale))
                st.caption(t(f"lesson.{key}", patch=lesson.patch))
        if v.norm_pre:
            st.caption(t("lesson.norm_pre"))


def step_sequence(lesson: Lesson) -> None:
    """5. The sequence: prefix tokens, then the N patches: the (N + prefix) × D input."""
    ctx = lesson.ctx
    layout = ctx.layout
    sequence = encoded.cached(
        ctx,
        "token-sequence",
        lambda: figures.token_sequence(ctx.expl.image, layout, per_row=40, tile=22, gap=3),
    )
    encoded.show(st, sequence)
    names = ", ".join(t("lesson.token_name", name=n) for n in figures.token_labels(layout))
    names = names or t("pipeline.no_extra")
    left, right = st.columns([1.3, 1], gap="large")
    with left:
        if lesson.vectors is not None:
            tokens = lesson.vectors.tokens
            row = layout.num_prefix + lesson.patch
            tall = 2 if tokens.shape[0] <= 200 else 1  # pixels per token row
            cell = (tall, max(1, 576 // tokens.shape[1]))
            picture = vector_strip(tokens, cols=tokens.shape[1], cell=cell)
            picture[row * tall : (row + 1) * tall, :] = (0, 229, 255)  # the chosen patch's row
            st.image(picture, width=min(640, picture.shape[1]))
            st.caption(
                t(
                    "lesson.matrix_caption",
                    t=tokens.shape[0],
                    d=tokens.shape[1],
                    row=row,
                    patch=lesson.patch,
                    p=layout.num_prefix,
                )
            )
        else:
            _no_vectors(lesson)
    with right:
        d = _width(lesson)
        st.markdown(
            t(
                "lesson.sequence_text",
                cls_line=t("lesson.cls_line" if "cls" in layout.prefix else "lesson.no_cls_line"),
                prefix=names,
                p=layout.num_prefix,
                n=layout.num_patches,
                t=layout.num_tokens,
                d=d,
            )
        )


def _width(lesson: Lesson) -> int | str:
    """D, the embedding width (from the vectors, else the anatomy; "D" when neither says)."""
    if lesson.vectors is not None:
        return int(lesson.vectors.tokens.shape[1])
    return lesson.anatomy.width if lesson.anatomy is not None else "D"


def step_attention(lesson: Lesson) -> None:
    """6. Self-attention in one layer: what the chosen patch attends to, head by head."""
    ctx, info, layout = lesson.ctx, lesson.ctx.info, lesson.ctx.layout
    rows = lesson.ctx.query_rows(lesson.patch)
    top, side = st.columns([1.6, 1], gap="large")
    with side:
        layer = _layer_slider(info.layers)
        d = _width(lesson)
        st.markdown(
            t(
                "lesson.attention_text",
                t=layout.num_tokens,
                heads=info.heads,
                d=d,
                dk=d // info.heads if isinstance(d, int) else "D/H",
                patch=lesson.patch,
            )
        )
    with top:
        per_row = min(info.heads, 6)
        size = 150 if info.heads > 3 else 190
        grids = methods.to_grid(rows[layer, : info.heads], layout)
        for start in range(0, info.heads, per_row):
            cols = st.columns(per_row)
            for h, col in zip(range(start, min(start + per_row, info.heads)), cols, strict=False):
                col.image(
                    map_over(ctx.expl.image, grids[h], layout, lesson.patch, size),
                    caption=t("lesson.head_n", head=h),
                )
        st.caption(t("lesson.heads_caption", patch=lesson.patch, layer=layer))
        st.latex(r"\mathrm{softmax}\!\left(QK^{\top}/\sqrt{d_k}\right)V")
        lesson.honest("attention")


def _layer_slider(layers: int) -> int:
    """Step 6's layer (kept while the lesson is hidden; a value another model's deeper stack
    left behind is brought back into range first, so the slider and the captions agree)."""
    state = st.session_state
    if not isinstance(state.get("lesson_layer"), int) or not 0 <= state["lesson_layer"] < layers:
        state["lesson_layer"] = layers // 2
    return int(st.slider(t("lesson.layer"), 0, layers - 1, key="lesson_layer", persist_state=KEEP))


def depth_layers(layers: int, most: int = 6) -> list[int]:
    """The layers step 7 shows: every one when there are at most ``most``, else ``most``
    evenly spaced, the first and the last included (0-based)."""
    if layers <= most:
        return list(range(layers))
    return sorted({round(i * (layers - 1) / (most - 1)) for i in range(most)})


def step_depth(lesson: Lesson) -> None:
    """7. Many layers: the same patch at a few depths, then rollout through all of them."""
    ctx, info, layout = lesson.ctx, lesson.ctx.info, lesson.ctx.layout
    rows = lesson.ctx.query_rows(lesson.patch)
    depths = depth_layers(info.layers)
    fused = methods.to_grid(rows[:, info.heads], layout)  # mean over heads
    rolled = ctx.entry.get(
        ("lesson-rolled", lesson.patch),
        lambda: methods.compute_row(
            "query", ctx.expl.attention, layout, patch=lesson.patch, rolled=True
        ),
    )
    cols = st.columns(len(depths) + 1)
    for layer, col in zip(depths, cols, strict=False):
        col.image(
            map_over(ctx.expl.image, fused[layer], layout, lesson.patch, 160),
            caption=t("lesson.layer_n", layer=layer),
        )
    cols[-1].image(
        map_over(ctx.expl.image, methods.to_grid(rolled, layout), layout, lesson.patch, 160),
        caption=t("lesson.rollout_caption"),
    )
    st.markdown(t("lesson.depth_text", layers=info.layers, patch=lesson.patch))
    lesson.honest("depth")


def step_output(lesson: Lesson) -> None:
    """8. The readout → head → the top-5 classes, and "why this class?"."""
    ctx = lesson.ctx
    expl = ctx.expl
    if not expl.predictions:
        st.info(t("page.no_classifier"))
        return
    left, middle, right = st.columns([1.15, 1, 1], gap="large")
    probs = probabilities(expl.logits)
    with left:
        st.markdown(t("lesson.output_text", classes=len(probs)))
        for p in expl.predictions:
            name = plain(class_label(p.label, p.index))
            st.progress(min(1.0, p.probability), text=f"{name} — {p.probability:.1%}")
    best = expl.predictions[0]
    with middle:
        rel = ctx.relevance(best.index, alone=True)  # one class: one backward pass
        row = methods.compute_row("chefer", expl.attention, ctx.layout, grads=rel)
        st.image(map_over(expl.image, methods.to_grid(row, ctx.layout), ctx.layout, None, 300))
        st.caption(t("lesson.why_caption", label=plain(class_label(best.label, best.index))))
    with right:
        features = lesson.vectors.features if lesson.vectors is not None else None
        if features is not None:
            st.image(_strip(features))
            st.caption(t("lesson.features_caption", d=features.size))
        d = features.size if features is not None else "D"
        st.markdown(t("lesson.head_text", d=d, classes=len(probs)))
        lesson.honest("output")


def step_cost(lesson: Lesson) -> None:
    """9. What attention costs: tokens and entries against image and patch size."""
    info, layout = lesson.ctx.info, lesson.ctx.layout
    left, right = st.columns([1.35, 1], gap="large")
    p = layout.num_prefix
    pixels = token_cost((224, 224), (1, 1), p, info.layers, info.heads)
    with left:
        head = t("lesson.cost_header")
        lines = [head, "|" + "---|" * (head.count("|") - 1)]
        for size in (224, 384, 512):
            for patch in (32, 16, 8):
                c = token_cost((size, size), (patch, patch), p, info.layers, info.heads)
                lines.append(
                    f"| {size}×{size} | {patch}×{patch} | {c.patches:,} | {c.tokens:,} | "
                    f"{c.entries:,} |"
                )
        lines.append(
            f"| 224×224 | {t('lesson.pixels')} | {pixels.patches:,} | {pixels.tokens:,} | "
            f"{pixels.entries:,} |"
        )
        st.markdown("\n".join(lines))
    with right:
        ph, pw = layout.patch_size
        size = st.select_slider(
            t("lesson.cost_size"),
            [112, 160, 224, 320, 384, 448, 512, 640],
            value=224,
            key="lesson_size",
            persist_state=KEEP,
        )
        c = token_cost((size, size), (ph, pw), p, info.layers, info.heads)
        st.markdown(
            t(
                "lesson.cost_text",
                size=size,
                p=ph,
                n=f"{c.patches:,}",
                t=f"{c.tokens:,}",
                entries=f"{c.entries:,}",
                layers=info.layers,
                heads=info.heads,
                mb=f"{c.attention_bytes / 2**20:,.1f}",
                values=f"{224 * 224 * 3:,}",
                pixel_tokens=f"{pixels.tokens:,}",
                pixel_entries=f"{pixels.entries:,}",
            )
        )


STEPS: list[tuple[str, Callable[[Lesson], None]]] = [
    ("input", step_input),
    ("patches", step_patches),
    ("embedding", step_embedding),
    ("position", step_position),
    ("sequence", step_sequence),
    ("attention", step_attention),
    ("block", step_block),  # vitviz.ui.lesson.block: inside one encoder block
    ("norm", step_norm),
    ("mlp", step_mlp),
    ("depth", step_depth),
    ("output", step_output),
    ("cost", step_cost),
    ("sizes", step_sizes),  # vitviz.ui.lesson.scale: sizes, text vs image, one pass
    ("text", step_text),
    ("passes", step_passes),
]
