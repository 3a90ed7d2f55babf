"""What attention costs: tokens and attention entries for an image and patch size.

A ViT of patch size P on an H×W image has N = (H/P)·(W/P) patch tokens plus its prefix tokens
([CLS] …); every head of every layer scores every token against every token, T² entries. Pixels
as tokens would make N = H·W (the lesson's "why patches" step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class TokenCost:
    """Tokens and attention size of one input.

    Attributes:
        patches: N = (H/P)·(W/P), patches that fit (a partial patch at the edge is dropped,
            as a strided convolution does).
        tokens: T = N + prefix tokens.
        entries: T², attention entries per head and layer.
        attention_bytes: float32 attention of all layers and heads: L·H·T²·4.
    """

    patches: int
    tokens: int
    entries: int
    attention_bytes: int


def token_cost(
    image: tuple[int, int],
    patch: tuple[int, int],
    prefix: int = 1,
    layers: int = 12,
    heads: int = 12,
    bytes_per_value: int = 4,
) -> TokenCost:
    """:class:`TokenCost` of an ``image`` (H, W) cut into ``patch`` (P_h, P_w) patches."""
    (h, w), (ph, pw) = image, patch
    if min(h, w, ph, pw) <= 0:
        raise ValueError("image and patch sizes must be positive")
    n = (h // ph) * (w // pw)
    t = n + int(prefix)
    return TokenCost(n, t, t * t, int(layers) * int(heads) * t * t * int(bytes_per_value))


# ----------------------------------------------------------------------------- memory, before work

MB = 2**20
FLOAT = 4  # bytes of a float32 value


@dataclass(frozen=True)
class ModelShape:
    """What a model's memory use depends on, read from its geometry alone.

    Attributes:
        layers: transformer blocks L.
        heads: attention heads per block H.
        dim: token width D.
        mlp_dim: the MLP's hidden width (4·D for a ViT).
        params: parameters and buffers (the model's own bytes are ``params × 4`` in float32).
        prefix: prefix tokens ([CLS], [DIST], registers).
        patch: input pixels per token along (y, x).
    """

    layers: int
    heads: int
    dim: int
    mlp_dim: int
    params: int
    prefix: int
    patch: tuple[int, int]

    def tokens(self, input_hw: tuple[int, int]) -> int:
        """N: patch tokens of an input of ``(H, W)`` pixels plus the prefix tokens."""
        (h, w), (ph, pw) = input_hw, self.patch
        return (h // ph) * (w // pw) + self.prefix


@dataclass(frozen=True)
class WorkCost:
    """Bytes a piece of work holds: at its peak, and what its result keeps afterwards.

    Attributes:
        what: the work, in words (for messages).
        peak: the most bytes alive at once while it runs, the result's included.
        kept: bytes of its result, alive as long as the result is.
        parts: the named terms of ``peak`` (for messages and tests).
    """

    what: str
    peak: int
    kept: int
    parts: dict[str, int]

    def describe(self) -> str:
        """``1.2 GB (attention 1.0 GB, activations 0.2 GB)``-style summary."""
        top = sorted(self.parts.items(), key=lambda kv: -kv[1])[:3]
        inner = ", ".join(f"{name} {size_text(b)}" for name, b in top if b)
        return f"{size_text(self.peak)} ({inner})" if inner else size_text(self.peak)


def size_text(nbytes: float) -> str:
    """Bytes in words: ``512 MB``, ``2.9 GB``."""
    if nbytes >= 10 * 2**30:
        return f"{nbytes / 2**30:.0f} GB"
    if nbytes >= 2**30:
        return f"{nbytes / 2**30:.1f} GB"
    return f"{max(1, round(nbytes / MB))} MB"


# Constants fitted to measured peaks (tests/test_cost.py, bench/memory_cost.py): bytes the
# allocator and the small tensors of one call add whatever the size, and how many [N, D]
# token matrices of one block are alive at once (qkv, q·scale, the block's output, the
# residual stream, the norm's output) or kept per block for a backward pass.
CALL_OVERHEAD = 4 * MB
LIVE_TOKEN_MATRICES = 6
SAVED_TOKEN_MATRICES = 10


def explanation_cost(
    shape: ModelShape,
    input_hw: tuple[int, int],
    *,
    batch: int = 1,
    attention_bytes: int = FLOAT,
    activation_bytes: int = FLOAT,
    classes: int = 0,
    gradient_layers: int | None = None,
    full_gradients: bool = False,
    negative: bool = False,
    views: bool = False,
) -> WorkCost:
    """What one explanation of ``batch`` images of ``input_hw`` pixels will hold.

    Plain (``classes == 0``, inference mode): the ``[B, L, H, N, N]`` attention buffer (kept),
    one layer's scores and softmax (``2·B·H·N²`` float32) and the block's activations.

    Class maps (``classes = K``: one forward kept for autograd, one backward per class, as
    :func:`vitviz.engine.gradients.attention_relevance` runs them): every layer's attention and
    ``SAVED_TOKEN_MATRICES`` token matrices plus the MLP's two hidden matrices kept for the
    backward pass, the detached attention stack, one class's gradient buffer and the
    gradients autograd returns (``gradient_layers`` of the L layers), the product ``A⊙G``
    (and ``−G`` for ``negative``), and the K :class:`~vitviz.results.ClassRelevance` results
    (``4·L·N²`` + small rows each, kept; one more while the batch's are copied out per
    image). ``full_gradients`` keeps all K gradients.

    ``views``: the page's methods on a kept explanation (head fusions and rollout products,
    ``4·L·N²`` float32), added to the peak.
    """
    b, layers, heads = int(batch), shape.layers, shape.heads
    n = shape.tokens(input_hw)
    att = b * layers * heads * n * n  # attention entries of the batch
    layer_att = b * heads * n * n * FLOAT
    tokens = b * n * shape.dim * activation_bytes
    hidden = b * n * shape.mlp_dim * activation_bytes
    inputs = b * 3 * input_hw[0] * input_hw[1] * (FLOAT + 1)  # normalized tensor + RGB copy
    parts: dict[str, int] = {"overhead": CALL_OVERHEAD, "input": inputs}
    if classes <= 0:
        kept = att * attention_bytes
        parts |= {
            "attention": kept,
            "scores": 2 * layer_att,
            "activations": LIVE_TOKEN_MATRICES * tokens + 2 * hidden,
        }
        what = "explanation"
    else:
        k = int(classes)
        need = layers if gradient_layers is None else max(0, min(layers, int(gradient_layers)))
        one = b * (4 * layers * n * n + 4 * layers * (heads + 3) * n) * FLOAT
        relevance = k * one
        kept = att * FLOAT + relevance
        grads = att * FLOAT * (k if full_gradients else 1)
        parts |= {
            "attention": att * FLOAT,
            "graph": att * FLOAT + layers * (SAVED_TOKEN_MATRICES * tokens + 2 * hidden),
            "gradients": grads + att * FLOAT * need // layers,
            "product": att * FLOAT * (2 if negative else 1),
            "relevance": relevance + one,  # the last class's is copied out of the batch's
            "scores": 2 * layer_att,
        }
        what = "class maps"
    if views:
        parts["views"] = 4 * b * layers * n * n * FLOAT
    return WorkCost(what, sum(parts.values()), int(kept), parts)


def model_cost(params: int, *, reading_weights: bool = True) -> WorkCost:
    """A model load: its float32 parameters (kept), and while loading a second copy of them
    (the state dict read from a weights file) when ``reading_weights``."""
    own = int(params) * FLOAT
    parts = {"parameters": own, "weights file": own if reading_weights else 0}
    parts["overhead"] = CALL_OVERHEAD
    return WorkCost("model", sum(parts.values()), own + CALL_OVERHEAD, parts)


def batch_forward_cost(shape: ModelShape, input_hw: tuple[int, int], batch: int) -> WorkCost:
    """Plain forwards of ``batch`` images at once (timm's fused attention, inference mode:
    nothing kept), as :mod:`vitviz.analysis.trust` runs its curves: the batch's inputs, one layer's
    scores and softmax per image and the block's activations."""
    b = int(batch)
    n = shape.tokens(input_hw)
    parts = {
        "overhead": CALL_OVERHEAD,
        "input": b * 3 * input_hw[0] * input_hw[1] * FLOAT * 3,
        "scores": 2 * b * shape.heads * n * n * FLOAT,
        "activations": b * n * (LIVE_TOKEN_MATRICES * shape.dim + 2 * shape.mlp_dim) * FLOAT,
    }
    return WorkCost("forward", sum(parts.values()), 0, parts)


def trust_cost(shape: ModelShape, input_hw: tuple[int, int], steps: int, batch: int) -> WorkCost:
    """A trust check (:func:`vitviz.analysis.trust.trust`): its perturbed copies of the input (a
    curve pair builds ``4·(steps + 1)`` of them, occlusion one per patch plus the original,
    the larger set alive at a time) and batched plain forwards over them."""
    h, w = input_hw
    patches = shape.tokens(input_hw) - shape.prefix
    copies = max(4 * (int(steps) + 1), patches + 1) * 3 * h * w * FLOAT
    forward = batch_forward_cost(shape, input_hw, batch)
    parts = {**forward.parts, "copies": copies}
    return WorkCost("forward", sum(parts.values()), 0, parts)


REMOTE_PREFIX = 5
"""Prefix tokens assumed for a server's model, whose description does not give them: an upper
bound of the common layouts ([CLS] + 4 registers; [CLS] + [DIST])."""


def answer_cost(
    shape: ModelShape,
    input_hw: tuple[int, int],
    *,
    classes: int = 0,
    wire_bytes: int = FLOAT,
    views: bool = False,
) -> WorkCost:
    """What a client keeps of a server's answer for one image: the attention decoded to
    float32 and, for ``classes`` class maps, their relevance (kept), with the answer's bytes
    on the wire (``wire_bytes`` per attention value) alive while it is decoded."""
    n = shape.tokens(input_hw)
    att = shape.layers * shape.heads * n * n
    relevance = int(classes) * 4 * shape.layers * (n * n + (shape.heads + 3) * n) * FLOAT
    kept = att * FLOAT + relevance
    parts = {"attention": att * FLOAT, "answer": att * int(wire_bytes), "relevance": relevance}
    if views:
        parts["views"] = 4 * shape.layers * n * n * FLOAT
    parts["overhead"] = CALL_OVERHEAD
    return WorkCost("class maps" if classes else "explanation", sum(parts.values()), kept, parts)


# ------------------------------------------------- the researcher's tools (issue 24), torch-free


def ablation_forwards(layers: int, heads: int, batch: int) -> int:
    """Batched forwards of one head ablation: ``⌈(L·H + L + 1) / B⌉`` (the clean copy
    included)."""
    return math.ceil((layers * heads + layers + 1) / max(1, int(batch)))


def ablation_cost(shape: ModelShape, input_hw: tuple[int, int], batch: int) -> WorkCost:
    """What :func:`vitviz.engine.ablation.ablate_heads` holds, before it runs: one batch's plain
    forward (inference mode, no attention kept; the unfused attention's scores of one layer
    included), the masks (``(L·H + L + 1)·L·H`` float32 values) and the result (``2·(L·H + L)``
    float64, kept)."""
    forward = batch_forward_cost(shape, input_hw, batch)
    heads = shape.layers * shape.heads
    kept = 2 * (heads + shape.layers) * 2 * FLOAT
    parts = {**forward.parts, "masks": (heads + shape.layers + 1) * heads * FLOAT, "result": kept}
    return WorkCost("head ablation", sum(parts.values()), kept, parts)


def lens_cost(shape: ModelShape, input_hw: tuple[int, int], classes: int) -> WorkCost:
    """What :func:`vitviz.engine.lens.logit_lens` holds, before it runs: the input, the recorded
    residual stream ``[L, N, D]`` (the hooks keep each block's output itself, no copy, through
    the forward), beside it the larger of one plain forward's transients (one layer's scores and
    softmax, the block's activations) and, after the forward, the stream's stack and then its
    final norm (each one more ``[L, N, D]``, the recorded list freed before the norm), and the
    ``[L, C]`` logits with their softmax (kept, with the top classes).

    tests/test_lens_cost.py holds it within tests/test_cost.py's margin of the measured peak
    (adding the stream three times over a whole forward, as first written, was 2.3× the measured
    peak of a 12-layer, 260-token model)."""
    plain = explanation_cost(shape, input_hw)
    stream = shape.layers * shape.tokens(input_hw) * shape.dim * FLOAT
    transient = plain.parts["scores"] + plain.parts["activations"]
    logits = shape.layers * max(int(classes), 1) * FLOAT
    kept = 3 * logits  # float32 logits, float64 probabilities while the top is read
    parts = {
        "overhead": plain.parts["overhead"],
        "input": plain.parts["input"],
        "stream": stream,
        "forward or stack": max(transient, stream),
        "logits": kept,
    }
    return WorkCost("logit lens", sum(parts.values()), logits, parts)


def norms_cost(shape: ModelShape, input_hw: tuple[int, int]) -> WorkCost:
    """What :func:`vitviz.engine.lens.stream_norms_of` and :func:`vitviz.analysis.norms.token_norms`
    hold, before they run: one explanation's forward (the attention of every layer is captured;
    the last layer's is kept), the recorded stream ``[L, N, D]`` with its float64 copy, and the
    norms ``[L, N]`` (float64) with their outlier flags (kept)."""
    n = shape.tokens(input_hw)
    forward = explanation_cost(shape, input_hw)
    stream = shape.layers * n * shape.dim * FLOAT
    kept = shape.layers * n * (2 * FLOAT + 1) + shape.heads * n * n * FLOAT
    parts = {**forward.parts, "stream": 3 * stream, "norms": kept}
    return WorkCost("token norms", sum(parts.values()), kept, parts)
