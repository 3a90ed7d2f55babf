"""Token norms and high-norm outliers (Darcet et al., 2024): planted outliers, a hand loop over
the blocks, and the vit-xray formula written out on the same tensors."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from vitviz.analysis.norms import DEFAULT_K, outliers, token_norms
from vitviz.engine.lens import recording_blocks
from vitviz.errors import OptionsError
from vitviz.layout import TokenLayout

REG = TokenLayout(prefix=("cls", "reg", "reg"), grid=(2, 3), patch_size=(14, 14), readout="cls")


def test_planted_outliers_are_found():
    rng = np.random.default_rng(0)
    norms = rng.uniform(0.8, 1.2, size=(4, 100))
    norms[2, [5, 50]] = 10.0  # ~10× the typical norm, as Darcet et al. report
    norms[3, 7] = 2.5  # under 3× the median: not an outlier at the default k
    found = outliers(norms)
    assert found.shape == norms.shape
    assert np.argwhere(found).tolist() == [[2, 5], [2, 50]]
    assert outliers(norms, k=2.0)[3, 7]
    assert outliers(np.array([1.0, 1.0, 1.0])).sum() == 0  # nothing above a flat median


def test_bad_k_is_refused():
    with pytest.raises(OptionsError):
        outliers(np.ones(3), k=0)
    with pytest.raises(OptionsError):
        outliers(np.ones((2, 0)))


def test_summary_of_a_planted_layout():
    norms = np.ones((2, REG.num_tokens))
    norms[:, 1:3] = [[20.0, 30.0], [21.0, 31.0]]  # registers: large, but not patches
    norms[1, 3 + 4] = 50.0  # patch 4 at the last layer
    attention = np.full((2, 9, 9), 1 / 9)
    attention[:, 0] = 0
    attention[:, 0, 3 + 4] = 0.25  # the class token's row: a quarter to patch 4
    attention[:, 0, 0] = 0.75
    r = token_norms(norms, REG, k=3, attention=attention)
    assert r.outliers.shape == (2, 6) and r.outliers[1].tolist() == [0, 0, 0, 0, 1, 0]
    np.testing.assert_allclose(r.share, [0, 1 / 6])
    assert r.attention_share == pytest.approx(0.25)
    np.testing.assert_allclose(r.registers, [[20, 30], [21, 31]])
    assert r.num_prefix == 3 and r.k == 3
    with pytest.raises(OptionsError):
        token_norms(norms[:, :5], REG)


def _registers_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "vit_small_patch14_reg4_dinov2", pretrained=False, depth=2, img_size=56, num_classes=0
    ).eval()


def test_a_real_model_against_a_hand_loop_and_the_vit_xray_formula():
    model = _registers_model()
    layout = TokenLayout(
        prefix=("cls", "reg", "reg", "reg", "reg"), grid=(4, 4), patch_size=(14, 14), readout="cls"
    )
    x = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(3))
    with recording_blocks(model) as outs, torch.no_grad():
        model(x)
    norms = torch.stack([o[0].double() for o in outs]).norm(dim=-1).numpy()
    last = norms[-1, layout.num_prefix :]
    k = 0.999 * last.max() / np.median(last)  # so that the last layer has an outlier to compare
    r = token_norms(norms, layout, k=k)
    with torch.no_grad():  # the hand loop over the blocks
        h = model.norm_pre(model._pos_embed(model.patch_embed(x)))
        for layer, blk in enumerate(model.blocks):
            h = blk(h)
            np.testing.assert_allclose(r.norms[layer], h[0].norm(dim=-1).numpy(), rtol=1e-5)
            # vit-xray's formula: the L2 norm of each patch token's output at the layer, and
            # outliers above a threshold relative to the layer's distribution (k × median)
            patch = torch.linalg.vector_norm(h[0, layout.num_prefix :].double(), ord=2, dim=-1)
            xray = (patch > k * torch.quantile(patch, 0.5)).numpy()
            assert r.outliers[layer].tolist() == xray.tolist()
            np.testing.assert_allclose(r.registers[layer], h[0, 1:5].norm(dim=-1).numpy(), 1e-5)
    assert r.outliers.any()
    assert r.registers.shape == (2, 4)


def test_the_demo_backend(demo):
    assert demo.offers("token_norms")
    image = Image.new("RGB", (224, 224), (90, 90, 200))
    r = demo.token_norms(image)
    layers = demo.loaded.num_layers
    assert r.norms.shape == (layers, 197) and r.outliers.shape == (layers, 196)
    assert r.k == DEFAULT_K and r.registers.shape == (layers, 0)
    assert r.attention_share is not None and 0 <= r.attention_share <= 1
    assert np.isfinite(r.norms).all() and (r.norms > 0).all()
