"""The torch-free input geometry gives the pixels timm's own eval transform gives."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from timm.data import create_transform
from torchvision import transforms as T

from vitviz.inputs.geometry import InputGeometry


def cfg(size, interpolation, crop_pct, **more):
    return {"input_size": (3, *size), "interpolation": interpolation, "crop_pct": crop_pct, **more}


CONFIGS = [
    cfg((224, 224), "bicubic", 0.875),
    cfg((224, 224), "bilinear", 1.0),
    cfg((384, 384), "bicubic", 1.0, crop_mode="squash"),
    cfg((224, 224), "bicubic", 0.9, crop_mode="border", mean=(0.5, 0.4, 0.3)),
    cfg((192, 256), "bicubic", 0.95),
    cfg((256, 192), "lanczos", 0.875, crop_mode="border", mean=(0.485, 0.456, 0.406)),
    cfg((224, 224), "nearest", 0.875, crop_border_pixels=3),
]
SIZES = [(451, 300), (300, 451), (224, 224), (50, 31), (1000, 999), (257, 256)]


def timm_geometry(cfg: dict) -> T.Compose:
    """timm's eval transform up to (not including) ToTensor: the reference."""
    full = create_transform(**cfg, is_training=False)
    return T.Compose([t for t in full.transforms if "ToTensor" not in type(t).__name__][:-1])


def photo(size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    smooth = np.linspace(0, 255, w)[None, :, None] * np.linspace(0.2, 1, h)[:, None, None]
    noise = rng.integers(0, 60, size=(h, w, 3))
    return Image.fromarray(np.clip(smooth + noise, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c['input_size']}-{c.get('crop_mode')}")
def test_pixels_equal_timms_eval_transform(config):
    reference = timm_geometry(config)
    ours = InputGeometry(config, keep_aspect=False, patch=(16, 16))
    for i, size in enumerate(SIZES):
        image = photo(size, i)
        want = np.asarray(reference(image))
        got = np.asarray(ours(image))
        assert got.shape == want.shape and np.array_equal(got, want), (config, size)
        assert ours.is_seen(Image.fromarray(got))


def test_keep_aspect_crops_to_whole_patches_up_to_three_to_one():
    geo = InputGeometry({"input_size": (3, 224, 224), "interpolation": "bicubic"}, True, (16, 16))
    wide = geo(photo((1200, 300)))
    assert wide.size == (672, 224)  # 4:1 becomes 3:1
    tall = geo(photo((300, 451)))
    assert tall.size[0] == 224 and tall.size[1] % 16 == 0 and geo.is_seen(tall)
    assert not geo.is_seen(photo((225, 224)))


def test_keep_aspect_without_an_interpolation_resizes_bicubic_as_before():
    geo = InputGeometry({"input_size": (3, 224, 224)}, True, (16, 16))
    image = photo((300, 451), 3)
    top = round((337 - 336) / 2)
    want = image.resize((224, 337), Image.Resampling.BICUBIC).crop((0, top, 224, top + 336))
    assert np.array_equal(np.asarray(geo(image)), np.asarray(want))


@pytest.mark.parametrize(
    "config, keep, size",
    [
        ({"crop_pct": 1.0}, False, (480, 640)),
        ({"crop_pct": 0.875}, False, (480, 640)),
        ({"crop_pct": 0.875}, False, (640, 480)),
        ({"crop_pct": 0.9, "crop_mode": "squash"}, False, (480, 640)),
        ({"crop_pct": 0.95, "crop_border_pixels": 10}, False, (480, 640)),
        ({"crop_pct": 1.0}, True, (300, 1000)),
    ],
)
def test_source_box_is_where_the_models_pixels_came_from(config, keep, size):
    """A picture whose pixels encode their own coordinates goes through the geometry: the
    model's first and last rows and columns came from the box's edges (within a pixel)."""
    cfg = {"input_size": (3, 224, 224), "interpolation": "bilinear", **config}
    geometry = InputGeometry(cfg, keep, (16, 16))
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    picture = np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), 0 * xx], -1).astype(np.uint8)
    seen = np.asarray(geometry(Image.fromarray(picture)), np.float64)
    top, left, bh, bw = geometry.source_box(h, w)
    sy, sx = bh * h / seen.shape[0], bw * w / seen.shape[1]  # source pixels per model pixel
    mid_r, mid_c = seen.shape[0] // 2, seen.shape[1] // 2
    x_first, x_last = seen[mid_r, [0, -1], 0] / 255 * (w - 1)
    y_first, y_last = seen[[0, -1], mid_c, 1] / 255 * (h - 1)
    tol_x, tol_y = sx + 1.5 * w / 255, sy + 1.5 * h / 255  # a pixel, and the 8-bit encoding
    assert abs(x_first - (left * w + sx / 2)) <= tol_x
    assert abs(x_last - ((left + bw) * w - sx / 2)) <= tol_x
    assert abs(y_first - (top * h + sy / 2)) <= tol_y
    assert abs(y_last - ((top + bh) * h - sy / 2)) <= tol_y
