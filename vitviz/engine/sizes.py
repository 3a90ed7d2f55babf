"""How big a ViT is: its parameters by part, the standard sizes, text vs image, passes.

* :func:`parameter_parts`: a model's parameters counted by part, summing exactly to
  ``sum(p.numel() for p in model.parameters())`` (anything unrecognised is ``other``).
* :func:`vit_size` / :data:`STANDARD_VITS`: ViT-B/16, ViT-L/16, ViT-H/14 from the formulas
  (Dosovitskiy et al., ICLR 2021, Table 1: D, L, H, MLP size; 86.6 M, 307 M, 632 M
  parameters — the paper rounds L/16 up; the formula with a 1000-class head gives 304.3 M).
* :func:`attention_cost`: N² scores per head per layer for this input
  (:func:`vitviz.memory.cost.token_cost`).
* :func:`text_vs_image`: the image's sequence beside BERT-base's.
* :func:`forward_passes`: one pass over all N tokens (ViT) against N passes of a next-token
  model, and the attention scores each computes.
"""

from __future__ import annotations

import re

from torch import nn

from vitviz.layout import TokenLayout
from vitviz.memory.cost import TokenCost, token_cost
from vitviz.results import ParameterCount, ParameterPart, PassCount, TextVsImage, VitSize

__all__ = [
    "BERT_BASE_MAX_TOKENS",
    "BERT_BASE_WIDTH",
    "STANDARD_VITS",
    "attention_cost",
    "forward_passes",
    "parameter_parts",
    "standard_sizes",
    "text_vs_image",
    "vit_size",
]

BERT_BASE_MAX_TOKENS = 512
"""BERT-base's longest input: ``max_position_embeddings = 512`` (Devlin et al., NAACL 2019,
§A.2 "sequences of up to 512 tokens"); the classroom explainer's text length."""

BERT_BASE_WIDTH = 768
"""BERT-base's hidden size H = 768 (Devlin et al., NAACL 2019, §3: L=12, H=768, A=12)."""

_TOP: dict[str, str] = {
    "patch_embed": "patch_embed",
    "pos_embed": "pos_embed",
    "cls_token": "cls_token",
    "reg_token": "reg_token",
    "dist_token": "dist_token",
    "norm_pre": "norm_pre",
    "norm": "final_norm",
    "fc_norm": "fc_norm",
    "attn_pool": "attn_pool",
    "head": "head",
    "head_dist": "head_dist",
}
_IN_BLOCK: dict[str, str] = {
    "attn": "attention",
    "mlp": "mlp",
    "norm1": "norms",
    "norm2": "norms",
    "ls1": "layer_scale",
    "ls2": "layer_scale",
}
_BLOCK = re.compile(r"^blocks\.(\d+)\.([^.]+)")


def _part_of(name: str) -> tuple[str, int | None]:
    """``(part, block)`` of a parameter name of a timm ViT."""
    m = _BLOCK.match(name)
    if m:
        return _IN_BLOCK.get(m.group(2), "block_other"), int(m.group(1))
    return _TOP.get(name.split(".", 1)[0], "other"), None


def parameter_parts(model: nn.Module) -> ParameterCount:
    """``model``'s parameters counted by part (:class:`~vitviz.results.ParameterPart`).

    Parts are read from timm's parameter names (``patch_embed.*``, ``blocks.3.attn.*`` …);
    a name matching no part is counted as ``other`` (its names listed), never dropped, so the
    parts always sum to ``sum(p.numel() for p in model.parameters())`` (shared parameters
    counted once, as ``parameters()`` does).
    """
    groups: dict[tuple[str, int | None], list[tuple[str, int]]] = {}
    for name, p in model.named_parameters():
        groups.setdefault(_part_of(name), []).append((name, int(p.numel())))
    parts = tuple(
        ParameterPart(part, sum(n for _, n in items), layer, tuple(k for k, _ in items))
        for (part, layer), items in groups.items()
    )
    return ParameterCount(total=sum(p.count for p in parts), parts=parts)


def vit_size(
    name: str,
    width: int,
    depth: int,
    heads: int,
    patch: int,
    *,
    mlp: int | None = None,
    image: int = 224,
    classes: int = 1000,
) -> VitSize:
    """A plain ViT's parameters per part from the formulas (class token, learned positions
    for N + 1 tokens, biases everywhere, LayerNorms, a linear head).

    Per part: patch embedding 3·p²·D + D; positions (N+1)·D; [CLS] D; per block attention
    4D² + 4D (qkv 3D² + 3D, projection D² + D), MLP 2·D·M + M + D, two norms 4D; final norm
    2D; head D·C + C (M = the MLP width, 4D by default; C classes).
    """
    d, m = int(width), int(mlp if mlp is not None else 4 * width)
    n = (int(image) // int(patch)) ** 2
    parts = (
        ("patch_embed", 3 * patch * patch * d + d),
        ("pos_embed", (n + 1) * d),
        ("cls_token", d),
        ("attention", depth * (4 * d * d + 4 * d)),
        ("mlp", depth * (2 * d * m + m + d)),
        ("norms", depth * 4 * d),
        ("final_norm", 2 * d),
        ("head", d * classes + classes),
    )
    return VitSize(name, d, int(depth), int(heads), m, int(patch), int(image), n, classes, parts)


STANDARD_VITS: dict[str, tuple[str, int, int, int, int]] = {
    "ViT-B/16": ("vit_base_patch16_224", 768, 12, 12, 16),
    "ViT-L/16": ("vit_large_patch16_224", 1024, 24, 16, 16),
    "ViT-H/14": ("vit_huge_patch14_224", 1280, 32, 16, 14),
}
"""name → (timm architecture, D, L, H, patch) of the paper's Table 1 models."""


def standard_sizes(image: int = 224, classes: int = 1000) -> list[VitSize]:
    """ViT-B/16, ViT-L/16 and ViT-H/14 from :func:`vit_size`."""
    return [
        vit_size(name, d, depth, h, p, image=image, classes=classes)
        for name, (_, d, depth, h, p) in STANDARD_VITS.items()
    ]


def attention_cost(layout: TokenLayout, layers: int, heads: int) -> TokenCost:
    """Tokens and attention scores of this input: N² per head per layer, L·H·N² in all
    (:func:`vitviz.memory.cost.token_cost`)."""
    return token_cost(layout.image_size, layout.patch_size, layout.num_prefix, layers, heads)


def text_vs_image(layout: TokenLayout, width: int) -> TextVsImage:
    """This input's sequence (N, its 2-D grid, D) beside BERT-base's (512 1-D positions,
    D = 768)."""
    return TextVsImage(
        tokens=layout.num_tokens,
        patches=layout.num_patches,
        extra=layout.num_prefix,
        grid=tuple(layout.grid),
        width=int(width),
        text_tokens=BERT_BASE_MAX_TOKENS,
        text_width=BERT_BASE_WIDTH,
        text_model="BERT-base",
    )


def forward_passes(tokens: int) -> PassCount:
    """Passes and attention scores (per head per layer) over ``tokens`` = N tokens.

    ViT: one pass, every token against every token: N². A next-token (GPT-like) model makes
    N passes; with a KV cache pass i scores its one new query against i keys, Σ i = N(N+1)/2;
    without a cache pass i recomputes the dense i×i scores, Σ i² = N(N+1)(2N+1)/6.
    """
    n = int(tokens)
    if n < 1:
        raise ValueError(f"tokens must be positive, got {n}")
    return PassCount(
        tokens=n,
        vit_passes=1,
        vit_entries=n * n,
        autoregressive_passes=n,
        cached_entries=n * (n + 1) // 2,
        uncached_entries=n * (n + 1) * (2 * n + 1) // 6,
    )
