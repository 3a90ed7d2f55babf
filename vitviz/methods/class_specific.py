"""Class-specific methods: attention weighted by the gradient of one class's score.

* Chefer, Gur & Wolf, "Generic Attention-model Explainability for Interpreting Bi-Modal and
  Encoder-Decoder Transformers", ICCV 2021: ``Ā_l = mean_h((∂y_c/∂A_l ⊙ A_l)⁺)`` (the clamp per
  head, before the mean), ``R = I``, ``R ← R + Ā_l R`` for l = s … e (all layers by default;
  an earlier end layer e is the relevance "up to layer e"), map = ``R[readout, P:]``.
* Gradient rollout (vit-explain's method, corrected): each layer's attention paired with ITS
  OWN gradient (vit-explain reverses the list), fused over heads, clamped at 0, then rolled out
  like attention rollout. Three differences from vit-explain: the pairing, rows normalized over
  the keys, and the gradient itself: vitviz uses ``∂y_c/∂A``, the gradient of the attention
  probabilities (as Chefer et al.), whereas vit-explain's legacy backward hook on
  ``attn_drop`` (a no-op at inference) receives the softmax's input gradient,
  ``∂y_c/∂(QKᵀ/√d)``, the gradient of the pre-softmax scores.
* Attention × gradient of one layer/head: the readout row of ``(A_l^h ⊙ ∂y_c/∂A_l^h)⁺``.

``y_c`` is the pre-softmax logit. ``grads`` is the full ``∂y_c/∂A`` (``[..., L, H, N, N]``) or
its :class:`~vitviz.results.ClassRelevance`, the reduced form the engine keeps; both give the
same maps.

"Why not this class" (``negative=True``): the same maps of the negative part,
``(A ⊙ G)⁻ = (A ⊙ (-G))⁺`` — attention whose growth would lower ``y_c``, the evidence against
the class. With full gradients the method negates them; a ClassRelevance must have been
computed for ``-y_c`` (``ClassRelevance.negative``), and a mismatch is an error, never a
silently wrong map.
"""

from __future__ import annotations

import numpy as np
import torch

from vitviz.errors import OptionsError
from vitviz.layout import TokenLayout
from vitviz.methods.arrays import (
    Array,
    Fusion,
    as_tensor,
    check_attn,
    fuse_heads,
    fusion_index,
    head_index,
    layer_index,
    layer_span,
    readout_weights,
    tensors,
    wide,
)
from vitviz.methods.registry import (
    DISCARD,
    END_LAYER,
    FUSION,
    HEAD,
    LAYER,
    NEGATIVE,
    START_LAYER,
    register,
)
from vitviz.methods.rollout import rolled_rows, rollout_factors
from vitviz.results import ClassRelevance

Gradients = torch.Tensor | ClassRelevance


def _check_grads(t: torch.Tensor, g: torch.Tensor) -> None:
    if g.shape != t.shape:
        raise OptionsError(
            f"gradients {tuple(g.shape)} must have the attention's shape {tuple(t.shape)}"
        )


def _check_relevance(rel: ClassRelevance, t: torch.Tensor, layout: TokenLayout) -> None:
    n = layout.num_tokens
    if rel.heads.shape[-1] != n or rel.num_layers != t.shape[-4]:
        raise OptionsError(
            f"the class relevance covers {rel.num_layers} layers of {rel.heads.shape[-1]} tokens "
            f"but the attention has {t.shape[-4]} layers of {n}: they come from different runs"
        )


def _need_layers(rel: ClassRelevance, layers: range | list[int], method: str) -> None:
    missing = sorted(set(layers) - set(rel.layers))
    if missing:
        raise OptionsError(
            f"{method} reads the gradients of layers {missing[0]}–{missing[-1]}, which were not "
            "computed for this class: ask for them (or for all layers)"
        )


def _like(x: np.ndarray, t: torch.Tensor) -> torch.Tensor:
    """A relevance array as a float32 tensor on the attention's device."""
    return torch.as_tensor(np.asarray(x), dtype=torch.float32, device=t.device)


def _inputs(
    attn: torch.Tensor, grads: Gradients | None, layout: TokenLayout, negative: bool = False
) -> ClassRelevance | torch.Tensor:
    """The checked gradients, negated for "why not" (a relevance must match the sign)."""
    check_attn(attn, layout)
    if grads is None:
        raise OptionsError("a class-specific method needs the class's gradients")
    if isinstance(grads, ClassRelevance):
        _check_relevance(grads, attn, layout)
        if grads.negative != bool(negative):
            want, got = ("why not", "why") if negative else ("why", "why not")
            raise OptionsError(
                f"this class relevance explains {got!r} the class but {want!r} was asked: "
                "compute the relevance with negative="
                f"{bool(negative)} (LocalBackend.explain_classes)"
            )
        return grads
    _check_grads(attn, grads)
    return -grads if negative else grads


def relevance_parts(
    attn: torch.Tensor, grads: torch.Tensor, layout: TokenLayout
) -> dict[str, torch.Tensor]:
    """The parts of :class:`~vitviz.results.ClassRelevance` for ``[..., L, H, N, N]`` inputs.

    Returns tensors with the inputs' leading dims: ``chefer [..., L, N, N]`` (Chefer's
    ``Ā_l = mean_h((A ⊙ G)⁺)``), ``fused [..., 3, L, N, N]``, ``heads [..., L, H, N]`` and
    ``fused_rows [..., 3, L, N]`` (fusions in :data:`~vitviz.results.FUSION_ORDER`).
    """
    prod = wide(attn) * wide(grads)  # [..., L, H, N, N]
    fused = torch.stack(
        [prod.mean(dim=-3), prod.amax(dim=-3), prod.amin(dim=-3)], dim=-4
    ).clamp_min(0)
    pos = prod.clamp_min_(0)  # (A ⊙ G)⁺, in place: prod is not needed any more
    pos_fused = torch.stack([pos.mean(dim=-3), pos.amax(dim=-3), pos.amin(dim=-3)], dim=-4)
    w = readout_weights(layout, pos)
    heads = torch.einsum("n,...nm->...m", w, pos)
    fused_rows = torch.einsum("n,...nm->...m", w, pos_fused)
    chefer = pos_fused[..., 0, :, :, :]  # Ā_l = mean_h((G ⊙ A)⁺)
    return {"chefer": chefer, "fused": fused, "heads": heads, "fused_rows": fused_rows}


def chefer_row(abar: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """The readout row of ``R = (I + Ā_e) ⋯ (I + Ā_s)`` for ``abar [..., e-s+1, N, N]``
    (from the left: ``v ← v + v Ā_l``, l = e … s)."""
    w = readout_weights(layout, abar)
    v = w.expand(*abar.shape[:-3], 1, -1)
    for i in range(abar.shape[-3] - 1, -1, -1):
        v = v + v @ abar[..., i, :, :]
    return v[..., 0, :]


def class_relevance(
    attn: Array,
    grads: Array,
    layout: TokenLayout,
    *,
    index: int = -1,
    label: str = "",
    layers: list[int] | tuple[int, ...] | None = None,
    negative: bool = False,
) -> ClassRelevance:
    """Reduce one image's ``[L, H, N, N]`` attention gradients to what the methods read.

    ``layers``: the layers whose gradients were computed (default: all). ``negative``: reduce
    ``-G`` instead ("why not" the class; ``grads`` is still ``∂y_c/∂A``).
    """
    t, _ = as_tensor(attn)
    g, _ = as_tensor(grads)
    check_attn(t, layout)
    _check_grads(t, g)
    if t.ndim != 4:
        raise OptionsError("class_relevance takes one image's attention [L, H, N, N]")
    num_layers = t.shape[-4]
    done = tuple(range(num_layers)) if layers is None else tuple(sorted(set(layers)))
    parts = relevance_parts(t, -g if negative else g, layout)
    arrays = {k: v.detach().cpu().numpy() for k, v in parts.items()}
    return ClassRelevance(
        index=int(index), label=str(label), layers=done, negative=bool(negative), **arrays
    )


@register(
    "chefer",
    "Chefer et al. 2021",
    "class-specific relevance: gradient-weighted attention (Chefer et al. 2021)",
    (START_LAYER, END_LAYER, NEGATIVE),
    kind="class",
    order=50,
)
@tensors
def chefer(
    attn: torch.Tensor,
    layout: TokenLayout,
    *,
    grads: Gradients,
    start_layer: int = 0,
    end_layer: int = -1,
    negative: bool = False,
) -> torch.Tensor:
    """The readout row ``w @ R`` of Chefer et al.'s relevance over layers s…e (``[..., N]``)."""
    g = _inputs(attn, grads, layout, negative)
    s, e = layer_span(start_layer, end_layer, attn.shape[-4])
    if isinstance(g, ClassRelevance):
        _need_layers(g, range(s, e + 1), "Chefer's relevance")
        abar = _like(g.chefer[s : e + 1], attn)
    else:  # [..., L, N, N], clamp per head, then the mean
        sl = slice(s, e + 1)
        abar = (wide(g[..., sl, :, :, :]) * wide(attn[..., sl, :, :, :])).clamp_min(0).mean(-3)
    return chefer_row(abar, layout)


@register(
    "grad-rollout",
    "Gradient rollout",
    "class-specific rollout of gradient-weighted attention (vit-explain, corrected)",
    (FUSION, DISCARD, START_LAYER, END_LAYER, NEGATIVE),
    kind="class",
    order=60,
)
@tensors
def grad_rollout(
    attn: torch.Tensor,
    layout: TokenLayout,
    *,
    grads: Gradients,
    fusion: Fusion = "mean",
    discard: float = 0.0,
    start_layer: int = 0,
    end_layer: int = -1,
    negative: bool = False,
) -> torch.Tensor:
    """The readout row of gradient rollout (``[..., N]``).

    Each layer's heads are weighted by that layer's own gradient, ``A_l ⊙ ∂y_c/∂A_l``, fused
    (mean/max/min), clamped at 0, then rolled out like attention rollout: lowest ``discard``
    share zeroed, ``+ I``, rows normalized to 1 (over the key axis), multiplied through the
    layers from ``start_layer`` to ``end_layer``.
    """
    g = _inputs(attn, grads, layout, negative)
    s, e = layer_span(start_layer, end_layer, attn.shape[-4])
    if isinstance(g, ClassRelevance):
        _need_layers(g, range(s, e + 1), "gradient rollout")
        fused = _like(g.fused[fusion_index(fusion), s : e + 1], attn)
    else:
        sl = slice(s, e + 1)
        weighted = wide(attn[..., sl, :, :, :]) * wide(g[..., sl, :, :, :])
        fused = fuse_heads(weighted, fusion).clamp_min(0)
    hat = rollout_factors(fused, layout, discard)
    w = readout_weights(layout, hat)
    return rolled_rows(hat, w.expand(*hat.shape[:-3], 1, -1))[..., 0, :]


@register(
    "attn-grad",
    "Attention × gradient",
    "attention × gradient of one layer/head for a class",
    (LAYER, HEAD, FUSION, NEGATIVE),
    kind="class",
    order=70,
    gradients="layer",
)
@tensors
def attn_grad(
    attn: torch.Tensor,
    layout: TokenLayout,
    *,
    grads: Gradients,
    layer: int = -1,
    head: int | None = None,
    fusion: Fusion = "mean",
    negative: bool = False,
) -> torch.Tensor:
    """The readout row of ``(A_l^h ⊙ ∂y_c/∂A_l^h)⁺`` (``[..., N]``; heads fused after the
    clamp): where this head's attention pushed the class score up (down with ``negative``)."""
    g = _inputs(attn, grads, layout, negative)
    li = layer_index(layer, attn.shape[-4])
    hi = head_index(head, attn.shape[-3])
    if isinstance(g, ClassRelevance):
        _need_layers(g, [li], "attention × gradient")
        row = g.heads[li, hi] if hi is not None else g.fused_rows[fusion_index(fusion), li]
        return _like(row, attn)
    prod = (wide(attn[..., li, :, :, :]) * wide(g[..., li, :, :, :])).clamp_min(0)
    a = prod[..., hi, :, :] if hi is not None else fuse_heads(prod, fusion)
    return readout_weights(layout, a) @ a


def class_head_rows(rel: ClassRelevance) -> np.ndarray:
    """Attention × gradient for every layer, head and fusion: ``[L, H + 3, N]`` (slots as in
    :func:`~vitviz.methods.attention.head_rows`), from a class's relevance alone."""
    missing = sorted(set(range(rel.num_layers)) - set(rel.layers))
    rows = np.concatenate([rel.heads, np.moveaxis(rel.fused_rows, 0, 1)], axis=1)
    if missing:
        rows[missing] = np.nan  # not computed: shown as such, never as zeros
    return rows.astype(np.float32)
