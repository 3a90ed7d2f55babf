"""A Hugging Face image processor config as timm's data config (resize, crop, interpolation,
normalization), with notes on what it assumed."""

from __future__ import annotations

import math
from typing import Any

_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _size_of(value: Any, square: bool) -> tuple[str, tuple[int, int]] | None:
    """``("squash", (h, w))`` or ``("short", (s, s))`` from a processor's ``size``."""
    if isinstance(value, int | float):
        return ("squash" if square else "short"), (int(value), int(value))
    if isinstance(value, dict):
        if "height" in value and "width" in value:
            return "squash", (int(value["height"]), int(value["width"]))
        if "shortest_edge" in value:
            s = int(value["shortest_edge"])
            return "short", (s, s)
    return None


def _channels(value: Any) -> list[float]:
    """Three per-channel numbers (one number stands for all three)."""
    if isinstance(value, int | float):
        return [float(value)] * 3
    return [float(v) for v in value]


def crop_pct(crop: int, resized: int) -> float:
    """timm's crop fraction: ``floor(crop / pct) == resized`` exactly."""
    pct = crop / resized
    if math.floor(crop / pct) != resized:
        pct = crop / (resized + 0.5)
    return pct


def data_config(
    processor: dict[str, Any] | None,
    model_hw: tuple[int, int],
    patch: tuple[int, int],
    interpolates: bool,
) -> tuple[dict[str, Any], list[str]]:
    """timm's data config from an image processor config, and notes on what it assumed.

    ``size``/``crop_size``/``do_center_crop`` become ``input_size``, ``crop_pct`` and
    ``crop_mode`` (``{"height", "width"}`` resizes both sides: timm's ``squash``;
    ``{"shortest_edge"}`` keeps the aspect: ``center``); ``resample`` the interpolation;
    ``image_mean``/``image_std`` (with ``rescale_factor`` folded in) the normalization.
    Without a processor config, ViTImageProcessor's defaults: both sides to the model's size,
    bilinear, mean and std 0.5.
    """
    notes: list[str] = []
    pp = processor or {}
    if processor is None:
        notes.append(
            "no preprocessor_config.json: ViTImageProcessor's defaults assumed (both sides "
            "resized to the model's size, bilinear, mean and std 0.5)"
        )
    kind = str(pp.get("image_processor_type") or pp.get("feature_extractor_type") or "")
    square = not any(k in kind for k in ("Bit", "CLIP", "ConvNext"))
    resize = _size_of(pp.get("size"), square) if pp.get("do_resize", True) else None
    crop = _size_of(pp.get("crop_size"), True) if pp.get("do_center_crop", False) else None
    mode, resized = resize if resize is not None else ("squash", model_hw)
    out_hw = crop[1] if crop is not None else resized
    if mode == "short" and crop is None:
        notes.append("the processor keeps the aspect without a crop: vitviz crops the centre")
    if interpolates and out_hw[0] % patch[0] == 0 and out_hw[1] % patch[1] == 0:
        input_hw = out_hw  # DINOv2/v3 run at the processor's size
    else:
        input_hw = model_hw
        if out_hw != model_hw:
            notes.append(
                f"the processor gives {out_hw[0]}×{out_hw[1]} px but the model takes "
                f"{model_hw[0]}×{model_hw[1]}: vitviz resizes to the model's size"
            )
    pct = crop_pct(out_hw[0], resized[0]) if crop is not None else 1.0
    if crop is not None and abs(out_hw[1] / resized[1] - out_hw[0] / resized[0]) > 1e-6:
        notes.append("the crop keeps different fractions of height and width: heights used")
    resample = pp.get("resample", 2)
    interpolation = (
        _PIL_RESAMPLE.get(int(resample), "bilinear")
        if isinstance(resample, int | float)
        else str(resample).lower()
        if str(resample).lower() in _PIL_RESAMPLE.values()
        else "bilinear"
    )
    mean, std = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
    if pp.get("do_normalize", True):
        mean, std = _channels(pp.get("image_mean", mean)), _channels(pp.get("image_std", std))
    else:
        mean, std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    rescale = float(pp.get("rescale_factor", 1 / 255)) if pp.get("do_rescale", True) else 1.0
    if abs(rescale * 255 - 1) > 1e-9:  # (x·255·r − m)/s = (x − m/(255r)) / (s/(255r))
        k = 255 * rescale
        mean, std = [m / k for m in mean], [s / k for s in std]
    cfg = {
        "input_size": (3, int(input_hw[0]), int(input_hw[1])),
        "interpolation": interpolation,
        "mean": tuple(mean),
        "std": tuple(std),
        "crop_pct": pct,
        "crop_mode": "squash" if mode == "squash" else "center",
    }
    return cfg, notes
