"""How ViT sees this image: resize, patches, the token sequence, embeddings, encoder → head."""

from __future__ import annotations

import streamlit as st

from vitviz.errors import VitvizError
from vitviz.ui import figures, pipeline, resources
from vitviz.ui.context import ViewContext
from vitviz.ui.text import plain

TITLE = "How ViT sees this image"


def render(ctx: ViewContext) -> None:
    """Draw the view."""
    expl, layout, info = ctx.expl, ctx.layout, ctx.info
    try:
        with st.spinner("Reading the model's embeddings…", show_time=True):
            facts = resources.model_anatomy(ctx.model_id, ctx.backend)
    except VitvizError as err:
        st.error(plain(f"Could not read the model's anatomy: {err}"))
        return
    factor = figures.display_scale(layout.image_size)
    cfg = info.input_config
    h, w = layout.image_size
    random = info.weights.source == "random"
    st.markdown(
        f"**1. Resize and crop.** The image becomes {w}×{h} px "
        f"({cfg.get('interpolation', 'bicubic')} resize, crop {cfg.get('crop_pct', 1.0)}), "
        "then each colour channel is normalised with the model's mean and std."
    )
    st.markdown(
        f"**2. Cut into patches.** A {layout.grid[0]}×{layout.grid[1]} grid of "
        f"{layout.patch_size[0]}×{layout.patch_size[1]} px patches, numbered in reading order."
    )
    st.image(figures.numbered_grid(expl.image, layout, factor), width=420)
    extra = ", ".join(figures.token_labels(layout)) or "no extra tokens"
    st.markdown(
        f"**3. Flatten into a sequence.** {layout.num_tokens} tokens: {extra} first, then "
        f"the {layout.num_patches} patches, left to right, top to bottom."
    )
    st.image(figures.token_sequence(expl.image, layout), width="stretch")
    if facts.filters is not None:
        st.markdown(
            f"**4. Patch embedding.** Every patch is multiplied by {facts.width} learned "
            "filters. These are their first principal components (what the filters mostly "
            "detect: colour blobs, edges, stripes)."
            + (" With random weights they are noise." if random else "")
        )
        st.image(figures.filters_mosaic(facts.filters), width="stretch")
    else:
        st.markdown("**4. Patch embedding.** This model embeds patches through a CNN.")
    if facts.position_similarity is not None:
        st.markdown(
            "**5. Position embeddings.** Each small square is one patch position; its "
            "colours show how similar its position embedding is to every other position's "
            "(yellow = similar). "
            + (
                "These weights are random, so there is no pattern to see: a trained ViT "
                "learns the 2-D grid by itself."
                if random
                else "A trained ViT learns the 2-D grid by itself."
            )
        )
        st.image(
            figures.position_mosaic(facts.position_similarity, facts.position_grid),
            width=420,
        )
    else:
        st.markdown("**5. Position embeddings.** This model has no learned absolute ones.")
    st.markdown("**6. Encoder → readout → head.**")
    top = None
    if expl.predictions:
        top = f"{expl.predictions[0].label} ({expl.predictions[0].probability:.0%})"
    st.graphviz_chart(pipeline.pipeline_dot(info, layout, facts.width, top))
