"""Exports a paper can use: one map's values with every setting, and the figure with a legend.

Every function takes the same three things:

* ``values`` — the map, one float per patch ``[gh, gw]``, exactly as the method computed it
  (written as float32; never rescaled);
* ``image`` — the RGB ``uint8`` image the model saw ``[H, W, 3]`` (after resize and crop), so
  patch ``(row, col)`` covers pixels ``x0 = col·pw … x1 = x0 + pw``, ``y0 = row·ph … y1 = y0 + ph``
  (end exclusive) with the patch size ``(ph, pw) = (H / gh, W / gw)``;
* ``settings`` — a dict of plain JSON values saying how the map was made (model, weights,
  image name, view, method and every option, class, colormap …), best built by
  :func:`make_settings`.

What comes out:

* :func:`values_npz` — ``values`` float32 ``[gh, gw]``, ``boxes`` int32 ``[gh·gw, 4]``
  (x0, y0, x1, y1 per patch, row-major), ``patch_size`` int32 ``(ph, pw)``, ``image`` (the
  pixels the model saw) and ``settings`` (a JSON string): ``json.loads(str(npz["settings"]))``.
* :func:`values_csv` — one row per patch, ``index,row,col,x0,y0,x1,y1,value``, after leading
  comment lines ``#,"key: JSON"`` holding the settings (each value JSON-encoded, on one line).
  Read it with ``pandas.read_csv(path, comment="#")``. Every CSV the project writes goes
  through :func:`csv_text`: every field quoted, text that a spreadsheet would run as a formula
  neutralised (:func:`csv_cell`).
* :func:`figure_png` / :func:`figure_svg` — the overlay with a colour bar from the map's lowest
  to its highest value and a caption of the settings (:func:`caption`); the PNG at any width
  (the page offers :data:`FIGURE_WIDTHS`, 1024 px by default), its text scaled with it. The
  SVG embeds the overlay as a PNG and draws the colour bar as a vector gradient whose stops are
  the colormap's own 256 colours (:func:`vitviz.output.render.colormap_lut`); its text is full
  Unicode, while the PNG's text is ASCII only (OpenCV's fonts draw other characters as ``?``).

No torch, no Streamlit: the page, the CLI and Python code call the same functions.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape, quoteattr

import numpy as np

from vitviz.output import render

if TYPE_CHECKING:
    from vitviz.layout import TokenLayout
    from vitviz.results import ModelInfo

__all__ = [
    "FIGURE_WIDTH",
    "FIGURE_WIDTHS",
    "caption",
    "csv_cell",
    "csv_text",
    "figure",
    "figure_png",
    "figure_svg",
    "make_settings",
    "patch_boxes",
    "values_csv",
    "values_npz",
]

CSV_COLUMNS = ("index", "row", "col", "x0", "y0", "x1", "y1", "value")
# a cell starting with one of these is a formula to a spreadsheet (OWASP's list, plus the
# full-width forms some spreadsheets also accept)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")
RANDOM_BANNER = "RANDOM WEIGHTS - NOT A TRAINED MODEL"
SVG_FONTS = "DejaVu Sans, Noto Sans CJK TC, PingFang TC, Microsoft JhengHei, sans-serif"


# ------------------------------------------------------------------------------------ settings


def _plain(value: Any) -> Any:
    """``value`` as plain JSON types (numpy scalars and arrays, tuples → lists)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray | list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def make_settings(
    info: ModelInfo,
    *,
    image: str,
    method: str,
    options: Mapping[str, Any],
    layout: TokenLayout | None = None,
    view: str | None = None,
    target: tuple[int, str] | None = None,
    colormap: str = "inferno",
    alpha: float = 0.6,
    smooth: bool = False,
    typed: tuple[list[str], str] | None = None,
) -> dict[str, Any]:
    """Every setting of one map, in plain JSON types and a fixed order.

    Args:
        info: the model (pass :func:`vitviz.output.provenance.public_info` of it where no
            directory of this machine may be handed out).
        image: the image's name (a file name, not a path).
        method: the registered method's name; ``options`` all its options.
        layout: the input's token layout (grid, patch size, prefix tokens, readout).
        view: the page's view the map was shown in.
        target: ``(index, label)`` of the class a class-specific map explains.
        colormap, alpha, smooth: how the figure is drawn.
        typed: ``(classes, prompt template)`` of a model with typed classes (CLIP): the
            probabilities and the class maps depend on the whole list.
    """
    out: dict[str, Any] = {
        "model": info.name,
        "timm_name": info.timm_name,
        "weights": info.weights.source,
        "weights_location": info.weights.location,
        "precision": info.precision,
        "image": image,
    }
    if view is not None:
        out["view"] = view
    out["method"] = method
    out["options"] = dict(options)
    if target is not None:
        out["class_index"], out["class_label"] = int(target[0]), str(target[1])
    if typed is not None:
        out["typed_classes"], out["prompt_template"] = [str(c) for c in typed[0]], str(typed[1])
    if layout is not None:
        out["input_size"] = list(layout.image_size)
        out["grid"] = list(layout.grid)
        out["patch_size"] = list(layout.patch_size)
        out["prefix_tokens"] = list(layout.prefix)
        out["readout"] = layout.readout
    out.update(colormap=colormap, alpha=float(alpha), smooth=bool(smooth))
    return _plain(out)


def _one_line(text: str) -> str:
    """``text`` on one line: line breaks and other control characters become spaces, runs of
    white space one space (so nothing user-given can start a new CSV line or break XML)."""
    kept = (
        " " if unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") or c in "\ufffe\uffff" else c
        for c in text
    )
    return " ".join("".join(kept).split())


def _word(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return "x".join(_word(v) for v in value)
    return str(value)


def caption(settings: Mapping[str, Any]) -> str:
    """The figure's caption: method and options | class | model and weights | image.

    E.g. ``rollout fusion=mean discard=0.3 start_layer=0 | class 281 tabby | vit-b16
    (vit_base_patch16_224.augreg2_in21k_ft_in1k, hub weights) | image cat.jpg``. One line.
    """
    options = settings.get("options") or {}
    head = [str(settings.get("method", "map"))]
    head += [f"{k}={_word(v)}" for k, v in options.items()]
    parts = [" ".join(head)]
    if "class_index" in settings:
        label = settings.get("class_label")
        parts.append(f"class {settings['class_index']}" + (f" {label}" if label else ""))
    model = settings.get("model")
    if model:
        about = (
            [str(settings["timm_name"])] if settings.get("timm_name") not in (None, model) else []
        )
        if settings.get("weights"):
            about.append(f"{settings['weights']} weights")
        parts.append(f"{model} ({', '.join(about)})" if about else str(model))
    if settings.get("image"):
        parts.append(f"image {settings['image']}")
    return _one_line(" | ".join(parts))


# -------------------------------------------------------------------------------------- values


def _check(values: Any, image: Any) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """The map as float32, the image, and the patch size; ValueError if they do not match."""
    grid = np.asarray(values)
    if grid.ndim != 2 or grid.size == 0 or grid.dtype.kind not in "biuf":
        raise ValueError(f"values must be a non-empty 2-D real map [gh, gw], got {grid.shape}")
    grid = grid.astype(np.float32, copy=False)
    if not np.isfinite(grid).all():
        raise ValueError("values contain NaN or infinite numbers")
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.dtype != np.uint8:
        raise ValueError("image must be the RGB uint8 [H, W, 3] image the model saw")
    (gh, gw), (h, w) = grid.shape, image.shape[:2]
    if h % gh or w % gw:
        raise ValueError(
            f"a {h}x{w} image is not a whole number of patches of a {gh}x{gw} map: "
            "pass the image the model saw (after resize and crop)"
        )
    return grid, image, (h // gh, w // gw)


def patch_boxes(grid: tuple[int, int], patch_size: tuple[int, int]) -> np.ndarray:
    """Pixel boxes ``x0, y0, x1, y1`` (end exclusive) of every patch, row-major ``[gh·gw, 4]``."""
    (gh, gw), (ph, pw) = grid, patch_size
    rows, cols = np.divmod(np.arange(gh * gw), gw)
    return np.stack([cols * pw, rows * ph, (cols + 1) * pw, (rows + 1) * ph], 1).astype(np.int32)


def _settings_json(settings: Mapping[str, Any], ascii_only: bool = False) -> str:
    text = json.dumps(_plain(settings), ensure_ascii=ascii_only)
    # JSON leaves these line separators unescaped; escaped, the text stays on one line
    return text.replace("\x85", "\\u0085").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def values_npz(values: Any, image: np.ndarray, settings: Mapping[str, Any]) -> bytes:
    """The map's values, patch boxes, the image the model saw and the settings, as ``.npz``.

    Keys: ``values`` float32 ``[gh, gw]``, ``boxes`` int32 ``[gh·gw, 4]`` (x0, y0, x1, y1),
    ``patch_size`` int32 ``(ph, pw)``, ``image`` uint8, ``settings`` (a JSON string; no pickles:
    ``np.load`` works with its default ``allow_pickle=False``).
    """
    grid, image, patch = _check(values, image)
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        values=grid,
        boxes=patch_boxes(grid.shape, patch),
        patch_size=np.asarray(patch, np.int32),
        image=image,
        settings=np.array(_settings_json(settings)),
    )
    return buf.getvalue()


def csv_cell(value: Any) -> Any:
    """``value`` as a CSV cell that a spreadsheet shows and never runs.

    Text starting with ``= + - @``, a tab or a carriage return (or a full-width ``＝ ＋ － ＠``)
    gets a leading ``'``, as OWASP recommends; numbers (``int``, ``float``, numpy numbers) are
    left as they are, so negative values stay numbers.
    """
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def csv_text(rows: Iterable[Iterable[Any]], comments: Iterable[str] = ()) -> str:
    """CSV text with every field quoted and every text cell passed through :func:`csv_cell`.

    ``rows`` start with the header. Each of ``comments`` (one line of text each: line breaks
    become spaces) leads as ``#,"text"``: ``pandas.read_csv(path, comment="#")`` skips it, a
    CSV reader sees the cells ``#`` and ``text``, so nothing in it can start a cell of its own.
    """
    out = io.StringIO()
    writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\n")
    for text in comments:
        out.write("#,")  # unquoted, so the line starts with the comment character
        writer.writerow([csv_cell(" ".join(str(text).splitlines()))])
    for row in rows:
        writer.writerow([csv_cell(cell) for cell in row])
    return out.getvalue()


def values_csv(values: Any, image: np.ndarray, settings: Mapping[str, Any]) -> str:
    """One row per patch (``index,row,col,x0,y0,x1,y1,value``) after the settings as
    ``#,"key: value"`` lines, each value JSON (strings quoted, no line breaks); every field is
    quoted and no text cell starts a formula (:func:`csv_text`).

    Read with ``pandas.read_csv(path, comment="#")``; the values have 9 significant digits, so
    ``df["value"].to_numpy(np.float32)`` gives back the float32 map exactly. The settings:
    ``key, _, value = row[1].partition(": ")`` of each ``csv.reader`` row whose first cell is
    ``#`` and whose second holds ``": "``, then ``json.loads(value)``.
    """
    grid, image, patch = _check(values, image)
    comments = [
        'vitviz map values; read with pandas.read_csv(path, comment="#")',
        "boxes are pixels of the image the model saw, x0 y0 inclusive, x1 y1 exclusive",
    ]
    for key, value in _plain(settings).items():
        name = re.sub(r"[^\w.-]", "_", str(key), flags=re.ASCII) or "_"
        comments.append(f"{name}: {_settings_json(value)}")
    boxes = patch_boxes(grid.shape, patch)
    gw = grid.shape[1]
    rows: list[Iterable[Any]] = [CSV_COLUMNS]
    for index, (value, box) in enumerate(zip(grid.ravel(), boxes, strict=True)):
        row, col = divmod(index, gw)
        # a float (not text), so a negative value stays a number; 9 digits give back float32
        rows.append([index, row, col, *box.tolist(), float(f"{float(value):.9g}")])
    return csv_text(rows, comments)


# -------------------------------------------------------------------------------------- figure


def _display(settings: Mapping[str, Any]) -> tuple[str, float, bool]:
    """Colormap, overlay opacity and smoothing named in the settings (defaults otherwise)."""
    colormap = settings.get("colormap") or "inferno"
    if colormap not in render.COLORMAPS:
        raise ValueError(f"unknown colormap {colormap!r}; choose one of {sorted(render.COLORMAPS)}")
    alpha = settings.get("alpha")
    return colormap, 0.6 if alpha is None else float(alpha), bool(settings.get("smooth", False))


def _overlay(grid: np.ndarray, image: np.ndarray, settings: Mapping[str, Any]) -> np.ndarray:
    colormap, alpha, smooth = _display(settings)
    out = render.overlay(image, grid, alpha=alpha, colormap=colormap, smooth=smooth)
    if settings.get("weights") == "random":
        out = render.stamp_banner(out, RANDOM_BANNER)
    return out


def _value_name(settings: Mapping[str, Any]) -> str:
    return _one_line(str(settings.get("value_name") or settings.get("method") or "value"))


FIGURE_WIDTHS = (512, 1024, 2048)  # the page's choices of a figure's width, in pixels
FIGURE_WIDTH = 1024  # the page's default: print-sized, its caption text ~2 % of the width


def _widened(image: np.ndarray, width: int | None) -> np.ndarray:
    """``image`` scaled (bicubic) to ``width`` pixels wide, its aspect kept (None: as is)."""
    if width is None or width == image.shape[1]:
        return image
    if isinstance(width, bool) or not isinstance(width, int) or not 16 <= width <= 8192:
        raise ValueError(f"width must be a whole number of pixels from 16 to 8192, got {width!r}")
    import cv2

    height = max(1, round(image.shape[0] * width / image.shape[1]))
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_CUBIC)


def figure(
    values: Any, image: np.ndarray, settings: Mapping[str, Any], width: int | None = None
) -> np.ndarray:
    """The overlay with the colour bar (map minimum → maximum) and the caption below it, as an
    RGB uint8 array (:func:`vitviz.output.render.with_legend`); a banner on random weights.

    ``width``: the figure's width in pixels (the image scaled up or down, each patch still a
    flat block; the legend's text scales with it, ~2 % of the width); None: the image's own.
    """
    grid, image, _ = _check(values, image)
    image = _widened(image, width)
    return render.with_legend(
        _overlay(grid, image, settings),
        float(grid.min()),
        float(grid.max()),
        _display(settings)[0],
        caption(settings),
        value_name=_value_name(settings),
    )


def figure_png(
    values: Any, image: np.ndarray, settings: Mapping[str, Any], width: int | None = None
) -> bytes:
    """:func:`figure` as PNG bytes, ``width`` pixels wide (None: the image's width; ASCII
    text: other characters are drawn as ``?``)."""
    return render.to_png(figure(values, image, settings, width))


def _text_width(text: str, size: float) -> float:
    """A rough width of ``text`` at font size ``size`` (wide East Asian characters count 1 em)."""
    return sum(size if unicodedata.east_asian_width(c) in "WF" else 0.56 * size for c in text)


def figure_svg(values: Any, image: np.ndarray, settings: Mapping[str, Any]) -> str:
    """The figure as one self-contained SVG: the overlay embedded as a PNG data URI, a vector
    colour bar (a gradient with the colormap's 256 colours as stops, 0 → the map's minimum,
    1 → its maximum) with the two values at its ends, and the caption as Unicode text.

    User-given text is escaped; the settings are kept as JSON in ``<metadata>``.
    """
    grid, image, _ = _check(values, image)
    colormap = _display(settings)[0]
    height, width = image.shape[:2]
    band = max(48, round(width * 0.16))
    margin = max(4, width // 40)
    bar_w, bar_h = max(8, width - 2 * margin), max(6, band // 5)
    top = height + band // 6
    size = max(7.0, round(width / 30, 1))
    label_y = top + bar_h + 1.3 * size
    words = caption(settings)
    lines = (
        render.wrap_text(words, lambda s: _text_width(s, size) <= bar_w, cut=False) if words else []
    )
    first = label_y + 1.5 * size
    total = round(first + 1.3 * size * max(0, len(lines) - 1) + margin) if lines else band
    total = max(total, height + band)
    png = base64.b64encode(render.to_png(_overlay(grid, image, settings))).decode("ascii")
    lut = render.colormap_lut(colormap)
    stops = "".join(
        f'<stop offset="{i / 255:.6g}" stop-color="#{r:02x}{g:02x}{b:02x}"/>'
        for i, (r, g, b) in enumerate(lut.tolist())
    )
    low, high = float(grid.min()), float(grid.max())
    name = _value_name(settings)

    def text(s: str, x: float, y: float, cls: str, anchor: str = "start", fit: bool = False) -> str:
        extra = ""
        if fit and _text_width(s, size) > bar_w:  # squeeze a line the estimate says is too wide
            extra = f' textLength="{bar_w}" lengthAdjust="spacingAndGlyphs"'
        return (
            f'<text class={quoteattr(cls)} x="{x:g}" y="{y:g}" text-anchor="{anchor}"{extra}>'
            f"{escape(s)}</text>"
        )

    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
        f'version="1.1" width="{width}" height="{total}" viewBox="0 0 {width} {total}">',
        f"<title>{escape(words)}</title>",
        f'<metadata id="vitviz-settings">{escape(_settings_json(settings, True))}</metadata>',
        f'<defs><linearGradient id="colour-scale" x1="0" y1="0" x2="1" y2="0">{stops}'
        "</linearGradient></defs>",
        f'<rect width="{width}" height="{total}" fill="#ffffff"/>',
        f'<image x="0" y="0" width="{width}" height="{height}" preserveAspectRatio="none" '
        f'style="image-rendering:pixelated" href="data:image/png;base64,{png}" '
        f'xlink:href="data:image/png;base64,{png}"/>',
        f'<rect id="colour-bar" x="{margin}" y="{top}" width="{bar_w}" height="{bar_h}" '
        'fill="url(#colour-scale)"/>',
        f'<g stroke="#1e1e1e" stroke-width="1"><line x1="{margin}" y1="{top}" x2="{margin}" '
        f'y2="{top + bar_h + 2}"/><line x1="{margin + bar_w}" y1="{top}" x2="{margin + bar_w}" '
        f'y2="{top + bar_h + 2}"/></g>',
        f'<g font-family={quoteattr(SVG_FONTS)} font-size="{size:g}" fill="#1e1e1e">',
        text(f"{name} {low:.4g}", margin, label_y, "tick low"),
        text(f"{high:.4g}", margin + bar_w, label_y, "tick high", anchor="end"),
        *(
            text(line, margin, first + 1.3 * size * i, "caption", fit=True)
            for i, line in enumerate(lines)
        ),
        "</g>",
        "</svg>",
    ]
    return "\n".join(parts) + "\n"


# ------------------------------------------------------------------------ shared by other exports


def settings_lines(settings: Mapping[str, Any]) -> list[str]:
    """The settings as ``key: JSON`` comment lines, as :func:`values_csv` writes them (keys
    reduced to ``[A-Za-z0-9_.-]``, each value JSON on one line); pass them to
    :func:`csv_text` as ``comments``."""
    lines = []
    for key, value in _plain(settings).items():
        name = re.sub(r"[^\w.-]", "_", str(key), flags=re.ASCII) or "_"
        lines.append(f"{name}: {_settings_json(value)}")
    return lines


def svg_text(text: Any) -> str:
    """``text`` safe inside an SVG element: on one line, control characters (which XML does
    not allow) as spaces, ``< > &`` escaped."""
    return escape(_one_line(str(text)))


def settings_metadata(settings: Mapping[str, Any]) -> str:
    """The settings as JSON (ASCII) inside an SVG ``<metadata id="vitviz-settings">``."""
    return f'<metadata id="vitviz-settings">{escape(_settings_json(settings, True))}</metadata>'
