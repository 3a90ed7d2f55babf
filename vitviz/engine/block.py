"""Inside the encoder blocks for one image: the residual stream, a norm, the MLP, the sizes.

A ViT encoder block (Dosovitskiy et al., ICLR 2021, Eq. 2–3) as timm builds it is *pre-norm*::

    x ← x + drop_path1(ls1(attn(norm1(x))))      # multi-head self-attention sub-block
    x ← x + drop_path2(ls2(mlp(norm2(x))))       # MLP sub-block

``ls1``/``ls2`` are LayerScale (a learned per-channel factor; identity when absent) and
drop-path is the identity in eval. The norm comes *before* each sub-block, inside the branch;
the residual stream ``x`` itself is never normalised until the model's final norm. (The
original Transformer, and the classroom explainer's "input + MSA → norm → MLP → norm + input",
are post-norm: ``x ← norm(x + sublayer(x))``; timm's ``ResPostBlock`` is a third variant.)

:func:`block_steps` runs the model ONCE with per-call forward hooks (removed afterwards; each
hook writes only into the storage of the call that registered it, found through a
:class:`contextvars.ContextVar`, so concurrent calls on one shared model never mix) and returns
numpy results: :class:`~vitviz.results.ResidualStream`, :class:`~vitviz.results.NormStep`,
:class:`~vitviz.results.MlpStep` and :class:`~vitviz.results.BlockAnatomy`.
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from vitviz.errors import ModelError, OptionsError
from vitviz.layout import TokenLayout
from vitviz.results import BlockAnatomy, BlockSteps, MlpStep, NormStep, ResidualStream

__all__ = [
    "STANDARD_BLOCK",
    "block_anatomy",
    "block_steps",
    "block_steps_of",
    "check_blocks",
    "default_tokens",
    "norm_kind",
]

STANDARD_BLOCK: tuple[str, ...] = (
    "norm1",
    "attn",
    "ls1",
    "drop_path1",
    "norm2",
    "mlp",
    "ls2",
    "drop_path2",
)
"""The submodules of a timm pre-norm ViT block (``timm.models.vision_transformer.Block``)."""

_STORE: contextvars.ContextVar[dict | None] = contextvars.ContextVar(
    "vitviz_block_store", default=None
)


def check_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's blocks, when each is a standard timm pre-norm block.

    Raises:
        ModelError: the model has no blocks, or a block lacks one of :data:`STANDARD_BLOCK`.
    """
    blocks = getattr(model, "blocks", None)
    if blocks is None or len(blocks) == 0:
        raise ModelError("this model has no transformer blocks (model.blocks) to look inside")
    for i, blk in enumerate(blocks):
        missing = [n for n in STANDARD_BLOCK if not isinstance(getattr(blk, n, None), nn.Module)]
        if missing:
            raise ModelError(
                f"block {i} ({type(blk).__name__}) is not a standard pre-norm ViT block "
                "(x + ls1(attn(norm1 x)); x + ls2(mlp(norm2 x))): it has no "
                f"{', '.join(missing)}"
            )
    return blocks


def norm_kind(module: nn.Module) -> str:
    """``LayerNorm`` or ``RMSNorm`` for a norm module (by type, then class name).

    Raises:
        ModelError: any other kind of norm.
    """
    name = type(module).__name__
    if isinstance(module, nn.LayerNorm) or "layernorm" in name.lower():
        return "LayerNorm"
    if isinstance(module, getattr(nn, "RMSNorm", ())) or "rmsnorm" in name.lower():
        return "RMSNorm"
    raise ModelError(f"{name} is neither a LayerNorm nor an RMSNorm: its steps cannot be shown")


def _activation_name(act: nn.Module | None) -> str:
    """The activation's class name, with GELU's approximation when it is not exact."""
    if act is None:
        return "unknown"
    name = type(act).__name__
    approx = getattr(act, "approximate", "none")
    return f"{name}(approximate={approx!r})" if approx not in (None, "none") else name


def _mlp_sizes(mlp: nn.Module) -> tuple[int, int, bool]:
    """``(D, hidden, gated)`` of a timm MLP (``Mlp``, ``GluMlp``, ``SwiGLU``, ``SwiGLUPacked``)."""
    fc2 = getattr(mlp, "fc2", None)
    first = getattr(mlp, "fc1", None) or getattr(mlp, "fc1_x", None)
    if not isinstance(fc2, nn.Linear) or not isinstance(first, nn.Linear):
        raise ModelError(f"the MLP ({type(mlp).__name__}) has no fc1 and fc2 linear layers")
    hidden = int(fc2.in_features)
    gated = hasattr(mlp, "fc1_g") or int(first.out_features) == 2 * hidden
    return int(first.in_features), hidden, gated


def default_tokens(layout: TokenLayout) -> list[int]:
    """The readout's prefix tokens ([CLS], and [DIST] for distilled DeiT) and the centre patch."""
    rows, cols = layout.grid
    return [*layout.readout_tokens, layout.num_prefix + (rows // 2) * cols + cols // 2]


def _kind(layout: TokenLayout, token: int) -> str:
    return layout.prefix[token] if token < layout.num_prefix else "patch"


def block_anatomy(model: nn.Module, layout: TokenLayout) -> BlockAnatomy:
    """The sizes inside the model's blocks for an input of ``layout``'s N tokens, read from
    the modules (``attn.num_heads``, ``attn.head_dim``, ``attn.qkv``, ``mlp.fc1/fc2``).

    Raises:
        ModelError: the blocks are not standard pre-norm blocks.
    """
    blocks = check_blocks(model)
    blk = blocks[0]
    attn = blk.attn
    heads = getattr(attn, "num_heads", None)
    if heads is None:
        raise ModelError(f"the attention module ({type(attn).__name__}) has no num_heads")
    width, hidden, _ = _mlp_sizes(blk.mlp)
    head_dim = int(getattr(attn, "head_dim", width // int(heads)))
    qkv = getattr(attn, "qkv", None)
    n = layout.num_tokens
    return BlockAnatomy(
        layers=len(blocks),
        width=width,
        heads=int(heads),
        head_dim=head_dim,
        tokens=n,
        qkv_weight=tuple(int(s) for s in qkv.weight.shape) if isinstance(qkv, nn.Linear) else None,
        q_shape=(int(heads), n, head_dim),
        scores_shape=(int(heads), n, n),
        mlp_hidden=hidden,
        activation=_activation_name(getattr(blk.mlp, "act", None)),
        norm=norm_kind(blk.norm1),
        layer_scale=not isinstance(blk.ls1, nn.Identity),
        qk_norm=not isinstance(getattr(attn, "q_norm", nn.Identity()), nn.Identity),
    )


def _hook(store: dict, key: str, rows: Any, *, pre: bool, arg: bool = False):
    """A hook saving ``value[0, rows]`` (detached, float32, CPU) under ``key`` in ``store``,
    only while ``store`` is the calling context's. ``pre``: a forward pre-hook (the module's
    input); ``arg``: a forward hook saving its input instead of its output."""

    def save(value: Any) -> None:
        if _STORE.get() is not store:
            return  # another call's forward on the same shared model
        if not isinstance(value, torch.Tensor) or value.ndim != 3:
            raise ModelError(
                f"{key} is not a [batch, tokens, width] tensor: this block cannot be read"
            )
        store[key] = value[0, rows].detach().float().cpu()

    if pre:
        return lambda _m, args: save(args[0])
    if arg:
        return lambda _m, args, _out: save(args[0])
    return lambda _m, _args, out: save(out)


def _check_tokens(layout: TokenLayout, tokens: Sequence[int]) -> list[int]:
    out = [int(t) for t in tokens]
    if not out or any(not 0 <= t < layout.num_tokens for t in out):
        raise OptionsError(f"tokens must be positions 0…{layout.num_tokens - 1}, got {out}")
    return out


def _norm_step(
    module: nn.Module,
    before: torch.Tensor,
    output: torch.Tensor,
    layer: int,
    token: int,
    which: str,
) -> NormStep:
    """The steps of ``module`` on one token's ``before`` values, computed in float64."""
    kind = norm_kind(module)
    x = before.double().numpy()
    eps = getattr(module, "eps", None)
    eps = float(torch.finfo(before.dtype).eps if eps is None else eps)
    weight = getattr(module, "weight", None)
    bias = getattr(module, "bias", None)
    gamma = None if weight is None else weight.detach().double().cpu().numpy().reshape(-1)
    beta = None if bias is None else bias.detach().double().cpu().numpy().reshape(-1)
    if kind == "LayerNorm":
        mean: float | None = float(x.mean())
        variance = float(((x - mean) ** 2).mean())  # biased, as LayerNorm computes it
        std = math.sqrt(variance + eps)
        normalized = (x - mean) / std
    else:
        mean, variance = None, float((x**2).mean())
        std = math.sqrt(variance + eps)
        normalized = x / std
    after = normalized * (1.0 if gamma is None else gamma) + (0.0 if beta is None else beta)
    return NormStep(
        layer=layer,
        token=token,
        which=which,
        kind=kind,
        module=type(module).__name__,
        eps=eps,
        before=before.numpy(),
        mean=mean,
        variance=variance,
        std=std,
        normalized=normalized,
        gamma=gamma,
        beta=None if kind == "RMSNorm" else beta,
        after=after,
        output=output.numpy(),
    )


_HOOKED: dict[str, str] = {
    "in": "the block",
    "n1in": "norm1",
    "mid": "norm2",
    "attn": "drop_path1",
    "mlp": "drop_path2",
    "out": "the block",
}
"""The keys :func:`block_steps` stores per block, by the module whose hook stores them."""


def _check_sums(store: dict[str, torch.Tensor], layers: int, dtype: torch.dtype, name: str) -> None:
    """Raise when the hooked values do not add up as a pre-norm block's do."""
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else 1e-6
    for i in range(layers):
        missing = [m for k, m in _HOOKED.items() if f"{k}{i}" not in store]
        if missing:
            raise ModelError(
                f"block {i} ({name}) never called {', '.join(missing)}: it is not a standard "
                "pre-norm ViT block (x + ls1(attn(norm1 x)); x + ls2(mlp(norm2 x)))"
            )
        x, mid, out = store[f"in{i}"], store[f"mid{i}"], store[f"out{i}"]
        scale = float(torch.cat([x, mid, out]).abs().max()) + 1.0
        tol = 64 * eps * scale
        pairs = (
            (store[f"n1in{i}"], x),
            (mid, x + store[f"attn{i}"]),
            (out, mid + store[f"mlp{i}"]),
        )
        if any(float((a - b).abs().max()) > tol for a, b in pairs):
            raise ModelError(
                f"block {i} ({name}) does not compute x + ls1(attn(norm1 x)), then "
                "x + ls2(mlp(norm2 x)): it is not a standard pre-norm ViT block"
            )


def block_steps(
    model: nn.Module,
    layout: TokenLayout,
    x: torch.Tensor,
    *,
    tokens: Sequence[int] | None = None,
    layer: int = 0,
    token: int | None = None,
    norm: str = "norm1",
) -> BlockSteps:
    """Run ``x [1, 3, H, W]`` (normalised, ``layout``'s input) once and read the blocks.

    Args:
        model: a timm ViT whose blocks are standard pre-norm blocks.
        layout: the token layout of this input.
        x: the preprocessed image.
        tokens: sequence positions whose residual stream is followed (default
            :func:`default_tokens`: the readout's prefix tokens and the centre patch).
        layer: the block whose norm and MLP are shown.
        token: the token whose norm and MLP steps are shown (default: the last of ``tokens``).
        norm: ``norm1`` (before attention) or ``norm2`` (before the MLP).

    Raises:
        ModelError: the blocks are not standard pre-norm ViT blocks.
        OptionsError: a token, layer or norm out of range.
    """
    blocks = check_blocks(model)
    anatomy = block_anatomy(model, layout)
    followed = _check_tokens(layout, default_tokens(layout) if tokens is None else tokens)
    shown = followed[-1] if token is None else _check_tokens(layout, [token])[0]
    if not 0 <= layer < len(blocks):
        raise OptionsError(f"layer must be 0…{len(blocks) - 1}, got {layer}")
    if norm not in ("norm1", "norm2"):
        raise OptionsError(f"norm must be 'norm1' or 'norm2', got {norm!r}")
    store: dict[str, Any] = {}
    rows = torch.tensor(followed)
    handles = []
    for i, blk in enumerate(blocks):
        handles += [
            blk.register_forward_pre_hook(_hook(store, f"in{i}", rows, pre=True)),
            blk.norm1.register_forward_pre_hook(_hook(store, f"n1in{i}", rows, pre=True)),
            blk.norm2.register_forward_pre_hook(_hook(store, f"mid{i}", rows, pre=True)),
            blk.drop_path1.register_forward_hook(_hook(store, f"attn{i}", rows, pre=False)),
            blk.drop_path2.register_forward_hook(_hook(store, f"mlp{i}", rows, pre=False)),
            blk.register_forward_hook(_hook(store, f"out{i}", rows, pre=False)),
        ]
    blk = blocks[layer]
    norm_module = getattr(blk, norm)
    act = getattr(blk.mlp, "act", None)
    handles += [
        norm_module.register_forward_pre_hook(_hook(store, "norm_in", shown, pre=True)),
        norm_module.register_forward_hook(_hook(store, "norm_out", shown, pre=False)),
        blk.mlp.register_forward_pre_hook(_hook(store, "mlp_in", shown, pre=True)),
        blk.mlp.register_forward_hook(_hook(store, "mlp_out", shown, pre=False)),
    ]
    if isinstance(act, nn.Module):
        handles += [
            act.register_forward_hook(_hook(store, "act_in", [shown], pre=False, arg=True)),
            act.register_forward_hook(_hook(store, "act_out", [shown], pre=False)),
        ]
    param = next(model.parameters())
    token_ctx = _STORE.set(store)
    try:
        with torch.inference_mode():
            model(x.to(param.device, param.dtype))
    finally:
        _STORE.reset(token_ctx)
        for h in handles:
            h.remove()
    layers = len(blocks)
    missing = [k for k in ("in0", f"out{layers - 1}", "norm_in", "mlp_in") if k not in store]
    if missing:
        raise ModelError(f"the forward pass did not run through {', '.join(missing)}")
    _check_sums(store, layers, param.dtype, type(blocks[0]).__name__)
    with torch.inference_mode():  # the MLP on this one token alone, no other token present
        alone = blk.mlp(store["mlp_in"].to(param.device, param.dtype)[None, None])
    alone = alone[0, 0].detach().float().cpu()

    def norms(prefix: str) -> np.ndarray:
        stacked = torch.stack([store[f"{prefix}{i}"] for i in range(layers)]).double()
        return stacked.norm(dim=-1).numpy()

    residual = ResidualStream(
        tokens=tuple(followed),
        kinds=tuple(_kind(layout, t) for t in followed),
        entering=norms("in"),
        after_attention=norms("mid"),
        after_mlp=norms("out"),
        attention_update=norms("attn"),
        mlp_update=norms("mlp"),
        layer_scale=anatomy.layer_scale,
    )
    width, hidden, gated = _mlp_sizes(blk.mlp)
    empty = np.zeros(0, dtype=np.float32)
    pre, post = store.get("act_in"), store.get("act_out")
    mlp = MlpStep(
        layer=layer,
        token=shown,
        width=width,
        hidden=hidden,
        activation=_activation_name(act),
        gated=gated,
        input=store["mlp_in"].numpy(),
        pre_activation=empty if pre is None else pre.reshape(-1).numpy(),
        post_activation=empty if post is None else post.reshape(-1).numpy(),
        output=store["mlp_out"].numpy(),
        alone=alone.numpy(),
        independence_error=float((alone - store["mlp_out"]).abs().max()),
    )
    step = _norm_step(norm_module, store["norm_in"], store["norm_out"], layer, shown, norm)
    return BlockSteps(residual=residual, norm=step, mlp=mlp, anatomy=anatomy)


def block_steps_of(loaded: Any, seen: Image.Image, **options: Any) -> BlockSteps:
    """:func:`block_steps` of one image already resized and cropped for ``loaded``
    (a :class:`vitviz.models.LoadedModel`); ``options`` as :func:`block_steps` takes them."""
    x = loaded.to_tensor(seen.convert("RGB"))[None]
    layout = loaded.layout((seen.size[1], seen.size[0]))
    return block_steps(loaded.model, layout, x, **options)
