"""Exports of the research views (issue 24): head ablation, the logit lens and token norms.

For each result, a CSV (the numbers, one row per entry, after ``#,"key: JSON"`` settings
lines: ``pandas.read_csv(path, comment="#")`` reads it), an ``.npz`` (every array of the result
by its field name, and the settings as JSON) and an SVG a paper can use (vector cells, a colour
bar with numbers, axes; at least 600 px wide, text at least 10 px).

* :func:`ablation_csv` — ``layer, head, delta_logit, delta_probability, rank``: one row per
  head, then one per whole layer (``head`` = ``all``). Every Δ is *ablated − clean*: a head the
  class needs has a negative Δ. ``rank`` 1 is the most negative Δlogit (the most needed),
  among the heads for head rows, among the layers for ``all`` rows (ties: the earlier first,
  as :meth:`vitviz.results.HeadAblation.ranked`).
* :func:`lens_csv` — ``layer, rank, class, label, probability, final``: the top-k classes of
  each layer (``rank`` 1..k), and the model's final class at every layer (``final`` True; its
  ``rank`` is :attr:`~vitviz.results.LogitLens.final_rank`, the count of classes with a higher
  logit plus one, where it is not among the top k).
* :func:`norms_csv` — ``layer, token, kind, norm, outlier``: every token (``token`` its index in
  the sequence, ``kind`` ``prefix`` (class or distillation token), ``register`` or ``patch``) at
  every layer; ``outlier`` is only ever True for a patch token (the rule of
  :mod:`vitviz.analysis.norms`).

Layers are numbered from 0 (block 0's output) as everywhere in vitviz. Text from outside
(labels, titles, settings) is neutralised in the CSVs (:func:`vitviz.output.exports.csv_text`)
and escaped in the SVGs. No torch, no Streamlit: the page and the CLI call the same functions.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np

from vitviz.inputs.classes import probabilities
from vitviz.output import render
from vitviz.output.exports import (
    SVG_FONTS,
    _settings_json,
    csv_text,
    settings_lines,
    svg_text,
)
from vitviz.results import HeadAblation, LogitLens, TokenNorms

__all__ = [
    "ABLATION_COLUMNS",
    "LENS_COLUMNS",
    "NORMS_COLUMNS",
    "ablation_csv",
    "ablation_svg",
    "lens_csv",
    "lens_svg",
    "norms_csv",
    "norms_svg",
    "research_npz",
]

ABLATION_COLUMNS = ("layer", "head", "delta_logit", "delta_probability", "rank")
LENS_COLUMNS = ("layer", "rank", "class", "label", "probability", "final")
NORMS_COLUMNS = ("layer", "token", "kind", "norm", "outlier")
METRICS = ("logit", "probability")
LENS_APPROXIMATION = (
    "Rows before the last layer are an approximation: the model's final norm and head read a "
    "stream they were not trained on (logit lens)."
)
MAX_LENS_CLASSES = 60  # columns of the lens picture at most (the most probable kept)
FONT = 12  # px; the smallest text is FONT - 1 = 11 px, and every SVG is at least 640 px wide
MIN_WIDTH = 640

# diverging colours of a Δ (ColorBrewer RdBu ends and its white middle): negative blue, 0
# near-white, positive red; linear in each half, so red − blue grows with the value
NEGATIVE, MIDDLE, POSITIVE = (33, 102, 172), (247, 247, 247), (178, 24, 43)
# a probability 0 → white, 1 → dark blue (ColorBrewer Blues' ends)
PALE, DARK = (255, 255, 255), (8, 48, 107)


# ------------------------------------------------------------------------------------- helpers


def _number(value: float) -> float:
    """A float with 9 significant digits (float32 comes back exactly, float64 closely)."""
    return float(f"{float(value):.9g}")


def _comments(what: str, settings: Mapping[str, object], extra: Mapping[str, Any]) -> list[str]:
    head = [f'vitviz {what}; read with pandas.read_csv(path, comment="#")']
    return head + settings_lines({**dict(settings), **extra})


def _check_ablation(result: HeadAblation) -> tuple[np.ndarray, ...]:
    logit = np.asarray(result.logit, np.float64)
    prob = np.asarray(result.probability, np.float64)
    layer_logit = np.asarray(result.layer_logit, np.float64)
    layer_prob = np.asarray(result.layer_probability, np.float64)
    if logit.ndim != 2 or logit.size == 0 or prob.shape != logit.shape:
        raise ValueError(f"the ablation's Δs must be [layers, heads], got {logit.shape}")
    if layer_logit.shape != (logit.shape[0],) or layer_prob.shape != layer_logit.shape:
        raise ValueError("the whole-layer Δs must have one value per layer")
    return logit, prob, layer_logit, layer_prob


def _ranks(values: np.ndarray) -> np.ndarray:
    """Rank of each value, 1 = the lowest (ties: the earlier first)."""
    order = np.argsort(values, axis=None, kind="stable")
    ranks = np.empty(order.size, np.int64)
    ranks[order] = np.arange(1, order.size + 1)
    return ranks.reshape(values.shape)


def _label(labels: Sequence[str], index: int) -> str:
    return str(labels[index]) if 0 <= index < len(labels) else str(index)


def _width(text: str, size: int = FONT) -> float:
    """A generous estimate of ``text``'s width in px at font size ``size``."""
    return 0.6 * size * len(text)


def _hex(rgb: Sequence[float]) -> str:
    r, g, b = (round(min(255.0, max(0.0, float(c)))) for c in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


def _mix(a: Sequence[int], b: Sequence[int], t: float) -> str:
    t = min(1.0, max(0.0, float(t)))
    return _hex([x + (y - x) * t for x, y in zip(a, b, strict=True)])


def diverging(value: float, limit: float) -> str:
    """The colour of ``value`` on a scale from ``−limit`` (blue) through 0 (white) to
    ``+limit`` (red)."""
    t = 0.0 if limit <= 0 else float(value) / limit
    return _mix(MIDDLE, POSITIVE, t) if t >= 0 else _mix(MIDDLE, NEGATIVE, -t)


def sequential(value: float, low: float = 0.0, high: float = 1.0) -> str:
    """The colour of ``value`` on a scale from ``low`` (white) to ``high`` (dark blue)."""
    t = 0.0 if high <= low else (float(value) - low) / (high - low)
    return _mix(PALE, DARK, t)


def _limit(values: np.ndarray) -> float:
    """The symmetric scale's end: the largest |value| (1e-12 at least)."""
    finite = values[np.isfinite(values)]
    return max(float(np.abs(finite).max()) if finite.size else 0.0, 1e-12)


def _text(
    s: str, x: float, y: float, *, cls: str = "", anchor: str = "start", size: int = FONT, **at
) -> str:
    extra = "".join(f" {k.replace('_', '-')}={quoteattr(str(v))}" for k, v in at.items())
    klass = f" class={quoteattr(cls)}" if cls else ""
    return (
        f'<text{klass} x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}"{extra}>'
        f"{svg_text(s)}</text>"
    )


def _svg(width: float, height: float, title: str, body: list[str], settings: str = "") -> str:
    w, h = int(np.ceil(width)), int(np.ceil(height))
    return (
        "\n".join(
            [
                '<?xml version="1.0" encoding="UTF-8"?>',
                f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{w}" height="{h}" '
                f'viewBox="0 0 {w} {h}">',
                f"<title>{svg_text(title)}</title>",
                settings,
                f'<rect width="{w}" height="{h}" fill="#ffffff"/>',
                f'<g font-family={quoteattr(SVG_FONTS)} fill="#1e1e1e">',
                *body,
                "</g>",
                "</svg>",
            ]
        )
        + "\n"
    )


def _colour_bar(
    x: float, y: float, height: float, colour: Any, low: float, high: float, name: str, cls: str
) -> list[str]:
    """A vertical colour bar (``steps`` flat bands, ``high`` at the top) with its two ends and
    its middle written beside it."""
    steps = 64
    band = height / steps
    out = [f'<g class="{cls}">']
    for i in range(steps):
        value = high - (high - low) * (i + 0.5) / steps
        out.append(
            f'<rect class="bar-step" x="{x:.1f}" y="{y + i * band:.2f}" width="14" '
            f'height="{band + 0.3:.2f}" fill="{colour(value)}"/>'
        )
    out.append(
        f'<rect x="{x:.1f}" y="{y:.1f}" width="14" height="{height:.1f}" fill="none" '
        'stroke="#1e1e1e" stroke-width="0.6"/>'
    )
    for value, ty in ((high, y), ((low + high) / 2, y + height / 2), (low, y + height)):
        out.append(_text(f"{value:.3g}", x + 18, ty + 4, cls="tick", size=FONT - 1))
    out.append(_text(name, x, y - 8, cls="bar-name", size=FONT - 1))
    out.append("</g>")
    return out


# ----------------------------------------------------------------------------------------- CSV


def ablation_csv(result: HeadAblation, settings: Mapping[str, object]) -> str:
    """The ablation as CSV: one row per head, then one per whole layer (``head`` = ``all``);
    see the module's docstring for the columns."""
    logit, prob, layer_logit, layer_prob = _check_ablation(result)
    head_rank, layer_rank = _ranks(logit), _ranks(layer_logit)
    rows: list[Sequence[Any]] = [ABLATION_COLUMNS]
    layers, heads = logit.shape
    for layer in range(layers):
        for head in range(heads):
            rows.append(
                [
                    layer,
                    head,
                    _number(logit[layer, head]),
                    _number(prob[layer, head]),
                    int(head_rank[layer, head]),
                ]
            )
    for layer in range(layers):
        rows.append(
            [
                layer,
                "all",
                _number(layer_logit[layer]),
                _number(layer_prob[layer]),
                int(layer_rank[layer]),
            ]
        )
    extra = {
        "class": int(result.target),
        "kind": str(result.kind),
        "clean_logit": float(result.clean_logit),
        "clean_probability": float(result.clean_probability),
        "delta": "ablated - clean: a head the class needs has a negative delta",
    }
    return csv_text(rows, _comments("head ablation", settings, extra))


def lens_csv(result: LogitLens, labels: Sequence[str], settings: Mapping[str, object]) -> str:
    """The logit lens as CSV: each layer's top-k classes, and the final class's probability and
    rank at every layer (``final`` True); see the module's docstring."""
    top = np.asarray(result.top)
    top_p = np.asarray(result.top_probability, np.float64)
    final_p = np.asarray(result.final_probability, np.float64)
    final_rank = np.asarray(result.final_rank)
    if top.ndim != 2 or top_p.shape != top.shape or final_p.shape != (top.shape[0],):
        raise ValueError("the lens's top classes must be [layers, k] with one final row each")
    final = int(result.final)
    rows: list[Sequence[Any]] = [LENS_COLUMNS]
    for layer in range(top.shape[0]):
        for rank, (index, p) in enumerate(zip(top[layer], top_p[layer], strict=True), 1):
            c = int(index)
            rows.append([layer, rank, c, _label(labels, c), _number(p), c == final])
        if final not in top[layer]:
            rows.append(
                [
                    layer,
                    int(final_rank[layer]),
                    final,
                    _label(labels, final),
                    _number(final_p[layer]),
                    True,
                ]
            )
    extra = {
        "final_class": final,
        "final_label": _label(labels, final),
        "approximation": LENS_APPROXIMATION,
    }
    return csv_text(rows, _comments("logit lens", settings, extra))


def token_kinds(result: TokenNorms, settings: Mapping[str, object] | None = None) -> list[str]:
    """``prefix``, ``register`` or ``patch`` for each token of the sequence: the settings'
    ``prefix_tokens`` (the token layout's kinds) where they fit, otherwise timm's order (the
    registers are the last prefix tokens)."""
    n = np.asarray(result.norms).shape[1]
    p = int(result.num_prefix)
    named = (settings or {}).get("prefix_tokens")
    if isinstance(named, Sequence) and not isinstance(named, str) and len(named) == p:
        prefix = ["register" if str(k) == "reg" else "prefix" for k in named]
    else:
        regs = np.asarray(result.registers).shape[1] if np.asarray(result.registers).ndim else 0
        prefix = ["prefix"] * (p - regs) + ["register"] * regs
    return prefix + ["patch"] * (n - p)


def norms_csv(result: TokenNorms, settings: Mapping[str, object]) -> str:
    """Token norms as CSV: one row per layer × token (``layer, token, kind, norm, outlier``)."""
    norms = np.asarray(result.norms)
    flags = np.asarray(result.outliers, bool)
    p = int(result.num_prefix)
    if norms.ndim != 2 or flags.shape != (norms.shape[0], norms.shape[1] - p):
        raise ValueError("the norms must be [layers, tokens] and the outliers [layers, patches]")
    kinds = token_kinds(result, settings)
    rows: list[Sequence[Any]] = [NORMS_COLUMNS]
    for layer in range(norms.shape[0]):
        for token in range(norms.shape[1]):
            outlier = bool(flags[layer, token - p]) if token >= p else False
            rows.append([layer, token, kinds[token], _number(norms[layer, token]), outlier])
    extra = {
        "k": float(result.k),
        "rule": "a patch token is an outlier when its norm > k x the median patch norm of its "
        "layer",
        "attention_share": result.attention_share,
    }
    return csv_text(rows, _comments("token norms", settings, extra))


# ----------------------------------------------------------------------------------------- npz


def research_npz(
    result: HeadAblation | LogitLens | TokenNorms, settings: Mapping[str, object]
) -> bytes:
    """Every field of the result by its name (arrays as they are, numbers as 0-d arrays, text
    as a unicode array; a field that is None is left out), ``result`` (the result type's name)
    and ``settings`` (JSON text: ``json.loads(str(npz["settings"]))``). No pickles: ``np.load``
    reads it with its default ``allow_pickle=False``."""
    if not isinstance(result, HeadAblation | LogitLens | TokenNorms):
        raise TypeError(f"not a research result: {type(result).__name__}")
    arrays: dict[str, np.ndarray] = {}
    for field in dataclasses.fields(result):
        value = getattr(result, field.name)
        if value is None:
            continue
        array = np.asarray(value)
        if array.dtype == object:
            raise TypeError(f"{field.name} is not an array of numbers or text")
        arrays[field.name] = array
    arrays["result"] = np.array(type(result).__name__)
    arrays["settings"] = np.array(_settings_json(settings))
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def read_settings(npz: Any) -> dict[str, Any]:
    """The settings of a loaded :func:`research_npz` file."""
    return json.loads(str(npz["settings"]))


# ----------------------------------------------------------------------------------------- SVG


def ablation_svg(result: HeadAblation, *, metric: str = "logit", title: str = "") -> str:
    """The ablation as a layers × heads map (rows: layers, columns: heads) in diverging colours
    centred on 0 with its colour bar, and beside it the whole-layer column on its own scale
    (removing a whole layer usually changes far more than one head).

    ``metric``: ``logit`` (Δ of the class's logit) or ``probability`` (Δ of its probability).
    Each head's cell is a ``rect`` of class ``head-cell`` with ``data-layer`` and ``data-head``,
    each layer's of class ``layer-cell``.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    logit, prob, layer_logit, layer_prob = _check_ablation(result)
    values, per_layer = (logit, layer_logit) if metric == "logit" else (prob, layer_prob)
    layers, heads = values.shape
    cell = float(max(14, min(40, 480 // max(layers, heads))))
    left, top = 70.0, 96.0
    grid_w, grid_h = heads * cell, layers * cell
    col_x = left + grid_w + 24
    bar1_x = col_x + cell + 30
    bar2_x = bar1_x + 90
    limit, layer_limit = _limit(values), _limit(per_layer)
    name = "Δ logit" if metric == "logit" else "Δ probability"
    words = (
        f"{name} = ablated − clean (a head the class needs is negative, blue); clean "
        f"logit {result.clean_logit:.4g}, probability {result.clean_probability:.4g}"
    )
    width = max(MIN_WIDTH, bar2_x + 90, 32 + _width(words))
    body = [
        _text(
            title or f"Head ablation ({result.kind}), class {result.target}",
            16,
            26,
            cls="title",
            size=FONT + 3,
        ),
        _text(words, 16, 46, cls="caption"),
        _text("head →", left, top - 24, cls="axis-name"),
        _text("layer ↓", 16, top - 8, cls="axis-name"),
    ]
    for head in range(heads):
        body.append(
            _text(str(head), left + (head + 0.5) * cell, top - 6, anchor="middle", cls="head-tick")
        )
    for layer in range(layers):
        y = top + layer * cell
        body.append(_text(str(layer), left - 8, y + cell / 2 + 4, anchor="end", cls="layer-tick"))
        for head in range(heads):
            v = values[layer, head]
            body.append(
                f'<rect class="head-cell" data-layer="{layer}" data-head="{head}" '
                f'x="{left + head * cell:.1f}" y="{y:.1f}" width="{cell:.1f}" '
                f'height="{cell:.1f}" fill="{diverging(v, limit)}" stroke="#ffffff" '
                f'stroke-width="0.5"><title>layer {layer} head {head}: {v:.4g}</title></rect>'
            )
        v = per_layer[layer]
        body.append(
            f'<rect class="layer-cell" data-layer="{layer}" x="{col_x:.1f}" y="{y:.1f}" '
            f'width="{cell:.1f}" height="{cell:.1f}" fill="{diverging(v, layer_limit)}" '
            f'stroke="#ffffff" stroke-width="0.5"><title>layer {layer}, all heads: {v:.4g}'
            "</title></rect>"
        )
    body.append(_text("all", col_x + cell / 2, top - 6, anchor="middle", cls="head-tick"))
    body.append(
        f'<rect x="{col_x:.1f}" y="{top:.1f}" width="{cell:.1f}" height="{grid_h:.1f}" '
        'fill="none" stroke="#1e1e1e" stroke-width="0.8"/>'
    )
    body.append(
        f'<rect x="{left:.1f}" y="{top:.1f}" width="{grid_w:.1f}" height="{grid_h:.1f}" '
        'fill="none" stroke="#1e1e1e" stroke-width="0.8"/>'
    )
    bar_h = max(120.0, grid_h)
    body += _colour_bar(
        bar1_x, top, bar_h, lambda v: diverging(v, limit), -limit, limit, "heads", "heads-bar"
    )
    body += _colour_bar(
        bar2_x,
        top,
        bar_h,
        lambda v: diverging(v, layer_limit),
        -layer_limit,
        layer_limit,
        "all heads",
        "layer-bar",
    )
    height = top + max(grid_h, bar_h) + 30
    return _svg(width, height, title or "head ablation", body)


def lens_svg(result: LogitLens, labels: Sequence[str], *, title: str = "") -> str:
    """The logit lens as a layers × classes picture: the union of every layer's top classes
    (at most :data:`MAX_LENS_CLASSES`, the most probable kept), each cell that class's
    probability at that layer (white 0 → dark blue 1), the model's final class outlined (class
    ``final``), and a caption saying that the rows before the last are an approximation."""
    logits = np.asarray(result.logits, np.float64)
    top = np.asarray(result.top)
    if logits.ndim != 2 or top.ndim != 2 or top.shape[0] != logits.shape[0]:
        raise ValueError("the lens's logits must be [layers, classes] and its top [layers, k]")
    p = probabilities(logits)
    final = int(result.final)
    shown = list(dict.fromkeys([final, *(int(c) for c in top.ravel())]))
    if len(shown) > MAX_LENS_CLASSES:
        best = sorted(shown[1:], key=lambda c: -float(p[:, c].max()))[: MAX_LENS_CLASSES - 1]
        shown = [final, *best]
    layers, columns = p.shape[0], len(shown)
    cell_w = float(max(16, min(36, 560 // columns)))
    cell_h = float(max(16, min(32, 420 // layers)))
    names = [_label(labels, c) for c in shown]
    short = [n if len(n) <= 28 else n[:27] + "…" for n in names]
    header = 8 + 0.62 * (FONT - 1) * max(len(n) for n in short) * 0.72 + 20
    left, top_y = 90.0, 64.0 + header
    grid_w, grid_h = columns * cell_w, layers * cell_h
    bar_x = left + grid_w + 28
    final_name = _label(labels, final)
    final_name = final_name if len(final_name) <= 40 else final_name[:39] + "…"
    words = (
        "probability of each class when the final norm and head read layer l; outlined: "
        f"the model's class, {final_name}"
    )
    width = max(MIN_WIDTH, bar_x + 90, 32 + _width(words))
    body = [
        _text(title or "Logit lens", 16, 26, cls="title", size=FONT + 3),
        _text(words, 16, 46, cls="caption"),
        _text("layer ↓", 16, top_y - 8, cls="axis-name"),
    ]
    for j, (c, n) in enumerate(zip(shown, short, strict=True)):
        x = left + (j + 0.5) * cell_w + 4
        weight = ' font-weight="bold"' if c == final else ""
        body.append(
            f'<text class="class-label" data-class="{c}" x="{x:.1f}" y="{top_y - 6:.1f}" '
            f'font-size="{FONT - 1}" transform="rotate(-55 {x:.1f} {top_y - 6:.1f})"{weight}>'
            f"{svg_text(n)}</text>"
        )
    for layer in range(layers):
        y = top_y + layer * cell_h
        tick = f"output {layer}" if layer == layers - 1 else str(layer)
        body.append(_text(tick, left - 8, y + cell_h / 2 + 4, anchor="end", cls="layer-tick"))
        for j, c in enumerate(shown):
            v = p[layer, c]
            body.append(
                f'<rect class="lens-cell" data-layer="{layer}" data-class="{c}" '
                f'x="{left + j * cell_w:.1f}" y="{y:.1f}" width="{cell_w:.1f}" '
                f'height="{cell_h:.1f}" fill="{sequential(v)}" stroke="#ffffff" '
                f'stroke-width="0.5"><title>layer {layer}: {svg_text(names[j])} {v:.4g}'
                "</title></rect>"
            )
    j = shown.index(final)
    body.append(
        f'<rect class="final" data-class="{final}" x="{left + j * cell_w:.1f}" y="{top_y:.1f}" '
        f'width="{cell_w:.1f}" height="{grid_h:.1f}" fill="none" stroke="#d62728" '
        'stroke-width="2.5"/>'
    )
    body.append(
        f'<rect x="{left:.1f}" y="{top_y + (layers - 1) * cell_h:.1f}" '
        f'width="{grid_w:.1f}" height="{cell_h:.1f}" fill="none" stroke="#1e1e1e" '
        'stroke-width="1.2" class="last-layer"/>'
    )
    bar_h = max(120.0, grid_h)
    body += _colour_bar(bar_x, top_y, bar_h, sequential, 0.0, 1.0, "probability", "lens-bar")
    foot = top_y + max(grid_h, bar_h) + 24
    body.append(_text(LENS_APPROXIMATION, 16, foot, cls="caption approximation", size=FONT - 1))
    return _svg(
        max(width, 32 + _width(LENS_APPROXIMATION, FONT - 1)),
        foot + 16,
        title or "logit lens",
        body,
    )


def norms_svg(result: TokenNorms, layer: int, grid: tuple[int, int], *, title: str = "") -> str:
    """The patch tokens' norms at ``layer`` as a grid map (inferno, a colour bar from their
    lowest to their highest norm), outliers outlined (``rect`` class ``outlier``), and beside
    it the share of outlier patches at every layer (bars; ``layer`` drawn darker)."""
    norms = np.asarray(result.norms, np.float64)
    flags = np.asarray(result.outliers, bool)
    layers = norms.shape[0] if norms.ndim == 2 else 0
    if isinstance(layer, bool) or not isinstance(layer, int | np.integer):
        raise ValueError(f"layer must be a whole number, got {layer!r}")
    if not 0 <= int(layer) < layers:
        raise ValueError(f"layer must be from 0 to {layers - 1}, got {layer}")
    layer = int(layer)
    gh, gw = (int(g) for g in grid)
    p = int(result.num_prefix)
    if gh < 1 or gw < 1 or gh * gw != norms.shape[1] - p:
        raise ValueError(
            f"a {gh}x{gw} grid does not hold the {norms.shape[1] - p} patch tokens of the norms"
        )
    values = norms[layer, p:].reshape(gh, gw)
    marked = flags[layer].reshape(gh, gw)
    low, high = float(values.min()), float(values.max())
    lut = render.colormap_lut("inferno")

    def colour(v: float) -> str:
        t = 0.0 if high <= low else (float(v) - low) / (high - low)
        return _hex(lut[round(min(1.0, max(0.0, t)) * 255)])

    cell = float(max(6, min(32, 400 // max(gh, gw))))
    left, top = 30.0, 80.0
    map_w, map_h = gw * cell, gh * cell
    bar_x = left + map_w + 20
    chart_x = bar_x + 120
    chart_w = max(160.0, min(320.0, 14.0 * layers))
    width = max(MIN_WIDTH, chart_x + chart_w + 30)
    share = np.asarray(result.share, np.float64)
    body = [
        _text(title or f"Token norms, layer {layer}", 16, 26, cls="title", size=FONT + 3),
        _text(
            f"‖x‖ of each patch token after block {layer}; outlined: outliers (norm > "
            f"{result.k:g} × the layer's median patch norm)",
            16,
            46,
            cls="caption",
        ),
    ]
    for r in range(gh):
        for c in range(gw):
            v = values[r, c]
            body.append(
                f'<rect class="patch-cell" data-row="{r}" data-col="{c}" '
                f'x="{left + c * cell:.1f}" y="{top + r * cell:.1f}" width="{cell:.1f}" '
                f'height="{cell:.1f}" fill="{colour(v)}"><title>patch ({r}, {c}): {v:.4g}'
                "</title></rect>"
            )
    for r, c in zip(*np.nonzero(marked), strict=True):
        body.append(
            f'<rect class="outlier" data-row="{r}" data-col="{c}" x="{left + c * cell + 1:.1f}" '
            f'y="{top + r * cell + 1:.1f}" width="{cell - 2:.1f}" height="{cell - 2:.1f}" '
            'fill="none" stroke="#00e5ff" stroke-width="2"/>'
        )
    body += _colour_bar(bar_x, top, max(120.0, map_h), colour, low, high, "norm", "norms-bar")
    # the outlier share per layer, as bars
    chart_h = max(120.0, map_h) - 20
    base = top + chart_h
    top_share = max(float(share.max()) if share.size else 0.0, 1e-9)
    slot = chart_w / max(layers, 1)
    body.append(_text("outlier share per layer", chart_x, top - 8, cls="axis-name"))
    for i, s in enumerate(share):
        h = chart_h * float(s) / top_share if s > 0 else 0.0
        fill = "#1f4e79" if i == layer else "#9ecae1"
        body.append(
            f'<rect class="share-bar" data-layer="{i}" x="{chart_x + i * slot + 1:.1f}" '
            f'y="{base - h:.1f}" width="{max(slot - 2, 1):.1f}" height="{h:.1f}" '
            f'fill="{fill}"><title>layer {i}: {s:.3%}</title></rect>'
        )
    body.append(
        f'<line x1="{chart_x:.1f}" y1="{base:.1f}" x2="{chart_x + chart_w:.1f}" y2="{base:.1f}" '
        'stroke="#1e1e1e" stroke-width="0.8"/>'
    )
    body.append(
        _text(
            f"{top_share:.1%}" if share.max() > 0 else "0%",
            chart_x - 4,
            top + 4,
            anchor="end",
            cls="tick",
            size=FONT - 1,
        )
    )
    body.append(_text("layer 0", chart_x, base + 16, cls="tick", size=FONT - 1))
    body.append(
        _text(
            f"layer {layers - 1}",
            chart_x + chart_w,
            base + 16,
            anchor="end",
            cls="tick",
            size=FONT - 1,
        )
    )
    note = (
        f"outliers' share of the readout's last-layer attention: {result.attention_share:.1%}"
        if result.attention_share is not None
        else ""
    )
    foot = top + max(120.0, map_h) + 34
    if note:
        body.append(_text(note, 16, foot, cls="caption", size=FONT - 1))
    return _svg(width, foot + 16, title or "token norms", body)
