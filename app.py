"""vitviz — Streamlit page (first version: predictions and an attention-rollout overlay).

The full explorer (heads grid, patch explorer, head statistics, downloads) is its own issue;
this page already uses the real engine through ``vitviz.backend`` and ``vitviz.render``.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from vitviz import methods, render
from vitviz.backend import LocalBackend
from vitviz.errors import VitvizError
from vitviz.images import decode_image
from vitviz.models import CURATED
from vitviz.runtime import tune_allocator

ASSETS = Path(__file__).parent / "assets"
SAMPLES = sorted(p for p in ASSETS.iterdir() if p.suffix in (".png", ".jpg"))

tune_allocator()
st.set_page_config(page_title="vitviz — ViT attention explorer", page_icon="🔍", layout="wide")
st.title("vitviz — what does the Vision Transformer look at?")


@st.cache_resource(show_spinner="Loading the model…")
def get_backend(key: str) -> LocalBackend:
    """One loaded model per process."""
    return LocalBackend.from_name(key)


with st.sidebar:
    key = st.selectbox("Model", list(CURATED), format_func=lambda k: CURATED[k].title)
    st.caption(CURATED[key].description)
    upload = st.file_uploader("Your image", type=["jpg", "jpeg", "png", "webp", "bmp", "gif"])
    sample = st.selectbox("…or a sample", [p.name for p in SAMPLES])
    discard = st.slider("Rollout discard ratio", 0.0, 0.95, 0.0, 0.05)
    alpha = st.slider("Overlay opacity", 0.0, 1.0, 0.6, 0.05)

try:
    note = get_backend(key).info()["weights"]["note"]
    if note:
        st.sidebar.info(note.capitalize())
    data, name = (
        (upload.getvalue(), upload.name) if upload else ((ASSETS / sample).read_bytes(), sample)
    )
    decoded = decode_image(data, name)
    backend = get_backend(key)
    result = backend.explain([decoded.image])[0]
except VitvizError as err:
    st.error(str(err))
    st.stop()

left, right = st.columns(2)
with left:
    st.subheader("What the model saw")
    st.image(result.image, width="stretch")
    if result.predictions:
        for p in result.predictions:
            st.progress(p.probability, text=f"{p.label} — {p.probability:.1%}")
    else:
        st.info("This self-supervised backbone has no classifier, so it makes no predictions.")
with right:
    st.subheader("Attention rollout")
    value_map = methods.rollout(result.attention, result.layout, discard=discard)
    st.image(render.overlay(result.image, value_map, alpha=alpha), width="stretch")
