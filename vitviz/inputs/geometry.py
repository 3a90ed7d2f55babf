"""A model's resize and crop, from its data config alone: Pillow only, no torch.

:class:`InputGeometry` turns an upright RGB image into the pixels a model sees, the way timm's
eval transform does (``timm.data.create_transform(..., is_training=False)`` up to
``ToTensor``): the same sizes, rounding, interpolation and crop offsets, so the result is
pixel-identical (``tests/test_geometry.py`` compares the two). Timm's crop modes:

* ``center`` (default): shortest side to ``floor(size / crop_pct)``, then a centre crop;
* ``squash``: both sides to ``floor(size / crop_pct)``, then a centre crop;
* ``border``: longest side to ``floor(size / crop_pct)``, then a centre crop or a pad with the
  model's mean colour.

``keep_aspect`` (models with ``dynamic_img_size``): shortest side to the model's size, the
aspect kept up to 3:1, cropped to whole patches.

The engine, the server and the HTTP client all use this one implementation, so a client can
send exactly the model's input without loading torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from PIL import Image

DEFAULT_CROP_PCT = 0.875
INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}


def _resize(image: Image.Image, hw: Sequence[int], interpolation: str) -> Image.Image:
    """torchvision's ``resize`` of a PIL image to ``(h, w)`` (unchanged when already so)."""
    h, w = int(hw[0]), int(hw[1])
    if image.size == (w, h):
        return image
    return image.resize((w, h), INTERPOLATIONS[interpolation])


def _short_side_size(image: Image.Image, short: int) -> tuple[int, int]:
    """torchvision's output size for ``resize(img, short)``: ``(h, w)``."""
    w, h = image.size
    lo, hi = (w, h) if w <= h else (h, w)
    new_short, new_long = short, int(short * hi / lo)
    return (new_long, new_short) if w <= h else (new_short, new_long)


def _keep_ratio_size(image: Image.Image, target: Sequence[int], longest: float) -> tuple[int, int]:
    """timm's ``ResizeKeepRatio`` output size ``(h, w)`` at eval (no random scaling)."""
    w, h = image.size
    ratio_h, ratio_w = h / target[0], w / target[1]
    ratio = max(ratio_h, ratio_w) * longest + min(ratio_h, ratio_w) * (1.0 - longest)
    return round(h / ratio), round(w / ratio)


def _center_crop(
    image: Image.Image, hw: Sequence[int], fill: tuple[int, ...] | int = 0
) -> Image.Image:
    """torchvision's / timm's centre crop, padding with ``fill`` where the image is smaller."""
    crop_h, crop_w = int(hw[0]), int(hw[1])
    w, h = image.size
    if crop_w > w or crop_h > h:
        left = (crop_w - w) // 2 if crop_w > w else 0
        top = (crop_h - h) // 2 if crop_h > h else 0
        right = (crop_w - w + 1) // 2 if crop_w > w else 0
        bottom = (crop_h - h + 1) // 2 if crop_h > h else 0
        color = fill if isinstance(fill, int) else tuple(fill)
        padded = Image.new(image.mode, (w + left + right, h + top + bottom), color)
        padded.paste(image, (left, top))
        image = padded
        w, h = image.size
        if (crop_w, crop_h) == (w, h):
            return image
    top = round((h - crop_h) / 2.0)
    left = round((w - crop_w) / 2.0)
    return image.crop((left, top, left + crop_w, top + crop_h))


def _box(
    resized: Sequence[int],
    crop: Sequence[int],
    region: tuple[int, int, int, int],
    source: tuple[int, int],
) -> tuple[float, float, float, float]:
    """A centre crop of ``crop`` (h, w) from an image resized to ``resized`` (h, w), as the
    fractions of the ``source`` (h, w) that the resized ``region`` (top, left, h, w) came from
    (:func:`_center_crop`'s offsets and padding)."""
    (rh, rw), (ch, cw) = (int(resized[0]), int(resized[1])), (int(crop[0]), int(crop[1]))
    top0, left0, h, w = region
    pad_top = (ch - rh) // 2 if ch > rh else 0
    pad_left = (cw - rw) // 2 if cw > rw else 0
    ph, pw = max(rh, ch), max(rw, cw)  # the image after any padding
    top = round((ph - ch) / 2.0) - pad_top
    left = round((pw - cw) / 2.0) - pad_left
    sy, sx = h / rh, w / rw  # source pixels per resized pixel
    return (
        (top0 + top * sy) / source[0],
        (left0 + left * sx) / source[1],
        ch * sy / source[0],
        cw * sx / source[1],
    )


class InputGeometry:
    """Resize and crop of a model's input, from its data config alone (no weights needed).

    Args:
        config: timm's data config: ``input_size`` ``(3, H, W)``, ``interpolation``,
            ``crop_pct``, ``crop_mode`` and ``mean`` (the pad colour of ``border`` mode);
            ``crop_border_pixels`` is honoured too.
        keep_aspect: non-square input for models with ``dynamic_img_size``.
        patch: input pixels per token along (y, x).
    """

    def __init__(self, config: dict[str, Any], keep_aspect: bool, patch: Sequence[int]) -> None:
        self.config = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
        self.keep_aspect = bool(keep_aspect)
        self.patch = (int(patch[0]), int(patch[1]))
        self.size = (int(self.config["input_size"][1]), int(self.config["input_size"][2]))
        self.interpolation = str(self.config.get("interpolation") or "bilinear")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {self.interpolation!r}")
        self.crop_pct = float(self.config.get("crop_pct") or DEFAULT_CROP_PCT)
        self.crop_mode = str(self.config.get("crop_mode") or "center")

    @classmethod
    def from_info(cls, info: Any) -> InputGeometry:
        """The geometry of the model a :class:`~vitviz.results.ModelInfo` describes."""
        return cls(info.input_config, info.keep_aspect, info.patch_size)

    @property
    def key(self) -> str:
        """A string equal for equal geometries (a cache key for model inputs)."""
        cfg = sorted((k, repr(v)) for k, v in self.config.items())
        return repr((cfg, self.keep_aspect, self.patch))

    def __call__(self, image: Image.Image) -> Image.Image:
        """The image exactly as the model sees it (RGB)."""
        image = image.convert("RGB")
        if self.keep_aspect:
            return self._aspect_crop(image)
        border = int(self.config.get("crop_border_pixels") or 0)
        if border:
            w, h = image.size
            top, left = min(border, h), min(border, h)
            image = image.crop(
                (left, top, left + max(0, w - 2 * border), top + max(0, h - 2 * border))
            )
        scale = tuple(math.floor(x / self.crop_pct) for x in self.size)
        if self.crop_mode == "squash":
            image = _resize(image, scale, self.interpolation)
            return _center_crop(image, self.size)
        if self.crop_mode == "border":
            image = _resize(image, _keep_ratio_size(image, scale, 1.0), self.interpolation)
            mean = self.config.get("mean") or (0.485, 0.456, 0.406)
            return _center_crop(image, self.size, tuple(round(255 * v) for v in mean))
        if scale[0] == scale[1]:
            image = _resize(image, _short_side_size(image, scale[0]), self.interpolation)
        else:
            image = _resize(image, _keep_ratio_size(image, scale, 0.0), self.interpolation)
        return _center_crop(image, self.size)

    def _aspect_crop(self, image: Image.Image) -> Image.Image:
        """Short side to the model's size, the aspect kept (up to 3:1), cropped to patches."""
        short = min(self.size)
        w, h = image.size
        scale = short / min(w, h)
        nh, nw = max(round(h * scale), self.patch[0]), max(round(w * scale), self.patch[1])
        interpolation = str(self.config.get("interpolation") or "bicubic")  # as before
        resized = _resize(image, (nh, nw), interpolation)
        crop_h = min(nh, 3 * short) // self.patch[0] * self.patch[0]
        crop_w = min(nw, 3 * short) // self.patch[1] * self.patch[1]
        return _center_crop(resized, (crop_h, crop_w))

    def source_box(self, height: int, width: int) -> tuple[float, float, float, float]:
        """Where the model's input lies in a ``height``×``width`` source image, as fractions
        of it: ``(top, left, box_height, box_width)``. The box extends past the image where
        ``border`` mode pads it. (The inverse of :meth:`__call__`'s resize and crop; e.g. the
        live view draws the map there.)"""
        if self.keep_aspect:
            short = min(self.size)
            scale = short / min(width, height)
            nh = max(round(height * scale), self.patch[0])
            nw = max(round(width * scale), self.patch[1])
            crop = (
                min(nh, 3 * short) // self.patch[0] * self.patch[0],
                min(nw, 3 * short) // self.patch[1] * self.patch[1],
            )
            return _box((nh, nw), crop, (0, 0, height, width), (height, width))
        border = int(self.config.get("crop_border_pixels") or 0)
        top0, left0 = min(border, height), min(border, height)
        h, w = max(0, height - 2 * border), max(0, width - 2 * border)
        scale = tuple(math.floor(x / self.crop_pct) for x in self.size)
        probe = Image.new("L", (max(1, w), max(1, h)))
        if self.crop_mode == "squash":
            resized = scale
        elif self.crop_mode == "border":
            resized = _keep_ratio_size(probe, scale, 1.0)
        elif scale[0] == scale[1]:
            resized = _short_side_size(probe, scale[0])
        else:
            resized = _keep_ratio_size(probe, scale, 0.0)
        return _box(resized, self.size, (top0, left0, h, w), (height, width))

    def is_seen(self, image: Image.Image) -> bool:
        """Whether ``image`` has a size this geometry produces (already resized and cropped)."""
        w, h = image.size
        if self.keep_aspect:
            short = min(self.size)
            return (
                min(h, w) <= short
                and h % self.patch[0] == 0
                and w % self.patch[1] == 0
                and max(h, w) <= 3 * short
            )
        return (h, w) == self.size
