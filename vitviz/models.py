"""Model registry and loading: curated ViTs, any global-attention timm ViT, safe weights.

Weights come from, in this order: a local file the user names (``.safetensors``, or
``.pth``/``.bin`` read with ``torch.load(weights_only=True)``), the Hugging Face cache or hub
through timm's own pretrained loading, or explicitly random weights (architecture tests only).
Without a network the hub is never waited on: an unreachable hub fails within seconds and says
what to do. Windowed or channel-attention families are refused, since their attention matrices
do not say where a global readout looks.

Preprocessing comes from the model's own pretrained config
(``timm.data.resolve_model_data_config`` + ``create_transform``), split so the caller gets the
image exactly as the model saw it (after resize and crop) beside the normalized tensor.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import timm
import torch
from PIL import Image
from timm.data import (
    ImageNetInfo,
    create_transform,
    infer_imagenet_subset,
    resolve_model_data_config,
)
from torch import nn
from torchvision import transforms as T

from vitviz.errors import ModelError, WeightsError, WeightsFileError
from vitviz.layout import PrefixKind, Readout, TokenLayout

WeightSource = Literal["file", "cache", "hub", "random", "bundled"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
HUB_PROBE_SECONDS = 3.0


@dataclass(frozen=True)
class ModelSpec:
    """A curated model: short key, the name shown in the UI, the timm name and notes."""

    key: str
    title: str
    timm_name: str
    description: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    bundled: Path | None = None  # weights shipped in assets/ (the demo model)
    cfg_overlay: dict[str, Any] = field(default_factory=dict)  # preprocessing overrides


ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEMO_WEIGHTS = ASSETS / "demo" / "vitviz-demo.safetensors"

CURATED: dict[str, ModelSpec] = {
    s.key: s
    for s in (
        ModelSpec(
            "demo",
            "vitviz demo ViT (synthetic textures, works offline)",
            "vit_tiny_patch16_224",
            "A small ViT trained by vitviz on generated scenes of 8 textures, not on photos.",
            {"depth": 6, "num_classes": 8},
            bundled=DEMO_WEIGHTS,
            cfg_overlay={"crop_pct": 1.0, "tag": "vitviz_demo"},
        ),
        ModelSpec(
            "vit-b16",
            "ViT-B/16 (AugReg, ImageNet-21k → 1k)",
            "vit_base_patch16_224.augreg2_in21k_ft_in1k",
            "The classic ViT-Base, 12 layers × 12 heads, 16 px patches; ImageNet-1k classes.",
        ),
        ModelSpec(
            "vit-s16",
            "ViT-S/16 (AugReg, ImageNet-21k → 1k)",
            "vit_small_patch16_224.augreg_in21k_ft_in1k",
            "A smaller, faster ViT: 12 layers × 6 heads; ImageNet-1k classes.",
        ),
        ModelSpec(
            "deit-s16",
            "DeiT-S/16 (ImageNet-1k)",
            "deit_small_patch16_224.fb_in1k",
            "Data-efficient ViT trained on ImageNet-1k only; 12 layers × 6 heads.",
        ),
        ModelSpec(
            "deit-b16-distilled",
            "DeiT-B/16 distilled (ImageNet-1k)",
            "deit_base_distilled_patch16_224.fb_in1k",
            "Class and distillation tokens; the prediction averages both heads.",
        ),
        ModelSpec(
            "dino-s16",
            "DINO ViT-S/16 (self-supervised)",
            "vit_small_patch16_224.dino",
            "Self-supervised backbone: no classifier, famous for object-segmenting heads.",
        ),
        ModelSpec(
            "dinov2-s14-reg",
            "DINOv2 ViT-S/14 with registers (self-supervised)",
            "vit_small_patch14_reg4_dinov2.lvd142m",
            "Self-supervised backbone with 4 register tokens, run at 224 px; no classifier.",
            {"img_size": 224},
        ),
    )
}

# Families whose attention is not one global token-to-token matrix over the image.
REFUSED_FAMILIES: dict[str, str] = {
    "swin": "windowed attention: each token attends only inside its local window",
    "xcit": "cross-covariance attention: its matrices relate feature channels, not patches",
    "pvt": "spatial-reduction attention: keys are pooled, so rows do not cover the patches",
    "twins": "locally-grouped windowed attention",
    "crossvit": "two token streams of different patch sizes with cross attention",
    "levit": "convolutional stages with shrinking resolution",
    "mvit": "pooling attention over shrinking resolutions",
    "maxvit": "block and grid (windowed) attention",
    "maxxvit": "block and grid (windowed) attention",
    "coatnet": "convolution and relative attention stages at several resolutions",
    "coat": "factorized (channel) attention",
    "nest": "nested local-block attention",
    "tnt": "patches inside patches (two attention levels)",
    "pit": "pooling stages that change the token grid",
    "cait": "class attention in separate layers after the patch layers",
    "convit": "gated positional self-attention",
    "davit": "window and channel attention",
    "focalnet": "focal modulation instead of attention",
    "hiera": "hierarchical mask-unit (windowed) attention",
    "efficientformer": "hybrid convolution stages",
    "fastvit": "hybrid convolution stages",
    "gcvit": "global context windowed attention",
    "tiny_vit": "windowed attention",
    "samvit": "windowed attention in most layers",
    "edgenext": "channel (transposed) attention",
    "nextvit": "hybrid convolution stages",
    "mobilevit": "unfolded local patch attention",
    "efficientvit": "linear attention",
    "vitamin": "hybrid convolution stages",
    "sequencer": "LSTM mixing instead of attention",
}

SUPPORTED_MODULES = (
    "timm.models.vision_transformer",
    "timm.models.deit",
    "timm.models.vision_transformer_hybrid",
    "timm.models.eva",
    "timm.models.beit",
)


@dataclass(frozen=True)
class WeightsInfo:
    """Where a loaded model's weights came from."""

    source: WeightSource
    location: str
    warning: str | None = None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "source": self.source,
            "location": self.location,
            "warning": self.warning,
            "note": self.note,
        }


RANDOM_WARNING = "RANDOM WEIGHTS - NOT A TRAINED MODEL: maps and predictions mean nothing"
DEMO_NOTE = (
    "the demo model was trained by vitviz on synthetic scenes of 8 textures (stripes, dots, "
    "checkerboard …), not on photos: it answers with texture names"
)


@dataclass
class LoadedModel:
    """A timm ViT ready for capture, with its preprocessing, labels and provenance."""

    name: str
    title: str
    model: nn.Module
    data_config: dict[str, Any]
    labels: list[str] | None
    weights: WeightsInfo
    device: torch.device
    precision: Literal["fp32", "bf16", "fp16"]
    keep_aspect: bool = False

    def __post_init__(self) -> None:
        self.geometry = InputGeometry(self.data_config, self.keep_aspect, _patch_size(self.model))

    @property
    def has_classifier(self) -> bool:
        """Whether the model outputs class logits (self-supervised backbones do not)."""
        return getattr(self.model, "num_classes", 0) > 0

    @property
    def num_layers(self) -> int:
        """Number of transformer blocks."""
        return len(self.model.blocks)

    @property
    def num_heads(self) -> int:
        """Attention heads per block."""
        return int(self.model.blocks[0].attn.num_heads)

    def layout(self, input_hw: tuple[int, int]) -> TokenLayout:
        """Token layout of this model for an input of ``(height, width)`` pixels."""
        return model_layout(self.model, input_hw)

    def seen_image(self, image: Image.Image) -> Image.Image:
        """The image exactly as the model sees it: resized and cropped per its config."""
        return self.geometry(image)

    def to_tensor(self, seen: Image.Image) -> torch.Tensor:
        """Normalized ``[3, H, W]`` tensor of a seen image (model's mean/std)."""
        cfg = self.data_config
        return T.functional.normalize(T.functional.to_tensor(seen), cfg["mean"], cfg["std"])

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary for outputs and the UI."""
        return {
            "name": self.name,
            "title": self.title,
            "timm_name": _full_name(self.model),
            "weights": self.weights.to_dict(),
            "device": str(self.device),
            "device_name": _device_name(self.device),
            "precision": self.precision,
            "layers": self.num_layers,
            "heads": self.num_heads,
            "classes": getattr(self.model, "num_classes", 0),
            "keep_aspect": self.keep_aspect,
            "patch_size": list(_patch_size(self.model)),
            "input_config": {
                k: list(v) if isinstance(v, tuple) else v
                for k, v in self.data_config.items()
                if k in ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
            },
        }


def _device_name(device: torch.device) -> str:
    """The device in words: the GPU's name, Apple GPU or CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "Apple GPU (MPS)" if device.type == "mps" else "CPU"


def _full_name(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    arch, tag = cfg.get("architecture", ""), cfg.get("tag", "")
    return f"{arch}.{tag}" if arch and tag else arch or type(model).__name__


class InputGeometry:
    """Resize and crop of a model's input, from its data config alone (no weights needed).

    The remote client uses it with the config a server reports, so it can send the image
    exactly as the model will see it.
    """

    def __init__(self, config: dict[str, Any], keep_aspect: bool, patch: Sequence[int]) -> None:
        self.config = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
        self.keep_aspect = bool(keep_aspect)
        self.patch = (int(patch[0]), int(patch[1]))
        self._geometry = _geometry(self.config)

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> InputGeometry:
        """The geometry of the model a :meth:`LoadedModel.describe` dict describes."""
        return cls(info["input_config"], info.get("keep_aspect", False), info["patch_size"])

    def __call__(self, image: Image.Image) -> Image.Image:
        """The image exactly as the model sees it."""
        if self.keep_aspect:
            return _aspect_crop(image, self.config, self.patch)
        return self._geometry(image.convert("RGB"))

    @property
    def key(self) -> str:
        """A string equal for equal geometries (a cache key for model inputs)."""
        cfg = sorted((k, repr(v)) for k, v in self.config.items())
        return repr((cfg, self.keep_aspect, self.patch))

    def is_seen(self, image: Image.Image) -> bool:
        """Whether ``image`` has a size this geometry produces (already resized and cropped)."""
        w, h = image.size
        if self.keep_aspect:
            short = min(self.config["input_size"][1:])
            return (
                min(h, w) <= short
                and h % self.patch[0] == 0
                and w % self.patch[1] == 0
                and max(h, w) <= 3 * short
            )
        return (h, w) == tuple(self.config["input_size"][1:])


def _geometry(cfg: dict[str, Any]) -> T.Compose:
    """The resize/crop part of timm's eval transform (everything before ToTensor)."""
    full = create_transform(**cfg, is_training=False)
    steps = []
    for t in full.transforms:
        if "ToTensor" in type(t).__name__:
            break
        steps.append(t)
    return T.Compose(steps)


def _patch_size(model: nn.Module) -> tuple[int, int]:
    """Input pixels per token along (y, x): ``img_size / grid_size`` (hybrid stems included)."""
    pe = model.patch_embed
    return tuple(int(i) // int(g) for i, g in zip(pe.img_size, pe.grid_size, strict=True))


def _aspect_crop(image: Image.Image, cfg: dict[str, Any], patch: tuple[int, int]) -> Image.Image:
    """Resize the short side to the model's size, keep the aspect (up to 3:1), crop to patches."""
    short = min(cfg["input_size"][1:])
    w, h = image.size
    scale = short / min(w, h)
    nh, nw = max(round(h * scale), patch[0]), max(round(w * scale), patch[1])
    interp = T.InterpolationMode(cfg.get("interpolation", "bicubic"))
    resized = T.functional.resize(image.convert("RGB"), [nh, nw], interpolation=interp)
    crop_h = min(nh, 3 * short) // patch[0] * patch[0]
    crop_w = min(nw, 3 * short) // patch[1] * patch[1]
    return T.functional.center_crop(resized, [crop_h, crop_w])


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
    patch = _patch_size(model)
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
    if "dist" in prefix:
        readout = "cls+dist"
    elif pool == "token" or (not pool and "cls" in prefix):
        readout = "cls"
    else:
        readout = "avg+prefix" if getattr(model, "pool_include_prefix", False) else "avg"
    return TokenLayout(prefix=tuple(prefix), grid=grid, patch_size=patch, readout=readout)


def resolve_name(name: str) -> tuple[str, str, dict[str, Any]]:
    """Map a curated key/title or a timm name to ``(key, timm_name, extra create kwargs)``.

    Raises:
        ModelError: unknown names (with close matches) and refused attention families.
    """
    for spec in CURATED.values():
        names = (spec.key, spec.title) if spec.bundled else (spec.key, spec.title, spec.timm_name)
        if name in names:
            return spec.key, spec.timm_name, dict(spec.kwargs)
    arch = name.split(".", 1)[0]
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ModelError(
            f"unknown model {name!r}: not a curated name ({', '.join(CURATED)}) "
            f"nor a timm model name{hint}"
        )
    check_architecture(arch)
    if name.count(".") == 1 and name not in timm.list_pretrained(name):
        tags = [t.split(".", 1)[1] for t in timm.list_pretrained(f"{arch}.*")]
        raise ModelError(
            f"timm has no weights tagged {name.split('.', 1)[1]!r} for {arch}; "
            f"its tags are: {', '.join(tags) or 'none'}"
        )
    return name, name, {}


def check_architecture(arch: str) -> None:
    """Refuse families whose attention is windowed, pooled or over channels."""
    low = arch.lower()
    for family, why in REFUSED_FAMILIES.items():
        if low.startswith(family):
            raise ModelError(
                f"{arch} is not supported: {family} uses {why}, so there is no global "
                "patch-to-patch attention to show; choose a plain ViT such as vit_base_patch16_224"
            )
    module = timm.models.model_entrypoint(arch).__module__
    if module not in SUPPORTED_MODULES:
        raise ModelError(
            f"{arch} ({module.rsplit('.', 1)[-1]}) is not a global-attention ViT vitviz can "
            "read; choose a ViT, DeiT, DINO/DINOv2, EVA or BEiT model"
        )


def check_structure(model: nn.Module, name: str) -> None:
    """Check the model has what capture needs: blocks with unfused-capable attention."""
    blocks = getattr(model, "blocks", None)
    ok = blocks is not None and len(blocks) > 0
    ok = ok and all(
        hasattr(getattr(b, "attn", None), "attn_drop")
        and hasattr(b.attn, "fused_attn")
        and hasattr(b.attn, "num_heads")
        for b in blocks
    )
    ok = ok and hasattr(model, "patch_embed") and hasattr(model, "num_prefix_tokens")
    ok = ok and all(type(b.attn).__name__ != "DiffAttention" for b in blocks)
    if not ok:
        raise ModelError(
            f"{name}: its blocks do not expose per-head attention the way timm's ViT Attention "
            "does, so vitviz cannot capture it; choose a plain ViT, DeiT or DINO model"
        )


# ---------------------------------------------------------------------------- weights


def read_state_dict(
    path: str | os.PathLike, *, max_bytes: int | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a weights file safely: safetensors, or a pickle with ``weights_only=True``.

    Args:
        path: the file (a regular file: pipes and devices are refused unread).
        max_bytes: refuse larger files before reading them.

    Returns:
        The state dict (a nested ``state_dict``/``model`` entry is unwrapped, ``module.``
        prefixes stripped) and the safetensors metadata (empty for pickles).

    Raises:
        WeightsError: missing file, too large, unsafe pickle content, no tensors, or not a
            state dict.
    """
    p = Path(path)
    if not p.is_file():
        raise WeightsFileError(f"weights file {p} does not exist (or is not a file)")
    size = p.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise WeightsFileError(
            f"{p}: the file is {size / 2**30:.1f} GiB, over the limit of "
            f"{max_bytes / 2**30:.1f} GiB for a model here; choose a smaller model"
        )
    meta: dict[str, str] = {}
    if p.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(p), framework="pt") as f:
                meta = dict(f.metadata() or {})
                sd = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
        except Exception as e:
            raise WeightsFileError(f"{p}: not a valid safetensors file ({e})") from None
    elif p.suffix in (".pth", ".pt", ".bin", ".ckpt"):
        try:
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise WeightsFileError(
                f"{p}: refused to load: the file holds more than tensors (pickled code or "
                f"objects), which could run code on this machine ({first[:160]}). "
                "Convert it to .safetensors from a trusted environment"
            ) from None
        sd = obj
        for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
            if isinstance(sd, dict) and isinstance(sd.get(key), dict):
                sd = sd[key]
                break
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise WeightsFileError(f"{p}: holds no state dict of tensors")
    else:
        raise WeightsFileError(
            f"{p}: unknown weights format {p.suffix!r}; use .safetensors (or .pth/.bin)"
        )
    if not sd:
        raise WeightsFileError(f"{p}: holds no tensors; it is not a model's weights")
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    return sd, meta


def parameter_count(name: str, model_kwargs: dict[str, Any] | None = None) -> int:
    """Parameters and buffers of a model, counted on the meta device (nothing allocated).

    Takes about 0.05–0.2 s, even for a 1.8-billion-parameter ViT.
    """
    _, timm_name, kwargs = resolve_name(name)
    kwargs.update(model_kwargs or {})
    with torch.device("meta"):
        model = timm.create_model(timm_name, pretrained=False, **kwargs)
    return sum(t.numel() for t in (*model.parameters(), *model.buffers()))


def check_model_size(
    name: str, max_params: int | None, model_kwargs: dict[str, Any] | None = None
) -> None:
    """Refuse a model with more than ``max_params`` parameters, before building or downloading.

    Raises:
        ModelError: over the limit (or an unknown or refused name).
    """
    if max_params is not None:
        _check_size(name, parameter_count(name, model_kwargs), max_params)


def _check_size(name: str, count: int, max_params: int | None) -> None:
    if max_params is not None and count > max_params:
        raise ModelError(
            f"{name} has {count / 1e6:,.0f} M parameters ({count * 4 / 2**30:.1f} GiB in "
            f"float32), over the limit of {max_params / 1e6:,.0f} M set for this place; "
            "choose a smaller model (the operator can raise VITVIZ_MAX_PARAMS)"
        )


def hub_endpoint() -> str:
    """The Hugging Face endpoint in use (``HF_ENDPOINT`` or the default)."""
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT


def hub_offline() -> bool:
    """Whether the user asked for offline mode (``HF_HUB_OFFLINE``)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return env in ("1", "true", "yes", "on") or bool(constants.HF_HUB_OFFLINE)


_PROBES: dict[str, tuple[float, bool]] = {}  # url → (time, answer): one probe per 30 s
PROBE_MEMORY_SECONDS = 30.0


def hub_reachable(url: str | None = None, timeout: float = HUB_PROBE_SECONDS) -> bool:
    """Whether ``url`` (default: the hub) answers within ``timeout`` s; never hangs (DNS too).

    The answer is remembered for 30 s, so a page that asks twice in a row waits once.
    """
    if hub_offline():
        return False
    target = url or hub_endpoint()
    seen = _PROBES.get(target)
    if seen is not None and time.monotonic() - seen[0] < PROBE_MEMORY_SECONDS:
        return seen[1]
    answer = _probe(target, timeout)
    _PROBES[target] = (time.monotonic(), answer)
    return answer


def _probe(url: str, timeout: float) -> bool:
    result: list[bool] = []

    def probe() -> None:
        try:
            req = urllib.request.Request(url, method="HEAD")
            urllib.request.urlopen(req, timeout=timeout).close()
            result.append(True)
        except urllib.error.HTTPError:
            result.append(True)  # it answered
        except Exception:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def cached_weights(timm_name: str) -> Path | None:
    """Local file of a timm pretrained tag in the Hugging Face cache, if downloaded."""
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(timm_name)
    repo = getattr(cfg, "hf_hub_id", None) if cfg else None
    if not repo:
        return None
    files = [cfg.hf_hub_filename] if getattr(cfg, "hf_hub_filename", None) else []
    files += ["model.safetensors", "pytorch_model.bin"]
    for fname in files:
        hit = try_to_load_from_cache(repo, fname)
        if isinstance(hit, str) and Path(hit).is_file():
            return Path(hit)
    return None


def download_location(timm_name: str) -> str | None:
    """Where timm would download a tag's weights from (hub page or URL), or None if nowhere."""
    cfg = timm.models.get_pretrained_cfg(timm_name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        return None
    return f"{hub_endpoint()}/{cfg.hf_hub_id}" if cfg.hf_hub_id else cfg.url


def download_weights(
    name: str, progress: Callable[[int, int | None], None] | None = None
) -> Path | None:
    """Download a model's hub weights into the Hugging Face cache, reporting progress.

    ``progress(bytes_done, bytes_total)`` is called as the file arrives. Returns the cached
    file, or None when the weights are not on the Hugging Face hub (timm then downloads
    them itself from their URL, without progress). Raises WeightsError when it fails.
    """
    from huggingface_hub import hf_hub_download
    from tqdm.auto import tqdm

    _, timm_name, _ = resolve_name(name)
    cfg = timm.models.get_pretrained_cfg(timm_name)
    repo = getattr(cfg, "hf_hub_id", None) if cfg else None
    if not repo:
        return None

    class Reporter(tqdm):  # huggingface_hub drives it; we forward the byte counts
        done = 0  # counted here: a disabled tqdm (HF_HUB_DISABLE_PROGRESS_BARS) keeps no n

        def update(self, n: float | None = 1) -> bool | None:
            self.done += int(n or 0)
            if progress is not None:
                progress(self.done, int(self.total) if self.total else None)
            return super().update(n)

    errors = []
    for fname in ("model.safetensors", "pytorch_model.bin"):
        try:
            return Path(hf_hub_download(repo, fname, tqdm_class=Reporter))
        except Exception as e:  # any failure becomes one clear message
            errors.append(f"{fname}: {str(e).strip().splitlines()[0][:200] if str(e) else e!r}")
    raise WeightsError(f"could not download the weights of {timm_name}: {'; '.join(errors)}")


def weights_plan(name: str) -> str:
    """One line saying where a model's weights would come from now (no network used)."""
    key, timm_name, _ = resolve_name(name)
    spec = CURATED.get(key)
    if spec is not None and spec.bundled is not None:
        if spec.bundled.is_file():
            return f"bundled with vitviz ({spec.bundled.name}, works offline)"
        return "bundled weights missing: python -m vitviz.demo.train"
    hit = cached_weights(timm_name)
    if hit is not None:
        return f"Hugging Face cache ({hit})"
    where = download_location(timm_name)
    if where is None:
        return "no pretrained weights in timm: pass --weights FILE"
    return f"download on first use from {where}"


def labels_for(model: nn.Module, meta: dict[str, str] | None = None) -> list[str] | None:
    """Class names: from safetensors metadata ``vitviz_labels``, ImageNet, or class numbers."""
    n = int(getattr(model, "num_classes", 0) or 0)
    if n == 0:
        return None
    if meta and "vitviz_labels" in meta:
        try:
            labels = json.loads(meta["vitviz_labels"])
        except json.JSONDecodeError:
            labels = None  # a malformed label list falls back to the numbers below
        if isinstance(labels, list) and len(labels) == n:
            return [str(x) for x in labels]
    subset = infer_imagenet_subset(model)
    if subset:
        info = ImageNetInfo(subset)
        return [info.index_to_description(i) for i in range(n)]
    return [f"class {i}" for i in range(n)]


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` → CUDA if present, else Apple MPS, else CPU."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ModelError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ModelError(f"device {device} asked for, but no CUDA GPU is available; use cpu")
        if dev.index is not None and dev.index >= count:
            raise ModelError(f"device {device} does not exist: this machine has {count} GPU(s)")
    elif dev.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ModelError("device mps asked for, but Apple's MPS is not available; use cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ModelError(f"unsupported device {device!r}: use auto, cpu, cuda, cuda:N or mps")
    return dev


def pick_precision(device: torch.device, precision: Precision = "auto") -> str:
    """bf16 (fp16 where bf16 is unsupported) autocast on CUDA; always fp32 on CPU and MPS."""
    if device.type != "cuda":
        return "fp32"
    if precision != "auto":
        return precision
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def _depth(sd: dict[str, torch.Tensor]) -> int | None:
    """Number of transformer blocks in a state dict (``blocks.N.…`` keys), if any."""
    found = [int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))]
    return max(found) + 1 if found else None


def _num_classes(sd: dict[str, torch.Tensor]) -> int:
    w = sd.get("head.weight")
    return int(w.shape[0]) if w is not None else 0


def load_model(
    name: str,
    *,
    weights: str | os.PathLike | None = None,
    random_weights: bool = False,
    device: str = "auto",
    precision: Precision = "auto",
    keep_aspect: bool = False,
    model_kwargs: dict[str, Any] | None = None,
    max_params: int | None = None,
) -> LoadedModel:
    """Create a timm ViT, load its weights and prepare it for attention capture.

    Args:
        name: curated key/title (``vit-b16`` …) or any global-attention timm ViT name.
        weights: a local ``.safetensors`` (or ``.pth``/``.bin``) file; wins over the hub.
        random_weights: skip weights entirely (architecture tests; flagged everywhere).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        precision: autocast precision; ``auto`` = bf16/fp16 on CUDA, fp32 elsewhere.
        keep_aspect: feed non-square inputs (needs ``dynamic_img_size``).
        model_kwargs: extra ``timm.create_model`` arguments (e.g. ``img_size``, ``depth``).
        max_params: refuse models with more parameters (counted on the meta device and from
            the weights file's size, before anything is allocated or read).

    Raises:
        ModelError / WeightsError with a message that says what to do.
    """
    key, timm_name, kwargs = resolve_name(name)
    spec = CURATED.get(key)
    kwargs.update(model_kwargs or {})
    cfg_overlay = dict(spec.cfg_overlay) if spec is not None else {}
    if keep_aspect:
        kwargs["dynamic_img_size"] = True
    dev = pick_device(device)
    meta: dict[str, str] = {}
    if weights is not None and random_weights:
        raise ModelError("choose either a weights file or random weights, not both")
    check_model_size(name, max_params, kwargs)
    if weights is not None:
        limit = None if max_params is None else 4 * max_params + 2**20
        sd, meta = read_state_dict(weights, max_bytes=limit)
        _check_size(str(weights), sum(t.numel() for t in sd.values()), max_params)
        info = WeightsInfo("file", str(weights))
    elif random_weights:
        sd, info = None, WeightsInfo("random", "", RANDOM_WARNING)
    elif spec is not None and spec.bundled is not None:
        if not spec.bundled.is_file():
            raise WeightsError(
                f"the bundled weights of {key} are missing ({spec.bundled}); "
                "train them with: python -m vitviz.demo.train"
            )
        sd, meta = read_state_dict(spec.bundled)
        info = WeightsInfo("bundled", str(spec.bundled), note=DEMO_NOTE)
    else:
        hit = cached_weights(timm_name)
        if hit is not None:
            sd, meta = read_state_dict(hit)
            info = WeightsInfo("cache", str(hit))
        else:
            sd = None
            info = _require_hub(timm_name, key)
    try:
        if sd is not None:
            nc = kwargs.pop("num_classes", _num_classes(sd))
            if "depth" not in kwargs and _depth(sd) is not None:
                kwargs["depth"] = _depth(sd)  # a file may hold a shallower variant
            overlay = {**cfg_overlay, "state_dict": sd, "num_classes": nc}
            model = timm.create_model(
                timm_name, pretrained=True, num_classes=nc, pretrained_cfg_overlay=overlay, **kwargs
            )
        else:
            if cfg_overlay:
                kwargs["pretrained_cfg_overlay"] = cfg_overlay
            model = timm.create_model(timm_name, pretrained=info.source == "hub", **kwargs)
    except TypeError as e:
        if keep_aspect:
            raise ModelError(
                f"{timm_name} cannot take non-square input (no dynamic_img_size)"
            ) from None
        raise ModelError(f"{timm_name} does not accept these settings: {e}") from None
    except (RuntimeError, KeyError, ValueError) as e:
        raise WeightsError(
            f"weights from {info.location or info.source} do not fit {timm_name}: "
            f"{_summarize_load_error(str(e))}; check --model matches the file"
        ) from None
    except OSError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise WeightsError(f"could not fetch weights for {timm_name}: {first}") from None
    model.pretrained_cfg.pop("state_dict", None)  # do not keep a second copy of the weights
    check_structure(model, timm_name)
    prec = pick_precision(dev, precision)
    model = model.eval().to(dev)
    from vitviz.capture import prepare

    prepare(model)
    title = CURATED[key].title if key in CURATED else timm_name
    data_config = resolve_model_data_config(model)
    # The pretrained config may name another size (DINOv2: 518 px); the model's own wins.
    data_config["input_size"] = (3, *(int(s) for s in model.patch_embed.img_size))
    return LoadedModel(
        name=key,
        title=title,
        model=model,
        data_config=data_config,
        labels=labels_for(model, meta),
        weights=info,
        device=dev,
        precision=prec,  # type: ignore[arg-type]
        keep_aspect=keep_aspect,
    )


def _summarize_load_error(text: str) -> str:
    """One line from torch's multi-line ``load_state_dict`` error."""
    parts = []
    for label, pattern in (
        ("missing", r"Missing key\(s\) in state_dict: (.*)"),
        ("unexpected", r"Unexpected key\(s\) in state_dict: (.*)"),
    ):
        found = re.search(pattern, text)
        if found:
            keys = re.findall(r'"([^"]+)"', found.group(1))
            parts.append(f"{len(keys)} {label} tensors ({', '.join(keys[:3])}…)")
    sizes = re.findall(r"size mismatch for ([\w.]+)", text)
    if sizes:
        parts.append(f"{len(sizes)} tensors of another shape ({', '.join(sizes[:3])}…)")
    if not parts:
        lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
        parts.append(lines[0][:300] if lines else "unknown error")
    return "; ".join(parts)


def _require_hub(timm_name: str, key: str) -> WeightsInfo:
    where = download_location(timm_name)
    if where is None:
        raise WeightsError(
            f"timm has no pretrained weights for {timm_name}: pass --weights FILE "
            "(or --random-weights for an architecture test)"
        )
    if not hub_reachable(where):
        why = "offline mode is on (HF_HUB_OFFLINE)" if hub_offline() else "it cannot be reached"
        raise WeightsError(
            f"model {key}: the weights {timm_name} are not in the local cache and {why}. "
            f"Connect to the internet and run again (they download once from {where}), "
            "or pass --weights FILE with a local .safetensors/.pth file"
        )
    return WeightsInfo("hub", where)
