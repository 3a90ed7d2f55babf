"""CLIP (open_clip) image towers as zero-shot classifiers over labels the user types.

open_clip's ``ResidualAttentionBlock`` calls ``nn.MultiheadAttention(..., need_weights=False)``,
so the attention probabilities are never materialized. :class:`ClipAttention` computes the
same self-attention from the block's own ``in_proj``/``out_proj`` weights, with the softmax
probabilities passing through an ``attn_drop`` identity (the hook point vitviz captures), and
the rest of the block's maths unchanged (``ln_1``, ``ls_1``, ``mlp``, ``ls_2``). Nothing in
open_clip is edited: the adapters share its modules and parameters.

:class:`ClipClassifier` exposes the image tower the way the engine reads a timm ViT
(``blocks``, ``patch_embed``, ``num_prefix_tokens``, ``cls_token``, ``global_pool`` …) and
scores the typed labels: ``logits = logit_scale · normalize(image feature) ·
normalize(text feature)ᵀ`` (+ ``logit_bias`` where the model has one), the image–text
similarity per label, so the class-specific maps explain that similarity (Chefer et al.,
ICCV 2021, for bi-modal models). :meth:`ClipClassifier.with_labels` returns another
classifier sharing the tower and text encoder; text features are computed once per
(template, label) and kept in a byte-bounded cache.

References (``clip:<ref>`` model names): ``ViT-B-32/openai`` (architecture/pretrained tag),
``ViT-B-32`` (with ``weights=`` or random weights) or ``hf-hub:org/name``. Weights come from a
local file (``.safetensors``, or ``.pt``/``.bin`` read with ``torch.load(weights_only=True)``),
the Hugging Face cache or hub (checked first, failing fast and clearly offline), or random
weights for tests.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vitviz.errors import ModelError, WeightsError
from vitviz.inputs.prompts import (
    DEFAULT_LABELS,
    DEFAULT_TEMPLATE,
    check_labels,
    check_template,
    label_set,
)
from vitviz.memory.cache import ByteLRU
from vitviz.models.checks import check_size, file_limit, no_pretrained_weights, weights_mismatch
from vitviz.models.families import Built, Request
from vitviz.models.hub import check_repo_id, hub_endpoint, hub_reachable, require_reachable
from vitviz.models.weights import read_state_dict
from vitviz.results import WeightsInfo

__all__ = [
    "DEFAULT_LABELS",
    "DEFAULT_TEMPLATE",
    "ClipAttention",
    "ClipBlock",
    "ClipClassifier",
    "ClipRef",
    "ClipTower",
    "build",
    "download_weights",
    "model_config",
    "parameter_count",
    "parse_ref",
    "weights_plan",
]

TEXT_CACHE_BYTES = 8 * 2**20  # normalized text features per (template, label)
HUB_PREFIX = "hf-hub:"
HUB_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_NOT_TENSORS = ("input_resolution", "context_length", "vocab_size")  # OpenAI checkpoints
_CUSTOM_BLOCK = (
    "qk_norm",
    "scaled_cosine_attn",
    "scale_heads",
    "scale_attn_inner",
    "scale_attn",
    "scale_fc",
)


def open_clip_module() -> Any:
    """The ``open_clip`` module; a clear :class:`ModelError` when it is not installed."""
    try:
        import open_clip
    except ImportError:
        raise ModelError(
            "CLIP models need open_clip: pip install -r requirements-extras.txt"
        ) from None
    return open_clip


# ----------------------------------------------------------------------------- the adapters


class ClipAttention(nn.Module):
    """``nn.MultiheadAttention``'s self-attention written out (batch first, an optional
    additive mask), so its probabilities pass ``attn_drop`` (an identity) and can be captured.

    Same maths as ``need_weights=False``: ``q, k, v = x W_inᵀ + b_in``,
    ``A = softmax(q kᵀ / √d)`` per head, ``out_proj(A v)``. Shares the module's parameters.
    """

    fused_attn = False  # read by vitviz.engine.capture.prepare; this path is always explicit

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
            raise ModelError(
                "this CLIP tower's attention has separate q/k/v sizes or extra key/value "
                "biases, which vitviz's CLIP adapter does not read"
            )
        self.in_proj_weight = mha.in_proj_weight
        self.in_proj_bias = mha.in_proj_bias
        self.out_proj = mha.out_proj
        self.num_heads = int(mha.num_heads)
        self.head_dim = int(mha.head_dim)
        self.scale = self.head_dim**-0.5
        self.attn_drop = nn.Identity()  # the hook point: its output is the probabilities

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, N, D]`` → ``[B, N, D]``; ``attn_mask``: an additive mask broadcasting to
        ``[B, H, N, N]`` (the text tower's causal mask), added before the softmax."""
        b, n, d = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        if attn_mask is not None:
            attn = attn + attn_mask
        attn = self.attn_drop(attn.softmax(dim=-1))
        out = (attn @ v).transpose(1, 2).reshape(b, n, d)
        return self.out_proj(out)


class ClipBlock(nn.Module):
    """open_clip's ``ResidualAttentionBlock`` (vision: no mask, no cross attention) with
    :class:`ClipAttention`; the norms, layer scales and MLP are the block's own modules."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        if not isinstance(getattr(block, "attn", None), nn.MultiheadAttention):
            raise ModelError(
                f"this CLIP tower's blocks ({type(block).__name__}) do not use "
                "nn.MultiheadAttention, so vitviz's CLIP adapter cannot read them"
            )
        self.ln_1 = block.ln_1
        self.attn = ClipAttention(block.attn)
        self.ls_1 = block.ls_1
        self.ln_2 = block.ln_2
        self.mlp = block.mlp
        self.ls_2 = block.ls_2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x + ls_1(attn(ln_1(x)))``, then ``x + ls_2(mlp(ln_2(x)))``."""
        x = x + self.ls_1(self.attn(self.ln_1(x)))
        return x + self.ls_2(self.mlp(self.ln_2(x)))


class _PatchEmbed(nn.Module):
    """The tower's ``conv1`` with timm's patch-embedding attributes; ``[B, N, D]`` out."""

    def __init__(self, conv: nn.Conv2d, img_size: tuple[int, int], patch: tuple[int, int]):
        super().__init__()
        self.proj = conv
        self.img_size = img_size
        self.patch_size = patch
        self.grid_size = (img_size[0] // patch[0], img_size[1] // patch[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Patches of ``x [B, 3, H, W]`` as ``[B, N, D]`` (row-major, like ``visual``)."""
        return self.proj(x).flatten(2).transpose(1, 2)


class ClipTower(nn.Module):
    """What every label set shares: the open_clip model, the image-tower adapters, the
    tokenizer and the text-feature cache."""

    def __init__(self, clip: nn.Module, tokenizer: Any, ref: str) -> None:
        super().__init__()
        visual = clip.visual
        self.clip = clip
        self.ref = ref
        self.tokenizer = tokenizer
        self.patch_embed = _PatchEmbed(
            visual.conv1,
            tuple(int(s) for s in visual.image_size),
            tuple(int(s) for s in visual.patch_size),
        )
        self.blocks = nn.ModuleList(ClipBlock(b) for b in visual.transformer.resblocks)
        self.norm_pre = visual.ln_pre
        self.norm = visual.ln_post
        self.pool_type = str(visual.pool_type)
        self.final_ln_after_pool = bool(visual.final_ln_after_pool)
        self.text_cache: ByteLRU[torch.Tensor] = ByteLRU(TEXT_CACHE_BYTES)

    @property
    def visual(self) -> nn.Module:
        """open_clip's ``VisionTransformer``."""
        return self.clip.visual

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Every token after the last block (before ``ln_post``): ``visual``'s own steps."""
        visual = self.visual
        x = self.patch_embed(x)
        cls = visual.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls.to(x.dtype), x], dim=1)
        x = x + visual.positional_embedding.to(x.dtype)
        x = visual.patch_dropout(x)  # an identity at eval
        x = self.norm_pre(x)
        for blk in self.blocks:
            x = blk(x)
        return x

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """The readout ``visual`` projects: the class token, or the patch mean (``avg``),
        after ``ln_post`` (or before it with ``final_ln_after_pool``)."""
        if self.pool_type == "tok":
            return self.norm(tokens[:, 0])
        if self.final_ln_after_pool:
            return self.norm(tokens[:, 1:].mean(dim=1))
        return self.norm(tokens[:, 1:]).mean(dim=1)

    def text_features(self, labels: list[str], template: str) -> torch.Tensor:
        """Normalized text features ``[C, E]`` (fp32) of the prompts, each computed once."""
        device = self.clip.logit_scale.device

        def encode(batch: list[str]) -> torch.Tensor:
            tokens = self.tokenizer([template.replace("{}", label) for label in batch])
            with torch.inference_mode(False), torch.no_grad():
                feats = self.clip.encode_text(tokens.to(device)).float()
                return F.normalize(feats, dim=-1).clone()

        missing = [label for label in labels if (template, label) not in self.text_cache]
        if missing:
            for label, feat in zip(missing, encode(missing), strict=True):
                self.text_cache.put((template, label), feat)
        return torch.stack(
            [
                self.text_cache.get_or_compute((template, label), lambda lb=label: encode([lb])[0])
                for label in labels
            ]
        )


class _ZeroShotHead(nn.Module):
    """Readout → projection → normalize → ``logit_scale · f · textᵀ (+ logit_bias)``."""

    def __init__(self, clip: nn.Module, text_features: torch.Tensor) -> None:
        super().__init__()
        self.proj = clip.visual.proj
        self.logit_scale = clip.logit_scale
        self.logit_bias = getattr(clip, "logit_bias", None)
        self.register_buffer("text_features", text_features, persistent=False)

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """The image feature (``encode_image``): the readout times ``visual.proj``."""
        return pooled @ self.proj if self.proj is not None else pooled

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` readout → ``[B, C]`` logits."""
        image = F.normalize(self.project(pooled), dim=-1)
        logits = self.logit_scale.exp() * image @ self.text_features.to(image.dtype).T
        if self.logit_bias is not None:
            logits = logits + self.logit_bias
        return logits


class ClipClassifier(nn.Module):
    """A CLIP image tower read like a timm ViT, classifying typed labels zero-shot.

    ``forward(x)`` gives ``[B, C]`` logits, ``logit_scale`` times the cosine similarity of
    the image with each label's prompt; :meth:`forward_features` the tokens after ``ln_post``.
    """

    num_prefix_tokens = 1
    dynamic_img_size = False

    def __init__(
        self, tower: ClipTower, labels: list[str] | None = None, template: str | None = None
    ) -> None:
        super().__init__()
        self.template = check_template(template)
        self.labels = check_labels(DEFAULT_LABELS if labels is None else labels)
        self.label_set = label_set(self.labels, self.template)
        self.tower = tower
        self.patch_embed = tower.patch_embed
        self.blocks = tower.blocks
        self.norm_pre = tower.norm_pre
        self.norm = tower.norm
        self.head = _ZeroShotHead(tower.clip, tower.text_features(self.labels, self.template))
        self.vitviz_num_heads = tower.blocks[0].attn.num_heads
        self.embed_dim = self.num_features = int(tower.visual.conv1.out_channels)
        self.global_pool = "token" if tower.pool_type == "tok" else "avg"
        self.num_classes = len(self.labels)
        self.pretrained_cfg = {"architecture": f"clip:{tower.ref}"}

    @property
    def cls_token(self) -> torch.Tensor:
        """The class embedding as ``[1, 1, D]``."""
        return self.tower.visual.class_embedding.view(1, 1, -1)

    @property
    def pos_embed(self) -> torch.Tensor:
        """The learned position embedding as ``[1, 1 + N, D]`` (class token first)."""
        return self.tower.visual.positional_embedding.unsqueeze(0)

    def with_labels(self, labels: list[str] | None, template: str | None = None) -> ClipClassifier:
        """A classifier of other labels (None: these) and template (None: the default),
        sharing this one's tower and text encoder."""
        return ClipClassifier(self.tower, self.labels if labels is None else labels, template)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Every token after the last block and ``ln_post``: ``[B, 1 + N, D]``."""
        return self.norm(self.tower.tokens(x))

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """The image features (unnormalized), as open_clip's ``encode_image``."""
        return self.head.project(self.tower.pool(self.tower.tokens(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` → ``[B, C]`` logits over :attr:`labels`."""
        return self.head(self.tower.pool(self.tower.tokens(x)))


# ----------------------------------------------------------------------------- references


@dataclass(frozen=True)
class ClipRef:
    """A parsed CLIP reference: an open_clip architecture and tag, or a hub repository."""

    text: str
    arch: str | None = None
    tag: str | None = None
    hub_id: str | None = None


def parse_ref(ref: str) -> ClipRef:
    """``ARCH``, ``ARCH/TAG`` or ``hf-hub:org/name``, checked against open_clip's registry.

    Raises:
        ModelError: unknown architecture (with close matches) or tag (with the known ones).
    """
    oc = open_clip_module()
    if ref.startswith(HUB_PREFIX):
        hub_id = ref[len(HUB_PREFIX) :]
        check_repo_id(hub_id, f"clip:{ref}")
        return ClipRef(ref, hub_id=hub_id)
    arch, _, tag = ref.partition("/")
    if arch not in oc.list_models():
        close = difflib.get_close_matches(arch, oc.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ModelError(
            f"clip:{ref}: {arch!r} is not an open_clip architecture{hint} "
            "(e.g. clip:ViT-B-32/openai, clip:ViT-B-16/laion2b_s34b_b88k)"
        )
    if tag and oc.get_pretrained_cfg(arch, tag) in (None, {}):
        tags = oc.list_pretrained_tags_by_model(arch)
        raise ModelError(
            f"open_clip has no weights tagged {tag!r} for {arch}; its tags are: "
            f"{', '.join(tags) or 'none'}"
        )
    return ClipRef(ref, arch=arch, tag=tag or None)


def _tag_cfg(r: ClipRef) -> dict[str, Any]:
    return dict(open_clip_module().get_pretrained_cfg(r.arch, r.tag) or {}) if r.tag else {}


def _hub_config(r: ClipRef) -> dict[str, Any]:
    """A hub repository's ``open_clip_config.json`` (cache first, then the hub)."""
    files = ("open_clip_config.json",)
    path = _cached(r.hub_id, files) or _download(r, r.hub_id, files, hint=_HUB_HINT)
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"clip:{r.text}: unreadable open_clip_config.json ({e})") from None


def model_config(ref: str | ClipRef) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(model_cfg, preprocess settings)`` of a reference, refusing towers vitviz cannot read.

    Raises:
        ModelError: unknown reference, or a tower that is not a plain open_clip ViT.
    """
    r = parse_ref(ref) if isinstance(ref, str) else ref
    if r.hub_id:
        hub = _hub_config(r)
        cfg, pre = copy.deepcopy(hub.get("model_cfg", {})), dict(hub.get("preprocess_cfg", {}))
    else:
        cfg, pre = open_clip_module().get_model_config(r.arch), _tag_cfg(r)
        if pre.get("quick_gelu"):  # the weights were trained with QuickGELU: build it so
            cfg["quick_gelu"] = True
    _check_vit(cfg, r.text)
    return cfg, pre


def _check_vit(cfg: dict[str, Any], name: str) -> None:
    vision = cfg.get("vision_cfg") or {}
    text = cfg.get("text_cfg") or {}
    why = None
    if vision.get("timm_model_name"):
        why = (
            f"its image tower is a timm model ({vision['timm_model_name']}) inside open_clip, "
            "which the CLIP adapter does not read"
        )
    elif isinstance(vision.get("layers"), (list, tuple)):
        why = "its image tower is a ModifiedResNet (convolutions and attention pooling), not a ViT"
    elif vision.get("attentional_pool") or "multimodal_cfg" in cfg:
        why = "its image tower ends in an attentional pooler (CoCa), not a class token"
    elif vision.get("block_type") == "custom" or any(vision.get(k) for k in _CUSTOM_BLOCK):
        why = "its blocks use custom attention (qk-norm, cosine or scaled attention)"
    elif vision.get("pool_type", "tok") not in ("tok", "avg"):
        why = f"its image features pool tokens with {vision.get('pool_type')!r}"
    elif text.get("hf_model_name"):
        why = f"its text tower is a Hugging Face model ({text['hf_model_name']})"
    if why:
        raise ModelError(
            f"clip:{name} is not supported: {why}; choose an open_clip ViT such as "
            "clip:ViT-B-32/openai or clip:ViT-B-16/openai"
        )


def _build(cfg: dict[str, Any]) -> nn.Module:
    """The open_clip model of a config (random weights), as ``open_clip.create_model``."""
    oc = open_clip_module()
    cfg = copy.deepcopy(cfg)
    custom = cfg.pop("custom_text", False)
    return (oc.CustomTextCLIP if custom else oc.CLIP)(**cfg)


def parameter_count(ref: str) -> int:
    """Parameters and buffers of a reference's model, counted on the meta device."""
    cfg, _ = model_config(ref)
    with torch.device("meta"):
        model = _build(cfg)
    return sum(t.numel() for t in (*model.parameters(), *model.buffers()))


# ----------------------------------------------------------------------------- weights


def _weights_files(r: ClipRef) -> tuple[str | None, tuple[str, ...], str | None]:
    """``(hub repository, file names to try, URL)`` of a reference's weights."""
    if r.hub_id:
        return r.hub_id, HUB_WEIGHTS, None
    cfg = _tag_cfg(r)
    hub = str(cfg.get("hf_hub") or "")
    if hub:  # "org/name/" (default file names) or "org/name/file.bin", as open_clip reads it
        repo, fname = os.path.split(hub)
        if not fname:
            return repo, HUB_WEIGHTS, None
        safe = fname.rsplit(".", 1)[0] + ".safetensors"
        return repo, (safe, fname) if safe != fname else (fname,), None
    return None, (), cfg.get("url") or None


def _cached(repo: str | None, files: tuple[str, ...]) -> Path | None:
    if not repo:
        return None
    from huggingface_hub import try_to_load_from_cache

    for fname in files:
        hit = try_to_load_from_cache(repo, fname)
        if isinstance(hit, str) and Path(hit).is_file():
            return Path(hit)
    return None


def _url_cache(url: str) -> Path:
    return Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)


def cached_weights(ref: str) -> Path | None:
    """The local copy of a reference's pretrained weights, if downloaded."""
    r = parse_ref(ref)
    repo, files, url = _weights_files(r)
    hit = _cached(repo, files)
    if hit is None and url and _url_cache(url).is_file():
        hit = _url_cache(url)
    return hit


def _location(repo: str | None, url: str | None) -> str | None:
    return f"{hub_endpoint()}/{repo}" if repo else url


_FILE_HINT = "pass --weights FILE with a local .safetensors file of the model"
_HUB_HINT = "name its architecture instead (clip:ARCH) and pass --weights FILE"


def _download(
    r: ClipRef,
    repo: str | None,
    files: tuple[str, ...],
    url: str | None = None,
    hint: str = _FILE_HINT,
    progress: Callable[[int, int | None], None] | None = None,
) -> Path:
    """Download one of ``files`` (or ``url``), after a quick reachability check, reporting
    hub downloads as ``progress(bytes_done, bytes_total)``."""
    where = _location(repo, url)
    if where is None:
        raise no_pretrained_weights(f"open_clip has no pretrained weights for clip:{r.text}")
    what = f"model clip:{r.text}: its files are"
    require_reachable(where, what, hint, by_file=hint == _FILE_HINT)
    errors = []
    if repo:
        from huggingface_hub import hf_hub_download

        kwargs = {} if progress is None else {"tqdm_class": _reporter(progress)}
        for fname in files:
            try:
                return Path(hf_hub_download(repo, fname, **kwargs))
            except Exception as e:  # any failure becomes one clear message
                errors.append(f"{fname}: {(str(e).strip().splitlines() or [repr(e)])[0][:200]}")
    else:
        try:
            return Path(open_clip_module().pretrained.download_pretrained_from_url(url))
        except Exception as e:
            errors.append(f"{url}: {(str(e).strip().splitlines() or [repr(e)])[0][:200]}")
    raise WeightsError(f"could not download clip:{r.text}: {'; '.join(errors)}")


def _reporter(progress: Callable[[int, int | None], None]) -> type:
    from tqdm.auto import tqdm

    class Reporter(tqdm):  # huggingface_hub drives it; we forward the byte counts
        done = 0

        def update(self, n: float | None = 1) -> bool | None:
            self.done += int(n or 0)
            progress(self.done, int(self.total) if self.total else None)
            return super().update(n)

    return Reporter


def download_weights(
    ref: str, progress: Callable[[int, int | None], None] | None = None
) -> Path | None:
    """Download a reference's pretrained weights (and a hub repository's config) into the
    cache, reporting ``progress(bytes_done, bytes_total)``; the cached file, or None when the
    reference names no pretrained weights.

    Raises:
        WeightsError: the hub cannot be reached or the download failed.
    """
    r = parse_ref(ref)
    model_config(r)  # a hub repository's config first; refused towers download nothing
    repo, files, url = _weights_files(r)
    if not r.hub_id and not r.tag:
        return None
    return cached_weights(ref) or _download(r, repo, files, url, progress=progress)


def weights_plan(ref: str) -> str:
    """One line saying where a reference's weights would come from now (no network used)."""
    r = parse_ref(ref)
    repo, _, url = _weights_files(r)
    if not r.hub_id and not r.tag:
        tags = ", ".join(open_clip_module().list_pretrained_tags_by_model(r.arch)) or "none"
        return f"no pretrained tag: pass --weights FILE or name clip:{r.arch}/TAG (tags: {tags})"
    hit = cached_weights(ref)
    if hit is not None:
        return f"Hugging Face cache ({hit})" if repo else f"open_clip cache ({hit})"
    where = _location(repo, url)
    if where is None:
        return "no pretrained weights: pass --weights FILE"
    return f"download on first use from {where}"


def _state_dict(r: ClipRef, max_params: int | None) -> tuple[dict[str, torch.Tensor], WeightsInfo]:
    """A reference's pretrained weights (cache first, then the hub), within the size limit."""
    limit = file_limit(max_params)
    if not r.hub_id and not r.tag:
        tags = open_clip_module().list_pretrained_tags_by_model(r.arch)
        raise WeightsError(
            f"clip:{r.text} names no pretrained weights: add a tag (clip:{r.arch}/TAG; its tags: "
            f"{', '.join(tags) or 'none'}), or pass --weights FILE (or --random-weights)"
        )
    repo, files, url = _weights_files(r)
    hit = _cached(repo, files)
    if hit is None and url and _url_cache(url).is_file():
        hit = _url_cache(url)
    if hit is not None:
        return read_state_dict(hit, max_bytes=limit)[0], WeightsInfo("cache", str(hit))
    path = _download(r, repo, files, url)
    return read_state_dict(path, max_bytes=limit)[0], WeightsInfo("hub", str(_location(repo, url)))


def _load_weights(model: nn.Module, sd: dict[str, torch.Tensor], r: ClipRef, where: str) -> None:
    sd = {k: v for k, v in sd.items() if k not in _NOT_TENSORS}
    for name in ("logit_scale", "logit_bias"):
        own = getattr(model, name, None)
        if name in sd and own is not None and sd[name].ndim != own.ndim:
            sd[name] = sd[name].reshape(own.shape)
    try:
        model.load_state_dict(sd, strict=True)
    except (RuntimeError, KeyError, ValueError) as e:
        raise weights_mismatch(where, f"clip:{r.text}", str(e)) from None


def _tokenizer(cfg: dict[str, Any], name: str) -> Any:
    oc = open_clip_module()
    text = cfg.get("text_cfg") or {}
    context = int(text.get("context_length", 77))
    kwargs = dict(text.get("tokenizer_kwargs") or {})
    hf_name = text.get("hf_tokenizer_name")
    if not hf_name:
        return oc.tokenizer.SimpleTokenizer(context_length=context, **kwargs)
    if (
        _cached(hf_name, ("tokenizer_config.json", "tokenizer.json")) is None
        and not hub_reachable()
    ):
        raise WeightsError(
            f"clip:{name} needs the tokenizer {hf_name} from the Hugging Face hub, which is not "
            "cached and cannot be reached; connect to the internet and run again"
        )
    try:
        return oc.tokenizer.HFTokenizer(
            hf_name, context_length=context, tokenizer_mode=text.get("tokenizer_mode"), **kwargs
        )
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise WeightsError(
            f"clip:{name}: could not load the tokenizer {hf_name}: {first}"
        ) from None


def data_config(visual: nn.Module, pre: dict[str, Any]) -> dict[str, Any]:
    """vitviz's (timm-style) data config of open_clip's eval transform: resize the shortest
    side to the input size and centre-crop (``crop_pct`` 1.0), or squash / longest side."""
    oc = open_clip_module()
    base = dataclasses.asdict(oc.transform.PreprocessCfg())
    base.update({k: v for k, v in pre.items() if k in base})
    size = visual.image_size
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    mode = {"shortest": "center", "squash": "squash", "longest": "border"}.get(
        str(base["resize_mode"]), "center"
    )
    return {
        "input_size": (3, h, w),
        "interpolation": str(base["interpolation"]),
        "mean": tuple(float(v) for v in base["mean"]),
        "std": tuple(float(v) for v in base["std"]),
        "crop_pct": 1.0,
        "crop_mode": mode,
    }


def build(req: Request) -> Built:
    """The open_clip ViT of ``req`` as a :class:`ClipClassifier` of the default labels
    (:data:`~vitviz.inputs.prompts.DEFAULT_LABELS`), on ``req.device``; other labels come
    with :meth:`~vitviz.models.LoadedModel.with_labels`.

    Raises:
        ModelError / WeightsError / OptionsError with a message that says what to do.
    """
    ref = req.ref
    r = parse_ref(ref)
    cfg, pre = model_config(r)
    if req.weights is not None:
        sd, info = req.weights.state_dict, req.weights.info
    else:
        sd, info = _state_dict(r, req.max_params)
        check_size(str(info.location), sum(t.numel() for t in sd.values()), req.max_params)
    tokenizer = _tokenizer(cfg, ref)
    model = _build(cfg)
    if sd is not None:
        _load_weights(model, sd, r, info.location or info.source)
        del sd
    model = model.eval().requires_grad_(False).to(req.device)
    classifier = ClipClassifier(ClipTower(model, tokenizer, ref))
    return Built(
        name=req.key or f"clip:{ref}",
        title=f"CLIP {ref}",
        model=classifier,
        data_config=data_config(model.visual, pre),
        labels=list(classifier.labels),
        weights=info,
    )
