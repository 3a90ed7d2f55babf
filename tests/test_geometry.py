"""The torch-free input geometry gives the pixels timm's own eval transform gives."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from timm.data import create_transform
from torchvision import transforms as T

from vitviz.geometry import InputGeometry


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
