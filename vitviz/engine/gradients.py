"""Attention gradients for class-specific explanations: ``∂y_c/∂A_l`` for chosen classes.

One forward pass keeps each block's attention in the autograd graph; then one backward pass
per requested class takes the gradient of the pre-softmax logit ``y_c`` with respect to the
attention tensors only (``torch.autograd.grad`` on them: no parameter gradients are computed
or stored), and only for the layers a method reads. A batch may hold many images, each with
its own classes: images do not interact in a ViT, so summing their logits and taking one
gradient gives every image its own.

Two other targets: ``negative`` takes the gradient of ``-y_c`` ("why not this class"), and a
backbone without a classifier (DINO, DINOv2) explains the norm of its readout feature,
``‖f‖`` (what its forward returns), the one class-free scalar every such model has: class
index :data:`FEATURE_NORM`, labelled :data:`FEATURE_NORM_LABEL`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from vitviz.engine.capture import Capturable, forward_with_attention
from vitviz.errors import ModelError, OptionsError
from vitviz.layout import TokenLayout
from vitviz.methods import relevance_parts
from vitviz.results import FEATURE_NORM, FEATURE_NORM_LABEL, ClassRelevance

__all__ = [
    "FEATURE_NORM",
    "FEATURE_NORM_LABEL",
    "ClassGradients",
    "Classifier",
    "attention_gradients",
    "attention_relevance",
]


class Classifier(Capturable, Protocol):
    """A capturable model with class names (:class:`vitviz.models.LoadedModel`)."""

    labels: list[str] | None


@dataclass
class ClassGradients:
    """What :func:`attention_relevance` returns for a batch.

    Attributes:
        logits: ``[B, C]``.
        attention: ``[B, L, H, N, N]`` fp32, detached.
        layout: the token layout of the batch.
        classes: for each image, the classes explained (None resolved to the top one).
        relevance: ``relevance[b][k]`` is image b's :class:`ClassRelevance` for its class k.
        gradients: ``[K, B, L, H, N, N]`` fp32 when asked for (``keep_gradients``), else None.
    """

    logits: torch.Tensor
    attention: torch.Tensor
    layout: TokenLayout
    classes: list[list[int]]
    relevance: list[list[ClassRelevance]]
    gradients: torch.Tensor | None = None


def attention_gradients(
    loaded: Classifier,
    x: torch.Tensor,
    classes: Sequence[Sequence[int | None]],
    *,
    layers: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, TokenLayout, list[list[int]]]:
    """Logits, attention and the full attention gradients of a preprocessed batch.

    Args:
        loaded: the model.
        x: ``[B, 3, H, W]`` normalized input.
        classes: for each image, the same number K of class indices; None stands for the
            image's top prediction (read from the same forward pass).
        layers: layers whose gradients are needed (default: all); the others stay 0.

    Returns:
        ``logits [B, C]``, ``attention [B, L, H, N, N]`` (fp32, detached),
        ``grads [K, B, L, H, N, N]`` (fp32; ``grads[k, b]`` is ``∂y_{classes[b][k]}/∂A`` of
        image b), the token layout and the classes used (None resolved).
    """
    out = attention_relevance(loaded, x, classes, layers=layers, keep_gradients=True, reduce=False)
    assert out.gradients is not None
    return out.logits, out.attention, out.gradients, out.layout, out.classes


def attention_relevance(
    loaded: Classifier,
    x: torch.Tensor,
    classes: Sequence[Sequence[int | None]],
    *,
    layers: Sequence[int] | None = None,
    keep_gradients: bool = False,
    reduce: bool = True,
    negative: bool = False,
) -> ClassGradients:
    """One forward, one backward per class, each class's gradients reduced at once.

    The ``[B, L, H, N, N]`` gradient of class k is turned into every image's
    :class:`~vitviz.results.ClassRelevance` right after its backward pass and then dropped,
    so memory holds one class's gradients at a time, not K of them (unless
    ``keep_gradients``). ``negative``: the relevance is of ``-y_c`` ("why not"); kept
    gradients are always ``∂y_c/∂A``, which the methods negate themselves with ``negative``.
    Without a classifier the one target is the readout feature's norm (classes must be None
    or :data:`FEATURE_NORM`).
    """
    model = loaded.model
    b = x.shape[0]
    if len(classes) != b or len({len(c) for c in classes}) != 1:
        raise OptionsError("give the same number of classes for every image of the batch")
    classifier = loaded.has_classifier
    num_classes = int(model.num_classes) if classifier else 0
    for cs in classes:
        for c in cs:
            if c is None:
                continue
            if not classifier and int(c) != FEATURE_NORM:
                raise ModelError(
                    "this model has no classifier (a self-supervised backbone), so it has no "
                    f"class {c}: its class-free target is the readout feature's norm "
                    f"(class {FEATURE_NORM} or None)"
                )
            if classifier and not 0 <= int(c) < num_classes:
                raise OptionsError(f"class {c} does not exist: the model has {num_classes}")
    num_layers = len(model.blocks)
    need = sorted(set(range(num_layers) if layers is None else (int(i) for i in layers)))
    if any(not 0 <= i < num_layers for i in need):
        raise OptionsError(f"layers {need} out of range for a {num_layers}-layer model")
    layout = loaded.layout((int(x.shape[-2]), int(x.shape[-1])))
    labels = loaded.labels or [str(i) for i in range(num_classes)]
    x = x.to(loaded.device).requires_grad_(True)  # a graph even if the weights are frozen
    relevance: list[list[ClassRelevance]] = [[] for _ in range(b)]
    grads = None
    with torch.inference_mode(False), torch.enable_grad():
        out, attn = forward_with_attention(model, x, precision=loaded.precision, hook=loaded.hook)
        logits = out.float()
        attention = torch.stack([a.detach().float() for a in attn], dim=1)
        if attention.shape[-1] != layout.num_tokens:
            raise ModelError(
                f"attention has {attention.shape[-1]} tokens, "
                f"the layout expects {layout.num_tokens}"
            )
        if classifier:
            top = logits.argmax(dim=-1).tolist()
        else:  # the class-free target: one "class", the readout feature's norm
            top = [FEATURE_NORM] * b
            logits = logits.norm(dim=-1, keepdim=True)
        resolved = [[top[j] if c is None else int(c) for c in cs] for j, cs in enumerate(classes)]
        k_count = len(classes[0])
        if keep_gradients:
            grads = attention.new_zeros((k_count, *attention.shape))
        rows = torch.arange(b, device=logits.device)
        for k in range(k_count):
            idx = torch.tensor([max(cs[k], 0) for cs in resolved], device=logits.device)
            y = logits[rows, idx].sum()
            got = torch.autograd.grad(
                y, [attn[i] for i in need], retain_graph=k < k_count - 1, allow_unused=True
            )
            g = torch.zeros_like(attention) if grads is None else grads[k]
            for i, gi in zip(need, got, strict=True):
                if gi is not None:
                    g[:, i] = gi.float()
            del got
            if reduce:
                parts = relevance_parts(attention, -g if negative else g, layout)
                arrays = {n: v.cpu().numpy() for n, v in parts.items()}
                for j in range(b):
                    c = resolved[j][k]
                    relevance[j].append(
                        ClassRelevance(
                            index=c,
                            label=labels[c] if classifier else FEATURE_NORM_LABEL,
                            layers=tuple(need),
                            negative=bool(negative),
                            **{n: v[j].copy() for n, v in arrays.items()},
                        )
                    )
            del g
    return ClassGradients(logits.detach(), attention, layout, resolved, relevance, grads)
