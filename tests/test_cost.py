"""What an explanation holds, known before the work (vitviz.memory.cost): the formula by hand, the
shape read from real models, and the estimate against the peak measured in a fresh process.

The stated margin: a measured peak lies within 25 % of the estimate plus 8 MB (the fixed
cost of one call: small tensors, the allocator's granularity), for plain explanations and
for class maps, on four geometries (197, 198 with a distillation token, 260 with registers and
average pooling, and 577 tokens)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm

from vitviz.memory.cost import (
    ModelShape,
    answer_cost,
    explanation_cost,
    model_cost,
    size_text,
    trust_cost,
)

ROOT = Path(__file__).resolve().parent.parent
MB = 2**20
VIT_B = ModelShape(12, 12, 768, 3072, 86_567_656, 1, (16, 16))
VIT_L_DINOV2 = ModelShape(24, 16, 1024, 4096, 304_368_640, 5, (14, 14))


def test_attention_by_hand():
    plain = explanation_cost(VIT_B, (224, 224))
    assert plain.parts["attention"] == 12 * 12 * 197 * 197 * 4 == 22_353_984
    assert plain.kept == plain.parts["attention"]
    assert plain.parts["scores"] == 2 * 12 * 197 * 197 * 4
    assert plain.peak == sum(plain.parts.values())
    # the link: ViT-L/14 DINOv2 at 518 px, 37×37 patches + [CLS] + 4 registers
    big = explanation_cost(VIT_L_DINOV2, (518, 518))
    assert VIT_L_DINOV2.tokens((518, 518)) == 1374
    assert big.parts["attention"] == 24 * 16 * 1374**2 * 4 == 2_899_777_536
    assert big.peak > 2.9e9 and "GB" in big.describe()
    half = explanation_cost(VIT_L_DINOV2, (518, 518), attention_bytes=2)
    assert half.parts["attention"] * 2 == big.parts["attention"]


def test_class_maps_cost_more_with_each_class_and_the_sign():
    one = explanation_cost(VIT_B, (224, 224), classes=1)
    six = explanation_cost(VIT_B, (224, 224), classes=6)
    per_class = 4 * 12 * (197 * 197 + 15 * 197) * 4  # chefer + 3 fusions, rows
    assert six.kept - one.kept == 5 * per_class
    assert six.peak - one.peak == 5 * per_class
    neg = explanation_cost(VIT_B, (224, 224), classes=1, negative=True)
    assert neg.peak - one.peak == 12 * 12 * 197 * 197 * 4  # −G
    full = explanation_cost(VIT_B, (224, 224), classes=6, full_gradients=True)
    assert full.peak - six.peak == 5 * 12 * 12 * 197 * 197 * 4
    views = explanation_cost(VIT_B, (224, 224), views=True)
    assert views.peak - explanation_cost(VIT_B, (224, 224)).peak == 4 * 12 * 197 * 197 * 4


def test_other_costs_by_hand():
    m = model_cost(86_567_656)
    assert m.kept == 86_567_656 * 4 + 4 * MB and m.parts["weights file"] == 86_567_656 * 4
    assert model_cost(100, reading_weights=False).parts["weights file"] == 0
    tr = trust_cost(VIT_B, (224, 224), steps=16, batch=16)
    assert tr.parts["copies"] == max(4 * 17, 197) * 3 * 224 * 224 * 4
    ans = answer_cost(VIT_B, (224, 224), wire_bytes=2)
    assert ans.parts["answer"] * 2 == ans.parts["attention"] == 22_353_984
    assert size_text(2.9e9) == "2.7 GB" and size_text(300 * MB) == "300 MB"


@pytest.mark.parametrize(
    "name",
    ["vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224", "vit_small_patch14_reg4_dinov2"],
)
def test_model_shape_is_read_from_the_model(name):
    from vitviz.models import load_model

    loaded = load_model(name, random_weights=True, model_kwargs={"img_size": 224})
    m = timm.create_model(name, pretrained=False, img_size=224)
    shape = loaded.shape
    assert (shape.layers, shape.heads, shape.dim) == (
        len(m.blocks),
        m.blocks[0].attn.num_heads,
        m.embed_dim,
    )
    assert shape.mlp_dim == m.blocks[0].mlp.fc1.out_features
    assert shape.params == sum(t.numel() for t in (*m.parameters(), *m.buffers()))
    assert shape.prefix == m.num_prefix_tokens
    assert shape.tokens((224, 224)) == m.patch_embed.num_patches + m.num_prefix_tokens


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize(
    "geometry",
    [
        "vit_tiny_patch16_224:224",
        "vit_tiny_patch16_224:384",
        "deit_tiny_distilled_patch16_224:224",
        "vit_betwixt_patch16_reg4_gap_256:256",
    ],
)
def test_estimate_within_margin_of_the_measured_peak(geometry):
    out = subprocess.run(
        [sys.executable, "bench/memory_cost.py", "--json", "--geometry", geometry],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
        check=True,
    )
    rows = json.loads(out.stdout)["rows"]
    assert [r["classes"] for r in rows] == [0, 5]
    for r in rows:
        slack = 0.25 * r["estimate"] + 8 * MB
        assert abs(r["measured"] - r["estimate"]) <= slack, r
