"""A model's input: its preprocessing config and the token layout of an input size."""

from __future__ import annotations

from torch import nn

from vitviz.errors import ModelError
from vitviz.inputs.geometry import InputGeometry
from vitviz.layout import PrefixKind, Readout, TokenLayout

__all__ = ["InputGeometry", "model_layout", "patch_size_of"]


def patch_size_of(model: nn.Module) -> tuple[int, int]:
    """Input pixels per token along (y, x): ``img_size / grid_size`` (hybrid stems included)."""
    pe = model.patch_embed
    return tuple(int(i) // int(g) for i, g in zip(pe.img_size, pe.grid_size, strict=True))


def model_layout(model: nn.Module, input_hw: tuple[int, int]) -> TokenLayout:
    """Read the token layout from a timm ViT for an input of ``(height, width)`` pixels."""
    prefix: list[PrefixKind] = []
    if getattr(model, "cls_token", None) is not None:
        prefix.append("cls")
    if getattr(model, "dist_token", None) is not None:
        prefix.append("dist")
    reg = getattr(model, "reg_token", None)
    num_reg = int(reg.shape[1]) if reg is not None else int(getattr(model, "num_reg_tokens", 0))
    prefix += ["reg"] * num_reg
    if len(prefix) != int(model.num_prefix_tokens):
        raise ModelError(
            f"{type(model).__name__} has {model.num_prefix_tokens} prefix tokens but vitviz "
            f"identified {len(prefix)} ({prefix}); this architecture is not supported yet"
        )
    pe = model.patch_embed
    patch = patch_size_of(model)
    dynamic = bool(getattr(model, "dynamic_img_size", False))
    if dynamic:
        grid = tuple(int(g) for g in pe.dynamic_feat_size(tuple(input_hw)))
    else:
        grid = tuple(int(g) for g in pe.grid_size)
        expected = (grid[0] * patch[0], grid[1] * patch[1])
        if tuple(input_hw) != expected:
            raise ModelError(
                f"input is {input_hw[0]}×{input_hw[1]} px but the model takes "
                f"{expected[0]}×{expected[1]}; load it with keep_aspect for other sizes"
            )
    pool = getattr(model, "global_pool", "token")
    readout: Readout
    if getattr(model, "vitviz_readout", None):  # adapters that know it (Hugging Face models)
        readout = model.vitviz_readout
    elif "dist" in prefix:
        readout = "cls+dist"
    elif pool == "token" or (not pool and "cls" in prefix):
        readout = "cls"
    else:
        readout = "avg+prefix" if getattr(model, "pool_include_prefix", False) else "avg"
    return TokenLayout(prefix=tuple(prefix), grid=grid, patch_size=patch, readout=readout)
