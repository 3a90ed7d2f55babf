"""The lesson's steps inside the block and on scale (AppTest, demo model): every number on
screen against an independent computation, and every new step in both languages."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from tests.conftest import ASSETS, plotly_array
from tests.test_i18n import _names_without_translation, english_left
from tests.test_lesson import go as open_step
from tests.test_lesson import lesson_page
from vitviz.backends.local import LocalBackend
from vitviz.inputs.images import decode_image
from vitviz.memory.cost import token_cost
from vitviz.ui.lesson.scale import word_pieces
from vitviz.ui.lesson.steps import STEPS

APP = str(ASSETS.parent / "app.py")
NEW = ("block", "norm", "mlp", "sizes", "text", "passes")
PATCH = 42


def number(name: str) -> int:
    """The 1-based number of step ``name``."""
    return [n for n, _ in STEPS].index(name) + 1


@pytest.fixture(scope="module")
def engine():
    backend = LocalBackend.from_name("demo", device="cpu")
    image = decode_image((ASSETS / "demo-scene-1.png").read_bytes(), "scene").image
    seen = backend.loaded.seen_image(image)
    return backend, seen


@pytest.fixture(scope="module")
def stream(engine):
    """A hand loop over the demo model's blocks: the sequence entering each block, and the
    sequence after its attention and after its MLP (no hooks, no vitviz engine)."""
    backend, seen = engine
    m = backend.loaded.model
    x = backend.loaded.to_tensor(seen)[None]
    out = {"in": [], "mid": [], "out": []}
    with torch.no_grad():
        h = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))
        for blk in m.blocks:
            out["in"].append(h[0].double().numpy())
            h = h + blk.ls1(blk.attn(blk.norm1(h)))
            out["mid"].append(h[0].double().numpy())
            h = h + blk.ls2(blk.mlp(blk.norm2(h)))
            out["out"].append(h[0].double().numpy())
    return {k: np.stack(v) for k, v in out.items()}  # [L, T, D]


@pytest.fixture(scope="module")
def lesson():
    return lesson_page()


def go(at: AppTest, name: str, **state) -> str:
    """Open step ``name`` and return its words, bold marks removed."""
    return open_step(at, name, **state).replace("**", "")


def figures(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def test_the_new_steps_sit_inside_the_lesson():
    names = [n for n, _ in STEPS]
    assert names.index("attention") < names.index("block") < names.index("norm")
    assert names.index("mlp") < names.index("depth")
    assert set(NEW) <= set(names) and len(names) == 15


def test_the_residual_stream_on_screen_is_a_hand_loop_over_the_blocks(lesson, stream):
    text = go(lesson, "block", patch=PATCH)
    row = 1 + PATCH
    want = [np.linalg.norm(stream["in"][0, row])]
    want += list(np.linalg.norm(stream["out"][:, row], axis=-1))
    shown = re.search(r"‖x‖ of patch 42 entering block 0, then after each block: ([\d.→ ]+)", text)
    assert shown, text
    values = [float(v) for v in shown.group(1).split("→")]
    np.testing.assert_allclose(values, want, atol=0.006)
    # the chart: [CLS] and the patch, entering block 0 then after every sub-block
    line, bars = figures(lesson)
    for k, token in enumerate((0, row)):
        path = [np.linalg.norm(stream["in"][0, token])]
        for i in range(6):
            path += [
                np.linalg.norm(stream["mid"][i, token]),
                np.linalg.norm(stream["out"][i, token]),
            ]
        np.testing.assert_allclose(plotly_array(line["data"][k]["y"]), path, rtol=1e-4)
    # the bars: ‖update‖ / ‖x it is added to‖ per block, attention then MLP, per token
    x_in, mid, out = stream["in"], stream["mid"], stream["out"]
    attn = np.linalg.norm(mid - x_in, axis=-1) / np.linalg.norm(x_in, axis=-1)
    mlp = np.linalg.norm(out - mid, axis=-1) / np.linalg.norm(mid, axis=-1)
    got = [plotly_array(d["y"]) for d in bars["data"]]
    np.testing.assert_allclose(got[0], attn[:, 0], rtol=1e-3)
    np.testing.assert_allclose(got[1], mlp[:, 0], rtol=1e-3)
    np.testing.assert_allclose(got[2], attn[:, row], rtol=1e-3)
    np.testing.assert_allclose(got[3], mlp[:, row], rtol=1e-3)
    assert "3 heads of d_k = D/H = 192/3 = 64" in text and "Pre-norm" in text
    assert "demo model" in text


def test_layer_norm_numbers_are_numpys_on_the_same_token(lesson, stream):
    text = go(lesson, "norm", patch=PATCH, lesson_block_layer=2)
    x = stream["in"][2, 1 + PATCH]
    mean = float(re.search(r"μ = (-?[\d.]+)", text).group(1))
    std = float(re.search(r"σ = (-?[\d.]+)", text).group(1))
    assert abs(mean - np.mean(x)) <= 0.0006 and abs(std - np.std(x)) <= 0.0006
    assert f"the 192 values patch 42 brings to block 2, from {x.min():.2f} to {x.max():.2f}" in text
    assert lesson.slider(key="lesson_block_layer").value == 2


def test_mlp_sizes_are_the_modules(lesson, engine):
    backend, _ = engine
    blk = backend.loaded.model.blocks[2]
    hidden, d = blk.mlp.fc1.weight.shape
    assert tuple(blk.mlp.fc2.weight.shape) == (d, hidden)
    text = go(lesson, "mlp", patch=PATCH, lesson_block_layer=2)
    weights = sum(p.numel() for p in blk.mlp.parameters())
    assert f"D → {hidden} → D (D = {d}, {hidden // d}× wider inside), {weights:,} numbers" in text
    assert "In: patch 42 after the norm, 192 numbers" in text
    assert re.search(r"largest difference \d\.\de-\d\d", text)


def test_the_parameter_table_sums_to_the_models_total(lesson, engine):
    backend, _ = engine
    total = sum(p.numel() for p in backend.loaded.model.parameters())
    assert backend.parameter_parts().total == total
    text = go(lesson, "sizes")
    rows = re.findall(r"^\| (.+?) \| ([\d,]+) \| ([\d.]+)% \|$", text, re.M)
    parts = [int(n.replace(",", "")) for name, n, _ in rows if name != "total"]
    assert sum(parts) == total == 2_856_776
    assert f"| total | {total:,} | 100% |" in text
    assert "| multi-head self-attention (6 × 148,224) | 889,344 | 31.1% |" in text
    assert "| ViT-B/16 | 768 | 12 | 12 | 197 | 86,567,656 |" in text
    assert f"| this model | 192 | 6 | 3 | 197 | {total:,} |" in text
    # one block from the formula equals the model's per-block count (12·D² + 13·D)
    assert f"{12 * 192**2 + 13 * 192:,} with D = 192" in text and 148_224 + 295_872 + 768 == 444_864
    c = token_cost((224, 224), (16, 16), 1, 6, 3)
    assert f"N² = 197² = {c.entries:,} scores" in text and f"step {number('cost')}" in text


def test_text_beside_image_uses_the_layouts_token_count(lesson):
    text = go(lesson, "text", patch=PATCH)
    pieces = ["[CLS]", *word_pieces("A cat sleeps on the warm windowsill.")]
    assert pieces[-3:] == ["window", "##sill", "."]
    assert f"Text: {len(pieces)} tokens" in text and "up to 512 tokens" in text
    assert "This image: 197 tokens (1 + 196 patches), D = 192" in text
    assert "a 2-D grid of 14×14" in text and "your patch 42 (row 3, column 0) is token 43" in text
    assert "illustrative" in text
    assert word_pieces("一隻貓。") == ["一", "隻", "貓", "。"]


def test_one_pass_against_n_passes(lesson):
    text = go(lesson, "passes")
    assert "in 1 pass" in text and "197 tokens take 197 passes" in text
    assert f"{197 * 197:,} scores per head and layer" in text
    pixels = token_cost((224, 224), (1, 1), 1, 6, 3)
    assert f"Pixels as tokens (224×224): {pixels.tokens:,} tokens, {pixels.entries:,}" in text
    assert f"{224 * 224:,} passes" in text
    (fig,) = figures(lesson)
    vit, loop = fig["data"][2], fig["data"][1]
    assert plotly_array(vit["y"]).tolist() == [197 * 197]
    assert plotly_array(loop["y"])[-1] == 197 * 198 // 2 and len(plotly_array(loop["x"])) == 197


@pytest.fixture(scope="module")
def zh_lesson() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    at.query_params.update(lang="zh-Hant", lesson="1")
    at.run()
    assert not at.exception
    return at


@pytest.mark.parametrize("name", NEW)
def test_each_new_step_renders_in_chinese_with_no_english(zh_lesson, name):
    at = zh_lesson
    at.session_state["lesson_step"] = number(name) - 1
    at.run()
    assert not at.exception and not at.error
    assert english_left(at, _names_without_translation()) == set()
    # the charts' legends too
    for fig in figures(at):
        names = " ".join(d.get("name", "") for d in fig["data"])
        assert not set(re.findall(r"[A-Za-z]+", names)) - {"CLS", "ViT", "N", "k"}, names


def test_a_server_cannot_look_inside_the_blocks():
    from vitviz.backends.remote import RemoteBackend
    from vitviz.errors import OptionsError

    for call in (lambda: RemoteBackend.block_steps(None, None), RemoteBackend.parameter_parts):
        with pytest.raises(OptionsError, match="in this process"):
            call(None) if call is RemoteBackend.parameter_parts else call()
