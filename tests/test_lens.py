"""The logit lens: its last row is the model's output; earlier rows match a hand loop."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from vitviz.engine.lens import has_lens, lens_from_logits, logit_lens, residual_stream
from vitviz.errors import OptionsError


def _model(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kwargs).eval()


MODELS = {
    "plain": lambda: _model("vit_tiny_patch16_224", depth=3, num_classes=7, img_size=64),
    "avg pool, fc_norm": lambda: _model(
        "vit_tiny_patch16_224",
        depth=3,
        num_classes=7,
        img_size=64,
        global_pool="avg",
        class_token=False,
        fc_norm=True,
    ),
    "registers": lambda: _model(
        "vit_small_patch14_reg4_dinov2", depth=2, img_size=56, num_classes=7
    ),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_the_last_layer_is_the_models_output(name):
    model = MODELS[name]()
    size = model.patch_embed.img_size
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    lens = logit_lens(model, x, top_k=3)
    with torch.no_grad():
        out = model(x)[0].numpy()
    assert lens.logits.shape == (len(model.blocks), 7)
    np.testing.assert_allclose(lens.logits[-1], out, atol=1e-5)
    assert lens.final == int(np.argmax(out)) and lens.final_rank[-1] == 1
    assert lens.top.shape == lens.top_probability.shape == (len(model.blocks), 3)


def test_the_demo_model(demo):
    assert demo.offers("logit_lens")
    image = Image.new("RGB", (224, 224), (30, 160, 60))
    (expl,) = demo.explain([image], seen=True)
    lens = demo.logit_lens(image)
    np.testing.assert_allclose(lens.logits[-1], expl.logits, atol=1e-5)
    assert lens.top.shape == (demo.loaded.num_layers, 5)


def test_intermediate_rows_equal_a_hand_loop():
    model = MODELS["plain"]()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    lens = logit_lens(model, x)
    with torch.no_grad():
        h = model.norm_pre(model._pos_embed(model.patch_embed(x)))
        for layer, blk in enumerate(model.blocks):
            h = blk(h)
            row = model.head(model.norm(h)[:, 0])[0].numpy()  # the class token, as timm reads
            np.testing.assert_allclose(lens.logits[layer], row, atol=1e-5)


def test_the_stream_is_recorded_for_this_call_only():
    model = MODELS["plain"]()
    x = torch.randn(1, 3, 64, 64)
    out, stream = residual_stream(model, x)
    assert stream.shape == (3, 17, 192) and out.shape == (7,)
    assert all(not blk._forward_hooks for blk in model.blocks)


def test_ranks_and_probabilities_by_hand():
    logits = np.array([[3.0, 1.0, 2.0], [0.0, 1.0, 5.0]])
    lens = lens_from_logits(logits, top_k=2)
    assert lens.final == 2
    assert lens.final_rank.tolist() == [2, 1]
    assert lens.top.tolist() == [[0, 2], [2, 1]]
    p0 = np.exp(logits[0]) / np.exp(logits[0]).sum()
    np.testing.assert_allclose(lens.final_probability[0], p0[2])
    np.testing.assert_allclose(lens.top_probability[0], p0[[0, 2]])


def test_a_backbone_without_classes_is_refused():
    model = _model("vit_tiny_patch16_224", depth=1, num_classes=0, img_size=32)
    assert not has_lens(model)
    with pytest.raises(OptionsError, match="classifier"):
        logit_lens(model, torch.randn(1, 3, 32, 32))


def test_probabilities_are_a_softmax_per_row():
    """The one softmax the lens, its exports, its wire check and the page share (by hand)."""
    from vitviz.inputs.classes import probabilities

    rows = probabilities(np.log([[1.0, 3.0], [2.0, 1.0]]))
    np.testing.assert_allclose(rows, [[0.25, 0.75], [2 / 3, 1 / 3]])
    np.testing.assert_allclose(probabilities(np.log([1.0, 3.0])), [0.25, 0.75])
    np.testing.assert_allclose(probabilities([[1000.0, 1000.0]]), [[0.5, 0.5]])  # stable
