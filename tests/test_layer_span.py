"""End layers (maps "up to layer l", the layer strip), "why not this class" and the class-free
target of backbones: each checked against an independent numpy computation."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from vitviz import methods
from vitviz.errors import OptionsError
from vitviz.layout import TokenLayout

LAYOUT = TokenLayout(prefix=("cls",), grid=(3, 3), patch_size=(16, 16), readout="cls")


def case(layers: int = 5, heads: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random attention (rows sum to 1) and signed gradients for LAYOUT."""
    rng = np.random.default_rng(seed)
    n = LAYOUT.num_tokens
    logits = rng.normal(size=(layers, heads, n, n))
    attn = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return attn.astype(np.float32), rng.normal(size=attn.shape).astype(np.float32)


def numpy_rollout(attn: np.ndarray, s: int, e: int) -> np.ndarray:
    """The readout row of rownorm(mean_h(A_l) + I) multiplied from layer e down to s."""
    n = attn.shape[-1]
    r = np.eye(n)
    for layer in range(s, e + 1):
        hat = attn[layer].astype(np.float64).mean(0) + np.eye(n)
        hat /= hat.sum(-1, keepdims=True)
        r = hat @ r
    return r[0]


def numpy_chefer(attn: np.ndarray, grads: np.ndarray, s: int, e: int) -> np.ndarray:
    """Chefer's R = I; R ← R + Ā_l R for l = s … e; the class token's row."""
    n = attn.shape[-1]
    r = np.eye(n)
    for layer in range(s, e + 1):
        abar = np.maximum(attn[layer].astype(np.float64) * grads[layer], 0).mean(0)
        r = r + abar @ r
    return r[0]


@pytest.mark.parametrize(("s", "e"), [(0, 4), (0, 2), (1, 3), (2, 2)])
def test_rollout_up_to_a_layer_is_the_product_of_those_layers(s, e):
    attn, _ = case()
    got = methods.compute_row("rollout", attn, LAYOUT, start_layer=s, end_layer=e)
    np.testing.assert_allclose(got, numpy_rollout(attn, s, e), rtol=1e-5)


def test_the_default_end_is_the_last_layer_and_an_end_before_the_start_is_refused():
    attn, _ = case()
    whole = methods.compute_row("rollout", attn, LAYOUT)
    np.testing.assert_allclose(
        methods.compute_row("rollout", attn, LAYOUT, end_layer=4), whole, rtol=1e-6
    )
    np.testing.assert_allclose(
        methods.compute_row("rollout", attn, LAYOUT, end_layer=-1), whole, rtol=1e-6
    )
    with pytest.raises(OptionsError, match="before the start"):
        methods.compute_row("rollout", attn, LAYOUT, start_layer=3, end_layer=1)


@pytest.mark.parametrize(("s", "e"), [(0, 4), (0, 1), (2, 3)])
def test_chefer_between_two_layers_from_full_gradients_and_from_the_relevance(s, e):
    attn, grads = case()
    want = numpy_chefer(attn, grads, s, e)
    full = methods.compute_row("chefer", attn, LAYOUT, grads=grads, start_layer=s, end_layer=e)
    np.testing.assert_allclose(full, want, rtol=1e-5)
    rel = methods.class_relevance(attn, grads, LAYOUT)
    reduced = methods.compute_row("chefer", attn, LAYOUT, grads=rel, start_layer=s, end_layer=e)
    np.testing.assert_allclose(reduced, want, rtol=1e-5)


def test_grad_rollout_up_to_a_layer_matches_a_numpy_loop():
    attn, grads = case()
    n = LAYOUT.num_tokens
    r = np.eye(n)
    for layer in range(1, 4):  # fuse (mean) the weighted heads, clamp, + I, rownorm
        f = np.maximum((attn[layer] * grads[layer]).astype(np.float64).mean(0), 0) + np.eye(n)
        r = (f / f.sum(-1, keepdims=True)) @ r
    got = methods.compute_row("grad-rollout", attn, LAYOUT, grads=grads, start_layer=1, end_layer=3)
    np.testing.assert_allclose(got, r[0], rtol=1e-5)


def test_why_not_keeps_the_negative_part():
    attn, grads = case()
    # Chefer of the negative part, by hand: Ā⁻_l = mean_h(max(-(A ⊙ G), 0))
    want = numpy_chefer(attn, -grads, 0, 4)
    got = methods.compute_row("chefer", attn, LAYOUT, grads=grads, negative=True)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert not np.allclose(got, methods.compute_row("chefer", attn, LAYOUT, grads=grads))
    # attention × gradient, one head: the class row of (A ⊙ G)⁻
    neg = np.maximum(-(attn[2, 1] * grads[2, 1]), 0)[0]
    got = methods.compute_row(
        "attn-grad", attn, LAYOUT, grads=grads, layer=2, head=1, negative=True
    )
    np.testing.assert_allclose(got, neg, rtol=1e-5)
    # the reduced form must have been made for the same sign
    rel_neg = methods.class_relevance(attn, grads, LAYOUT, negative=True)
    np.testing.assert_allclose(
        methods.compute_row(
            "attn-grad", attn, LAYOUT, grads=rel_neg, layer=2, head=1, negative=True
        ),
        neg,
        rtol=1e-5,
    )
    with pytest.raises(OptionsError, match="why not"):
        methods.compute_row("chefer", attn, LAYOUT, grads=rel_neg)
    with pytest.raises(OptionsError, match="why not"):
        methods.compute_row(
            "chefer",
            attn,
            LAYOUT,
            grads=methods.class_relevance(attn, grads, LAYOUT),
            negative=True,
        )


def test_the_layer_strip_is_one_row_per_end_layer():
    attn, grads = case()
    layers, rows = methods.compute_strip("rollout", attn, LAYOUT, start_layer=1)
    assert layers == [1, 2, 3, 4] and rows.shape == (4, LAYOUT.num_tokens)
    for k, e in enumerate(layers):
        np.testing.assert_allclose(rows[k], numpy_rollout(attn, 1, e), rtol=1e-5)
    layers, rows = methods.compute_strip("chefer", attn, LAYOUT, grads=grads)
    for k, e in enumerate(layers):
        np.testing.assert_allclose(rows[k], numpy_chefer(attn, grads, 0, e), rtol=1e-5)
    with pytest.raises(OptionsError, match="no end layer"):
        methods.compute_strip("attention", attn, LAYOUT)


def test_gradient_layers_follow_the_span_and_the_sign():
    chefer = methods.METHODS["chefer"]
    assert chefer.gradient_layers({"start_layer": 2, "end_layer": 4}, 12) == [2, 3, 4]
    assert chefer.gradient_layers({}, 6) == list(range(6))
    assert chefer.negative({"negative": True}) and not chefer.negative({})
    assert not methods.METHODS["rollout"].negative({"negative": True})


def test_the_engine_explains_why_not_with_the_gradient_of_minus_the_logit(vit_tiny, cat_image):
    from vitviz.backends.local import LocalBackend

    backend = LocalBackend(vit_tiny)
    seen = vit_tiny.seen_image(cat_image)
    pos = backend.explain_classes([seen], [[7]], seen=True, full_gradients=True)[0]
    neg = backend.explain_classes([seen], [[7]], seen=True, full_gradients=True, negative=True)[0]
    attn = pos.explanation.attention
    # full gradients are ∂y_c/∂A whatever the sign: the methods negate them (never twice)
    np.testing.assert_allclose(neg.gradients[0], pos.gradients[0], rtol=1e-4, atol=1e-9)
    rel = neg.relevance[0]
    assert rel.negative and rel.index == 7
    layout = pos.explanation.layout
    want = methods.compute_row("chefer", attn, layout, grads=pos.gradients[0], negative=True)
    got = methods.compute_row("chefer", attn, layout, grads=rel, negative=True)
    np.testing.assert_allclose(got, want, rtol=1e-4)
    from_full = methods.compute_row("chefer", attn, layout, grads=neg.gradients[0], negative=True)
    np.testing.assert_allclose(from_full, want, rtol=1e-4)


def test_a_backbone_explains_the_norm_of_its_readout_feature(vit_tiny, cat_image):
    """The class-free target's gradients equal those of a linear head u·f with u = f/‖f‖
    (d‖f‖ = u·df): computed through the ordinary class path of a 1-class copy."""
    from vitviz.backends.local import LocalBackend
    from vitviz.engine.gradients import FEATURE_NORM, FEATURE_NORM_LABEL

    model = copy.deepcopy(vit_tiny.model)
    model.reset_classifier(0)  # a backbone: its forward returns the readout feature
    backbone = dataclasses.replace(vit_tiny, model=model, labels=None)
    assert not backbone.has_classifier
    seen = backbone.seen_image(cat_image)
    got = LocalBackend(backbone).explain_classes([seen], [[None]], seen=True, full_gradients=True)
    (res,) = got
    assert res.classes == [FEATURE_NORM] and res.labels == [FEATURE_NORM_LABEL]
    assert res.explanation.predictions == [] and res.explanation.logits is None
    with torch.no_grad():
        f = backbone.model(backbone.to_tensor(seen)[None])[0]
    probe = copy.deepcopy(backbone.model)
    probe.reset_classifier(1)
    with torch.no_grad():
        probe.head.weight.copy_((f / f.norm())[None])
        probe.head.bias.zero_()
    linear = dataclasses.replace(backbone, model=probe, labels=["u·f"])
    (ref,) = LocalBackend(linear).explain_classes([seen], [[0]], seen=True, full_gradients=True)
    scale = np.abs(ref.gradients).max()
    np.testing.assert_allclose(res.gradients, ref.gradients, rtol=1e-3, atol=1e-4 * scale)
    with pytest.raises(Exception, match="no classifier"):
        LocalBackend(backbone).explain_classes([seen], [[3]], seen=True)
