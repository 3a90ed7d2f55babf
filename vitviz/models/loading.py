"""Loading a model of any family: :func:`load_model` → :class:`LoadedModel`.

The model's family (:mod:`vitviz.models.families`: timm, Hugging Face transformers, open_clip
…) is found from its name. :func:`load_model` then does what every family shares, once: the
refusals, the device, the parameter limit (counted before anything is built, read or
downloaded), a local weights file or random weights, and the :class:`LoadedModel` around what
the family built. Preprocessing comes from the family (timm: the model's pretrained config),
applied by :class:`~vitviz.inputs.geometry.InputGeometry` so the caller gets the image exactly
as the model saw it beside the normalized tensor.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image
from torch import nn
from torchvision import transforms as T

from vitviz.errors import ModelError
from vitviz.layout import TokenLayout
from vitviz.memory.cost import ModelShape
from vitviz.models.checks import (
    FILE_OR_RANDOM,
    RANDOM_WARNING,
    check_size,
    file_limit,
    summarize_load_error,
)
from vitviz.models.device import Precision, device_name, pick_device, pick_precision
from vitviz.models.families import Family, Progress, Request, Weights, lookup
from vitviz.models.families.timm import DEMO_NOTE, labels_for, parameter_count
from vitviz.models.preprocess import InputGeometry, model_layout, patch_size_of
from vitviz.models.registry import CURATED
from vitviz.models.weights import read_state_dict
from vitviz.results import ModelInfo, WeightsInfo

__all__ = [
    "DEMO_NOTE",
    "RANDOM_WARNING",
    "LoadedModel",
    "check_model_size",
    "download_weights",
    "labels_for",
    "load_model",
    "model_parameters",
    "model_shape",
    "parameter_count",
    "summarize_load_error",
    "weights_plan",
]


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


def model_parameters(name: str, model_kwargs: dict[str, Any] | None = None) -> int:
    """Parameters and buffers of any family's model by name, counted before anything is
    built, read or downloaded (timm and open_clip on the meta device, Hugging Face from its
    config). Counted once per name and arguments (a meta-device build still runs the
    model's weight initialisation in Python: ~50 ms for ViT-Ti, more for larger ones)."""
    family, ref = lookup(name)
    return _counted(family, ref, json.dumps(model_kwargs or {}, sort_keys=True, default=repr))


@functools.lru_cache(maxsize=256)  # names come from visitors: bounded
def _counted(family: Family, ref: str, kwargs_json: str) -> int:
    return int(family.count(ref, json.loads(kwargs_json)))


def weights_plan(name: str) -> str:
    """One line saying where a model's weights would come from now (no network used)."""
    family, ref = lookup(name)
    return family.plan(ref)


def download_weights(name: str, progress: Progress | None = None) -> Path | None:
    """Download a model's weights into its library's cache, reporting progress.

    ``progress(bytes_done, bytes_total)`` is called as the files arrive. Returns the cached
    file (or folder), or None when the weights are not on the Hugging Face hub (timm then
    downloads them itself from their URL, without progress). Raises WeightsError when it
    fails.
    """
    family, ref = lookup(name)
    return family.download(ref, progress)


def check_model_size(
    name: str, max_params: int | None, model_kwargs: dict[str, Any] | None = None
) -> None:
    """Refuse a model with more than ``max_params`` parameters, before building or downloading.

    Raises:
        ModelError: over the limit (or an unknown or refused name).
    """
    if max_params is None:
        return
    check_size(name, model_parameters(name, model_kwargs), max_params)


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
    """Create a model of any family (:func:`~vitviz.models.families.lookup`) with its weights.

    :func:`vitviz.engine.capture.prepare` readies capture.

    Args:
        name: curated key/title (``vit-b16`` …), any global-attention timm ViT name, or a
            family's ``prefix:reference`` (``hf:owner/name``, ``clip:ViT-B-32/openai``).
        weights: a local ``.safetensors`` (or ``.pth``/``.bin``) file; wins over the hub
            (families with :attr:`~vitviz.models.families.Family.weights_file`).
        random_weights: skip weights entirely (architecture tests; flagged everywhere).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        precision: autocast precision; ``auto`` = bf16/fp16 on CUDA, fp32 elsewhere.
        keep_aspect: feed non-square inputs (needs ``dynamic_img_size``; timm).
        model_kwargs: extra ``timm.create_model`` arguments (e.g. ``img_size``, ``depth``).
        max_params: refuse models with more parameters (counted on the meta device and from
            the weights file's size, before anything is allocated or read).

    Raises:
        ModelError / WeightsError with a message that says what to do.
    """
    family, ref = lookup(name)
    if (keep_aspect or model_kwargs) and not family.creation_args:
        raise ModelError(
            f"{name}: keep_aspect and timm creation arguments apply to timm models only; "
            f"{family.name} models run at their own square input size"
        )
    if weights is not None and not family.weights_file:
        raise ModelError(family.no_weights_file)
    family.check(ref)
    if weights is not None and random_weights:
        raise ModelError(FILE_OR_RANDOM)
    dev = pick_device(device)
    shown = family.shown(name, ref)
    if max_params is not None:
        check_size(shown, model_parameters(name, model_kwargs), max_params)
    given: Weights | None = None
    if weights is not None:
        sd, meta = read_state_dict(weights, max_bytes=file_limit(max_params))
        check_size(str(weights), sum(t.numel() for t in sd.values()), max_params)
        given = Weights(WeightsInfo("file", str(weights)), sd, meta)
    elif random_weights:
        given = Weights(WeightsInfo("random", "", RANDOM_WARNING))
    request = Request(
        name=name,
        ref=ref,
        key=name if name in CURATED else None,
        weights=given,
        device=dev,
        keep_aspect=keep_aspect,
        model_kwargs=dict(model_kwargs or {}),
        max_params=max_params,
    )
    built = family.build(request)
    del given, request  # a file's tensors now live in the model only
    model = built.model.eval().to(dev)
    title = CURATED[built.name].title if built.name in CURATED else built.title
    return LoadedModel(
        name=built.name,
        title=title,
        model=model,
        data_config=built.data_config,
        labels=built.labels,
        weights=built.weights,
        device=dev,
        precision=pick_precision(dev, precision),  # type: ignore[arg-type]
        keep_aspect=keep_aspect,
        hook=built.hook,
    )
