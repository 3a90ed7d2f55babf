"""This image's vectors on their way into the encoder, against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import tiny
from vitviz.engine.embeddings import embeddings_of, flatten_patch
from vitviz.memory.cost import token_cost


@pytest.mark.parametrize(
    "name, prefix",
    [("vit_tiny_patch16_224", 1), ("deit_tiny_distilled_patch16_224", 2)],
)
def test_patch_embedding_is_the_linear_projection_of_the_flattened_patch(cat_image, name, prefix):
    loaded = tiny(name)
    seen = loaded.seen_image(cat_image)
    v = embeddings_of(loaded, seen)
    model = loaded.model
    # independent: normalise by hand, flatten one patch (channel, row, column), W·x + b
    pixels = np.asarray(seen, np.float64) / 255.0
    mean, std = np.array(loaded.data_config["mean"]), np.array(loaded.data_config["std"])
    chw = ((pixels - mean) / std).transpose(2, 0, 1)
    np.testing.assert_allclose(v.pixels, chw, atol=1e-5)
    w = model.patch_embed.proj.weight.detach().double().numpy()
    b = model.patch_embed.proj.bias.detach().double().numpy()
    for patch in (0, 37, 195):
        r, c = divmod(patch, 14)
        x = chw[:, r * 16 : (r + 1) * 16, c * 16 : (c + 1) * 16].reshape(-1)
        np.testing.assert_allclose(flatten_patch(v.pixels, patch, (14, 14), (16, 16)), x, atol=1e-5)
        np.testing.assert_allclose(v.patches[patch], w.reshape(w.shape[0], -1) @ x + b, atol=1e-4)
    # positions are the model's learned patch rows; the encoder reads prefix tokens, then e + p
    pos = model.pos_embed.detach().numpy()[0]
    np.testing.assert_array_equal(v.positions, pos[-196:])
    assert v.num_prefix == prefix and v.tokens.shape == (196 + prefix, model.embed_dim)
    np.testing.assert_allclose(v.tokens[prefix:], v.patches + v.positions, atol=1e-5)
    np.testing.assert_allclose(
        v.tokens[0], (model.cls_token[0, 0] + model.pos_embed[0, 0]).detach().numpy(), atol=1e-6
    )
    # what the head reads: the pre-logits of timm's own forward
    with torch.inference_mode():
        x = loaded.to_tensor(seen)[None]
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
    if prefix == 1:
        np.testing.assert_allclose(v.features, pre[0].numpy(), atol=1e-5)


def test_register_tokens_get_no_position_embedding(cat_image):
    loaded = tiny("vit_small_patch14_reg4_dinov2", model_kwargs={"img_size": 112, "depth": 2})
    seen = loaded.seen_image(cat_image)
    v = embeddings_of(loaded, seen)
    n = (112 // 14) ** 2
    assert v.num_prefix == 5 and v.tokens.shape[0] == n + 5
    assert v.positions.shape == (n, v.patches.shape[1])
    np.testing.assert_allclose(v.tokens[5:], v.patches + v.positions, atol=1e-5)


def test_token_cost_by_hand():
    vit_b = token_cost((224, 224), (16, 16), prefix=1, layers=12, heads=12)
    assert (vit_b.patches, vit_b.tokens, vit_b.entries) == (196, 197, 38_809)
    assert vit_b.attention_bytes == 12 * 12 * 38_809 * 4 == 22_353_984
    assert token_cost((384, 384), (16, 16)).entries == 577 * 577 == 332_929
    assert token_cost((225, 230), (16, 16), prefix=0).patches == 14 * 14  # partial patches dropped
    pixels = token_cost((224, 224), (1, 1), prefix=0)
    assert pixels.tokens == 50_176 and pixels.entries == 50_176**2
    with pytest.raises(ValueError):
        token_cost((0, 224), (16, 16))
