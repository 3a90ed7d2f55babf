"""The lesson's pictures: colour strips of vectors, an enlarged patch, maps over the image."""

from __future__ import annotations

import cv2
import numpy as np

from vitviz.layout import TokenLayout
from vitviz.output import render

_NEG = np.array([33, 102, 172], np.float64)  # blue: negative
_MID = np.array([247, 247, 247], np.float64)  # white: zero
_POS = np.array([178, 24, 43], np.float64)  # red: positive


def signed_colours(values: np.ndarray, scale: float | None = None) -> np.ndarray:
    """Blue (negative) – white (0) – red (positive), symmetric around 0: ``[..., 3]`` uint8."""
    v = np.asarray(values, np.float64)
    s = float(scale if scale is not None else np.abs(v).max())
    x = np.clip(v / s, -1.0, 1.0) if s > 0 else np.zeros_like(v)
    pos, neg = np.clip(x, 0, 1)[..., None], np.clip(-x, 0, 1)[..., None]
    rgb = _MID + pos * (_POS - _MID) + neg * (_NEG - _MID)
    return np.rint(rgb).astype(np.uint8)


def vector_strip(
    values: np.ndarray, cols: int, cell: tuple[int, int] = (10, 10), scale: float | None = None
) -> np.ndarray:
    """A vector as rows of ``cols`` coloured cells (``cell`` = height, width in pixels)."""
    v = np.asarray(values, np.float64).reshape(-1)
    rows = -(-v.size // cols)
    padded = np.full(rows * cols, np.nan)
    padded[: v.size] = v
    colours = signed_colours(np.nan_to_num(padded), scale).reshape(rows, cols, 3)
    colours[np.isnan(padded).reshape(rows, cols)] = 255
    ch, cw = cell
    return np.repeat(np.repeat(colours, ch, axis=0), cw, axis=1)


def patch_pixels(image: np.ndarray, layout: TokenLayout, patch: int) -> np.ndarray:
    """The pixels of one patch of the model's input."""
    ph, pw = layout.patch_size
    r, c = divmod(int(patch), layout.grid[1])
    return image[r * ph : (r + 1) * ph, c * pw : (c + 1) * pw]


def enlarged(pixels: np.ndarray, size: int) -> np.ndarray:
    """Pixels enlarged to ``size`` wide with hard edges (each input pixel a visible square)."""
    h, w = pixels.shape[:2]
    return cv2.resize(pixels, (size, round(size * h / w)), interpolation=cv2.INTER_NEAREST)


def map_over(
    image: np.ndarray,
    values: np.ndarray,
    layout: TokenLayout,
    patch: int | None = None,
    size: int = 224,
    colormap: str = "inferno",
) -> np.ndarray:
    """A ``[gh, gw]`` map over the image at ``size`` px wide, the chosen patch outlined."""
    out = render.overlay(image, values, alpha=0.6, colormap=colormap)
    if patch is not None and patch >= 0:
        out = render.outline_patch(out, layout.grid, int(patch), color=(0, 229, 255), thickness=2)
    h, w = out.shape[:2]
    return cv2.resize(out, (size, round(size * h / w)), interpolation=cv2.INTER_LINEAR)


def similarity_map(values: np.ndarray, patch: int, grid: tuple[int, int], size: int) -> np.ndarray:
    """Cosine similarities (−1 … 1) on the grid as a picture, the chosen cell outlined."""
    rgb = render.colorize(np.clip((np.asarray(values) + 1) / 2, 0, 1), "viridis")
    gh, gw = grid
    big = cv2.resize(rgb, (size, round(size * gh / gw)), interpolation=cv2.INTER_NEAREST)
    return render.outline_patch(big, grid, int(patch), color=(255, 64, 64), thickness=3)
