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
from vitviz.ui.lesson.steps import STEPS, crop_numbers, depth_layers

APP = str(ASSETS.parent / "app.py")
DEPTH, OUTPUT, COST = (
    [n for n, _ in STEPS].index(name) + 1 for name in ("depth", "output", "cost")
)


@pytest.fixture(scope="module")
def engine():
    backend = LocalBackend.from_name("demo", device="cpu")
    image = decode_image((ASSETS / "demo-scene-1.png").read_bytes(), "scene").image
    seen = backend.loaded.seen_image(image)
    return backend, backend.explain([seen], seen=True)[0], backend.embeddings(seen)


def lesson_page() -> AppTest:
    """The page in lesson mode (the demo model, the default sample), run once."""
    at = AppTest.from_file(APP, default_timeout=180)
    at.query_params["lesson"] = "1"
    at.run()
    assert not at.exception
    return at


@pytest.fixture(scope="module")
def lesson():
    return lesson_page()


def go(at: AppTest, step: int | str, **state) -> str:
    """Open a step (1-based, or by name) and return its words (markdown, captions, progress
    texts)."""
    if isinstance(step, str):
        step = [n for n, _ in STEPS].index(step) + 1
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
    assert "197 rows (tokens) × 192 columns; the cyan row is the chosen patch 42, token 43" in text
    assert go(lesson, 2, patch=42) and picker_data(lesson)["patch"] == 42


def test_step_6_shows_one_map_per_head_for_the_chosen_patch(lesson, engine):
    _, expl, _ = engine
    text = go(lesson, 6, patch=42, lesson_layer=2)
    assert "Where patch 42 looks in layer 2" in text
    captions = [c for i in lesson.main.get("image") for c in i.captions if c.startswith("head")]
    assert captions == [f"head {h}" for h in range(expl.attention.shape[1])]
    assert "197" in text and "d_k = D/H = 192/3 = **64**" in text  # 192 / 3 heads


def test_the_output_and_cost_steps_match_the_engine_and_the_formulas(lesson, engine):
    _, expl, _ = engine
    text = go(lesson, OUTPUT)
    for p in expl.predictions:
        assert f"{short_label(p.label)} — {p.probability:.1%}" in text
    assert "8 scores" in text.replace("**", "")
    text = go(lesson, COST)
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
    at.query_params.update(lesson="1", step=str(OUTPUT))
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


# Issue 23 (a Taiwanese teacher's class): numbering, words, notices, the camera path.


def zh_lesson(**params) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update(lang="zh-Hant", lesson="1", **params)
    at.run()
    assert not at.exception
    return at


def test_every_count_is_0_based_and_step_5_names_the_picked_patch(lesson):
    text = go(lesson, 2, patch=74)
    assert "starts at **0**" in text  # said once, where the patches are numbered
    assert "Chosen patch: 74 (row 5, column 4)" in text
    text = go(lesson, 5)
    assert "the cyan row is the chosen patch 74, token 75 of the sequence" in text
    assert "First **the [CLS] token**" in text
    assert "starts at **0**" not in text


def test_the_depth_step_shows_every_layer_up_to_6_else_evenly_spaced_ends_included(lesson):
    assert depth_layers(3) == [0, 1, 2]
    assert depth_layers(6) == [0, 1, 2, 3, 4, 5]
    twelve = depth_layers(12)
    assert twelve == [0, 2, 4, 7, 9, 11] and twelve[0] == 0 and twelve[-1] == 11
    assert depth_layers(24)[-1] == 23 and len(depth_layers(24)) == 6
    go(lesson, DEPTH)  # the demo model: 6 layers, all of them, then rollout
    captions = [c for i in lesson.main.get("image") for c in i.captions if c.startswith("layer")]
    assert captions == [f"layer {n}" for n in range(6)]


def test_zh_hant_words_bicubic_crop_multi_head_and_cls():
    assert crop_numbers(224, 0.9) == (248, 90, 12)  # timm: floor(224 / 0.9), then the centre
    assert crop_numbers(224, 1.0) == (224, 100, 0)
    at = zh_lesson()
    text = words("\n".join(m.value for m in at.markdown))
    assert "雙立方" in text and "雙三次" not in text
    assert "裁切比例 **1** 表示裁切保留縮放後大小的多少：224 / 224 ≈ **100%**" in text
    at.session_state["lesson_step"] = 4
    at.run()
    text = words("\n".join(m.value for m in at.markdown))
    assert "先是 **[CLS] 詞元**" in text and "前置詞元（CLS）" not in text
    at.session_state["lesson_step"] = 5
    at.run()
    text = words("\n".join(m.value for m in at.markdown))
    assert "## 6. 多頭自注意力" in text
    assert "H = **3** 個注意力頭" in text and "d_k = D/H = 192/3 = **64**" in text
    captions = words("\n".join(c.value for c in at.caption))
    layer = at.slider(key="lesson_layer").value
    assert f"在層 {layer} 看哪裡" in captions  # the caption says the slider's layer


def test_random_weights_are_a_red_notice_above_the_steps():
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update(lesson="1", step="3")
    at.run()
    at.toggle(key="random_weights").set_value(True).run()
    assert not at.exception
    assert any("RANDOM WEIGHTS" in e.value for e in at.main.error), at.main.error
    ids = [str(e.proto) for e in _in_order(at)]
    notice = next(i for i, p in enumerate(ids) if "RANDOM WEIGHTS" in p)
    title = next(i for i, p in enumerate(ids) if "## 3." in p)
    assert notice < title
    assert not any("RANDOM WEIGHTS" in c.value for c in at.caption)  # no longer a grey line
    at.toggle(key="random_weights").set_value(False).run()


def _in_order(at: AppTest) -> list:
    """The main area's elements in page order."""
    out = []

    def walk(node) -> None:
        children = getattr(node, "children", None)
        if children:
            for key in sorted(children):
                walk(children[key])
        elif getattr(node, "proto", None) is not None:
            out.append(node)

    walk(at.main)
    return out


def test_a_failed_model_load_is_worded_in_chinese_with_the_english_folded_away():
    at = zh_lesson(model="vit-b16", step="9")  # no weights offline: it cannot load
    assert at.session_state["lesson_step"] == 8
    errors = [e.value for e in at.main.error if "無法載入" in e.value]
    assert errors and all(not re.search(r"[A-Za-z]{4,}", e.replace("ViT-B/16", "")) for e in errors)
    assert at.expander and "詳細資訊" in at.expander[0].label  # the loader's English, folded
    ids = [str(e.proto) for e in _in_order(at)]
    assert next(i for i, p in enumerate(ids) if "無法載入" in p) < next(
        i for i, p in enumerate(ids) if "## 9." in p
    )


def test_a_lesson_link_from_a_camera_photo_opens_the_same_step_on_a_sample():
    """A photo is never in a link: the link opens the lesson at its step on a sample, and
    says so (the teacher's link, made while a camera photo was shown)."""
    at = zh_lesson(source="Camera", step="6", patch="30")
    assert at.session_state["lesson_step"] == 5 and at.query_params["source"] == "Camera"
    text = words("\n".join(m.value for m in at.markdown))
    assert "## 6. 多頭自注意力" in text
    captions = words("\n".join(c.value for c in at.caption))
    assert "照片不會放進連結" in captions and "範例圖片" in captions
    assert "圖塊 30 在層" in captions  # the link's patch, on the sample
    assert at.toggle(key="lesson").value is True
