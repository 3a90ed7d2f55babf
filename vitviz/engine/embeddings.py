"""One image's vectors on their way into the encoder, for the lesson (and anyone curious).

A ViT cuts the normalised image into P×P patches, flattens each into P²·C numbers, projects
them linearly to D numbers (the patch embedding, a strided convolution in timm), adds a learned
position embedding and puts the prefix tokens ([CLS], distillation, registers) in front: the
``(N + prefix) × D`` sequence the first block reads. :func:`token_embeddings` returns each of
these for one image, read from the model with hooks (the encoder's real input) and from its
weights (patch and position embeddings). :func:`features_of` returns the other end: every
token's features after the last block and the final norm, what timm's ``forward_features``
returns (for the PCA picture and patch similarity of :mod:`vitviz.methods.features`).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn

from vitviz.engine.capture import autocast_for
from vitviz.errors import ModelError, OptionsError
from vitviz.layout import TokenLayout
from vitviz.results import TokenEmbeddings, TokenFeatures, flatten_patch  # noqa: F401 - re-exported


def _patch_positions(model: nn.Module, grid: tuple[int, int], prefix: int) -> np.ndarray | None:
    """The position embedding added to each patch (``[N, D]``), when the model has learned
    absolute ones for exactly this grid (another input size is resampled by timm: those
    positions are not the stored ones, so none are claimed)."""
    pos = getattr(model, "pos_embed", None)
    own = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if not isinstance(pos, torch.Tensor) or own is None or tuple(int(g) for g in own) != grid:
        return None
    n = grid[0] * grid[1]
    rows = pos.detach().float().cpu().reshape(-1, pos.shape[-1])
    if not n <= rows.shape[0] <= n + prefix:  # patch rows, after any prefix rows
        return None
    return rows[-n:].numpy()


def token_embeddings(
    model: nn.Module, x: torch.Tensor, num_prefix: int, grid: tuple[int, int]
) -> TokenEmbeddings:
    """Run ``x [1, 3, H, W]`` (normalised, a ``grid`` of patches) through ``model`` and keep
    its input vectors.

    Raises:
        OptionsError: the model has no ``patch_embed`` and ``blocks`` to read them from.
    """
    blocks = getattr(model, "blocks", None)
    embed = getattr(model, "patch_embed", None)
    if embed is None or blocks is None or len(blocks) == 0:
        raise OptionsError("this model has no patch embedding and blocks to read vectors from")
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(_module, args, output=None):
            value = output if output is not None else args[0]
            seen[name] = value.detach().float().cpu()

        return hook

    handles = [
        embed.register_forward_hook(keep("patches")),
        blocks[0].register_forward_pre_hook(keep("tokens")),
    ]
    head = getattr(model, "head", None)
    if isinstance(head, nn.Module):
        handles.append(head.register_forward_pre_hook(keep("features")))
    param = next(model.parameters())
    try:
        with torch.inference_mode():
            model(x.to(param.device, param.dtype))
    finally:
        for h in handles:
            h.remove()
    patches = seen["patches"][0]
    patches = patches.reshape(-1, patches.shape[-1]).numpy()  # [N, D] (NHWC or flat)
    tokens = seen["tokens"][0].numpy()
    features = seen.get("features")
    positions = _patch_positions(model, grid, num_prefix)
    return TokenEmbeddings(
        pixels=x[0].detach().float().cpu().numpy(),
        patches=patches,
        positions=positions,
        tokens=tokens,
        num_prefix=int(num_prefix),
        features=None if features is None else features.reshape(-1).numpy(),
        norm_pre=not isinstance(getattr(model, "norm_pre", nn.Identity()), nn.Identity),
    )


def _model_input(loaded, seen: Image.Image) -> tuple[torch.Tensor, TokenLayout]:
    """The normalised ``[1, 3, H, W]`` tensor of a seen image and its token layout."""
    x = loaded.to_tensor(seen.convert("RGB"))[None]
    return x, loaded.layout((seen.size[1], seen.size[0]))


def embeddings_of(loaded, seen: Image.Image) -> TokenEmbeddings:
    """:func:`token_embeddings` of one image already resized and cropped for ``loaded``."""
    x, layout = _model_input(loaded, seen)
    return token_embeddings(loaded.model, x, layout.num_prefix, tuple(layout.grid))


def final_norm(model: nn.Module) -> str | None:
    """The class name of the norm ending ``model.forward_features`` (None when it is an
    identity: models with ``fc_norm`` normalise after pooling instead)."""
    norm = getattr(model, "norm", None)
    if not isinstance(norm, nn.Module) or isinstance(norm, nn.Identity):
        return None
    return type(norm).__name__


def features_of(loaded, seen: Image.Image) -> TokenFeatures:
    """Every token's features after the last block of one image already resized and cropped
    for ``loaded``: ``model.forward_features`` (in the model's precision, returned as float32).

    Raises:
        OptionsError: the model has no ``forward_features``.
        ModelError: it returned something else than one feature vector per token.
    """
    x, layout = _model_input(loaded, seen)
    model = loaded.model
    forward = getattr(model, "forward_features", None)
    if forward is None:
        raise OptionsError("this model has no forward_features to read token features from")
    with torch.inference_mode(), autocast_for(loaded.device, loaded.precision):
        out = forward(x.to(loaded.device))
    if not isinstance(out, torch.Tensor) or out.ndim != 3 or out.shape[1] != layout.num_tokens:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(
            f"forward_features gave {shape}, not one feature vector for each of the "
            f"{layout.num_tokens} tokens: this architecture's features cannot be shown"
        )
    tokens = out[0].detach().float().cpu().numpy()
    return TokenFeatures(tokens=tokens, layout=layout, norm=final_norm(model))
