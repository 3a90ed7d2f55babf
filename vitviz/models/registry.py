"""Which models vitviz knows, and which timm families it can read.

The curated models (:data:`CURATED`) have short keys and a line on each. Any other timm
model is looked up in :data:`FAMILIES` by the module that defines it: global-attention ViTs
are supported (with the module where their attention probabilities pass, the hook point);
families whose attention is windowed, pooled or over channels are refused with the reason,
since their attention matrices do not say where a global readout looks.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
from torch import nn

from vitviz.errors import ModelError
from vitviz.inputs.assets import ASSETS
from vitviz.models.checks import SPATIAL_REDUCTION, WINDOWED, not_a_vit, refused_attention


@dataclass(frozen=True)
class ModelSpec:
    """A curated model: short key, the name shown in the UI, the timm name and notes.

    ``family`` is the library that builds it (:mod:`vitviz.models.families`): ``timm``
    (``timm_name`` is a timm name), ``hf`` (Hugging Face transformers: ``timm_name`` is
    ``hf:<hub id>``) or ``clip`` (open_clip: ``clip:<architecture>/<pretrained tag>``).
    """

    key: str
    title: str
    timm_name: str
    description: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    bundled: Path | None = None  # weights shipped in assets/ (the demo model)
    cfg_overlay: dict[str, Any] = field(default_factory=dict)  # preprocessing overrides
    family: str = "timm"


DEMO_WEIGHTS = ASSETS / "demo" / "vitviz-demo.safetensors"

CURATED: dict[str, ModelSpec] = {
    s.key: s
    for s in (
        ModelSpec(
            "demo",
            "vitviz demo ViT (offline)",
            "vit_tiny_patch16_224",
            "Bundled, works offline: a small ViT trained by vitviz on generated scenes of 8 "
            "textures, not on photos.",
            {"depth": 6, "num_classes": 8},
            bundled=DEMO_WEIGHTS,
            cfg_overlay={"crop_pct": 1.0, "tag": "vitviz_demo"},
        ),
        ModelSpec(
            "vit-b16",
            "ViT-B/16 (ImageNet)",
            "vit_base_patch16_224.augreg2_in21k_ft_in1k",
            "The classic ViT-Base, 12 layers × 12 heads, 16 px patches; AugReg, trained on "
            "ImageNet-21k, fine-tuned on ImageNet-1k.",
        ),
        ModelSpec(
            "vit-s16",
            "ViT-S/16 (ImageNet)",
            "vit_small_patch16_224.augreg_in21k_ft_in1k",
            "A smaller, faster ViT: 12 layers × 6 heads; AugReg, ImageNet-21k → 1k.",
        ),
        ModelSpec(
            "deit-s16",
            "DeiT-S/16",
            "deit_small_patch16_224.fb_in1k",
            "Data-efficient ViT trained on ImageNet-1k only; 12 layers × 6 heads.",
        ),
        ModelSpec(
            "deit-b16-distilled",
            "DeiT-B/16 distilled",
            "deit_base_distilled_patch16_224.fb_in1k",
            "ImageNet-1k; class and distillation tokens, the prediction averages both heads.",
        ),
        ModelSpec(
            "dino-s16",
            "DINO ViT-S/16",
            "vit_small_patch16_224.dino",
            "Self-supervised backbone: no classifier, famous for object-segmenting heads.",
        ),
        ModelSpec(
            "dinov2-s14-reg",
            "DINOv2 ViT-S/14 + registers",
            "vit_small_patch14_reg4_dinov2.lvd142m",
            "Self-supervised backbone with 4 register tokens, run at 224 px; no classifier.",
            {"img_size": 224},
        ),
        ModelSpec(
            "clip-b32",
            "CLIP ViT-B/32 (type your classes)",
            "clip:ViT-B-32/openai",
            "OpenAI's CLIP image tower (open_clip): it scores the classes you type against the "
            "image; 12 layers × 12 heads, 32 px patches.",
            family="clip",
        ),
        ModelSpec(
            "clip-b16",
            "CLIP ViT-B/16 (type your classes)",
            "clip:ViT-B-16/openai",
            "OpenAI's CLIP with 16 px patches (finer maps, slower); you type the classes.",
            family="clip",
        ),
        ModelSpec(
            "hf-vit-b16",
            "ViT-B/16 (Hugging Face)",
            "hf:google/vit-base-patch16-224",
            "Google's ViT-Base from the Hugging Face hub (transformers), ImageNet-1k classes.",
            family="hf",
        ),
    )
}


@dataclass(frozen=True)
class Family:
    """How vitviz treats the models of one timm module.

    Attributes:
        supported: whether vitviz reads their attention.
        why: for refused families, what their attention is instead (shown to the user).
        hook: for supported families, the module of each block whose output is the softmax
            probabilities (:func:`vitviz.engine.capture.prepare` hooks it).
    """

    supported: bool
    why: str = ""
    hook: str = "attn.attn_drop"


def _refused(why: str) -> Family:
    return Family(False, why, "")


_XCA = "cross-covariance attention: its matrices relate feature channels, not patches"

FAMILIES: dict[str, Family] = {
    "vision_transformer": Family(True),
    "deit": Family(True),
    "vision_transformer_hybrid": Family(True),
    "eva": Family(True),
    "beit": Family(True),
    "swin_transformer": _refused(WINDOWED),
    "swin_transformer_v2": _refused(WINDOWED),
    "swin_transformer_v2_cr": _refused(WINDOWED),
    "xcit": _refused(_XCA),
    "pvt_v2": _refused(SPATIAL_REDUCTION),
    "twins": _refused("locally-grouped windowed attention"),
    "crossvit": _refused("two token streams of different patch sizes with cross attention"),
    "levit": _refused("convolutional stages with shrinking resolution"),
    "mvitv2": _refused("pooling attention over shrinking resolutions"),
    "maxxvit": _refused("block and grid (windowed) attention"),
    "coat": _refused("factorized (channel) attention"),
    "nest": _refused("nested local-block attention"),
    "tnt": _refused("patches inside patches (two attention levels)"),
    "pit": _refused("pooling stages that change the token grid"),
    "cait": _refused("class attention in separate layers after the patch layers"),
    "convit": _refused("gated positional self-attention"),
    "davit": _refused("window and channel attention"),
    "focalnet": _refused("focal modulation instead of attention"),
    "hiera": _refused("hierarchical mask-unit (windowed) attention"),
    "hieradet_sam2": _refused("hierarchical mask-unit (windowed) attention"),
    "efficientformer": _refused("hybrid convolution stages"),
    "efficientformer_v2": _refused("hybrid convolution stages"),
    "fastvit": _refused("hybrid convolution stages"),
    "gcvit": _refused("global context windowed attention"),
    "tiny_vit": _refused("windowed attention"),
    "vision_transformer_sam": _refused("windowed attention in most layers"),
    "edgenext": _refused("channel (transposed) attention"),
    "nextvit": _refused("hybrid convolution stages"),
    "mobilevit": _refused("unfolded local patch attention"),
    "efficientvit_mit": _refused("linear attention"),
    "efficientvit_msra": _refused("cascaded group attention over shrinking resolutions"),
    "vitamin": _refused("hybrid convolution stages"),
    "sequencer": _refused("LSTM mixing instead of attention"),
}
"""Families by timm module (``timm.models.<key>``); modules not listed are refused too."""


def family_of(arch: str) -> tuple[str, Family | None]:
    """The timm module (short name) defining ``arch`` and its family entry, if any."""
    module = timm.models.model_entrypoint(arch).__module__.rsplit(".", 1)[-1]
    return module, FAMILIES.get(module)


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
    """Refuse families whose attention is windowed, pooled or over channels, and non-ViTs."""
    module, family = family_of(arch)
    if family is not None and not family.supported:
        raise refused_attention(
            arch, module, family.why, "choose a plain ViT such as vit_base_patch16_224"
        )
    if family is None:
        raise not_a_vit(arch, module, "choose a ViT, DeiT, DINO/DINOv2, EVA or BEiT model")


def _has(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


def check_structure(model: nn.Module, name: str, hook: str = "attn.attn_drop") -> None:
    """Check the model has what capture needs: blocks with unfused-capable attention whose
    probabilities pass through ``hook`` (the family's hook point)."""
    blocks = getattr(model, "blocks", None)
    ok = blocks is not None and len(blocks) > 0
    ok = ok and all(
        _has(b, hook)
        and hasattr(getattr(b, "attn", None), "fused_attn")
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
