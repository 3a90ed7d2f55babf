"""How ViT sees this image: resize, patches, the token sequence, embeddings, encoder → head."""

from __future__ import annotations

import streamlit as st

from vitviz.errors import VitvizError
from vitviz.ui import diagram, figures, i18n, resources
from vitviz.ui.context import ViewContext
from vitviz.ui.i18n import class_label, error_text, t

ID = "How ViT sees this image"
ORDER = 10  # its place among the view buttons


def render(ctx: ViewContext) -> None:
    """Draw the view."""
    expl, layout, info = ctx.expl, ctx.layout, ctx.info
    try:
        with st.spinner(t("busy.anatomy"), show_time=True):
            facts = resources.model_anatomy(ctx.model_id, ctx.backend)
    except VitvizError as err:
        st.error(t("pipeline.no_anatomy", detail=error_text(err)))
        return
    factor = figures.display_scale(layout.image_size)
    cfg = info.input_config
    h, w = layout.image_size
    random = info.weights.source == "random"
    interpolation = i18n.interpolation(cfg.get("interpolation", "bicubic"))
    st.markdown(
        t("pipeline.step1", w=w, h=h, interpolation=interpolation, crop=cfg.get("crop_pct", 1.0))
    )
    gh, gw = layout.grid
    ph, pw = layout.patch_size
    st.markdown(t("pipeline.step2", gh=gh, gw=gw, ph=ph, pw=pw))
    st.image(figures.numbered_grid(expl.image, layout, factor), width=420)
    extra = ", ".join(figures.token_labels(layout)) or t("pipeline.no_extra")
    st.markdown(
        t("pipeline.step3", tokens=layout.num_tokens, extra=extra, patches=layout.num_patches)
    )
    st.image(figures.token_sequence(expl.image, layout), width="stretch")
    if facts.filters is not None:
        st.markdown(
            t("pipeline.step4", width=facts.width)
            + (" " + t("pipeline.random_noise") if random else "")
        )
        st.image(figures.filters_mosaic(facts.filters), width="stretch")
    else:
        st.markdown(t("pipeline.step4_cnn"))
    if facts.position_similarity is not None:
        st.markdown(
            t("pipeline.step5")
            + " "
            + t("pipeline.step5_random" if random else "pipeline.step5_trained")
        )
        st.image(
            figures.position_mosaic(facts.position_similarity, facts.position_grid),
            width=420,
        )
    else:
        st.markdown(t("pipeline.step5_none"))
    st.markdown(t("pipeline.step6"))
    top = None
    if expl.predictions:
        best = expl.predictions[0]
        top = f"{class_label(best.label, best.index, short=False)} ({best.probability:.0%})"
    st.graphviz_chart(diagram.pipeline_dot(info, layout, facts.width, top))
