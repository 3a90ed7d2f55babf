"""The residual stream after every block, read two ways: the logit lens and token norms.

**The logit lens** (nostalgebraist, "interpreting GPT: the logit lens", 2020, for GPT-2): decode
each layer's residual stream with the model's own output layers, as if the network stopped
there. For a timm ViT the output layers are what follows the blocks: the final norm
(``model.norm``), then ``model.forward_head``, i.e. the readout (the class token; the mean of
class and distillation token; or the mean of the patch tokens for ``global_pool='avg'``), the
pooled norm ``fc_norm`` where the model has one, and the classifier ``model.head``. So row l is
``forward_head(norm(x_l))``; the last row is the model's own output (checked on every call).
Intermediate rows are an approximation: the norm and head were trained on the last layer's
stream only, so an early layer's row says what the *final* head would read there, not what
that layer "predicts".

**Token norms** (Darcet et al., "Vision Transformers Need Registers", ICLR 2024): the L2 norm
of every token of the residual stream after each block, where high-norm outlier tokens show
(:mod:`vitviz.analysis.norms` finds them).

:func:`recording_blocks` hooks each block's output for the calls run inside it only (per-call
storage through a :class:`contextvars.ContextVar`, hooks removed on exit, as in
:mod:`vitviz.engine.block`), so concurrent calls on one shared model never mix.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from vitviz.errors import ModelError, OptionsError
from vitviz.inputs.classes import probabilities
from vitviz.memory.cost import lens_cost, norms_cost  # re-exported: what the lens holds
from vitviz.results import LogitLens

__all__ = [
    "has_lens",
    "lens_cost",
    "lens_from_logits",
    "lens_logits",
    "logit_lens",
    "logit_lens_of",
    "norms_cost",
    "recording_blocks",
    "residual_stream",
    "stream_norms_of",
]

_STORE: contextvars.ContextVar[list | None] = contextvars.ContextVar(
    "vitviz_lens_store", default=None
)


@contextlib.contextmanager
def recording_blocks(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Inside the ``with``: every block's output ``[B, N, D]`` (detached), in order, for the
    forwards this context runs (others' forwards on the same model are not recorded)."""
    blocks = getattr(model, "blocks", None)
    if blocks is None or len(blocks) == 0:
        raise ModelError("this model has no transformer blocks (model.blocks) to read")
    store: list[torch.Tensor] = []

    def save(_module: nn.Module, _args: Any, out: Any) -> None:
        if _STORE.get() is not store:
            return
        if not isinstance(out, torch.Tensor) or out.ndim != 3:
            raise ModelError("a block's output is not a [batch, tokens, width] tensor")
        store.append(out.detach())

    handles = [blk.register_forward_hook(save) for blk in blocks]
    token = _STORE.set(store)
    try:
        yield store
    finally:
        _STORE.reset(token)
        for h in handles:
            h.remove()


def residual_stream(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward of ``x [1, 3, H, W]``: the model's output ``[C]`` and the residual stream
    after every block ``[L, N, D]`` (float32, on the model's device)."""
    param = next(model.parameters())
    x = x[None] if x.ndim == 3 else x
    with recording_blocks(model) as outs, torch.inference_mode():
        out = model(x.to(param.device, param.dtype))
    if len(outs) != len(model.blocks):
        raise ModelError(f"recorded {len(outs)} block outputs of {len(model.blocks)} blocks")
    return out[0].float(), torch.stack([o[0] for o in outs]).float()


def has_lens(model: nn.Module) -> bool:
    """Whether the model has the final norm and head the lens reads through, and classes."""
    return (
        callable(getattr(model, "forward_head", None))
        and isinstance(getattr(model, "norm", None), nn.Module)
        and int(getattr(model, "num_classes", 0) or 0) > 0
    )


def lens_logits(model: nn.Module, stream: torch.Tensor) -> torch.Tensor:
    """``[L, C]``: ``model.forward_head(model.norm(x_l))`` for each layer's stream ``[L, N, D]``
    (the layers go through the head as one batch)."""
    if not has_lens(model):
        raise OptionsError(
            "the logit lens needs a classifier read through model.norm and model.forward_head "
            "(a timm ViT with classes)"
        )
    param = next(model.parameters())
    with torch.inference_mode():
        return model.forward_head(model.norm(stream.to(param.dtype))).float()


def lens_from_logits(logits: np.ndarray, top_k: int = 5) -> LogitLens:
    """The :class:`LogitLens` of ``[L, C]`` logits (the last row the model's output)."""
    z = np.asarray(logits, np.float64)
    if z.ndim != 2 or z.shape[1] < 1:
        raise OptionsError(f"logits must be [layers, classes], got {z.shape}")
    if int(top_k) < 1:
        raise OptionsError(f"top_k must be at least 1, got {top_k}")
    p = probabilities(z)
    k = min(int(top_k), z.shape[1])
    top = np.argsort(-z, axis=1, kind="stable")[:, :k]
    final = int(np.argmax(z[-1]))
    rank = 1 + (z > z[:, final : final + 1]).sum(axis=1)
    return LogitLens(
        logits=z.astype(np.float32),
        top=top,
        top_probability=np.take_along_axis(p, top, axis=1),
        final=final,
        final_probability=p[:, final],
        final_rank=rank.astype(np.int64),
    )


def logit_lens(model: nn.Module, x: torch.Tensor, *, top_k: int = 5) -> LogitLens:
    """The logit lens of one image ``x [1, 3, H, W]``: the model's final norm and head read
    after every block (one forward; the layers through the head as one batch).

    Raises:
        OptionsError: a model without classes or without ``norm``/``forward_head``.
        ModelError: the last row differs from the model's output (something between the
            blocks and the head that the lens does not follow).
    """
    if not has_lens(model):
        lens_logits(model, torch.zeros(0))  # raises the explanation
    out, stream = residual_stream(model, x)
    z = lens_logits(model, stream)
    if z.shape[-1] != out.shape[-1]:
        raise ModelError(f"the lens gives {z.shape[-1]} classes, the model {out.shape[-1]}")
    scale = float(out.abs().max()) + 1.0
    if float((z[-1] - out).abs().max()) > 1e-4 * scale:
        raise ModelError(
            "the model's output is not forward_head(norm(last block's output)): the logit "
            "lens cannot follow what it does between its blocks and its head"
        )
    return lens_from_logits(z.cpu().numpy(), top_k)


def logit_lens_of(loaded: Any, seen: Image.Image, *, top_k: int = 5) -> LogitLens:
    """:func:`logit_lens` of one image already resized and cropped for ``loaded``."""
    return logit_lens(loaded.model, loaded.to_tensor(seen.convert("RGB"))[None], top_k=top_k)


def stream_norms_of(loaded: Any, seen: Image.Image) -> tuple[np.ndarray, np.ndarray, Any]:
    """One forward of a seen image through ``loaded`` (a :class:`vitviz.models.LoadedModel`):
    the residual stream's token norms ``[L, N]``, the last layer's attention ``[H, N, N]``
    (captured in the same forward) and the token layout."""
    from vitviz.engine.capture import capture_tensor

    x = loaded.to_tensor(seen.convert("RGB"))[None]
    with recording_blocks(loaded.model) as outs:
        _logits, attention, layout = capture_tensor(loaded, x)
    if len(outs) != len(loaded.model.blocks):
        raise ModelError(f"recorded {len(outs)} block outputs of {len(loaded.model.blocks)}")
    norms = torch.stack([o[0].double() for o in outs]).norm(dim=-1)
    return norms.cpu().numpy(), attention[0, -1].float().cpu().numpy(), layout
