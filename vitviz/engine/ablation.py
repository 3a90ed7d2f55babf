"""Head importance by ablation (Michel, Levy & Neubig, "Are Sixteen Heads Really Better than
One?", NeurIPS 2019): remove one attention head at a time and read how one class's logit and
probability change.

Where a head's output exists: timm's ``Attention`` computes each head's ``softmax(qkᵀ)v``,
concatenates the heads to ``[B, N, H·d]`` (head h is the slice ``h·d:(h+1)·d``) and projects
with ``attn.proj``. A forward pre-hook on ``attn.proj`` therefore sees every head's output and
may edit it, as Michel et al.'s head mask ``ξ_h`` multiplies each head's output before the
output projection. Two ablations:

* ``zero``: the head's slice set to 0 (Michel et al.'s ``ξ_h = 0``);
* ``mean``: the head's slice replaced by its mean over the image's N tokens (every token then
  receives the same, average, message from that head).

A whole layer's attention removed is every head of that layer masked at once; with ``zero``
the attention branch then adds ``proj``'s bias only. (Where a model puts a norm or a gate
between the heads and ``proj`` (``attn.norm``, ``attn.gate``), the slice edited is the
normalised/gated one: still per head, and still what ``proj`` reads.)

Batched: the ``L·H`` head ablations, the ``L`` layer ablations and the clean image are
``L·H + L + 1`` copies of one image; each forward runs ``batch`` of them, each copy with its
own row of a per-call mask ``[B, L, H]`` (1 keeps a head, 0 removes it). The hooks are
registered for the call only and removed afterwards, and each acts only for the call that
registered it (found through a :class:`contextvars.ContextVar`, as in
:mod:`vitviz.engine.block`), so concurrent calls on one shared model never mix.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image
from torch import nn

from vitviz.errors import ModelError, OptionsError
from vitviz.memory.cost import ablation_cost, ablation_forwards  # re-exported
from vitviz.results import ABLATIONS, HeadAblation

__all__ = [
    "ABLATIONS",
    "ablatable",
    "ablate_heads",
    "ablate_heads_of",
    "ablation_cost",
    "ablation_forwards",
]

Progress = Callable[[int, int], None]

_CALL: contextvars.ContextVar[_Call | None] = contextvars.ContextVar(
    "vitviz_ablation_call", default=None
)


class _Call:
    """One call's ablation: its kind and the mask ``[B, L, H]`` of the batch now running."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.mask: torch.Tensor | None = None


def _heads_of(model: nn.Module) -> tuple[nn.ModuleList, int]:
    """The blocks and heads per block, when every block's attention has a linear ``proj``."""
    blocks = getattr(model, "blocks", None)
    if blocks is None or len(blocks) == 0:
        raise ModelError("this model has no transformer blocks (model.blocks) to ablate")
    heads = None
    for i, blk in enumerate(blocks):
        attn = getattr(blk, "attn", None)
        proj = getattr(attn, "proj", None)
        n = getattr(attn, "num_heads", None)
        if not isinstance(proj, nn.Linear) or n is None or proj.in_features % int(n):
            raise ModelError(
                f"block {i} has no attention with num_heads and a linear proj over the "
                "concatenated heads (timm's Attention): its heads cannot be removed one by one"
            )
        if heads not in (None, int(n)):
            raise ModelError("the blocks have different numbers of heads")
        heads = int(n)
    assert heads is not None
    return blocks, heads


def ablatable(model: nn.Module) -> bool:
    """Whether every block's attention has heads and a linear ``proj`` over them."""
    try:
        _heads_of(model)
    except ModelError:
        return False
    return True


def _pre_hook(call: _Call, layer: int, heads: int) -> Any:
    """A pre-hook on ``attn.proj`` editing the heads the call's mask removes at ``layer``."""

    def hook(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if _CALL.get() is not call or call.mask is None:
            return None  # another call's forward on the same shared model
        x = args[0]
        keep = call.mask[:, layer]  # [B, H]
        if x.ndim != 3 or x.shape[0] != keep.shape[0]:
            raise ModelError(
                f"attn.proj of block {layer} received {tuple(x.shape)}, not [batch, tokens, "
                "heads·dim]: this attention cannot be ablated per head"
            )
        if bool(keep.all()):
            return None
        b, n, width = x.shape
        per_head = x.reshape(b, n, heads, width // heads)
        k = keep.to(x.dtype)[:, None, :, None]  # [B, 1, H, 1]
        out = per_head * k
        if call.kind == "mean":
            out = out + (1 - k) * per_head.mean(dim=1, keepdim=True)
        return (out.reshape(b, n, width), *args[1:])

    return hook


def _masks(layers: int, heads: int) -> torch.Tensor:
    """``[1 + L·H + L, L, H]``: the clean copy, each head removed, each layer removed."""
    masks = torch.ones(1 + layers * heads + layers, layers, heads)
    for layer in range(layers):
        for head in range(heads):
            masks[1 + layer * heads + head, layer, head] = 0
        masks[1 + layers * heads + layer, layer] = 0
    return masks


def ablate_heads(
    model: nn.Module,
    x: torch.Tensor,
    target: int,
    *,
    kind: str = "zero",
    batch: int = 16,
    progress: Progress | None = None,
) -> HeadAblation:
    """Each head's and each layer's effect on class ``target`` of the image ``x [1, 3, H, W]``.

    Args:
        model: a timm ViT (any module whose blocks' ``attn.proj`` reads the concatenated heads).
        x: the preprocessed image.
        target: the class c.
        kind: ``zero`` or ``mean`` (see the module's docstring).
        batch: copies of the image per forward (memory: :func:`ablation_cost`).
        progress: called with ``(done, total)`` ablated copies after each forward.

    Raises:
        OptionsError: an unknown kind, a batch below 1, a class out of range.
        ModelError: the model's attention cannot be ablated per head.
    """
    if kind not in ABLATIONS:
        raise OptionsError(f"kind must be one of {', '.join(ABLATIONS)}, got {kind!r}")
    if int(batch) < 1:
        raise OptionsError(f"batch must be at least 1, got {batch}")
    batch = int(batch)
    blocks, heads = _heads_of(model)
    layers = len(blocks)
    classes = int(getattr(model, "num_classes", 0) or 0)
    if classes <= 0:
        raise OptionsError("this model has no classifier: there is no class logit to ablate")
    if not 0 <= int(target) < classes:
        raise OptionsError(f"class must be 0…{classes - 1}, got {target}")
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[0] != 1:
        raise OptionsError(f"ablation takes one image [1, 3, H, W], got {tuple(x.shape)}")
    param = next(model.parameters())
    x = x.to(param.device, param.dtype)
    masks = _masks(layers, heads).to(param.device)
    total = len(masks) - 1
    call = _Call(kind)
    handles = [
        blk.attn.proj.register_forward_pre_hook(_pre_hook(call, i, heads))
        for i, blk in enumerate(blocks)
    ]
    logits: list[torch.Tensor] = []
    probs: list[torch.Tensor] = []
    token = _CALL.set(call)
    try:
        with torch.inference_mode():
            for start in range(0, len(masks), batch):
                call.mask = masks[start : start + batch]
                b = len(call.mask)
                out = model(x.expand(b, -1, -1, -1)).float()
                if out.ndim != 2 or out.shape[0] != b:
                    raise ModelError(f"the model returned {tuple(out.shape)}, not [batch, classes]")
                logits.append(out[:, int(target)].double().cpu())
                probs.append(out.softmax(-1)[:, int(target)].double().cpu())
                if progress is not None:
                    progress(min(start + b, len(masks)) - 1, total)
    finally:
        _CALL.reset(token)
        call.mask = None
        for h in handles:
            h.remove()
    y, p = torch.cat(logits).numpy(), torch.cat(probs).numpy()
    dy, dp = y[1:] - y[0], p[1:] - p[0]
    n = layers * heads
    return HeadAblation(
        target=int(target),
        kind=kind,
        clean_logit=float(y[0]),
        clean_probability=float(p[0]),
        logit=dy[:n].reshape(layers, heads),
        probability=dp[:n].reshape(layers, heads),
        layer_logit=dy[n:].copy(),
        layer_probability=dp[n:].copy(),
        batch=batch,
        forwards=ablation_forwards(layers, heads, batch),
    )


def ablate_heads_of(loaded: Any, seen: Image.Image, target: int, **options: Any) -> HeadAblation:
    """:func:`ablate_heads` of one image already resized and cropped for ``loaded``
    (a :class:`vitviz.models.LoadedModel`); ``options`` as :func:`ablate_heads` takes them."""
    x = loaded.to_tensor(seen.convert("RGB"))[None]
    return ablate_heads(loaded.model, x, target, **options)
