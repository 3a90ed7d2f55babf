"""Loading a timm ViT: weights from a file, the cache, the hub or the bundled demo.

Weights come from, in this order: a local file the user names (``.safetensors``, or
``.pth``/``.bin`` read with ``torch.load(weights_only=True)``), the Hugging Face cache or hub
through timm's own pretrained loading, or explicitly random weights (architecture tests only).
Preprocessing comes from the model's own pretrained config
(``timm.data.resolve_model_data_config``), applied by :class:`~vitviz.inputs.geometry.InputGeometry`
so the caller gets the image exactly as the model saw it beside the normalized tensor.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass
from typing import Any, Literal

import timm
import torch
from PIL import Image
from timm.data import ImageNetInfo, infer_imagenet_subset, resolve_model_data_config
from torch import nn
from torchvision import transforms as T

from vitviz.errors import ModelError, WeightsError
from vitviz.layout import TokenLayout
from vitviz.memory.cost import ModelShape
from vitviz.models.device import Precision, device_name, pick_device, pick_precision
from vitviz.models.hub import _require_hub, cached_weights
from vitviz.models.preprocess import InputGeometry, model_layout, patch_size_of
from vitviz.models.registry import (
    CURATED,
    check_structure,
    family_of,
    model_family,
    resolve_name,
)
from vitviz.models.weights import _depth, _num_classes, read_state_dict
from vitviz.results import ModelInfo, WeightsInfo

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
    hook: str = "attn.attn_drop"  # where each block's attention probabilities pass

    def __post_init__(self) -> None:
        self.geometry = InputGeometry(self.data_config, self.keep_aspect, patch_size_of(self.model))

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
        from vitviz.engine.capture import attention_heads

        return attention_heads(self.model)

    @property
    def typed_labels(self) -> bool:
        """Whether the classes are typed by the user (CLIP): :meth:`with_labels` then works."""
        return hasattr(self.model, "with_labels")

    @property
    def shape(self) -> ModelShape:
        """What this model's memory use depends on (:mod:`vitviz.memory.cost`), read once."""
        known = self.__dict__.get("_shape")
        if known is None:
            layout = self.layout(self.geometry.size)
            known = self.__dict__["_shape"] = model_shape(self.model, layout)
        return known

    def with_labels(self, labels: list[str], template: str | None = None) -> LoadedModel:
        """This model classifying ``labels`` (CLIP: zero-shot over typed labels), sharing the
        weights; other models have fixed classes (an :class:`OptionsError`)."""
        from dataclasses import replace

        from vitviz.errors import OptionsError

        if not self.typed_labels:
            raise OptionsError(f"{self.name} has fixed classes; typed labels need a CLIP model")
        model = self.model.with_labels(labels, template)
        return replace(self, model=model, labels=list(model.labels))

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

    def describe(self) -> ModelInfo:
        """What this model is, for outputs and the UI."""
        return ModelInfo(
            name=self.name,
            title=self.title,
            timm_name=_full_name(self.model),
            weights=self.weights,
            device=str(self.device),
            device_name=device_name(self.device),
            precision=self.precision,
            layers=self.num_layers,
            heads=self.num_heads,
            classes=int(getattr(self.model, "num_classes", 0) or 0),
            keep_aspect=self.keep_aspect,
            label_set=str(getattr(self.model, "label_set", "") or ""),
            patch_size=patch_size_of(self.model),
            input_config={
                k: list(v) if isinstance(v, tuple) else v
                for k, v in self.data_config.items()
                if k in ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
            },
        )


def model_shape(model: nn.Module, layout: TokenLayout) -> ModelShape:
    """The :class:`~vitviz.memory.cost.ModelShape` of a capturable model: blocks, heads, token width
    (``embed_dim``), the MLP's hidden width (the widest linear layer of a block), parameters
    and buffers, prefix tokens and patch size."""
    from vitviz.engine.capture import attention_heads

    dim = int(getattr(model, "embed_dim", 0) or getattr(model, "num_features", 0) or 0)
    widths = [m.out_features for m in model.blocks[0].modules() if isinstance(m, nn.Linear)]
    hidden = max([w for w in widths if w != 3 * dim] or [4 * dim])
    return ModelShape(
        layers=len(model.blocks),
        heads=attention_heads(model),
        dim=dim,
        mlp_dim=max(hidden, dim),
        params=sum(t.numel() for t in (*model.parameters(), *model.buffers())),
        prefix=layout.num_prefix,
        patch=patch_size_of(model),
    )


def _full_name(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    arch, tag = cfg.get("architecture", ""), cfg.get("tag", "")
    return f"{arch}.{tag}" if arch and tag else arch or type(model).__name__


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


def parameter_count(name: str, model_kwargs: dict[str, Any] | None = None) -> int:
    """Parameters and buffers of a model, counted on the meta device (nothing allocated).

    Takes about 0.05–0.2 s, even for a 1.8-billion-parameter ViT.
    """
    _, timm_name, kwargs = resolve_name(name)
    kwargs.update(model_kwargs or {})
    with torch.device("meta"):
        model = timm.create_model(timm_name, pretrained=False, **kwargs)
    return sum(t.numel() for t in (*model.parameters(), *model.buffers()))


def model_parameters(name: str, model_kwargs: dict[str, Any] | None = None) -> int:
    """Parameters and buffers of any family's model by name, counted before anything is
    built, read or downloaded (timm and open_clip on the meta device, Hugging Face from its
    config). Counted once per name and arguments (a meta-device build still runs the
    model's weight initialisation in Python: ~50 ms for ViT-Ti, more for larger ones)."""
    key = (name, json.dumps(model_kwargs or {}, sort_keys=True, default=repr))
    return _counted(*key)


@functools.lru_cache(maxsize=256)  # names come from visitors: bounded
def _counted(name: str, kwargs_json: str) -> int:
    model_kwargs = json.loads(kwargs_json)
    family, ref = model_family(name)
    if family != "timm":
        from importlib import import_module

        return int(import_module(f"vitviz.models.{family}").parameter_count(ref))
    return parameter_count(name, model_kwargs)


def check_model_size(
    name: str, max_params: int | None, model_kwargs: dict[str, Any] | None = None
) -> None:
    """Refuse a model with more than ``max_params`` parameters, before building or downloading.

    Raises:
        ModelError: over the limit (or an unknown or refused name).
    """
    if max_params is None:
        return
    _check_size(name, model_parameters(name, model_kwargs), max_params)


def _check_size(name: str, count: int, max_params: int | None) -> None:
    if max_params is not None and count > max_params:
        raise ModelError(
            f"{name} has {count / 1e6:,.0f} M parameters ({count * 4 / 2**30:.1f} GiB in "
            f"float32), over the limit of {max_params / 1e6:,.0f} M set for this place; "
            "choose a smaller model (the operator can raise VITVIZ_MAX_PARAMS)"
        )


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
    """Create a timm ViT and load its weights.

    :func:`vitviz.engine.capture.prepare` readies capture.

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
    family, ref = model_family(name)
    if family != "timm":  # Hugging Face transformers or open_clip: their own loaders
        from importlib import import_module

        if keep_aspect or model_kwargs:
            raise ModelError(
                f"{name}: keep_aspect and timm creation arguments apply to timm models only; "
                f"{family} models run at their own square input size"
            )

        loader = import_module(f"vitviz.models.{family}")
        return loader.load(
            ref,
            key=name if name in CURATED else None,
            weights=weights,
            random_weights=random_weights,
            device=device,
            precision=precision,
            max_params=max_params,
        )
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
    _, family = family_of(timm_name.split(".", 1)[0])
    hook = family.hook if family is not None else "attn.attn_drop"
    check_structure(model, timm_name, hook)
    prec = pick_precision(dev, precision)
    model = model.eval().to(dev)
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
        hook=hook,
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
