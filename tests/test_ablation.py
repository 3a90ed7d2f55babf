"""Head ablation (Michel et al., 2019) against known answers and an unbatched hand loop."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from tests.conftest import in_threads
from vitviz.engine.ablation import ablate_heads, ablation_cost, ablation_forwards
from vitviz.errors import OptionsError
from vitviz.memory.cost import ModelShape

TARGET = 2


def _toy(seed: int = 0) -> torch.nn.Module:
    """A tiny random ViT: 2 layers, 2 heads of width 8, 5 classes, 32 px (4 patches)."""
    torch.manual_seed(seed)
    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        depth=2,
        num_heads=2,
        embed_dim=16,
        num_classes=5,
        img_size=32,
    ).eval()
    with torch.no_grad():  # weights far from timm's small init, so every head matters
        for param in model.parameters():
            if param.ndim > 1:
                param.normal_(0, 0.3)
    return model


def _image(seed: int = 1) -> torch.Tensor:
    return torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _silence(model: torch.nn.Module, layer: int, head: int) -> None:
    """Zero ``proj``'s columns reading head ``(layer, head)``: its output reaches nothing."""
    attn = model.blocks[layer].attn
    d = attn.head_dim
    with torch.no_grad():
        attn.proj.weight[:, head * d : (head + 1) * d] = 0


def _one_head_model() -> torch.nn.Module:
    """Only head (1, 0) reaches the logits: every other head silenced, the MLPs zeroed."""
    model = _toy()
    for layer, blk in enumerate(model.blocks):
        with torch.no_grad():
            blk.mlp.fc2.weight.zero_()
            blk.mlp.fc2.bias.zero_()
        for head in range(2):
            if (layer, head) != (1, 0):
                _silence(model, layer, head)
    return model


def _hand(model, x, target, kind, layer, heads) -> tuple[float, float]:
    """Logit and probability of ``target`` with ``heads`` of ``layer`` edited, one forward."""
    attn = model.blocks[layer].attn
    d = attn.head_dim

    def edit(_m, args):
        out = args[0].clone()
        for h in heads:
            part = out[..., h * d : (h + 1) * d]
            out[..., h * d : (h + 1) * d] = (
                0 if kind == "zero" else part.mean(dim=1, keepdim=True).expand_as(part)
            )
        return (out,)

    handle = attn.proj.register_forward_pre_hook(edit)
    try:
        with torch.no_grad():
            logits = model(x)[0].double()
    finally:
        handle.remove()
    return float(logits[target]), float(logits.softmax(-1)[target])


def test_only_the_important_head_matters():
    model, x = _one_head_model(), _image()
    for kind in ("zero", "mean"):
        r = ablate_heads(model, x, TARGET, kind=kind, batch=4)
        assert r.logit.shape == r.probability.shape == (2, 2)
        others = np.delete(r.logit.ravel(), 2)  # (1, 0) is the flat index 2
        assert np.abs(others).max() <= 1e-6
        assert abs(r.logit[1, 0]) > 1e-3
        assert abs(r.layer_logit[0]) <= 1e-6
        assert r.layer_logit[1] == pytest.approx(r.logit[1, 0], abs=1e-6)


def test_an_identity_head_changes_nothing():
    model, x = _toy(seed=3), _image()
    _silence(model, 0, 1)
    r = ablate_heads(model, x, TARGET)
    assert abs(r.logit[0, 1]) <= 1e-6 and abs(r.probability[0, 1]) <= 1e-6
    assert np.abs(np.delete(r.logit.ravel(), 1)).min() > 1e-6  # the others do change it


@pytest.mark.parametrize("kind", ["zero", "mean"])
def test_equals_an_unbatched_hand_loop(kind):
    model, x = _toy(seed=5), _image(2)
    r = ablate_heads(model, x, TARGET, kind=kind, batch=3)
    with torch.no_grad():
        clean = model(x)[0].double()
    y0, p0 = float(clean[TARGET]), float(clean.softmax(-1)[TARGET])
    assert r.clean_logit == pytest.approx(y0, abs=1e-5)
    assert r.clean_probability == pytest.approx(p0, abs=1e-6)
    for layer in range(2):
        for head in range(2):
            y, p = _hand(model, x, TARGET, kind, layer, [head])
            assert r.logit[layer, head] == pytest.approx(y - y0, abs=1e-5)
            assert r.probability[layer, head] == pytest.approx(p - p0, abs=1e-5)
        y, p = _hand(model, x, TARGET, kind, layer, [0, 1])
        assert r.layer_logit[layer] == pytest.approx(y - y0, abs=1e-5)
        assert r.layer_probability[layer] == pytest.approx(p - p0, abs=1e-5)


def test_mean_and_zero_differ():
    model, x = _toy(seed=5), _image(2)
    zero = ablate_heads(model, x, TARGET, kind="zero")
    mean = ablate_heads(model, x, TARGET, kind="mean")
    assert zero.kind == "zero" and mean.kind == "mean"
    assert np.abs(zero.logit - mean.logit).max() > 1e-4


def test_the_batch_size_does_not_matter():
    model, x = _toy(seed=6), _image(3)
    runs = {b: ablate_heads(model, x, TARGET, kind="mean", batch=b) for b in (1, 3, 7)}
    for b in (3, 7):
        np.testing.assert_allclose(runs[b].logit, runs[1].logit, atol=1e-5)
        np.testing.assert_allclose(runs[b].layer_probability, runs[1].layer_probability, atol=1e-5)
    assert [runs[b].forwards for b in (1, 3, 7)] == [7, 3, 1]  # L·H + L + 1 = 7 copies


def test_progress_and_hooks_removed():
    model, x = _toy(), _image()
    seen: list[tuple[int, int]] = []
    ablate_heads(model, x, TARGET, batch=4, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(3, 6), (6, 6)]  # the clean copy rides in the first batch, uncounted
    assert all(not blk.attn.proj._forward_pre_hooks for blk in model.blocks)


def test_a_concurrent_plain_forward_is_not_ablated():
    model, x = _toy(seed=8), _image(4)
    with torch.no_grad():
        clean = model(x)
    errors: list[float] = []

    def work(i: int) -> None:
        if i == 0:
            for _ in range(3):
                ablate_heads(model, x, TARGET, batch=1)
        else:
            for _ in range(30):
                with torch.no_grad():
                    errors.append(float((model(x) - clean).abs().max()))

    in_threads(work, 2)
    assert errors and max(errors) <= 1e-6


def test_bad_options_are_refused():
    model, x = _toy(), _image()
    with pytest.raises(OptionsError, match="kind"):
        ablate_heads(model, x, TARGET, kind="random")
    with pytest.raises(OptionsError, match="batch"):
        ablate_heads(model, x, TARGET, batch=0)
    with pytest.raises(OptionsError, match="class"):
        ablate_heads(model, x, 5)


def test_cost_before_work():
    shape = ModelShape(
        layers=12, heads=12, dim=768, mlp_dim=3072, params=86_000_000, prefix=1, patch=(16, 16)
    )
    small, large = ablation_cost(shape, (224, 224), 4), ablation_cost(shape, (224, 224), 16)
    assert 0 < small.kept < small.peak < large.peak
    assert large.parts["scores"] == 2 * 16 * 12 * 197 * 197 * 4  # unfused: one layer's scores
    assert ablation_forwards(12, 12, 16) == -(-(144 + 12 + 1) // 16) == 10
    assert ablation_forwards(12, 12, 1) == 157
    assert large.parts["masks"] == 157 * 144 * 4  # one float32 mask per ablated copy
    assert large.kept == 2 * (144 + 12) * 2 * 4  # Δ logit and Δ probability, float64


def test_the_demo_backend(demo):
    from PIL import Image

    assert demo.offers("head_ablation")
    image = Image.new("RGB", (224, 224), (200, 40, 40))
    (expl,) = demo.explain([image], seen=True)
    r = demo.ablate_heads(image, 1, batch=8)
    assert r.logit.shape == (demo.loaded.num_layers, demo.loaded.num_heads)
    assert r.clean_logit == pytest.approx(float(expl.logits[1]), abs=1e-4)
    assert np.isfinite(r.layer_probability).all()
