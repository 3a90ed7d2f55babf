"""Methods against hand-worked examples and independent numpy computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitviz import methods
from vitviz.errors import OptionsError
from vitviz.layout import TokenLayout

# 3 tokens: [CLS, patch 0, patch 1] on a 1×2 grid of 16 px patches.
L3 = TokenLayout(prefix=("cls",), grid=(1, 2), patch_size=(16, 16), readout="cls")
A1 = np.array([[0.5, 0.25, 0.25], [0.2, 0.6, 0.2], [0.1, 0.3, 0.6]])
A2 = np.array([[0.2, 0.4, 0.4], [0.3, 0.3, 0.4], [0.5, 0.25, 0.25]])


def stack(*layers: np.ndarray) -> np.ndarray:
    """``[L, H=1, N, N]`` from single-head layers."""
    return np.stack(layers)[:, None]


def random_attention(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Random row-stochastic attention."""
    logits = rng.normal(size=shape) * 2
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def numpy_rollout(attn: np.ndarray, fusion: str = "mean", start: int = 0) -> np.ndarray:
    """Plain loop: R = Â_L ⋯ Â_s with Â = rownorm(fuse(A) + I)."""
    fuse = {"mean": np.mean, "max": np.max, "min": np.min}[fusion]
    n = attn.shape[-1]
    r = np.eye(n)
    for layer in range(start, attn.shape[0]):
        a = fuse(attn[layer], axis=0) + np.eye(n)
        a = a / a.sum(axis=1, keepdims=True)
        r = a @ r
    return r


def test_rollout_hand_worked_one_layer():
    # Â = (A1 + I) / 2 → row 0 = [0.75, 0.125, 0.125]
    np.testing.assert_allclose(methods.compute_map("rollout", stack(A1), L3), [[0.125, 0.125]])


def test_rollout_hand_worked_two_layers_in_order():
    # R = Â2 Â1; row 0 = 0.6 Â1[0] + 0.2 Â1[1] + 0.2 Â1[2] = [0.48, 0.265, 0.255].
    # The reversed product Â1 Â2 would give [0.5, 0.246875, 0.253125].
    out = methods.compute_map("rollout", stack(A1, A2), L3)
    np.testing.assert_allclose(out, [[0.265, 0.255]])
    full = methods.rollout_matrix(stack(A1, A2), L3)
    np.testing.assert_allclose(full[0], [0.48, 0.265, 0.255])


def test_rollout_start_layer_skips_early_layers():
    np.testing.assert_allclose(
        methods.compute_map("rollout", stack(A1, A2), L3, start_layer=1), [[0.2, 0.2]]
    )


def test_rollout_equals_numpy_loop_all_fusions():
    rng = np.random.default_rng(0)
    layout = TokenLayout(("cls",), (3, 4), (16, 16), "cls")
    attn = random_attention(rng, (5, 4, 13, 13))
    for fusion in methods.FUSIONS:
        for start in (0, 2):
            expected = numpy_rollout(attn, fusion, start)[0, 1:].reshape(3, 4)
            got = methods.compute_map("rollout", attn, layout, fusion=fusion, start_layer=start)
            np.testing.assert_allclose(got, expected, rtol=1e-10)
            full = methods.rollout_matrix(attn, layout, fusion=fusion, start_layer=start)
            np.testing.assert_allclose(full, numpy_rollout(attn, fusion, start), rtol=1e-10)
            np.testing.assert_allclose(full.sum(-1), 1.0)


def test_mean_fusion_rollout_equals_product_of_half_a_plus_i():
    rng = np.random.default_rng(1)
    attn = random_attention(rng, (4, 3, 7, 7))
    layout = TokenLayout(("cls",), (2, 3), (8, 8), "cls")
    r = np.eye(7)
    for a in attn.mean(axis=1):
        r = 0.5 * (a + np.eye(7)) @ r
    np.testing.assert_allclose(methods.rollout_matrix(attn, layout), r, rtol=1e-10)


def test_identity_attention_gives_uniform_rollout():
    layout = TokenLayout(("cls",), (2, 2), (16, 16), "cls")
    attn = np.broadcast_to(np.eye(5), (6, 2, 5, 5)).copy()
    np.testing.assert_allclose(methods.rollout_matrix(attn, layout), np.eye(5))
    np.testing.assert_array_equal(methods.compute_map("rollout", attn, layout), np.zeros((2, 2)))
    # Uniform attention U is idempotent, so ((U + I)/2)^L = (I + (2^L - 1) U) / 2^L: every
    # patch gets (1 - 2^-L) / N from the class token — a uniform map.
    uniform = np.full((6, 2, 5, 5), 0.2)
    expected = (1 - 2.0**-6) / 5
    np.testing.assert_allclose(
        methods.compute_map("rollout", uniform, layout), np.full((2, 2), expected)
    )


def test_discard_zero_is_exactly_plain_rollout():
    rng = np.random.default_rng(2)
    layout = TokenLayout(("cls",), (2, 3), (8, 8), "cls")
    attn = random_attention(rng, (2, 4, 3, 7, 7))
    a = methods.compute_map("rollout", attn, layout, discard=0.0)
    b = methods.compute_map("rollout", attn, layout)
    assert np.array_equal(a, b)


def test_discard_hand_worked_protects_readout_self_attention():
    # The smallest entry, A[cls, cls] = 0.05, is protected. With d = 0.25, floor(0.25·9) = 2
    # entries are zeroed: (1, 2) = 0.1 and (2, 0) = 0.15. Then +I and row normalization:
    # row 0 = [1.05, 0.55, 0.4] / 2 = [0.525, 0.275, 0.2].
    a = np.array([[0.05, 0.55, 0.4], [0.2, 0.7, 0.1], [0.15, 0.3, 0.55]])
    hat = methods.rollout_layers(stack(a), L3, discard=0.25)[0]
    expected = np.array([[1.05, 0.55, 0.4], [0.2, 1.7, 0.0], [0.0, 0.3, 1.55]])
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(hat, expected)
    np.testing.assert_allclose(
        methods.compute_map("rollout", stack(a), L3, discard=0.25), [[0.275, 0.2]]
    )


def test_discard_is_per_image_in_a_batch():
    rng = np.random.default_rng(3)
    layout = TokenLayout(("cls",), (2, 3), (8, 8), "cls")
    batch = random_attention(rng, (3, 4, 2, 7, 7))
    together = methods.compute_map("rollout", batch, layout, discard=0.6)
    for i in range(3):
        alone = methods.compute_map("rollout", batch[i], layout, discard=0.6)
        np.testing.assert_allclose(together[i], alone, rtol=1e-12)
        # exactly floor(0.6·49) entries of each fused layer are zeroed, the smallest ones,
        # and the class token's self-attention is kept
        fused = torch.from_numpy(batch[i].mean(axis=1))
        kept = methods.discard_lowest(fused, layout, 0.6).numpy()
        assert ((kept == 0).reshape(4, -1).sum(-1) == int(0.6 * 49)).all()
        assert (kept[:, 0, 0] == fused.numpy()[:, 0, 0]).all()
        for layer in range(4):
            zeroed = fused.numpy()[layer][kept[layer] == 0]
            survivors = fused.numpy()[layer][kept[layer] > 0]
            survivors = np.delete(survivors, 0) if fused[layer, 0, 0] < zeroed.max() else survivors
            assert zeroed.max() <= survivors.min()


def test_distilled_readout_protects_both_tokens_and_averages_rows():
    layout = TokenLayout(("cls", "dist"), (1, 2), (16, 16), "cls+dist")
    assert layout.readout_tokens == [0, 1]
    rng = np.random.default_rng(4)
    attn = random_attention(rng, (1, 1, 4, 4))
    attn[0, 0, 0, 0] = attn[0, 0, 1, 1] = 1e-6
    attn /= attn.sum(-1, keepdims=True)
    hat = methods.rollout_layers(attn, layout, discard=0.5)[0]
    assert hat[0, 0] > 0 and hat[1, 1] > 0
    plain = methods.compute_map("attention", attn, layout)
    np.testing.assert_allclose(plain.ravel(), (attn[0, 0, 0, 2:] + attn[0, 0, 1, 2:]) / 2)


def test_attention_map_picks_layer_head_and_fuses():
    rng = np.random.default_rng(5)
    layout = TokenLayout(("cls", "reg", "reg"), (2, 2), (14, 14), "cls")
    attn = random_attention(rng, (3, 4, 7, 7))
    got = methods.compute_map("attention", attn, layout, layer=1, head=2)
    np.testing.assert_allclose(got, attn[1, 2, 0, 3:].reshape(2, 2))
    np.testing.assert_allclose(
        methods.compute_map("attention", attn, layout, layer=-1, fusion="max"),
        attn[2, :, 0, 3:].max(0).reshape(2, 2),
    )
    np.testing.assert_allclose(
        methods.compute_map("attention", attn, layout, layer=0, fusion="min"),
        attn[0, :, 0, 3:].min(0).reshape(2, 2),
    )


def test_head_rows_hold_every_head_and_fusion_the_browser_can_show():
    rng = np.random.default_rng(8)
    layout = TokenLayout(("cls", "reg"), (2, 3), (16, 16), "cls")
    attn = random_attention(rng, (3, 4, 8, 8))
    for patch in (None, 4):
        rows = methods.head_rows(attn, layout, patch=patch)
        assert rows.shape == (3, 4 + 3, 8)
        q = 0 if patch is None else 2 + patch  # the readout's row or the patch's
        for layer in range(3):
            for head in range(4):  # slot h: head h's own row, prefix tokens included
                got = rows[layer, methods.head_slot(4, head)]
                np.testing.assert_allclose(got, attn[layer, head, q], rtol=1e-6)
            for fusion, fuse in (("mean", np.mean), ("max", np.max), ("min", np.min)):
                got = rows[layer, methods.head_slot(4, -1, fusion)]
                np.testing.assert_allclose(got, fuse(attn[layer, :, q], axis=0), rtol=1e-6)
    with pytest.raises(OptionsError, match="fusion must be one of"):
        methods.head_slot(4, -1, "median")


def test_avg_readout_is_mean_of_patch_rows():
    layout = TokenLayout(("reg",) * 4, (2, 2), (16, 16), "avg")
    rng = np.random.default_rng(6)
    attn = random_attention(rng, (2, 2, 8, 8))
    got = methods.compute_map("attention", attn, layout, layer=0, head=1)
    np.testing.assert_allclose(got.ravel(), attn[0, 1, 4:, 4:].mean(0))


def test_query_map_row_and_rolled():
    rng = np.random.default_rng(7)
    layout = TokenLayout(("cls",), (2, 3), (16, 16), "cls")
    attn = random_attention(rng, (3, 2, 7, 7))
    got = methods.compute_map("query", attn, layout, patch=4, layer=2, head=0)
    np.testing.assert_allclose(got.ravel(), attn[2, 0, 5, 1:])
    rolled = methods.compute_map("query", attn, layout, patch=4, rolled=True)
    np.testing.assert_allclose(rolled.ravel(), numpy_rollout(attn)[5, 1:])
    with pytest.raises(OptionsError, match="patch 6 is out of range"):
        methods.compute_map("query", attn, layout, patch=6)


def test_threshold_mask_keeps_smallest_set_with_the_share():
    values = np.array([[0.4, 0.1], [0.3, 0.2]])
    np.testing.assert_array_equal(methods.threshold_mask(values, 0.6), [[1, 0], [1, 0]])
    np.testing.assert_array_equal(methods.threshold_mask(values, 0.7), [[1, 0], [1, 0]])
    np.testing.assert_array_equal(methods.threshold_mask(values, 0.71), [[1, 0], [1, 1]])
    rng = np.random.default_rng(8)
    for t in (0.1, 0.5, 0.6, 0.9, 1.0):
        v = rng.random((5, 7))
        m = methods.threshold_mask(v, t).astype(bool)
        share = v[m].sum() / v.sum()
        assert share >= t - 1e-12
        # minimal: dropping the smallest kept cell falls below the share
        assert (v[m].sum() - v[m].min()) / v.sum() < t


def test_mask_method_thresholds_the_readout_map():
    rng = np.random.default_rng(9)
    layout = TokenLayout(("cls",), (3, 3), (16, 16), "cls")
    attn = random_attention(rng, (2, 2, 10, 10))
    m = methods.compute_map("mask", attn, layout, threshold=0.5)
    # independently: the last layer's CLS row, head-mean, cells largest first until half the mass
    base = attn[-1].mean(axis=0)[0, 1:]
    order = np.argsort(-base, kind="stable")
    before = np.cumsum(base[order]) - base[order]
    want = np.zeros(9)
    want[order[before < 0.5 * base.sum()]] = 1
    np.testing.assert_array_equal(m.ravel(), want)
    kept, dropped = base[want == 1], base[want == 0]
    assert kept.min() >= dropped.max() and 0 < want.sum() < 9
    assert base[want == 1].sum() >= 0.5 * base.sum() > base[want == 1].sum() - kept.min()


def test_mean_attention_distance_hand_worked():
    # Patch centres 16 px apart. Patch 0 is token 1: row [0.2 | 0.6, 0.2] → [0.75, 0.25] over
    # the patches → 0.25·16 = 4 px. Patch 1 is token 2: row [0.1 | 0.3, 0.6] → [1/3, 2/3]
    # → 16/3 px. Mean (4 + 16/3) / 2 = 14/3 px.
    d = methods.mean_attention_distance(stack(A1), L3)
    np.testing.assert_allclose(d, [[14 / 3]])


def test_mean_attention_distance_matches_loop():
    rng = np.random.default_rng(10)
    layout = TokenLayout(("cls", "reg"), (3, 2), (14, 14), "cls")
    attn = random_attention(rng, (2, 3, 8, 8))
    centres = layout.patch_centers()
    expected = np.zeros((2, 3))
    for li in range(2):
        for h in range(3):
            total = 0.0
            for q in range(6):
                p = attn[li, h, 2 + q, 2:]
                p = p / p.sum()
                total += sum(p[k] * np.linalg.norm(centres[q] - centres[k]) for k in range(6))
            expected[li, h] = total / 6
    np.testing.assert_allclose(methods.mean_attention_distance(attn, layout), expected)


def test_entropy_uniform_and_one_hot():
    layout = TokenLayout(("cls",), (2, 2), (16, 16), "cls")
    uniform = np.full((1, 2, 5, 5), 0.2)
    np.testing.assert_allclose(methods.attention_entropy(uniform, layout), np.log(5))
    eye = np.eye(5)[None, None].repeat(2, axis=1)
    np.testing.assert_allclose(methods.attention_entropy(eye, layout), 0.0)


def test_torch_in_torch_out_matches_numpy():
    rng = np.random.default_rng(11)
    layout = TokenLayout(("cls",), (2, 3), (16, 16), "cls")
    attn = random_attention(rng, (3, 2, 7, 7)).astype(np.float32)
    grads = rng.normal(size=attn.shape).astype(np.float32)
    for name in methods.METHODS:
        a = methods.compute_map(name, attn, layout, grads=grads)
        t = methods.compute_map(name, torch.from_numpy(attn), layout, grads=torch.from_numpy(grads))
        assert isinstance(t, torch.Tensor) and isinstance(a, np.ndarray)
        np.testing.assert_allclose(t.numpy(), a, rtol=1e-6)


def test_registry_options_are_validated():
    layout = TokenLayout(("cls",), (1, 2), (16, 16), "cls")
    with pytest.raises(OptionsError, match="unknown method"):
        methods.compute_map("gradcam", stack(A1), layout)
    with pytest.raises(OptionsError, match="takes no option layer"):
        methods.compute_map("rollout", stack(A1), layout, layer=0)
    with pytest.raises(OptionsError, match="layer 3 is out of range"):
        methods.compute_map("attention", stack(A1), layout, layer=3)
    with pytest.raises(OptionsError, match="head 1 is out of range"):
        methods.compute_map("attention", stack(A1), layout, head=1)
    with pytest.raises(OptionsError, match="discard"):
        methods.compute_map("rollout", stack(A1), layout, discard=1.0)
    with pytest.raises(OptionsError, match="unknown head fusion"):
        methods.compute_map("attention", stack(A1), layout, fusion="median")
    with pytest.raises(OptionsError, match="tokens but the layout"):
        methods.compute_map("rollout", stack(A1), TokenLayout(("cls",), (2, 2), (16, 16), "cls"))
    assert set(methods.METHODS) == {
        "attention",
        "rollout",
        "query",
        "mask",
        "chefer",
        "grad-rollout",
        "attn-grad",
    }
    with pytest.raises(OptionsError, match="class-specific"):
        methods.compute_map("chefer", stack(A1), layout)


def test_discard_count_survives_float_rounding():
    # 0.29 · 100 = 28.999999999999996 in floating point; 29 entries must still go
    layout = TokenLayout(("cls",), (3, 3), (16, 16), "cls")
    fused = torch.arange(1, 101, dtype=torch.float64).reshape(10, 10)
    kept = methods.discard_lowest(fused, layout, 0.29)
    assert int((kept == 0).sum()) == 29


def test_half_precision_attention_gives_fp32_results():
    rng = np.random.default_rng(12)
    layout = TokenLayout(("cls",), (2, 3), (16, 16), "cls")
    attn = random_attention(rng, (3, 4, 7, 7)).astype(np.float32)
    half = torch.from_numpy(attn).half()
    grads = rng.normal(size=attn.shape).astype(np.float16)
    for name in methods.METHODS:
        got = methods.compute_map(name, half, layout, grads=torch.from_numpy(grads))
        assert got.dtype == torch.float32
        ref = methods.compute_map(name, attn, layout, grads=grads.astype(np.float32))
        np.testing.assert_allclose(got.numpy(), ref, atol=2e-3)
    d = methods.mean_attention_distance(half, layout)
    np.testing.assert_allclose(d.numpy(), methods.mean_attention_distance(attn, layout), rtol=1e-2)


def test_the_head_table_labels_heads_built_to_be_local_global_sink_and_diagonal():
    """Four synthetic heads on a 4×4 grid with [CLS]: each gets its kind, and the numbers are
    the hand-computed ones."""
    layout = TokenLayout(("cls",), (4, 4), (16, 16), "cls")
    n, p = 17, 16
    centres = layout.patch_centers()
    local = np.zeros((n, n))
    for q in range(p):  # a patch looks at itself and its 4-neighbours, evenly
        near = [k for k in range(p) if np.abs(centres[k] - centres[q]).sum() <= 16]
        local[q + 1, [k + 1 for k in near]] = 1 / len(near)
    uniform = np.full((n, n), 1 / n)
    sink = np.full((n, n), 0.1 / p)
    sink[:, 0] = 0.9  # nine tenths of every row on [CLS]
    diagonal = np.full((n, n), 0.1 / (n - 1))
    np.fill_diagonal(diagonal, 0.9)
    for a in (local, uniform, sink, diagonal):
        a[0] = 1 / n  # the [CLS] row: evenly (not part of any rule)
    attn = np.stack([local, uniform, sink, diagonal])[None].astype(np.float32)  # [1, 4, n, n]
    table = methods.head_table(attn, layout)
    assert table["kind"] == ["local", "global", "prefix sink", "diagonal"]
    assert table["layer"] == [0, 0, 0, 0] and table["head"] == [0, 1, 2, 3]
    assert table["to_prefix"][2] == pytest.approx(0.9) and table["to_prefix"][1] == pytest.approx(
        1 / n
    )
    assert table["to_self"][3] == pytest.approx(0.9) and table["to_self"][0] == pytest.approx(
        np.mean([local[q + 1, q + 1] for q in range(p)])
    )
    # uniform attention's distance: every pair of patch centres, evenly
    pairs = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    assert table["mean_distance"][1] == pytest.approx(pairs.mean(), rel=1e-5)
    assert table["mean_distance"][0] < 0.5 * pairs.mean() < table["mean_distance"][1]
