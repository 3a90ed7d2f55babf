"""Features: what the last layer's token features show, with no classifier needed.

(a) The PCA picture (DINOv2's): the first three principal components of the patch features as
red, green and blue beside the model's input, the background optionally removed.
(b) Patch similarity: click a patch; the canvas shows the cosine similarity of its feature to
every token's. Both work for any ViT and tell most for self-supervised backbones (DINO, DINOv2).
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from vitviz import methods
from vitviz.errors import VitvizError
from vitviz.output.render import block_picture
from vitviz.ui import canvas, resources, session
from vitviz.ui.context import ViewContext
from vitviz.ui.i18n import error_text, fill, t
from vitviz.ui.session import KEEP
from vitviz.ui.text import plain

ID = "Features"
ORDER = 60  # its place among the view buttons


def _percent(share: float) -> str:
    return f"{100 * share:.1f} %"


def _pca(ctx: ViewContext, patches: np.ndarray, drop: bool, threshold: float):
    """The PCA picture, its first component oriented by the readout's last-layer attention
    (cached with the explanation)."""
    layout = ctx.layout

    def compute() -> methods.FeaturePCA:
        orient = methods.raw_attention(ctx.attn, layout, layer=-1)[layout.num_prefix :]
        return methods.pca_rgb(
            patches, layout.grid, drop_background=drop, threshold=threshold, orient=orient
        )

    return ctx.entry.get(("features-pca", drop, round(threshold, 4)), compute)


def render_pca(ctx: ViewContext, patches: np.ndarray) -> None:
    """(a) The model's input and the PCA picture side by side, with the background switch."""
    expl, layout = ctx.expl, ctx.layout
    st.markdown(f"**{t('features.pca_header')}**")
    c1, c2 = st.columns(2)
    drop = c1.toggle(
        t("features.drop"), key="features_drop", help=t("features.drop_help"), persist_state=KEEP
    )
    threshold = c2.slider(
        t("features.threshold"),
        -1.0,
        1.0,
        0.0,
        0.05,
        key="features_threshold",
        help=t("features.threshold_help"),
        disabled=not drop,
        persist_state=KEEP,
    )
    pca = _pca(ctx, patches, bool(drop), float(threshold) if drop else 0.0)
    left, right = st.columns(2)
    left.image(expl.image, caption=t("features.input"), width="stretch")
    pixels = block_picture(pca.rgb, expl.image.shape[:2])  # PNG: JPEG would blur the patch edges
    right.image(pixels, caption=t("features.pca"), width="stretch", output_format="PNG")
    r, g, b = (_percent(float(v)) for v in pca.variance)
    if drop:
        st.caption(t("features.variance_fg", r=r, g=g, b=b))
        st.caption(t("features.foreground", n=int(pca.foreground.sum()), total=layout.num_patches))
    else:
        st.caption(t("features.variance", r=r, g=g, b=b))
    st.caption(t("features.pca_text", d=patches.shape[1]))


def render_similarity(ctx: ViewContext, tokens: np.ndarray) -> None:
    """(b) The cosine similarity of the chosen patch's feature to every token's (a click on
    the grid chooses the patch; it is kept in the session and the URL)."""
    expl, layout = ctx.expl, ctx.layout
    patch = session.patch(layout.num_patches, layout.grid)
    row, column = divmod(patch, layout.grid[1])
    st.markdown(f"**{t('features.similarity_header')}**")
    st.caption(t("features.click", patch=patch, row=row, column=column))
    sims = ctx.entry.get(
        ("features-similarity", patch),
        lambda: methods.patch_similarity(tokens, layout.num_prefix + patch),
    )
    data = canvas.payload(
        expl.image,
        layout,
        sims,
        clickable=True,
        selected=patch,
        title=fill("features.title", patch=patch),
        value_name=t("features.value"),
        filename=f"{ctx.stem}-similarity{patch}",
        max_size=340,
    )
    canvas.attention_canvas(
        "features-canvas", data, on_patch=lambda: session.remember_patch("features-canvas")
    )


def render(ctx: ViewContext) -> None:
    """Draw the view."""
    st.caption(t("features.intro"))
    try:
        features = resources.token_features(ctx.entry, ctx.backend, ctx.decoded.image)
    except VitvizError as err:
        st.info(t("features.unavailable", detail=error_text(err)))
        return
    d = features.tokens.shape[1]
    if features.norm is None:
        st.caption(t("features.no_norm", d=d))
    else:
        st.caption(t("features.norm", d=d, norm=plain(features.norm)))
    try:
        render_pca(ctx, features.patches)
        render_similarity(ctx, features.tokens)
    except VitvizError as err:  # e.g. features a server sent that do not fit this image
        st.error(error_text(err))
