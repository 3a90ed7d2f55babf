"""Attention capture: ONE forward pass gives the logits and every layer's per-head attention.

timm's fused attention (``scaled_dot_product_attention``) never materializes the attention
matrix, so :func:`prepare` switches each block to timm's own unfused path and puts one
permanent forward hook on each block's ``attn_drop``, the module that receives the softmax
probabilities. The hook appends them to a per-call list held in a :class:`contextvars.ContextVar`,
so two threads explaining different images with one shared model never see each other's
tensors, and no state is left on the module between calls (unlike timm's ``AttentionExtract``
in hook mode). Tensors stay on the model's device.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch import nn

from vitviz.errors import ModelError
from vitviz.layout import TokenLayout

_SINK: contextvars.ContextVar[_Sink | None] = contextvars.ContextVar(
    "vitviz_attention_sink", default=None
)
_PREPARED = "_vitviz_capture_hooks"


class _Sink:
    """Per-call collector of each block's attention.

    With ``dtype`` set, each layer is copied (cast) into one preallocated ``[B, L, H, N, N]``
    buffer as soon as it is computed, so the per-layer fp32 tensors are freed layer by layer
    and no final stack is needed. Without, the tensors themselves are kept (their autograd
    graph included) for gradient methods.
    """

    def __init__(self, num_layers: int, num_heads: int, dtype: torch.dtype | None) -> None:
        self.num_layers, self.num_heads, self.dtype = num_layers, num_heads, dtype
        self.layers: list[torch.Tensor] = []
        self.buffer: torch.Tensor | None = None
        self.count = 0

    def add(self, attn: torch.Tensor) -> None:
        if attn.ndim != 4 or attn.shape[1] != self.num_heads or self.count >= self.num_layers:
            raise ModelError(
                f"block {self.count} produced attention of shape {tuple(attn.shape)}, not "
                f"[batch, {self.num_heads} heads, N, N]: this architecture computes attention "
                "in a way vitviz cannot read (e.g. differential attention)"
            )
        if self.dtype is None:
            self.layers.append(attn)
        else:
            if self.buffer is None:
                b, h, n, m = attn.shape
                self.buffer = attn.new_empty((b, self.num_layers, h, n, m), dtype=self.dtype)
            self.buffer[:, self.count].copy_(attn)
        self.count += 1


def _collect(_module: nn.Module, _inputs: Any, output: torch.Tensor | tuple) -> None:
    sink = _SINK.get()
    if sink is not None:
        # a hook point is a module whose output is the probabilities (timm's attn_drop) or
        # an attention module returning (output, probabilities) (Hugging Face's eager path)
        sink.add(output[1] if isinstance(output, tuple) else output)


def attention_heads(model: nn.Module) -> int:
    """Heads per block: an adapter's ``vitviz_num_heads`` or timm's ``blocks[0].attn``."""
    heads = getattr(model, "vitviz_num_heads", None)
    return int(heads if heads is not None else model.blocks[0].attn.num_heads)


class Capturable(Protocol):
    """What capture needs of a loaded model (:class:`vitviz.models.LoadedModel` has it)."""

    model: nn.Module
    device: torch.device
    precision: str
    hook: str

    @property
    def has_classifier(self) -> bool:
        """Whether the model outputs class logits."""
        ...

    def layout(self, input_hw: tuple[int, int]) -> TokenLayout:
        """The token layout for an input of ``(height, width)`` pixels."""
        ...

    def to_tensor(self, seen: Image.Image) -> torch.Tensor:
        """The normalized ``[3, H, W]`` tensor of a model input."""
        ...

    def seen_image(self, image: Image.Image) -> Image.Image:
        """The image resized and cropped as the model sees it."""
        ...


def prepare(model: nn.Module, hook: str = "attn.attn_drop") -> None:
    """Make ``model`` capturable (idempotent): unfused attention and one hook per block.

    ``hook`` is the path, inside each block, of the module whose output is the softmax
    probabilities, or an attention module returning ``(output, probabilities)`` (the family's
    hook point, :data:`vitviz.models.FAMILIES`; adapters of other libraries name theirs).
    Each block is marked, so wrappers sharing blocks (CLIP with other labels) hook them once.
    """
    for blk in model.blocks:
        if getattr(blk, _PREPARED, None):
            continue
        attn = getattr(blk, "attn", None)
        if attn is not None and hasattr(attn, "fused_attn"):
            attn.fused_attn = False
        setattr(blk, _PREPARED, blk.get_submodule(hook).register_forward_hook(_collect))


@dataclass
class Capture:
    """Result of one forward pass over a batch.

    Attributes:
        logits: ``[B, C]`` pre-softmax scores, or None for backbones without a classifier.
        attention: ``[B, L, H, N, N]`` attention probabilities (rows sum to 1), on the device.
        layout: token layout shared by the batch.
        images: the inputs as the model saw them (RGB uint8 ``H×W×3`` each).
    """

    logits: torch.Tensor | None
    attention: torch.Tensor
    layout: TokenLayout
    images: list[np.ndarray] = field(default_factory=list)


@contextlib.contextmanager
def autocast_for(device: torch.device, precision: str) -> Iterator[None]:
    """bf16/fp16 autocast on CUDA for those precisions; a no-op otherwise."""
    if device.type == "cuda" and precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        with torch.autocast("cuda", dtype=dtype):
            yield
    else:
        yield


def _run(
    model: nn.Module,
    x: torch.Tensor,
    precision: str,
    dtype: torch.dtype | None,
    hook: str = "attn.attn_drop",
) -> tuple[torch.Tensor, _Sink]:
    prepare(model, hook)
    sink = _Sink(len(model.blocks), attention_heads(model), dtype)
    token = _SINK.set(sink)
    try:
        with autocast_for(x.device, precision):
            out = model(x)
    finally:
        _SINK.reset(token)
    if sink.count != len(model.blocks):
        raise ModelError(
            f"captured {sink.count} attention maps from {len(model.blocks)} blocks: this "
            "architecture computes attention in a way vitviz cannot read"
        )
    return out, sink


def forward_with_attention(
    model: nn.Module, x: torch.Tensor, *, precision: str = "fp32", hook: str = "attn.attn_drop"
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run ``model(x)`` once; return its output and each block's ``[B, H, N, N]`` attention.

    The attention tensors are the ones the model used, so gradients flow to them when the
    caller enables grad mode (class-specific methods need that).
    """
    out, sink = _run(model, x, precision, None, hook)
    return out, sink.layers


def capture_tensor(
    loaded: Capturable, x: torch.Tensor, *, attn_dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor | None, torch.Tensor, TokenLayout]:
    """Capture a preprocessed batch ``x [B, 3, H, W]`` in inference mode.

    Returns:
        logits (None without classifier), attention ``[B, L, H, N, N]`` in ``attn_dtype`` on
        the model's device, and the layout.
    """
    layout = loaded.layout((int(x.shape[-2]), int(x.shape[-1])))
    with torch.inference_mode():
        out, sink = _run(
            loaded.model, x.to(loaded.device), loaded.precision, attn_dtype, loaded.hook
        )
    attention = sink.buffer
    if attention is None or attention.shape[-1] != layout.num_tokens:
        raise ModelError(
            f"attention has {None if attention is None else attention.shape[-1]} tokens, "
            f"the layout expects {layout.num_tokens}"
        )
    logits = out.float() if loaded.has_classifier else None
    return logits, attention, layout


def capture(
    loaded: Capturable,
    images: Sequence[Image.Image],
    *,
    attn_dtype: torch.dtype = torch.float32,
) -> Capture:
    """Preprocess PIL images the model's way and capture them in one forward pass."""
    return capture_seen(loaded, [loaded.seen_image(im) for im in images], attn_dtype=attn_dtype)


def capture_seen(
    loaded: Capturable,
    seen: Sequence[Image.Image],
    *,
    attn_dtype: torch.dtype = torch.float32,
) -> Capture:
    """Capture images already resized/cropped by :meth:`LoadedModel.seen_image`.

    All images of one call must share one input size (always true for square models; with
    ``keep_aspect`` group images by size first).
    """
    if not seen:
        raise ValueError("capture needs at least one image")
    sizes = {im.size for im in seen}
    if len(sizes) > 1:
        raise ValueError(f"images of one batch must share an input size, got {sorted(sizes)}")
    x = torch.stack([loaded.to_tensor(im) for im in seen])
    logits, attention, layout = capture_tensor(loaded, x, attn_dtype=attn_dtype)
    arrays = [np.asarray(im, dtype=np.uint8).copy() for im in seen]
    return Capture(logits=logits, attention=attention, layout=layout, images=arrays)
