"""Two maps side by side: two models on one image, two images on one model, or two methods.

One set of method options is chosen on side A's model; :func:`carry_options` carries it to
side B's: a layer to the same relative depth (:func:`vitviz.methods.relative_layer`), a head B
lacks to B's fused heads, a patch to the same place on B's grid. The page's Compare view, the
CLI's ``compare`` and Python use the same functions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from vitviz import methods
from vitviz.backends import Backend
from vitviz.layout import TokenLayout
from vitviz.results import ImageExplanation


def scaled_index(index: int, size: int, other: int) -> int:
    """A row or column of a grid of ``size`` at the same relative place of one of ``other``."""
    if size == 1:
        return (other - 1) // 2
    return min(other - 1, int(index * (other - 1) / (size - 1) + 0.5))


def carry_options(
    method: str,
    options: dict[str, Any],
    a: tuple[int, int, TokenLayout],
    b: tuple[int, int, TokenLayout],
) -> dict[str, Any]:
    """``options`` of ``method`` set on model A, for model B (``(layers, heads, layout)`` each).

    Layers go to the same relative depth, a head B does not have becomes None (B's heads
    fused), a patch goes to the same place on B's grid; the other options stay as they are.
    """
    spec = methods.METHODS[method]
    (layers_a, _, layout_a), (layers_b, heads_b, layout_b) = a, b
    out: dict[str, Any] = {}
    for option in spec.options:
        value = options.get(option.name, option.default)
        if value is None or isinstance(value, bool):
            out[option.name] = value
        elif option.kind == "layer":
            out[option.name] = methods.relative_layer(int(value), layers_a, layers_b)
        elif option.kind == "head":
            out[option.name] = int(value) if 0 <= int(value) < heads_b else None
        elif option.kind == "patch":
            (ah, aw), (bh, bw) = layout_a.grid, layout_b.grid
            row, col = divmod(int(value), aw)
            out[option.name] = scaled_index(row, ah, bh) * bw + scaled_index(col, aw, bw)
        else:
            out[option.name] = value
    return out


@dataclass
class Side:
    """One side of a comparison: a backend, an image (any size) and a method."""

    backend: Backend
    image: Image.Image
    method: str = "rollout"
    target: int | None = None  # class of a class-specific method (None: the top prediction)


@dataclass
class ComparedMap:
    """One side's map and what it was computed with."""

    values: np.ndarray  # [gh, gw]
    options: dict[str, Any]
    explanation: ImageExplanation
    target: tuple[int, str] | None = None  # (class, label) of a class-specific map
    notes: list[str] = field(default_factory=list)


def _one(side: Side, options_for: Callable[[TokenLayout], dict[str, Any]]) -> ComparedMap:
    """One side's map; its options are made from its own token layout."""
    spec = methods.METHODS[side.method]
    if not spec.needs_gradients:
        expl = side.backend.explain([side.image])[0]
        options = methods.resolve_options(side.method, options_for(expl.layout))
        row = methods.compute_row(side.method, expl.attention, expl.layout, **options)
        return ComparedMap(np.asarray(methods.to_grid(row, expl.layout)), options, expl)
    negative = bool(options_for(None).get("negative", False))  # type: ignore[arg-type]
    res = side.backend.explain_classes([side.image], [[side.target]], negative=negative)[0]
    expl, rel = res.explanation, res.relevance[0]
    options = methods.resolve_options(side.method, options_for(expl.layout))
    row = methods.compute_row(side.method, expl.attention, expl.layout, grads=rel, **options)
    grid = np.asarray(methods.to_grid(row, expl.layout))
    return ComparedMap(grid, options, expl, (rel.index, rel.label))


def compare(a: Side, b: Side, options: dict[str, Any]) -> tuple[ComparedMap, ComparedMap]:
    """Both maps: ``options`` (set on A's model) as given for A and carried to B's model.

    Each side takes the options its method has; one only B's method has is carried too.
    """
    info_a, info_b = a.backend.info(), b.backend.info()

    def own(method: str) -> dict[str, Any]:
        return {k: v for k, v in options.items() if k in methods.METHODS[method].defaults}

    first = _one(a, lambda layout: own(a.method))
    layout_a = first.explanation.layout

    def carried(layout: TokenLayout | None) -> dict[str, Any]:
        if layout is None:  # only the flags are read before B's layout is known
            return own(b.method)
        return carry_options(  # it takes B's method's own options from all of them
            b.method,
            options,
            (info_a.layers, info_a.heads, layout_a),
            (info_b.layers, info_b.heads, layout),
        )

    return first, _one(b, carried)
