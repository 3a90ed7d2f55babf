"""vitviz's token norms against vit-xray's own code (``vit-xray``, a test-only requirement in
requirements-dev.txt), on the same model and the same input tensor.

vit-xray (PyPI, 2026) reads the patch tokens' L2 norms at a block's output, before the final
norm, calls a token an outlier above 3 × the median patch norm (its ``outlier_frac``) and maps
the [CLS] row of the block's attention, averaged over heads. vitviz's
:func:`vitviz.analysis.norms.token_norms` is written apart from it; here both run on one random
model with four registers and one planted high-norm patch.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import tiny
from vitviz.analysis.norms import DEFAULT_K, token_norms
from vitviz.engine.lens import stream_norms_of

xray = pytest.importorskip("vit_xray.core", reason="vit-xray is in requirements-dev.txt")

PLANTED = 5  # the patch given a high norm through its position embedding


@pytest.fixture(scope="module")
def planted():
    """A 3-block ViT-S/14 with 4 registers, random weights, patch 5's position embedding
    made large so that its residual stream stands out at every layer."""
    loaded = tiny(
        "vit_small_patch14_reg4_dinov2", seed=1, model_kwargs={"img_size": 56, "depth": 3}
    )
    with torch.no_grad():
        pos = loaded.model.pos_embed  # patches only (registers and [CLS] carry none)
        gen = torch.Generator().manual_seed(2)
        pos[0, PLANTED] += 8.0 * torch.randn(pos.shape[-1], generator=gen)
    original = copy.deepcopy(loaded.model)  # vit-xray gets timm's model as timm built it
    return loaded, original


def test_token_norms_equal_vit_xray(planted, monkeypatch):
    loaded, original = planted
    rng = np.random.default_rng(4)
    seen = Image.fromarray(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8))
    x = loaded.to_tensor(seen)[None]
    norms, attention, layout = stream_norms_of(loaded, seen)
    ours = token_norms(norms, layout, k=DEFAULT_K, attention=attention)
    assert layout.num_prefix == 5 and ours.registers.shape == (3, 4)

    # vit-xray's analyze, on our tensor and our (unprepared) model: no hub, no file decoding
    monkeypatch.setattr(xray.timm, "create_model", lambda *a, **k: original)
    monkeypatch.setattr(
        xray, "load_image", lambda path, model: (x, {"mean": (0, 0, 0), "std": (1, 1, 1)})
    )
    for layer in range(3):
        theirs = xray.analyze("planted", "unused.png", torch.device("cpu"), layer)
        assert theirs["n_prefix"] == layout.num_prefix and theirs["grid"] == layout.grid
        np.testing.assert_allclose(
            ours.norms[layer, layout.num_prefix :], theirs["norm_map"].ravel(), rtol=1e-5
        )
        assert ours.share[layer] == pytest.approx(theirs["outlier_frac"])
        assert ours.outliers[layer, PLANTED]  # the planted patch is found at every layer
        if layer == 2:  # the attention share: vitviz reads the last layer only
            cls_to_patch = theirs["attention"].ravel()
            assert ours.attention_share == pytest.approx(
                float(cls_to_patch[ours.outliers[-1]].sum()), rel=1e-4
            )
