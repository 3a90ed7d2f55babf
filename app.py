"""vitviz — the interactive Vision Transformer attention explorer: ``streamlit run app.py``.

The page reads top to bottom like it looks: the sidebar (language, model and image), the
header with the lesson switch, then either the lesson (``?lesson=1``) or the image column and
the active view. The parts live in ``vitviz.ui``: the sidebar, cached resources, session and
URL state, the attention canvas, one module per view under ``vitviz.ui.views``, and the lesson
under ``vitviz.ui.lesson``. Words come from the message catalogs (``vitviz.ui.i18n``). The model
runs once per (model, image); layer, head, fusion, opacity and colormap change in the browser.
"""

import streamlit as st

from vitviz.engine.runtime import tune_allocator
from vitviz.ui import lesson, live, page, resources, sidebar, views

tune_allocator()
sidebar.language()
page.configure(lesson=lesson.requested())

default_model, why_default = resources.default_model()
policy = sidebar.policy()
selection = sidebar.render(default_model, policy)
backend, info, model_id = page.backend(selection, policy)
sidebar.model_facts(info)

page.header(info, why_default)
if selection.source == "Live":  # the webcam stream with its overlay, instead of one image
    live.render_live(backend, info, model_id)
    st.stop()
data, image_name = page.image(selection, info)
ctx = page.context(backend, info, model_id, data, image_name)

try:
    if lesson.requested():
        lesson.render(ctx)
    else:
        left, right = st.columns([1, 2.4], gap="medium")
        with left:
            page.image_column(ctx)
        with right:
            views.render(ctx)
finally:  # the explanation stays in the page's cache, not in this session
    ctx.release()
