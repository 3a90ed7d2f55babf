"""What every method shares: numpy ⇄ torch, index checks, head fusion, rows to grids.

Methods compute on torch tensors on the attention's device. :func:`tensors` lets each one be
written for tensors once and called with numpy arrays too (numpy in, numpy out; a tensor
stays on its device and in its dtype until the method widens it).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import numpy as np
import torch

from vitviz.errors import OptionsError
from vitviz.layout import TokenLayout
from vitviz.results import FUSION_ORDER

Array = TypeVar("Array", np.ndarray, torch.Tensor)
Fusion = Literal["mean", "max", "min"]
FUSIONS: tuple[str, ...] = FUSION_ORDER
F = TypeVar("F", bound=Callable[..., Any])


def as_tensor(x: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Tensor view of ``x`` (no copy; half precision stays half) and whether it was numpy."""
    was_numpy = isinstance(x, np.ndarray)
    t = torch.from_numpy(np.asarray(x)) if was_numpy else x
    if not t.is_floating_point():
        t = t.float()
    return t, was_numpy


def wide(t: torch.Tensor) -> torch.Tensor:
    """``t`` in at least float32 (results are computed in fp32 or fp64)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def tensors(fn: F) -> F:
    """Let a tensor function take numpy too: the first argument and ``grads`` (if an array)
    become tensors; a numpy first argument gives a numpy result."""

    @functools.wraps(fn)
    def wrapper(x: Any, *args: Any, **kwargs: Any) -> Any:
        t, was_numpy = as_tensor(x)
        grads = kwargs.get("grads")
        if isinstance(grads, (np.ndarray, torch.Tensor)):
            kwargs["grads"] = as_tensor(grads)[0]
        out = fn(t, *args, **kwargs)
        return out.detach().cpu().numpy() if was_numpy else out

    return wrapper  # type: ignore[return-value]


def check_attn(attn: torch.Tensor, layout: TokenLayout) -> None:
    """Attention must be ``[..., L, H, N, N]`` with the layout's N."""
    if attn.ndim < 4:
        raise OptionsError(f"attention must be [..., layers, heads, N, N], got shape {attn.shape}")
    n = layout.num_tokens
    if attn.shape[-1] != n or attn.shape[-2] != n:
        raise OptionsError(
            f"attention has {attn.shape[-1]} tokens but the layout has {n} "
            f"({layout.num_prefix} prefix + {layout.grid[0]}×{layout.grid[1]} patches)"
        )


def layer_index(layer: int, num_layers: int) -> int:
    """A layer index (negative from the end) checked against the model's depth."""
    if not -num_layers <= layer < num_layers:
        raise OptionsError(
            f"layer {layer} is out of range: the model has {num_layers} layers "
            f"(0–{num_layers - 1}, or -1 for the last)"
        )
    return layer % num_layers


def layer_span(start: int, end: int, num_layers: int) -> tuple[int, int]:
    """First and last layer (both counted from 0, inclusive) of a product over layers."""
    s, e = layer_index(start, num_layers), layer_index(end, num_layers)
    if e < s:
        raise OptionsError(
            f"the end layer ({e}) comes before the start layer ({s}): choose an end layer at or "
            "after the start"
        )
    return s, e


def relative_layer(layer: int, layers: int, other_layers: int) -> int:
    """The layer of a model with ``other_layers`` at the same relative depth as ``layer`` of a
    model with ``layers`` (first to first, last to last, rounded in between)."""
    li = layer_index(layer, layers)
    if layers == 1:
        return other_layers - 1
    return math.floor(li * (other_layers - 1) / (layers - 1) + 0.5)  # halves round up


def head_index(head: int | None, num_heads: int) -> int | None:
    """A head index, or None for all heads fused."""
    if head is None:
        return None
    if not -num_heads <= head < num_heads:
        raise OptionsError(
            f"head {head} is out of range: each layer has {num_heads} heads "
            f"(0–{num_heads - 1}); leave it out to fuse all heads"
        )
    return head % num_heads


def patch_index(patch: int, layout: TokenLayout) -> int:
    """A patch index, row by row over the grid."""
    if not 0 <= patch < layout.num_patches:
        raise OptionsError(
            f"patch {patch} is out of range: the grid is {layout.grid[0]}×{layout.grid[1]} "
            f"= {layout.num_patches} patches (0–{layout.num_patches - 1}, row by row)"
        )
    return patch


def fusion_index(fusion: str) -> int:
    """Position of a fusion in :data:`FUSIONS` (refusing unknown ones)."""
    if fusion not in FUSIONS:
        raise OptionsError(f"unknown head fusion {fusion!r}: choose one of {', '.join(FUSIONS)}")
    return FUSIONS.index(fusion)


@tensors
def fuse_heads(attn: torch.Tensor, fusion: Fusion = "mean") -> torch.Tensor:
    """Fuse the head axis (-3) of ``[..., H, N, N]`` attention by mean, max or min."""
    fusion_index(fusion)
    if fusion == "mean":
        wide_dtype = torch.float64 if attn.dtype == torch.float64 else torch.float32
        return attn.mean(dim=-3, dtype=wide_dtype)  # half precision accumulates in fp32
    return wide(attn.amax(dim=-3) if fusion == "max" else attn.amin(dim=-3))


def select_layer(t: torch.Tensor, layer: int, head: int | None, fusion: Fusion) -> torch.Tensor:
    """``[..., L, H, N, N]`` → one layer's ``[..., N, N]``, one head or fused."""
    li = layer_index(layer, t.shape[-4])
    hi = head_index(head, t.shape[-3])
    a = t[..., li, :, :, :]
    return wide(a[..., hi, :, :]) if hi is not None else fuse_heads(a, fusion)


def readout_weights(layout: TokenLayout, like: torch.Tensor) -> torch.Tensor:
    """The layout's readout weights as a tensor of ``like``'s dtype and device."""
    return torch.as_tensor(layout.readout_weights(), dtype=like.dtype, device=like.device)


def to_grid(row: Array, layout: TokenLayout) -> Array:
    """The patch part of token rows ``[..., N]`` on the patch grid ``[..., gh, gw]``."""
    t, was_numpy = as_tensor(row)
    grid = t[..., layout.num_prefix :].reshape(*t.shape[:-1], *layout.grid)
    return grid.detach().cpu().numpy() if was_numpy else grid
