"""Lesson mode on the page (AppTest, demo model): every step's numbers against the engine."""

from __future__ import annotations

import re

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import ASSETS, words
from vitviz.backends.local import LocalBackend
from vitviz.inputs.classes import short_label
from vitviz.inputs.images import decode_image
from vitviz.memory.cost import token_cost
from vitviz.ui.lesson.steps import STEPS

APP = str(ASSETS.parent / "app.py")


@pytest.fixture(scope="module")
def engine():
    backend = LocalBackend.from_name("demo", device="cpu")
    image = decode_image((ASSETS / "demo-scene-1.png").read_bytes(), "scene").image
    seen = backend.loaded.seen_image(image)
    return backend, backend.explain([seen], seen=True)[0], backend.embeddings(seen)


@pytest.fixture(scope="module")
def lesson():
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["lesson"] = "1"
    at.run()
    assert not at.exception
    return at


def go(at: AppTest, step: int, **state) -> str:
    """Open a step (1-based) and return its words (markdown, captions, progress texts)."""
    for key, value in state.items():
        at.session_state[key] = value
    at.session_state["lesson_step"] = step - 1
    at.run()
    assert not at.exception and not at.error
    texts = [m.value for m in at.markdown if not m.value.startswith("<style")]
    texts += [c.value for c in at.caption] + [p.proto.text for p in at.get("progress")]
    return words("\n".join(texts))


def picker_data(at: AppTest) -> dict:
    import json

    comps = [c for c in at.get("bidi_component") if c.proto.id.endswith("lesson-picker-2")]
    return json.loads(comps[0].proto.json)


def test_a_link_opens_the_lesson_at_its_step():
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update(lesson="1", step="4", patch="30")
    at.run()
    assert not at.exception and at.session_state["lesson_step"] == 3
    text = words("\n".join(m.value for m in at.markdown) + "\n".join(c.value for c in at.caption))
    assert "4. Position embedding" in text and "Similarity of position 30" in text
    assert at.query_params["step"] == "4" and at.query_params["lesson"] == "1"
    fresh = AppTest.from_file(APP, default_timeout=120)  # an invalid step opens the first
    fresh.query_params.update(lesson="1", step="99")
    fresh.run()
    assert fresh.session_state["lesson_step"] == 0 and "step" not in fresh.query_params


def test_steps_1_to_5_show_this_image_and_models_numbers(lesson, engine):
    _, _, v = engine
    text = go(lesson, 1)
    assert "224×224" in text
    assert f"from {v.pixels.min():.2f} to {v.pixels.max():.2f}" in text.replace("**", "")
    # step 2: N = HW/P² with this model's numbers; the middle patch is chosen at first
    text = go(lesson, 2)
    assert "224·224 / 16² = 196" in text.replace("**", "")
    assert picker_data(lesson)["patch"] == 7 * 14 + 7
    # a chosen patch is carried through the steps
    text = go(lesson, 3, patch=42)
    e = v.patches[42]
    assert f"192 numbers, from {e.min():.2f} to {e.max():.2f}" in text
    assert "768 numbers" in text  # 16×16 pixels × 3 colours
    text = go(lesson, 4)
    assert "e: the embedding of patch 42" in text and "e + p: what enters" in text
    text = go(lesson, 5)
    assert "197 rows (tokens) × 192 columns; the chosen patch is row 43" in text
    assert go(lesson, 2, patch=42) and picker_data(lesson)["patch"] == 42


def test_step_6_shows_one_map_per_head_for_the_chosen_patch(lesson, engine):
    _, expl, _ = engine
    text = go(lesson, 6, patch=42, lesson_layer=2)
    assert "Where patch 42 looks in layer 2" in text
    captions = [c for i in lesson.main.get("image") for c in i.captions if c.startswith("head")]
    assert captions == [f"head {h}" for h in range(expl.attention.shape[1])]
    assert "197" in text and "d_k = 64" in text  # 192 / 3 heads


def test_steps_8_and_9_match_the_engine_and_the_formulas(lesson, engine):
    _, expl, _ = engine
    text = go(lesson, 8)
    for p in expl.predictions:
        assert f"{short_label(p.label)} — {p.probability:.1%}" in text
    assert "8 scores" in text.replace("**", "")
    text = go(lesson, 9)
    c = token_cost((224, 224), (16, 16), 1, 6, 3)
    assert f"| 224×224 | 16×16 | 196 | 197 | {c.entries:,} |" in text
    assert f"{c.attention_bytes / 2**20:,.1f} MB" in text
    assert re.search(r"50,177 tokens for 224×224 \(150,528 numbers", text)  # with [CLS]


def test_every_step_has_its_title_and_the_honest_caption_of_the_demo_model(lesson):
    from vitviz.ui import i18n

    for step, (name, _) in enumerate(STEPS, start=1):
        text = go(lesson, step)
        assert f"## {step}. {i18n.t(f'lesson.{name}_title', 'en')}" in text
    assert "demo model" in go(lesson, 3)  # what a trained ViT would show instead


def test_turning_the_lesson_off_returns_to_the_views(lesson):
    lesson.toggle(key="lesson").set_value(False).run()
    assert not lesson.exception
    assert "lesson" not in lesson.query_params
    assert lesson.segmented_control(key="view").value == "Rollout"
    lesson.toggle(key="lesson").set_value(True).run()
    assert lesson.query_params["lesson"] == "1"


def test_class_names_from_a_weights_file_are_shown_as_text(tmp_path):
    """Class names travel in a weights file's metadata: the lesson shows them as typed, never
    as Markdown (no link, no picture)."""
    import json

    import timm
    import torch
    from safetensors.torch import save_file

    evil = "[Sign in](https://evil.example) ![](https://evil.example/p.png)"
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", depth=2, num_classes=3)
    path = tmp_path / "evil.safetensors"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"vitviz_labels": json.dumps([evil, evil, evil])})
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update(lesson="1", step="8")
    at.run()
    at.selectbox(key="model").set_value("__file__").run()
    at.text_input(key="file_arch").set_value("vit_tiny_patch16_224")
    weights = [w for w in at.text_input if w.label.startswith("Weights file")]
    weights[0].set_value(str(path)).run()
    assert not at.exception and not at.error
    raw = [p.proto.text for p in at.get("progress")] + [c.value for c in at.caption]
    raw += [m.value for m in at.markdown]
    assert sum("Sign in" in r for r in raw) >= 3  # the three classes, and "why" for the top one
    assert not any("[Sign in](" in r or "![](" in r for r in raw)
    assert any("[Sign in](https://evil.example)" in words(r) for r in raw)


def test_the_head_table_on_the_page_is_the_engines(engine):
    """Head statistics view: one sortable row per head with the engine's numbers and kinds."""
    from vitviz import methods

    _, expl, _ = engine
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["view"] = "Head statistics"
    at.run()
    assert not at.exception
    frame = at.dataframe[0].value
    want = methods.head_table(expl.attention, expl.layout)
    assert len(frame) == len(want["layer"]) == 6 * 3
    np.testing.assert_allclose(frame["mean distance (px)"], np.round(want["mean_distance"], 1))
    np.testing.assert_allclose(frame["to prefix tokens"], np.round(want["to_prefix"], 3))
    assert list(frame["kind"]) == want["kind"]
    assert set(frame["kind"]) <= set(methods.HEAD_KINDS)
    # and the same numbers as CSV
    import csv
    import io

    from vitviz.ui.views.statistics import head_csv

    rows = list(csv.DictReader(io.StringIO(head_csv(want))))
    assert len(rows) == 18 and rows[4]["kind"] == want["kind"][4]
    assert float(rows[4]["to_self"]) == want["to_self"][4]
