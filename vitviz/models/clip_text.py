"""The CLIP text tower's token relevance: which words of the caption made the image match.

open_clip's text blocks call ``nn.MultiheadAttention(..., need_weights=False,
attn_mask=causal)``, so, as for the image tower, :class:`ClipTextEncoder` recomputes each
block's attention explicitly (:class:`~vitviz.models.clip.ClipAttention`, with the additive
mask open_clip passes: causal, plus the padding mask of towers that use one), the
probabilities passing its ``attn_drop`` identity, and the rest of ``encode_text`` unchanged
(token and position embeddings, ``ln_final``, the readout token, ``text_projection``). The
probabilities are collected with :func:`vitviz.engine.capture.forward_with_attention`'s per-call
sink, so concurrent calls never see each other's tensors and nothing is left on the shared modules.

:func:`text_relevance` explains the image–text similarity logit of one label for one image,
``y = logit_scale · cos(image, text("a photo of a <label>.")) (+ logit_bias)``, the logit the
image maps explain, with Chefer et al. (ICCV 2021)'s rule on the text side: ``R = I``; for each
text layer from ``start_layer`` on (default 0, every layer; their CLIP notebook's default is the
last layer alone, ``-1``) ``R ← R + mean_h((∂y/∂A ⊙ A)⁺) R``; a token's relevance is the
readout (EOT) token's row of ``R``. The start-of-text token, the EOT token itself and the
padding after it are dropped (as in Chefer et al.'s CLIP notebook), and the caption's own tokens
are normalized to sum to 1. Both towers run in fp32.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from vitviz.engine.capture import forward_with_attention, prepare
from vitviz.errors import OptionsError
from vitviz.inputs.prompts import check_labels, check_template
from vitviz.models.clip import ClipBlock, ClipTower, open_clip_module
from vitviz.models.loading import LoadedModel

__all__ = [
    "DEFAULT_START_LAYER",
    "ClipTextEncoder",
    "caption_tokens",
    "check_start_layer",
    "chefer_text_row",
    "text_encoder",
    "text_relevance",
]

_POOLS = ("argmax", "eos", "first", "last")
DEFAULT_START_LAYER = 0  # every text layer (Chefer et al.'s CLIP notebook: -1, the last only)
_ENCODERS: weakref.WeakKeyDictionary[ClipTower, ClipTextEncoder] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


class ClipTextBlock(ClipBlock):
    """open_clip's text ``ResidualAttentionBlock`` with explicit, masked attention."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x + ls_1(attn(ln_1(x), mask))``, then ``x + ls_2(mlp(ln_2(x)))``."""
        x = x + self.ls_1(self.attn(self.ln_1(x), attn_mask))
        return x + self.ls_2(self.mlp(self.ln_2(x)))


class ClipTextEncoder(nn.Module):
    """open_clip's ``encode_text`` with every block's attention capturable (``blocks``,
    ``vitviz_num_heads``: what :func:`vitviz.engine.capture.forward_with_attention` reads).

    ``forward(tokens [B, L])`` gives the text features ``[B, E]`` (unnormalized), equal to
    ``clip.encode_text(tokens)``. With grad enabled, the token embeddings require grad, so
    the attention probabilities are in an autograd graph even though the weights are frozen.
    """

    def __init__(self, tower: ClipTower) -> None:
        super().__init__()
        clip = tower.clip
        text = getattr(clip, "text", None)  # CustomTextCLIP keeps its TextTransformer whole
        if text is not None and not hasattr(text, "_embeds"):
            raise OptionsError(
                f"clip:{tower.ref}'s text tower is a {type(text).__name__}, which the text "
                "relevance does not read"
            )
        if text is not None and getattr(text, "cls_emb", None) is not None:
            raise OptionsError(f"clip:{tower.ref}'s text tower appends a class token (CoCa)")
        source = text if text is not None else clip
        self.custom = text
        self.tokenizer = tower.tokenizer
        self.ref = tower.ref
        self.token_embedding = source.token_embedding
        self.positional_embedding = source.positional_embedding
        self.ln_final = source.ln_final
        self.text_projection = source.text_projection
        transformer = source.transformer
        self.blocks = nn.ModuleList(ClipTextBlock(b) for b in transformer.resblocks)
        self.vitviz_num_heads = self.blocks[0].attn.num_heads
        self.cast_dtype = transformer.get_cast_dtype()
        self.pool_type = str(text.pool_type if text is not None else clip.text_pool_type)
        eos = text.eos_id if text is not None else getattr(clip, "text_eos_id", None)
        self.eos_id = None if eos is None else int(eos)
        self._clip = weakref.ref(clip)
        if self.pool_type not in _POOLS:
            raise OptionsError(
                f"clip:{tower.ref}'s text features pool tokens with {self.pool_type!r}, "
                "not one readout token"
            )

    def tokenize(self, captions: Sequence[str]) -> torch.Tensor:
        """open_clip's token ids ``[B, L]`` of the captions (on the model's device)."""
        return self.tokenizer(list(captions)).to(self.positional_embedding.device)

    def readout(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B]``: the position of the token whose feature is the text feature (open_clip's
        ``text_global_pool``: the EOT token, the highest id, for ``argmax``)."""
        b, n = tokens.shape
        if self.pool_type == "first":
            return tokens.new_zeros(b)
        if self.pool_type == "last":
            return tokens.new_full((b,), n - 1)
        if self.pool_type == "eos":
            return (tokens == self.eos_id).int().argmax(dim=-1)
        return tokens.argmax(dim=-1)

    def _embed(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token plus position embeddings and the additive mask, as open_clip builds them."""
        if self.custom is not None:
            x, mask = self.custom._embeds(tokens)
        else:
            clip = self._clip()
            x = self.token_embedding(tokens).to(self.cast_dtype)
            x = x + self.positional_embedding.to(self.cast_dtype)
            mask = None if clip is None else clip.attn_mask
        if mask is not None:
            if mask.dtype == torch.bool:  # True: not attended (nn.MultiheadAttention's rule)
                mask = torch.zeros(mask.shape, dtype=x.dtype, device=x.device).masked_fill(
                    mask, float("-inf")
                )
            mask = mask.to(x.dtype)
            if mask.ndim == 3:  # [B·H, L, L], batch major (open_clip's repeat_interleave)
                mask = mask.view(tokens.shape[0], -1, *mask.shape[-2:])
        return x, mask

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` token ids → ``[B, E]`` text features (``encode_text``, unnormalized)."""
        x, mask = self._embed(tokens)
        if torch.is_grad_enabled() and not x.requires_grad:
            x = x.requires_grad_(True)  # a graph even if the weights are frozen
        for blk in self.blocks:
            x = blk(x, mask)
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), self.readout(tokens)]
        if self.text_projection is None:
            return x
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection


def _tower(model: Any) -> ClipTower:
    tower = getattr(getattr(model, "model", model), "tower", None)
    if not isinstance(tower, ClipTower):
        name = getattr(model, "name", type(model).__name__)
        raise OptionsError(
            f"{name} is not a CLIP model: the caption's token relevance needs a text tower "
            "(choose clip-b32, clip-b16 or clip:<architecture>)"
        )
    return tower


def text_encoder(model: LoadedModel | nn.Module) -> ClipTextEncoder:
    """The (shared, built once) text encoder of a CLIP model.

    Raises:
        OptionsError: not a CLIP model, or a text tower the encoder does not read.
    """
    tower = _tower(model)
    with _LOCK:
        encoder = _ENCODERS.get(tower)
        if encoder is None:
            encoder = _ENCODERS[tower] = ClipTextEncoder(tower)
            prepare(encoder)  # one hook per block, before any thread runs it
    return encoder


def chefer_text_row(
    attention: Sequence[torch.Tensor],
    gradients: Sequence[torch.Tensor],
    readout: int,
    start_layer: int = 0,
) -> torch.Tensor:
    """Chefer et al.'s relevance of every token to the readout token of one caption:
    ``R = I``, ``R ← R + mean_h((∇A ⊙ A)⁺) R`` per layer from ``start_layer`` on (negative:
    counted from the end, -1 the last layer alone), then ``R[readout]`` (``[L]``).

    ``attention[l]`` and ``gradients[l]`` are ``[H, L, L]``.
    """
    first = check_start_layer(start_layer, len(attention))
    n = attention[0].shape[-1]
    r = torch.eye(n, dtype=torch.float64, device=attention[0].device)
    for a, g in zip(attention[first:], gradients[first:], strict=True):
        cam = (g.double() * a.double()).clamp(min=0).mean(dim=0)
        r = r + cam @ r
    return r[readout]


def check_start_layer(start_layer: int, layers: int) -> int:
    """``start_layer`` as an index from 0 into ``layers`` text layers (negative: counted from
    the end).

    Raises:
        OptionsError: not a whole number in ``[-layers, layers)``.
    """
    if isinstance(start_layer, bool) or not isinstance(start_layer, int | np.integer):
        raise OptionsError(f"start_layer must be a whole number, got {start_layer!r}")
    if not -layers <= start_layer < layers:
        raise OptionsError(
            f"start_layer {start_layer} is not a layer of this text tower: it has {layers} "
            f"layers, 0 to {layers - 1} (or -{layers} to -1 from the end)"
        )
    return int(start_layer) % layers


def caption_tokens(
    encoder: ClipTextEncoder, ids: Sequence[tuple[int, int]]
) -> list[tuple[str, list[int]]]:
    """Each ``(position, token id)``'s text (``</w>`` stripped) with its positions; tokens
    that split one character's UTF-8 bytes (e.g. a Chinese character) are joined into one
    piece."""
    tok = encoder.tokenizer
    pieces: list[tuple[str, list[int]]] = []
    pending, where = bytearray(), []
    for pos, token_id in ids:
        bpe = tok.decoder[int(token_id)].replace("</w>", "")
        pending += bytearray(tok.byte_decoder[c] for c in bpe)
        where.append(pos)
        try:
            text = pending.decode("utf-8")
        except UnicodeDecodeError:
            if len(where) < 4:  # a character has at most 4 bytes: wait for the rest
                continue
            text = pending.decode("utf-8", errors="replace")
        pieces.append((text, where))
        pending, where = bytearray(), []
    if where:
        pieces.append((pending.decode("utf-8", errors="replace"), where))
    return pieces


def _check_tokenizer(encoder: ClipTextEncoder) -> None:
    if not isinstance(encoder.tokenizer, open_clip_module().tokenizer.SimpleTokenizer):
        raise OptionsError(
            f"clip:{encoder.ref} uses a Hugging Face tokenizer; the caption's token relevance "
            "reads open_clip's own CLIP tokenizer only"
        )


def text_relevance(
    loaded: LoadedModel,
    image: Image.Image,
    label: str,
    *,
    template: str | None = None,
    seen: bool = False,
    start_layer: int = DEFAULT_START_LAYER,
) -> list[tuple[str, float]]:
    """The caption's tokens and their share of the relevance for the image–text similarity of
    ``label`` (any typed label) with ``image``, in caption order; the shares sum to 1 (all 0
    when no token has positive relevance).

    ``template``: the prompt (None: the model's own); ``seen``: the image is already resized
    and cropped for the model; ``start_layer``: the first text layer whose relevance is
    accumulated (default 0: every layer, as the image maps do; -1: the last layer alone, the
    default of Chefer et al.'s CLIP notebook, ``start_layer_text=-1``).

    Raises:
        OptionsError: not a CLIP model, a bad label or template, or an unreadable text tower.
    """
    encoder = text_encoder(loaded)  # first: a clear error for other models
    _check_tokenizer(encoder)
    check_start_layer(start_layer, len(encoder.blocks))
    (label,) = check_labels([label])
    template = check_template(template if template is not None else loaded.model.template)
    caption = template.replace("{}", label)
    tok = encoder.tokenizer
    seen_image = image.convert("RGB") if seen else loaded.seen_image(image)
    x = loaded.to_tensor(seen_image)[None].to(loaded.device)
    head = loaded.model.head
    with torch.inference_mode(False), torch.no_grad():
        image_feature = F.normalize(loaded.model.encode_image(x).float(), dim=-1)[0]
    tokens = encoder.tokenize([caption])
    ids = tokens[0].tolist()
    readout = int(encoder.readout(tokens)[0])
    with torch.inference_mode(False), torch.enable_grad():
        features, attention = forward_with_attention(encoder, tokens)
        text = F.normalize(features.float(), dim=-1)[0]
        logit = head.logit_scale.exp() * (image_feature @ text)
        if head.logit_bias is not None:
            logit = logit + head.logit_bias
        grads = torch.autograd.grad(logit.sum(), attention)
    row = chefer_text_row(
        [a[0].detach() for a in attention], [g[0] for g in grads], readout, start_layer
    )
    row = row.cpu().numpy()
    eot = ids.index(tok.eot_token_id) if tok.eot_token_id in ids else readout
    words = [(p, ids[p]) for p in range(1, eot) if p != readout]  # no SOT, EOT or padding
    pieces = caption_tokens(encoder, words)
    values = np.array([row[where].sum() for _, where in pieces], dtype=np.float64)
    total = values.sum()
    values = values / total if total > 0 else np.zeros_like(values)
    return [(text, float(v)) for (text, _), v in zip(pieces, values, strict=True)]
