"""Rendering of attention and relevance maps as images.

Everything here works on plain NumPy arrays and uses OpenCV for the pixel work: colormaps
(``cv2.applyColorMap``), blending (``cv2.addWeighted``), resizing (``cv2.resize``), text
(``cv2.putText``) and PNG encoding (``cv2.imencode``). The module imports neither torch nor any
UI or network code, so it can be used and tested on its own.

Conventions:

* Images are RGB ``uint8`` arrays of shape ``(H, W, 3)``, in and out. OpenCV's colormaps and
  codecs use BGR; the conversion happens inside this module and never leaks out.
* Maps are 2-D numeric arrays of shape ``(gh, gw)``, one value per patch (or per pixel once
  upsampled).
* Sizes are ``(height, width)``, as in NumPy shapes (not OpenCV's ``(width, height)``).
* Every function returns a new array; inputs are never modified.
* Invalid input raises :class:`ValueError` (also for a wrong type, so callers need to catch one
  exception) with a one-line message saying what was wrong.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import cv2
import numpy as np

__all__ = [
    "COLORMAPS",
    "block_picture",
    "colorize",
    "draw_patch_grid",
    "normalize_map",
    "outline_patch",
    "overlay",
    "side_by_side",
    "stamp_banner",
    "to_jpeg",
    "to_png",
    "upsample",
    "with_legend",
    "wrap_text",
]

#: Colormap names accepted by :func:`colorize` and :func:`overlay`, mapped to OpenCV ids.
COLORMAPS: dict[str, int] = {
    "inferno": cv2.COLORMAP_INFERNO,
    "viridis": cv2.COLORMAP_VIRIDIS,
    "magma": cv2.COLORMAP_MAGMA,
    "plasma": cv2.COLORMAP_PLASMA,
    "turbo": cv2.COLORMAP_TURBO,
    "jet": cv2.COLORMAP_JET,
    "hot": cv2.COLORMAP_HOT,
    "cividis": cv2.COLORMAP_CIVIDIS,
}

_BANNER_RGB = (200, 0, 0)
_BANNER_TEXT_RGB = (255, 255, 255)
_BANNER_FONT = cv2.FONT_HERSHEY_DUPLEX


# --------------------------------------------------------------------------- validation helpers


def _check_image(image: object, name: str = "image") -> np.ndarray:
    """Return ``image`` if it is an RGB uint8 (H, W, 3) array, else raise ValueError."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name} must have shape (H, W, 3) (RGB), got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"{name} must have dtype uint8, got {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{name} must not be empty, got shape {image.shape}")
    return image


def _check_map(values: object, name: str = "values") -> np.ndarray:
    """Return ``values`` as a finite, non-empty, real 2-D array, else raise ValueError."""
    arr = np.asarray(values)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D map, got {arr.ndim}-D array of shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _check_int(value: object, name: str, minimum: int) -> int:
    """Return ``value`` as an int if it is an integer >= ``minimum``, else raise ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_pair(pair: object, name: str, what: str) -> tuple[int, int]:
    """Return ``pair`` as two positive ints, else raise ValueError."""
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise ValueError(f"{name} must be a pair {what} of positive integers, got {pair!r}")
    return (_check_int(pair[0], f"{name}[0]", 1), _check_int(pair[1], f"{name}[1]", 1))


def _check_color(color: object, name: str = "color") -> tuple[int, int, int]:
    """Return ``color`` as an (r, g, b) tuple of ints in 0..255, else raise ValueError."""
    if not isinstance(color, (tuple, list)) or len(color) != 3:
        raise ValueError(f"{name} must be an (r, g, b) triple, got {color!r}")
    out = []
    for channel in color:
        if isinstance(channel, bool) or not isinstance(channel, numbers.Integral):
            msg = f"{name} channels must be integers in 0..255, got {color!r}"
            raise ValueError(msg)
        if not 0 <= channel <= 255:
            raise ValueError(f"{name} channels must be integers in 0..255, got {color!r}")
        out.append(int(channel))
    return (out[0], out[1], out[2])


def _colormap_id(colormap: object) -> int:
    """Return the OpenCV id of a colormap name, else raise ValueError listing the names."""
    if not isinstance(colormap, str) or colormap not in COLORMAPS:
        names = ", ".join(sorted(COLORMAPS))
        raise ValueError(f"unknown colormap {colormap!r}; choose one of: {names}")
    return COLORMAPS[colormap]


def _check_grid_fits(image: np.ndarray, grid: tuple[int, int]) -> None:
    """Raise ValueError if the image has fewer pixels than patches along an axis."""
    height, width = image.shape[:2]
    if grid[0] > height or grid[1] > width:
        raise ValueError(
            f"grid {grid[0]}x{grid[1]} has more patches than the image {height}x{width} has pixels"
        )


def _cell_starts(cells: int, length: int) -> list[int]:
    """First pixel of each of ``cells`` cells spread over ``length`` pixels, plus ``length``.

    Computed with the same nearest-neighbour resize as :func:`upsample`, so grid lines and
    outlines sit exactly where the blocky heatmap changes from one patch to the next. Needs
    ``length >= cells`` (then every cell gets at least one pixel).
    """
    index = np.arange(cells, dtype=np.float32)[None, :]
    owner = cv2.resize(index, (length, 1), interpolation=cv2.INTER_NEAREST_EXACT)[0]
    starts = [0, *(np.flatnonzero(np.diff(owner)) + 1).tolist(), length]
    return [int(s) for s in starts]


# --------------------------------------------------------------------------------- public API


def normalize_map(values: np.ndarray) -> np.ndarray:
    """Min-max scale a 2-D map to [0, 1] for display.

    Args:
        values: 2-D real array (any numeric dtype), all values finite.

    Returns:
        float32 array of the same shape with min -> 0 and max -> 1. A constant map gives all
        zeros.

    Raises:
        ValueError: If ``values`` is not a non-empty 2-D real array, or has NaN/inf.
    """
    arr = _check_map(values).astype(np.float64)
    lo = float(arr.min())
    hi = float(arr.max())
    if hi == lo:
        return np.zeros(arr.shape, dtype=np.float32)
    span = hi - lo
    # a range that overflows float64 (values near ±1e308) is scaled down first
    out = (arr - lo) / span if np.isfinite(span) else (arr / 2 - lo / 2) / (hi / 2 - lo / 2)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def colorize(values01: np.ndarray, colormap: str = "inferno") -> np.ndarray:
    """Turn a [0, 1] map into an RGB image with an OpenCV colormap.

    Args:
        values01: 2-D float map with values in [0, 1] (e.g. from :func:`normalize_map`).
        colormap: Name from :data:`COLORMAPS`.

    Returns:
        RGB uint8 array of shape ``(H, W, 3)``; 0 maps to the colormap's low end, 1 to its
        high end (the map is quantised to 256 levels).

    Raises:
        ValueError: If the map is not 2-D, has NaN/inf or values outside [0, 1], or the
            colormap name is unknown.
    """
    cmap = _colormap_id(colormap)
    arr = _check_map(values01, "values01").astype(np.float64)
    if arr.min() < 0.0 or arr.max() > 1.0:
        raise ValueError(
            f"values01 must lie in [0, 1], got range [{arr.min():g}, {arr.max():g}]; "
            "use normalize_map first"
        )
    levels = np.rint(arr * 255.0).astype(np.uint8)
    bgr = cv2.applyColorMap(levels, cmap)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def upsample(values: np.ndarray, size: tuple[int, int], smooth: bool = False) -> np.ndarray:
    """Resize a ``(gh, gw)`` patch map to ``size = (height, width)`` pixels.

    Args:
        values: 2-D real map, all values finite.
        size: Target ``(height, width)``.
        smooth: False: nearest neighbour, so each patch becomes a flat block (an exact
            ``height/gh x width/gw`` block when the size is a multiple of the grid). True:
            bicubic, clipped to the input's min/max so it adds no overshoot.

    Returns:
        float32 array of shape ``(height, width)``.

    Raises:
        ValueError: If ``values`` is not a valid 2-D map or ``size`` is not two positive ints.
    """
    arr = _check_map(values).astype(np.float32)
    height, width = _check_pair(size, "size", "(height, width)")
    if smooth:
        out = cv2.resize(arr, (width, height), interpolation=cv2.INTER_CUBIC)
        out = np.clip(out, arr.min(), arr.max())
    else:
        out = cv2.resize(arr, (width, height), interpolation=cv2.INTER_NEAREST_EXACT)
    return np.ascontiguousarray(out.reshape(height, width), dtype=np.float32)


def overlay(
    image: np.ndarray,
    values: np.ndarray,
    *,
    alpha: float = 0.6,
    colormap: str = "inferno",
    smooth: bool = False,
) -> np.ndarray:
    """Draw a heatmap of a raw patch map over an image.

    The map is normalised (:func:`normalize_map`), upsampled to the image size
    (:func:`upsample`), colourised (:func:`colorize`) and blended as
    ``cv2.addWeighted(image, 1 - alpha, heat, alpha, 0)``.

    Args:
        image: RGB uint8 array ``(H, W, 3)``.
        values: Raw 2-D ``(gh, gw)`` map (any finite real values).
        alpha: Heatmap weight in [0, 1]; 0 returns the image, 1 the heatmap alone.
        colormap: Name from :data:`COLORMAPS`.
        smooth: Bicubic instead of blocky upsampling.

    Returns:
        RGB uint8 array of the image's shape.

    Raises:
        ValueError: On an invalid image, map, alpha or colormap.
    """
    image = _check_image(image)
    _check_map(values)
    _colormap_id(colormap)
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:  # also rejects NaN
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    height, width = image.shape[:2]
    heat = colorize(upsample(normalize_map(values), (height, width), smooth=smooth), colormap)
    return cv2.addWeighted(np.ascontiguousarray(image), 1.0 - alpha, heat, alpha, 0.0)


def draw_patch_grid(
    image: np.ndarray,
    grid: tuple[int, int],
    color: tuple[int, int, int] = (255, 255, 255),
    thickness: int = 1,
) -> np.ndarray:
    """Draw the lines between patches on a copy of an image.

    Only the internal boundaries are drawn (not the image border). A line of thickness ``t``
    at boundary pixel ``p`` (the first row/column of the next patch) covers pixels
    ``p - t // 2`` to ``p - t // 2 + t - 1``; with ``t = 1`` exactly the first row/column of
    each patch after the first.

    Args:
        image: RGB uint8 array ``(H, W, 3)``.
        grid: ``(gh, gw)`` patches covering the whole image (at most one patch per pixel).
        color: Line colour as ``(r, g, b)``.
        thickness: Line width in pixels, >= 1.

    Returns:
        RGB uint8 copy of the image with the grid drawn.

    Raises:
        ValueError: On an invalid image, grid, colour or thickness.
    """
    image = _check_image(image)
    grid = _check_pair(grid, "grid", "(rows, cols)")
    rgb = _check_color(color)
    thickness = _check_int(thickness, "thickness", 1)
    _check_grid_fits(image, grid)
    height, width = image.shape[:2]
    out = image.copy()
    for y in _cell_starts(grid[0], height)[1:-1]:
        top = max(0, y - thickness // 2)
        out[top : y - thickness // 2 + thickness, :] = rgb
    for x in _cell_starts(grid[1], width)[1:-1]:
        left = max(0, x - thickness // 2)
        out[:, left : x - thickness // 2 + thickness] = rgb
    return out


def outline_patch(
    image: np.ndarray,
    grid: tuple[int, int],
    index: int,
    color: tuple[int, int, int] = (0, 255, 0),
    thickness: int = 2,
) -> np.ndarray:
    """Outline one patch on a copy of an image.

    The outline is drawn inside the patch's rectangle (it never spills into neighbouring
    patches or off the image); a thickness larger than half the patch fills it.

    Args:
        image: RGB uint8 array ``(H, W, 3)``.
        grid: ``(gh, gw)`` patches covering the whole image.
        index: Patch index in row-major order: row ``index // gw``, column ``index % gw``.
        color: Outline colour as ``(r, g, b)``.
        thickness: Outline width in pixels, >= 1.

    Returns:
        RGB uint8 copy of the image with the patch outlined.

    Raises:
        ValueError: On an invalid image, grid, index, colour or thickness.
    """
    image = _check_image(image)
    gh, gw = _check_pair(grid, "grid", "(rows, cols)")
    index = _check_int(index, "index", 0)
    if index >= gh * gw:
        raise ValueError(f"index must be in 0..{gh * gw - 1} for a {gh}x{gw} grid, got {index}")
    rgb = _check_color(color)
    thickness = _check_int(thickness, "thickness", 1)
    _check_grid_fits(image, (gh, gw))
    height, width = image.shape[:2]
    row, col = divmod(index, gw)
    ys = _cell_starts(gh, height)
    xs = _cell_starts(gw, width)
    y0, y1, x0, x1 = ys[row], ys[row + 1], xs[col], xs[col + 1]
    out = image.copy()
    out[y0 : min(y1, y0 + thickness), x0:x1] = rgb  # top
    out[max(y0, y1 - thickness) : y1, x0:x1] = rgb  # bottom
    out[y0:y1, x0 : min(x1, x0 + thickness)] = rgb  # left
    out[y0:y1, max(x0, x1 - thickness) : x1] = rgb  # right
    return out


def stamp_banner(image: np.ndarray, text: str) -> np.ndarray:
    """Write ``text`` in large white letters on a red band across the top of a copy.

    Used for warnings that must be visible in any saved picture, e.g.
    ``"RANDOM WEIGHTS - NOT A TRAINED MODEL"``. The band is about 12% of the image height
    (at least 24 px, at most half the image); the text is centred and scaled to fit the band
    and the width. OpenCV's Hershey fonts are ASCII-only: other characters are drawn as ``?``.

    Args:
        image: RGB uint8 array ``(H, W, 3)``.
        text: Non-empty banner text.

    Returns:
        RGB uint8 copy of the image with the banner; rows below the band are unchanged.

    Raises:
        ValueError: On an invalid image or empty/non-string text.
    """
    image = _check_image(image)
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text must be a non-empty string, got {text!r}")
    text = " ".join(text.split()).encode("ascii", "replace").decode("ascii")
    height, width = image.shape[:2]
    band = min(max(24, round(height * 0.12)), max(1, height // 2))
    out = image.copy()
    out[:band] = _BANNER_RGB

    # Fit the text: cap height at ~60% of the band, width at ~94% of the image.
    thickness = max(1, round(band / 16))
    (tw, th), base = cv2.getTextSize(text, _BANNER_FONT, 1.0, thickness)
    scale = min(0.6 * band / max(th + base, 1), 0.94 * width / max(tw, 1))
    for _ in range(20):  # thickness adds a near-constant margin; shrink until it truly fits
        (tw, th), base = cv2.getTextSize(text, _BANNER_FONT, scale, thickness)
        if tw <= 0.94 * width and th + base <= 0.8 * band:
            break
        scale *= 0.9
    x = max(0, (width - tw) // 2)
    y = (band + th) // 2  # baseline: vertically centre the cap height in the band
    # Draw on the band alone so nothing can land below it.
    strip = np.ascontiguousarray(out[:band])
    cv2.putText(strip, text, (x, y), _BANNER_FONT, scale, _BANNER_TEXT_RGB, thickness, cv2.LINE_AA)
    out[:band] = strip
    return out


def block_picture(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A ``[gh, gw, 3]`` picture with values in [0, 1] as RGB uint8 of ``size`` (height,
    width), each patch a flat block (nearest neighbour), so patches stay crisp."""
    channels = [upsample(rgb[..., c], size) for c in range(3)]
    return np.rint(np.stack(channels, axis=-1) * 255.0).astype(np.uint8)


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 12) -> np.ndarray:
    """Two RGB pictures in a row on white, ``gap`` pixels apart, top-aligned."""
    height = max(left.shape[0], right.shape[0])
    out = np.full((height, left.shape[1] + gap + right.shape[1], 3), 255, np.uint8)
    out[: left.shape[0], : left.shape[1]] = left
    out[: right.shape[0], left.shape[1] + gap :] = right
    return out


def to_png(image: np.ndarray) -> bytes:
    """Encode an RGB uint8 image as PNG bytes.

    Args:
        image: RGB uint8 array ``(H, W, 3)``.

    Returns:
        The PNG file contents (RGB, lossless).

    Raises:
        ValueError: On an invalid image or if encoding fails.
    """
    image = _check_image(image)
    bgr = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
    ok, buffer = cv2.imencode(".png", bgr)
    if not ok:
        raise ValueError(f"PNG encoding failed for an image of shape {image.shape}")
    return buffer.tobytes()


def to_jpeg(image: np.ndarray, quality: int = 92) -> bytes:
    """Encode an RGB uint8 image as JPEG bytes (a photo's backdrop: a fifth of the PNG's size).

    Raises:
        ValueError: On an invalid image or if encoding fails.
    """
    image = _check_image(image)
    bgr = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
    ok, buffer = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"JPEG encoding failed for an image of shape {image.shape}")
    return buffer.tobytes()


def colormap_lut(colormap: str = "inferno") -> np.ndarray:
    """The colormap as 256 RGB colours (``uint8 [256, 3]``), what :func:`colorize` maps 0…1 to."""
    ramp = np.linspace(0.0, 1.0, 256, dtype=np.float32)[None, :]
    return colorize(ramp, colormap)[0]


def with_legend(
    image: np.ndarray,
    low: float,
    high: float,
    colormap: str = "inferno",
    caption: str = "",
    value_name: str = "value",
) -> np.ndarray:
    """The image with a band below it: the colour scale from ``low`` to ``high`` (the map's
    raw values at the two ends of the colormap) and a caption of the settings.

    The bar's middle row is :func:`colorize` of an even ramp from 0 to 1, one pixel a step,
    so the picture says exactly which colour means which value. A caption wider than the bar
    is wrapped onto more lines (the band grows). ASCII text only (Hershey fonts: other
    characters are drawn as ``?``).

    Returns:
        RGB uint8 ``(H + band, W, 3)``; the first ``H`` rows are ``image`` unchanged.
    """
    image = _check_image(image)
    _colormap_id(colormap)
    height, width = image.shape[:2]
    band = max(48, round(width * 0.16))
    margin = max(4, width // 40)
    bar_w = max(8, width - 2 * margin)
    bar_h = max(6, band // 5)
    font, scale, ink = cv2.FONT_HERSHEY_SIMPLEX, max(0.3, band / 160), (30, 30, 30)
    thick = max(1, round(scale))  # strokes grow with the text on a large figure

    def ascii_(s: str) -> str:
        return s.encode("ascii", "replace").decode("ascii")

    def fits(s: str) -> bool:
        return cv2.getTextSize(ascii_(s), font, scale, thick)[0][0] <= bar_w

    lines = wrap_text(" ".join(caption.split()), fits) if caption else []
    step = max(12, band // 4)  # a caption too wide for one line takes more, one step each
    out = np.full((height + band + step * max(0, len(lines) - 1), width, 3), 255, np.uint8)
    out[:height] = image
    ramp = colorize(np.linspace(0.0, 1.0, bar_w)[None, :], colormap)
    top = height + band // 6
    out[top : top + bar_h, margin : margin + bar_w] = np.repeat(ramp, bar_h, axis=0)

    def text(s: str, x: int, y: int, right: bool = False) -> None:
        s = ascii_(s)
        (tw, _), _ = cv2.getTextSize(s, font, scale, thick)
        x = max(0, min(width - tw, x - tw if right else x))
        cv2.putText(out, s, (x, y), font, scale, ink, thick, cv2.LINE_AA)

    label_y = top + bar_h + max(10, band // 4)
    text(f"{value_name} {low:.4g}", margin, label_y)
    text(f"{high:.4g}", margin + bar_w, label_y, right=True)
    first = min(height + band - 4, label_y + step)
    for i, line in enumerate(lines):
        text(line, margin, first + i * step)
    return out


def wrap_text(text: str, fits: Callable[[str], bool], cut: bool = True) -> list[str]:
    """``text`` in lines that each ``fits``, broken at spaces; a word too long alone is cut
    where it stops fitting (or, with ``cut=False``, kept whole on a line of its own)."""
    lines: list[str] = []
    line = ""
    for word in text.split(" "):
        trial = f"{line} {word}" if line else word
        if fits(trial):
            line = trial
            continue
        if line:
            lines.append(line)
        while cut and len(word) > 1 and not fits(word):  # cut where it stops fitting
            cut = next((n for n in range(len(word) - 1, 0, -1) if fits(word[:n])), 1)
            lines.append(word[:cut])
            word = word[cut:]
        line = word
    if line:
        lines.append(line)
    return lines
