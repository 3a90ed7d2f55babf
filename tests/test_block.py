"""Inside the encoder blocks and the model's sizes, against independent computations."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import timm
import torch
from timm.models.vision_transformer import Block, ResPostBlock

from tests.conftest import STATE_TIMEOUT_S, tiny
from vitviz.engine.block import block_anatomy, block_steps, block_steps_of, default_tokens
from vitviz.engine.sizes import (
    BERT_BASE_MAX_TOKENS,
    STANDARD_VITS,
    attention_cost,
    forward_passes,
    parameter_parts,
    standard_sizes,
    text_vs_image,
)
from vitviz.errors import ModelError, OptionsError
from vitviz.layout import TokenLayout
from vitviz.memory.cost import token_cost

LAYOUT_224 = TokenLayout(prefix=("cls",), grid=(14, 14), patch_size=(16, 16), readout="cls")


@pytest.fixture(scope="module")
def demo():
    from vitviz.backends.local import LocalBackend

    return LocalBackend.from_name("demo", device="cpu").loaded


def _models(demo):
    """(loaded model, name) pairs: a plain ViT, one with LayerScale and registers, the demo."""
    return [
        (tiny("vit_tiny_patch16_224", model_kwargs={"depth": 3}), "vit_tiny"),
        (
            tiny("vit_small_patch14_reg4_dinov2", model_kwargs={"img_size": 112, "depth": 2}),
            "dinov2_reg4",
        ),
        (demo, "demo"),
    ]


def _hand_stream(model: torch.nn.Module, x: torch.Tensor, tokens: list[int]):
    """Each block's sub-blocks called explicitly; norms of ``tokens`` in float64."""
    rows: dict[str, list[np.ndarray]] = {k: [] for k in ("in", "mid", "out", "attn", "mlp")}

    def norm(t: torch.Tensor) -> np.ndarray:
        return t[0, tokens].double().norm(dim=-1).numpy()

    with torch.inference_mode():
        h = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
        for blk in model.blocks:
            a = blk.drop_path1(blk.ls1(blk.attn(blk.norm1(h))))
            mid = h + a
            m = blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(mid))))
            out = mid + m
            for key, value in zip(rows, (h, mid, out, a, m), strict=True):
                rows[key].append(norm(value))
            h = out
        features = model.forward_features(x)
    return {k: np.stack(v) for k, v in rows.items()}, h, features


def test_residual_norms_equal_a_hand_loop_over_the_blocks(cat_image, demo):
    for loaded, name in _models(demo):
        seen = loaded.seen_image(cat_image)
        layout = loaded.layout((seen.size[1], seen.size[0]))
        tokens = [0, layout.num_prefix, layout.num_tokens - 1]
        steps = block_steps_of(loaded, seen, tokens=tokens)
        r = steps.residual
        x = loaded.to_tensor(seen)[None]
        hand, last, features = _hand_stream(loaded.model, x, tokens)
        assert r.tokens == tuple(tokens), name
        assert r.kinds == ("cls", "patch", "patch"), name
        assert r.entering.shape == (len(loaded.model.blocks), 3), name
        for field, key in [
            ("entering", "in"),
            ("after_attention", "mid"),
            ("after_mlp", "out"),
            ("attention_update", "attn"),
            ("mlp_update", "mlp"),
        ]:
            np.testing.assert_allclose(getattr(r, field), hand[key], rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(r.attention_ratio, hand["attn"] / hand["in"], rtol=1e-5)
        np.testing.assert_allclose(r.mlp_ratio, hand["mlp"] / hand["mid"], rtol=1e-5)
        # a block's output enters the next one
        np.testing.assert_allclose(r.after_mlp[:-1], r.entering[1:], rtol=1e-6)
        # x after the last block is forward_features BEFORE the final norm: the norm gives it
        with torch.inference_mode():
            np.testing.assert_allclose(loaded.model.norm(last), features, atol=1e-5)
        np.testing.assert_allclose(r.after_mlp[-1], last[0, tokens].double().norm(dim=-1))
        assert r.layer_scale == (name == "dinov2_reg4")


def test_default_tokens_are_the_readout_and_the_centre_patch(vit_tiny):
    assert default_tokens(LAYOUT_224) == [0, 1 + 7 * 14 + 7]
    dist = TokenLayout(("cls", "dist"), (14, 14), (16, 16), "cls+dist")
    assert default_tokens(dist) == [0, 1, 2 + 7 * 14 + 7]


def test_layer_norm_by_hand_equals_the_module(cat_image, demo):
    loaded = tiny("vit_tiny_patch16_224", model_kwargs={"depth": 3})
    seen = loaded.seen_image(cat_image)
    for model_loaded, layer, which, token in [(loaded, 0, "norm1", 50), (demo, 2, "norm2", 0)]:
        s = block_steps_of(model_loaded, seen, layer=layer, norm=which, token=token).norm
        module = getattr(model_loaded.model.blocks[layer], which)
        x = s.before.astype(np.float64)
        mean, var = x.mean(), ((x - x.mean()) ** 2).mean()  # biased variance
        gamma = module.weight.detach().double().numpy()
        beta = module.bias.detach().double().numpy()
        by_hand = (x - mean) / np.sqrt(var + module.eps) * gamma + beta
        assert (s.kind, s.which, s.layer, s.token) == ("LayerNorm", which, layer, token)
        assert s.eps == module.eps
        assert s.mean == pytest.approx(mean) and s.variance == pytest.approx(var)
        assert s.std == pytest.approx(np.sqrt(var + module.eps))
        np.testing.assert_allclose(s.normalized.mean(), 0.0, atol=1e-9)
        np.testing.assert_allclose(s.after, by_hand, atol=1e-9)
        np.testing.assert_allclose(s.output, by_hand, atol=1e-5)  # the module's own output
        with torch.inference_mode():
            own = module(torch.from_numpy(s.before)[None]).double().numpy()[0]
        np.testing.assert_allclose(s.output, own, atol=1e-6)


def test_rms_norm_steps():
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, depth=2, norm_layer=timm.layers.RmsNorm
    ).eval()
    x = torch.randn(1, 3, 224, 224)
    s = block_steps(model, LAYOUT_224, x, token=3).norm
    assert s.kind == "RMSNorm" and s.mean is None and s.beta is None
    v = s.before.astype(np.float64)
    rms = np.sqrt((v**2).mean() + s.eps)
    gamma = model.blocks[0].norm1.weight.detach().double().numpy()
    np.testing.assert_allclose(s.after, v / rms * gamma, atol=1e-9)
    np.testing.assert_allclose(s.output, s.after, atol=1e-5)


def test_mlp_acts_on_each_token_alone(cat_image, demo):
    seen = demo.seen_image(cat_image)
    s = block_steps_of(demo, seen, layer=4, token=30).mlp
    blk = demo.model.blocks[4]
    assert (s.width, s.hidden, s.ratio, s.gated) == (192, 768, 4.0, False)
    assert s.activation == "GELU"
    assert s.independence_error < 1e-5
    np.testing.assert_allclose(s.alone, s.output, atol=1e-5)
    # the hidden activations by hand: fc1, GELU (exact, erf), fc2
    w1, b1 = blk.mlp.fc1.weight.detach().double().numpy(), blk.mlp.fc1.bias.detach().double()
    pre = w1 @ s.input.astype(np.float64) + b1.numpy()
    np.testing.assert_allclose(s.pre_activation, pre, atol=1e-4)
    post = torch.nn.functional.gelu(torch.from_numpy(pre)).numpy()
    np.testing.assert_allclose(s.post_activation, post, atol=1e-4)
    w2, b2 = blk.mlp.fc2.weight.detach().double().numpy(), blk.mlp.fc2.bias.detach().double()
    np.testing.assert_allclose(s.output, w2 @ post + b2.numpy(), atol=1e-4)
    # what the MLP reads is norm2 of x after the attention sub-block
    n2 = block_steps_of(demo, seen, layer=4, token=30, norm="norm2").norm
    np.testing.assert_allclose(s.input, n2.output, atol=1e-6)


def test_block_anatomy_reads_the_modules(demo):
    a = block_anatomy(demo.model, LAYOUT_224)
    attn = demo.model.blocks[0].attn
    assert (a.layers, a.width, a.heads, a.head_dim) == (6, 192, attn.num_heads, attn.head_dim)
    assert a.head_dim * a.heads == a.width
    assert a.qkv_weight == (3 * 192, 192) and a.q_shape == (3, 197, 64)
    assert a.scores_shape == (3, 197, 197) and a.mlp_hidden == 768
    assert (a.activation, a.norm, a.layer_scale, a.qk_norm) == ("GELU", "LayerNorm", False, False)


def test_other_blocks_are_refused_clearly():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 224, 224)
    post = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, depth=2, block_fn=ResPostBlock
    ).eval()
    with pytest.raises(ModelError, match=r"not a standard pre-norm ViT block.*ls1"):
        block_steps(post, LAYOUT_224, x)

    class PostNorm(Block):  # the attributes of a timm block, the maths of a post-norm one
        def forward(self, x, attn_mask=None, is_causal=False):
            x = self.norm1(x + self.ls1(self.attn(x)))
            return self.norm2(x + self.ls2(self.mlp(x)))

    class PostNormAll(Block):  # every submodule called, still post-norm: the sums differ
        def forward(self, x, attn_mask=None, is_causal=False):
            x = self.norm1(x + self.drop_path1(self.ls1(self.attn(x))))
            return self.norm2(x + self.drop_path2(self.ls2(self.mlp(x))))

    for block_fn, why in [(PostNorm, "never called drop_path1"), (PostNormAll, "does not")]:
        model = timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, depth=2, block_fn=block_fn
        ).eval()
        with pytest.raises(ModelError, match=why) as err:
            block_steps(model, LAYOUT_224, x)
        assert "not a standard pre-norm ViT block" in str(err.value)
        # nothing left behind on the modules
        assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_bad_options_are_refused(demo):
    x = torch.zeros(1, 3, 224, 224)
    with pytest.raises(OptionsError):
        block_steps(demo.model, LAYOUT_224, x, tokens=[197])
    with pytest.raises(OptionsError):
        block_steps(demo.model, LAYOUT_224, x, layer=6)
    with pytest.raises(OptionsError):
        block_steps(demo.model, LAYOUT_224, x, norm="norm3")


def test_concurrent_calls_on_one_model_keep_their_own_numbers(cat_image, coffee_image, demo):
    images = [demo.seen_image(cat_image), demo.seen_image(coffee_image)]
    alone = [block_steps_of(demo, im, layer=3) for im in images]
    assert not np.allclose(alone[0].residual.entering, alone[1].residual.entering)
    rounds = 3
    barrier = threading.Barrier(2)
    results: dict[int, list] = {0: [], 1: []}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(rounds):
                barrier.wait(timeout=STATE_TIMEOUT_S)
                results[i].append(block_steps_of(demo, images[i], layer=3))
        except BaseException as err:  # reported below
            errors.append(err)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(STATE_TIMEOUT_S)
    assert not errors
    for i in (0, 1):
        assert len(results[i]) == rounds
        for got in results[i]:
            np.testing.assert_allclose(got.residual.entering, alone[i].residual.entering, 1e-5)
            np.testing.assert_allclose(got.residual.mlp_update, alone[i].residual.mlp_update, 1e-5)
            np.testing.assert_allclose(got.norm.before, alone[i].norm.before, atol=1e-5)
            np.testing.assert_allclose(got.mlp.post_activation, alone[i].mlp.post_activation, 1e-4)


# ----------------------------------------------------------------------------- sizes


def test_parameter_parts_sum_exactly_to_the_model(demo):
    models = {
        "plain": tiny("vit_tiny_patch16_224", model_kwargs={"depth": 2}).model,
        "registers": tiny(
            "vit_small_patch14_reg4_dinov2", model_kwargs={"img_size": 112, "depth": 2}
        ).model,
        "distilled": tiny("deit_tiny_distilled_patch16_224", model_kwargs={"depth": 2}).model,
        "demo": demo.model,
    }
    for name, model in models.items():
        count = parameter_parts(model)
        assert count.total == sum(p.numel() for p in model.parameters()), name
        assert sum(p.count for p in count.parts) == count.total, name
        assert "other" not in count.by_part(), name
    parts = parameter_parts(models["registers"]).by_part()
    assert parts["reg_token"] == 4 * 384 and parts["cls_token"] == 384
    assert parts["layer_scale"] == 2 * 2 * 384
    parts = parameter_parts(models["distilled"]).by_part()
    assert parts["dist_token"] == 192 and parts["head_dist"] == 192 * 1000 + 1000
    # the plain ViT against the formulas, part by part
    d, n = 192, 196
    parts = parameter_parts(models["plain"])
    assert parts.by_part()["patch_embed"] == 3 * 16 * 16 * d + d
    assert parts.by_part()["pos_embed"] == (n + 1) * d
    assert parts.block(1) == {
        "norms": 4 * d,
        "attention": 4 * d * d + 4 * d,
        "mlp": 8 * d * d + 5 * d,
    }
    # a parameter of no known part is counted as other, never dropped
    model = models["plain"]
    model.extra_scale = torch.nn.Parameter(torch.ones(7))
    count = parameter_parts(model)
    assert count.by_part()["other"] == 7
    assert count.total == sum(p.numel() for p in model.parameters())
    del model.extra_scale


def test_standard_vits_match_timm_built_on_meta():
    sizes = {s.name: s for s in standard_sizes()}
    assert sizes["ViT-B/16"].params == 86_567_656
    assert (sizes["ViT-B/16"].patches, sizes["ViT-B/16"].tokens) == (196, 197)
    assert sizes["ViT-H/14"].patches == 256
    for name, (arch, width, depth, heads, patch) in STANDARD_VITS.items():
        with torch.device("meta"):
            model = timm.create_model(arch, pretrained=False, num_classes=1000)
        size = sizes[name]
        assert (size.width, size.depth, size.heads, size.patch) == (width, depth, heads, patch)
        assert model.embed_dim == width and len(model.blocks) == depth
        assert model.blocks[0].attn.num_heads == heads
        assert model.blocks[0].mlp.fc1.out_features == size.mlp == 4 * width
        assert model.patch_embed.num_patches == size.patches
        assert size.params == sum(p.numel() for p in model.parameters()), name
        assert dict(size.parts) == parameter_parts(model).by_part(), name


def test_attention_cost_reuses_token_cost():
    cost = attention_cost(LAYOUT_224, layers=12, heads=3)
    assert cost == token_cost((224, 224), (16, 16), 1, 12, 3)
    assert cost.tokens == LAYOUT_224.num_tokens and cost.entries == 197**2


def test_text_vs_image():
    dist = TokenLayout(("cls", "dist"), (14, 14), (16, 16), "cls+dist")
    t = text_vs_image(dist, 192)
    assert (t.tokens, t.patches, t.extra, t.grid, t.width) == (198, 196, 2, (14, 14), 192)
    assert t.text_tokens == BERT_BASE_MAX_TOKENS == 512 and t.text_width == 768
    grid = t.grid_positions()
    assert grid.shape == (14, 14) and grid[0, 0] == 2 and grid[1, 0] == 2 + 14
    assert grid[-1, -1] == dist.num_tokens - 1
    np.testing.assert_array_equal(t.text_positions(), np.arange(512))


def test_pass_counts_against_brute_force():
    rng_d = 4
    for n in (1, 2, 3, 7, 16, 50):
        vit = autoregressive = cached = uncached = 0
        q = k = np.zeros((n, rng_d))
        vit += (q @ k.T).size  # one pass, every token against every token
        for i in range(1, n + 1):  # pass i produces token i from the i tokens so far
            autoregressive += 1
            cached += (np.zeros((1, rng_d)) @ np.zeros((i, rng_d)).T).size  # new query only
            uncached += (np.zeros((i, rng_d)) @ np.zeros((i, rng_d)).T).size  # dense i×i
        p = forward_passes(n)
        assert (p.vit_passes, p.vit_entries) == (1, vit)
        assert p.autoregressive_passes == autoregressive == n
        assert (p.cached_entries, p.uncached_entries) == (cached, uncached)
    assert forward_passes(197).vit_entries == 197**2
    with pytest.raises(ValueError):
        forward_passes(0)
