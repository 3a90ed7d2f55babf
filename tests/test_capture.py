"""Capture against an independent recomputation, a stock timm forward, batches and threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from vitviz.engine.capture import capture, forward_with_attention
from vitviz.errors import ModelError


def independent_attention(
    model: torch.nn.Module, x: torch.Tensor, **create_kwargs
) -> list[torch.Tensor]:
    """softmax(q kᵀ · scale) from each block's own qkv weights, on a stock (fused) timm copy.

    Block inputs are read with pre-hooks on the blocks; the attention is then recomputed with
    einsum from ``norm1`` and the ``qkv`` weights — nothing shared with vitviz's capture path.
    """
    stock = timm.create_model("vit_tiny_patch16_224", pretrained=False, **create_kwargs)
    stock.load_state_dict(model.state_dict())
    stock.eval()
    inputs: list[torch.Tensor] = []
    hooks = [b.register_forward_pre_hook(lambda _m, a: inputs.append(a[0])) for b in stock.blocks]
    with torch.no_grad():
        stock(x)
    for h in hooks:
        h.remove()
    out = []
    for blk, h in zip(stock.blocks, inputs, strict=True):
        y = blk.norm1(h)
        w, b = blk.attn.qkv.weight, blk.attn.qkv.bias
        heads, dh = blk.attn.num_heads, blk.attn.head_dim
        qkv = torch.einsum("bnc,oc->bno", y, w) + b
        q, k, _ = qkv.reshape(*qkv.shape[:2], 3, heads, dh).unbind(2)
        logits = torch.einsum("bqhd,bkhd->bhqk", q, k) * dh**-0.5
        out.append(logits.softmax(-1))
    return out


def test_attention_matches_einsum_recomputation(vit_tiny, cat_image, coffee_image):
    cap = capture(vit_tiny, [cat_image, coffee_image])
    assert cap.attention.shape == (2, 12, 3, 197, 197)
    x = torch.stack([vit_tiny.to_tensor(Image.fromarray(im)) for im in cap.images])
    expected = torch.stack(independent_attention(vit_tiny.model, x), dim=1)
    torch.testing.assert_close(cap.attention, expected, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(cap.attention.sum(-1), torch.ones(2, 12, 3, 197), atol=1e-5, rtol=0)


def test_logits_equal_stock_fused_forward(vit_tiny, cat_image):
    cap = capture(vit_tiny, [cat_image])
    stock = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    stock.load_state_dict(vit_tiny.model.state_dict())
    assert stock.blocks[0].attn.fused_attn  # the stock model uses SDPA
    x = vit_tiny.to_tensor(Image.fromarray(cap.images[0]))[None]
    with torch.no_grad():
        ref = stock(x)
    torch.testing.assert_close(cap.logits, ref, atol=1e-4, rtol=1e-4)


def test_one_forward_pass_per_capture(vit_tiny, cat_image):
    calls = []
    handle = vit_tiny.model.patch_embed.register_forward_hook(lambda *a: calls.append(1))
    try:
        capture(vit_tiny, [cat_image, cat_image, cat_image])
    finally:
        handle.remove()
    assert len(calls) == 1


def test_batch_equals_one_by_one(vit_tiny, cat_image, coffee_image):
    both = capture(vit_tiny, [cat_image, coffee_image])
    for i, im in enumerate([cat_image, coffee_image]):
        one = capture(vit_tiny, [im])
        torch.testing.assert_close(both.attention[i], one.attention[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(both.logits[i], one.logits[0], atol=1e-4, rtol=1e-4)


def test_two_threads_one_model_match_sequential(vit_tiny, cat_image, coffee_image):
    images = {"cat": cat_image, "coffee": coffee_image}
    sequential = {k: capture(vit_tiny, [im]) for k, im in images.items()}
    results: dict[str, list] = {k: [] for k in images}
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def work(key: str) -> None:
        try:
            barrier.wait()
            for _ in range(4):
                results[key].append(capture(vit_tiny, [images[key]]))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in images]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    for key in images:
        assert len(results[key]) == 4
        for cap in results[key]:
            assert cap.attention.shape == sequential[key].attention.shape
            torch.testing.assert_close(cap.attention, sequential[key].attention, atol=1e-6, rtol=0)
            torch.testing.assert_close(cap.logits, sequential[key].logits, atol=1e-5, rtol=0)
    diff = (sequential["cat"].attention - sequential["coffee"].attention).abs().max()
    assert diff > 1e-3  # the two images really differ, so cross-talk would show


def test_hooks_hold_no_state_between_calls(vit_tiny, cat_image):
    capture(vit_tiny, [cat_image])
    # an unrelated forward outside capture collects nothing and fails nothing
    with torch.no_grad():
        vit_tiny.model(torch.zeros(1, 3, 224, 224))
    _, attn = forward_with_attention(vit_tiny.model, torch.zeros(1, 3, 224, 224))
    assert len(attn) == 12


def test_gradients_flow_when_enabled(vit_tiny):
    x = torch.randn(1, 3, 224, 224)
    out, attn = forward_with_attention(vit_tiny.model, x)
    for a in attn:
        a.retain_grad()
    out[0, 3].backward()
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in attn)
    vit_tiny.model.zero_grad(set_to_none=True)


def test_architecture_without_readable_attention_is_reported():
    from vitviz.engine.capture import prepare

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2).eval()
    prepare(model)
    model.blocks[1].attn.fused_attn = True  # this block no longer passes through attn_drop
    with pytest.raises(ModelError, match="captured 1 attention maps from 2 blocks"):
        forward_with_attention(model, torch.zeros(1, 3, 224, 224))


def test_seen_image_is_exactly_what_the_model_got(vit_tiny, cat_image):
    cap = capture(vit_tiny, [cat_image])
    assert cap.images[0].shape == (224, 224, 3) and cap.images[0].dtype == np.uint8
    # recompute timm's own eval transform on the original and compare the tensors
    transform = timm.data.create_transform(**vit_tiny.data_config, is_training=False)
    expected = transform(cat_image)
    got = vit_tiny.to_tensor(Image.fromarray(cap.images[0]))
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_non_square_attention_matches_einsum_recomputation(cat_image):
    from tests.conftest import tiny

    m = tiny("vit_tiny_patch16_224", keep_aspect=True, model_kwargs={"depth": 3})
    cap = capture(m, [cat_image])
    assert cap.layout.grid == (14, 21)
    x = m.to_tensor(Image.fromarray(cap.images[0]))[None]
    expected = torch.stack(independent_attention(m.model, x, depth=3, dynamic_img_size=True), dim=1)
    torch.testing.assert_close(cap.attention, expected, atol=2e-5, rtol=1e-4)


def test_attention_dtype_is_the_callers_choice(vit_tiny, cat_image):
    full = capture(vit_tiny, [cat_image])
    half = capture(vit_tiny, [cat_image], attn_dtype=torch.float16)
    assert half.attention.dtype == torch.float16
    torch.testing.assert_close(half.attention.float(), full.attention, atol=1e-3, rtol=1e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_capture_matches_cpu(cat_image, precision):
    from tests.conftest import tiny
    from vitviz import methods

    cpu = tiny("vit_tiny_patch16_224", seed=11)
    gpu = tiny("vit_tiny_patch16_224", seed=11)
    gpu.model.cuda()
    gpu.device, gpu.precision = torch.device("cuda"), precision
    a, b = capture(cpu, [cat_image]), capture(gpu, [cat_image])
    assert b.attention.device.type == "cuda" and b.attention.dtype == torch.float32
    tol = 1e-4 if precision == "fp32" else 3e-2
    torch.testing.assert_close(b.attention.cpu(), a.attention, atol=tol, rtol=0)
    ra = methods.compute_map("rollout", a.attention, a.layout)
    rb = methods.compute_map("rollout", b.attention, b.layout)  # computed on the GPU
    assert rb.device.type == "cuda"
    torch.testing.assert_close(rb.cpu(), ra, atol=tol, rtol=0)


@pytest.mark.skipif(
    not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
    reason="needs Apple MPS",
)
def test_mps_capture_matches_cpu(cat_image):
    from tests.conftest import tiny

    cpu = tiny("vit_tiny_patch16_224", seed=12)
    mps = tiny("vit_tiny_patch16_224", seed=12)
    mps.model.to("mps")
    mps.device = torch.device("mps")
    a, b = capture(cpu, [cat_image]), capture(mps, [cat_image])
    torch.testing.assert_close(b.attention.cpu(), a.attention, atol=1e-4, rtol=0)
