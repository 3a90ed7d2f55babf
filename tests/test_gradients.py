"""Class-specific explanations: attention gradients and the methods built on them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import tiny
from vitviz import methods
from vitviz.backends.local import LocalBackend
from vitviz.engine.gradients import attention_gradients
from vitviz.errors import ModelError, OptionsError
from vitviz.layout import TokenLayout


def small(name: str = "vit_tiny_patch16_224", **kw):
    """A 2-layer, 32 px (2×2 patches) random model in float64, for exact finite differences."""
    loaded = tiny(name, seed=4, model_kwargs={"depth": 2, "img_size": 32, "num_classes": 5, **kw})
    loaded.model.double()
    return loaded


def test_gradients_equal_finite_differences():
    loaded = small()
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    _, _, grads, _, classes = attention_gradients(loaded, x, [[3]])
    assert classes == [[3]] and grads.shape == (1, 1, 2, 3, 5, 5)
    rng = np.random.default_rng(1)
    eps = 1e-6
    for layer in (0, 1):
        direction = torch.from_numpy(rng.normal(size=(1, 3, 5, 5)))

        def logit(sign: float, layer=layer, direction=direction) -> float:
            def bump(_m, _i, out):
                return out + sign * eps * direction

            h = loaded.model.blocks[layer].attn.attn_drop.register_forward_hook(bump)
            try:
                with torch.no_grad():
                    return float(loaded.model(x)[0, 3])
            finally:
                h.remove()

        numeric = (logit(1.0) - logit(-1.0)) / (2 * eps)
        analytic = float((grads[0, 0, layer].double() * direction[0]).sum())
        assert analytic == pytest.approx(numeric, rel=1e-4, abs=1e-7)


def test_only_requested_layers_get_gradients():
    loaded = small()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    _, _, grads, _, _ = attention_gradients(loaded, x, [[0], [1]], layers=[1])
    assert float(grads[:, :, 0].abs().max()) == 0.0
    assert float(grads[:, :, 1].abs().max()) > 0.0


def test_batch_entries_each_get_their_own_class():
    loaded = small()
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    logits, attn, grads, _, classes = attention_gradients(loaded, x, [[0, 4], [2, 2], [None, 1]])
    top = int(logits[2].argmax())
    assert classes == [[0, 4], [2, 2], [top, 1]]
    for b, cs in enumerate(classes):
        _, a1, g1, _, _ = attention_gradients(loaded, x[b : b + 1], [cs])
        torch.testing.assert_close(attn[b], a1[0])
        torch.testing.assert_close(grads[:, b], g1[:, 0], rtol=1e-9, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(logits, loaded.model(x).float())


def test_bad_classes_and_backbones_are_refused():
    loaded = small()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    with pytest.raises(OptionsError, match="class 9 does not exist"):
        attention_gradients(loaded, x, [[9]])
    with pytest.raises(OptionsError, match="same number of classes"):
        attention_gradients(loaded, x, [[1], [2]])
    backbone = tiny("vit_tiny_patch16_224", model_kwargs={"depth": 1, "num_classes": 0})
    with pytest.raises(ModelError, match="no classifier"):
        attention_gradients(backbone, torch.randn(1, 3, 224, 224), [[0]])


# ---------------------------------------------------------------- Chefer, hand-worked example


def test_chefer_matches_a_hand_computation():
    # 3 tokens (class token + 2 patches), 2 layers, 2 heads.
    layout = TokenLayout(("cls",), (1, 2), (16, 16), "cls")
    a1 = np.array([[0.5, 0.25, 0.25], [0, 1, 0], [0, 0, 1]])
    g1a = np.array([[1, 2, -4], [0, 0, 0], [0, 0, 0]])  # head a: (G⊙A)⁺ = [.5, .5, 0] in row 0
    g1b = -g1a  # head b: (G⊙A)⁺ = [0, 0, 1]; a clamp after the mean would cancel both to 0
    a2 = np.array([[0.2, 0.6, 0.2], [0.5, 0.5, 0], [0, 0.5, 0.5]])
    g2 = np.array([[1, 1, 1], [2, 0, 0], [0, 0, 0]])
    attn = np.stack([np.stack([a1, a1]), np.stack([a2, a2])])
    grads = np.stack([np.stack([g1a, g1b]), np.stack([g2, g2])]).astype(float)
    # By hand: Ā1 = [[.25,.25,.5],0,0]; R1 = I + Ā1 = [[1.25,.25,.5],[0,1,0],[0,0,1]]
    # Ā2 = [[.2,.6,.2],[1,0,0],0]; row 0 of Ā2 R1 = [.25,.65,.3]; R2[0] = [1.5,.9,.8]
    got = methods.compute_map("chefer", attn, layout, grads=grads)
    np.testing.assert_allclose(got, [[0.9, 0.8]], atol=1e-12)
    row = methods.chefer(attn, layout, grads=grads)
    np.testing.assert_allclose(row, [1.5, 0.9, 0.8], atol=1e-12)


def test_chefer_readout_follows_the_layout():
    rng = np.random.default_rng(3)
    attn = rng.dirichlet(np.ones(6), size=(2, 2, 6))
    grads = rng.normal(size=attn.shape)
    distilled = TokenLayout(("cls", "dist"), (2, 2), (16, 16), "cls+dist")
    pooled = TokenLayout(("cls", "dist"), (2, 2), (16, 16), "avg")
    # independent: the full R, then the readout rows
    abar = np.clip(grads * attn, 0, None).mean(axis=1)
    r = np.eye(6)
    for layer in range(2):
        r = r + abar[layer] @ r
    np.testing.assert_allclose(
        methods.compute_map("chefer", attn, distilled, grads=grads).ravel(),
        (r[0] + r[1])[2:] / 2,
        atol=1e-12,
    )
    np.testing.assert_allclose(
        methods.compute_map("chefer", attn, pooled, grads=grads).ravel(),
        r[2:].mean(axis=0)[2:],
        atol=1e-12,
    )


# ---------------------------------------------------------------- gradient rollout pairing


def _grad_rollout_reference(attn, grads, pairing, discard=0.0):
    """Independent gradient rollout: layer l's attention times grads[pairing[l]]."""
    n = attn.shape[-1]
    rolled = np.eye(n)
    for layer in range(attn.shape[0]):
        fused = np.clip((attn[layer] * grads[pairing[layer]]).mean(axis=0), 0, None)
        hat = fused + np.eye(n)
        hat = hat / hat.sum(axis=-1, keepdims=True)  # rows sum to 1
        rolled = hat @ rolled
    return rolled[0, 1:]


def test_grad_rollout_pairs_each_layer_with_its_own_gradient():
    rng = np.random.default_rng(7)
    layout = TokenLayout(("cls",), (2, 2), (16, 16), "cls")
    attn = rng.dirichlet(np.ones(5), size=(3, 2, 5))
    grads = rng.normal(size=attn.shape) * np.array([1.0, 5.0, -3.0])[:, None, None, None]
    got = methods.compute_map("grad-rollout", attn, layout, grads=grads).ravel()
    right = _grad_rollout_reference(attn, grads, [0, 1, 2])
    reversed_ = _grad_rollout_reference(attn, grads, [2, 1, 0])  # vit-explain's pairing
    np.testing.assert_allclose(got, right, atol=1e-12)
    assert not np.allclose(got, reversed_, atol=1e-3)


def test_grad_rollout_on_a_real_model_uses_its_own_layer_gradients():
    loaded = small()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    _, attn, grads, layout, _ = attention_gradients(loaded, x, [[2]])
    a, g = attn[0].numpy(), grads[0, 0].numpy()
    got = methods.compute_map("grad-rollout", a, layout, grads=g).ravel()
    np.testing.assert_allclose(got, _grad_rollout_reference(a, g, [0, 1]), rtol=1e-5, atol=1e-9)


def test_attn_grad_is_the_readout_row_of_the_clamped_product():
    rng = np.random.default_rng(9)
    layout = TokenLayout(("cls",), (2, 2), (16, 16), "cls")
    attn = rng.dirichlet(np.ones(5), size=(3, 2, 5))
    grads = rng.normal(size=attn.shape)
    got = methods.compute_map("attn-grad", attn, layout, grads=grads, layer=1, head=1).ravel()
    np.testing.assert_allclose(got, np.clip(attn[1, 1] * grads[1, 1], 0, None)[0, 1:])
    fused = methods.compute_map(
        "attn-grad", attn, layout, grads=grads, layer=1, fusion="max"
    ).ravel()
    np.testing.assert_allclose(fused, np.clip(attn[1] * grads[1], 0, None).max(axis=0)[0, 1:])
    assert methods.METHODS["attn-grad"].gradient_layers({"layer": -2}, 3) == [1]
    assert methods.METHODS["grad-rollout"].gradient_layers({"start_layer": 1}, 3) == [1, 2]
    assert methods.METHODS["chefer"].gradient_layers({}, 3) == [0, 1, 2]
    assert methods.METHODS["rollout"].gradient_layers({}, 3) == []


# ---------------------------------------------------------------- layouts and the demo model


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("deit_tiny_distilled_patch16_224", {}),
        ("vit_tiny_patch16_224", {"reg_tokens": 2, "class_token": False, "global_pool": "avg"}),
    ],
)
def test_every_layout_gets_finite_class_maps(name, kwargs, cat_image):
    loaded = tiny(name, model_kwargs={"depth": 2, **kwargs})
    res = LocalBackend(loaded).explain_classes([cat_image], [[None, 7]], full_gradients=True)[0]
    expl = res.explanation
    assert res.classes[0] == expl.predictions[0].index and res.classes[1] == 7
    assert [r.index for r in res.relevance] == res.classes
    for method in ("chefer", "grad-rollout", "attn-grad"):
        for k in range(2):
            m = methods.compute_map(method, expl.attention, expl.layout, grads=res.relevance[k])
            assert m.shape == expl.layout.grid and np.isfinite(m).all()
            # the compact relevance gives the map the full gradients give
            full = methods.compute_map(method, expl.attention, expl.layout, grads=res.gradients[k])
            np.testing.assert_allclose(m, full, rtol=1e-5, atol=1e-7 * np.abs(full).max())
    # the full gradients' map equals an independent numpy loop: R = I; R += Ā_l R
    a_np, layout = expl.attention.astype(np.float64), expl.layout
    for k in range(2):
        abar = np.clip(a_np * res.gradients[k], 0, None).mean(axis=1)
        r = np.eye(layout.num_tokens)
        for layer in abar:
            r = r + layer @ r
        want = (layout.readout_weights() @ r)[layout.num_prefix :].reshape(layout.grid)
        got = methods.compute_map("chefer", expl.attention, layout, grads=res.gradients[k])
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * np.abs(want).max())
    # the two classes give two different maps
    a = methods.compute_map("chefer", expl.attention, expl.layout, grads=res.relevance[0])
    b = methods.compute_map("chefer", expl.attention, expl.layout, grads=res.relevance[1])
    assert not np.allclose(a, b)


def test_class_maps_find_each_class_on_demo_two_object_scenes():
    from vitviz.demo import metrics
    from vitviz.demo.scenes import generate_scene

    backend = LocalBackend.from_name("demo", device="cpu")
    scenes = [generate_scene(9_200_000 + i, 2) for i in range(24)]
    results = backend.explain_classes(
        [Image.fromarray(s.image) for s in scenes], [list(s.classes) for s in scenes]
    )
    wins = 0
    for scene, res in zip(scenes, results, strict=True):
        expl = res.explanation
        maps = [
            methods.compute_map("chefer", expl.attention, expl.layout, grads=res.relevance[k])
            for k in range(2)
        ]
        assert not np.allclose(maps[0], maps[1])
        for k in range(2):
            wins += metrics.right_object_wins(maps[k], scene.masks[k], scene.masks[1 - k])
    # of 48 (scene, class) pairs; a class-agnostic map wins exactly half (24); the shipped
    # model scores 39 here and 0.865 on the 600-pair benchmark
    assert wins >= 34


LAYOUTS = {
    "cls": TokenLayout(prefix=("cls",), grid=(2, 3), patch_size=(16, 16), readout="cls"),
    "cls+dist": TokenLayout(
        prefix=("cls", "dist"), grid=(2, 3), patch_size=(16, 16), readout="cls+dist"
    ),
    "avg, registers": TokenLayout(
        prefix=("reg", "reg"), grid=(2, 3), patch_size=(16, 16), readout="avg"
    ),
}


def random_case(layout: TokenLayout, seed: int = 0, layers: int = 4, heads: int = 3):
    rng = np.random.default_rng(seed)
    n = layout.num_tokens
    logits = rng.normal(size=(layers, heads, n, n)) * 2
    attn = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    grads = rng.normal(size=attn.shape) * 10.0 ** rng.uniform(-3, 1)
    return attn.astype(np.float32), grads.astype(np.float32)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_class_relevance_gives_every_class_map_the_full_gradients_give(name):
    layout = LAYOUTS[name]
    attn, grads = random_case(layout)
    rel = methods.class_relevance(attn, grads, layout, index=2, label="two")
    assert rel.layers == (0, 1, 2, 3) and (rel.index, rel.label) == (2, "two")
    cases = [("chefer", {})]
    for fusion in methods.FUSIONS:
        for discard in (0.0, 0.4):
            for start in (0, 2):
                opts = {"fusion": fusion, "discard": discard, "start_layer": start}
                cases.append(("grad-rollout", opts))
        for head in (None, 0, 2):
            for layer in (0, -1):
                cases.append(("attn-grad", {"fusion": fusion, "head": head, "layer": layer}))
    for method, opts in cases:
        want = methods.compute_map(method, attn, layout, grads=grads, **opts)
        got = methods.compute_map(method, attn, layout, grads=rel, **opts)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    # tensors in, tensors out, as with full gradients
    t = methods.compute_map("grad-rollout", torch.from_numpy(attn), layout, grads=rel, fusion="max")
    assert isinstance(t, torch.Tensor) and t.shape == layout.grid


def test_class_relevance_is_smaller_than_the_gradients_for_many_heads():
    layout = TokenLayout(prefix=("cls",), grid=(14, 14), patch_size=(16, 16), readout="cls")
    attn, grads = random_case(layout, layers=2, heads=12)  # ViT-B/16's N and H
    rel = methods.class_relevance(attn, grads, layout)
    assert rel.nbytes <= grads.nbytes / 2.8  # 4 matrices per layer (3 fused, Chefer) for 12 heads


def test_relevance_of_some_layers_says_which_maps_it_cannot_make():
    layout = LAYOUTS["cls"]
    attn, grads = random_case(layout)
    partial = methods.class_relevance(attn, grads, layout).only([2, 3])
    assert partial.layers == (2, 3) and not partial.chefer[:2].any()
    want = methods.compute_map("grad-rollout", attn, layout, grads=grads, start_layer=2)
    np.testing.assert_allclose(  # Chefer from layer 2 needs only layers 2 and 3
        methods.compute_map("chefer", attn, layout, grads=partial, start_layer=2),
        methods.compute_map("chefer", attn, layout, grads=grads, start_layer=2),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        methods.compute_map("grad-rollout", attn, layout, grads=partial, start_layer=2),
        want,
        rtol=1e-5,
    )
    with pytest.raises(OptionsError, match="were not computed"):
        methods.compute_map("chefer", attn, layout, grads=partial)
    with pytest.raises(OptionsError, match="were not computed"):
        methods.compute_map("grad-rollout", attn, layout, grads=partial, start_layer=1)
    with pytest.raises(OptionsError, match="were not computed"):
        methods.compute_map("attn-grad", attn, layout, grads=partial, layer=0)
    other = LAYOUTS["cls+dist"]
    with pytest.raises(OptionsError, match="different runs"):
        methods.compute_map(
            "chefer",
            random_case(other)[0],
            other,
            grads=methods.class_relevance(attn, grads, layout),
        )


def test_batched_backward_reduces_each_class_as_the_full_gradients_do(vit_tiny, cat_image):
    """One pass for several images and classes equals the per-image full gradients."""
    from vitviz.engine.gradients import attention_relevance

    loaded = vit_tiny
    x = torch.stack([loaded.to_tensor(loaded.seen_image(cat_image.rotate(a))) for a in (0, 90)])
    out = attention_relevance(loaded, x, [[1, 5], [None, 5]], keep_gradients=True)
    assert out.gradients is not None and out.gradients.shape[:2] == (2, 2)
    for b in range(2):
        for k in range(2):
            rel = out.relevance[b][k]
            assert rel.index == out.classes[b][k] and rel.label == loaded.labels[rel.index]
            ref = methods.class_relevance(
                out.attention[b], out.gradients[k, b], out.layout, index=rel.index
            )
            np.testing.assert_allclose(rel.chefer, ref.chefer, rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(rel.fused, ref.fused, rtol=1e-5, atol=1e-9)
            np.testing.assert_allclose(rel.heads, ref.heads, rtol=1e-5, atol=1e-9)
    light = attention_relevance(loaded, x, [[1, 5], [None, 5]])
    assert light.gradients is None  # only the reduced form is kept
    np.testing.assert_allclose(light.relevance[1][1].fused, out.relevance[1][1].fused, rtol=1e-6)
