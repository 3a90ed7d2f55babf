"""Plotly figures (the head statistics) and rendered pictures (the pipeline view and the
lesson) for the page: pure functions, arrays in, figures or pixels out. Attention maps are
drawn by the canvas (:mod:`vitviz.ui.canvas`), not here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import plotly.graph_objects as go

from vitviz.layout import TokenLayout
from vitviz.output import render
from vitviz.ui.i18n import raw, t

TOKEN_NAMES = {"cls": "CLS", "dist": "DIST", "reg": "REG"}


@dataclass(frozen=True)
class Display:
    """How maps are drawn: colormap, overlay opacity, smooth or blocky, grid lines."""

    colormap: str = "inferno"
    alpha: float = 0.6
    smooth: bool = False
    grid: bool = False


def display_scale(size: tuple[int, int], target: int = 448) -> int:
    """Integer upscaling so small model inputs look sharp on screen."""
    return max(1, target // max(size))


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Bicubic upscaling of an RGB image by an integer factor."""
    if factor == 1:
        return image
    h, w = image.shape[:2]
    return cv2.resize(image, (w * factor, h * factor), interpolation=cv2.INTER_CUBIC)


def mosaic(tiles: Sequence[np.ndarray], cols: int, gap: int = 4, fill: int = 255) -> np.ndarray:
    """Tiles of one size side by side, ``cols`` per row, ``gap`` pixels apart."""
    th, tw = tiles[0].shape[:2]
    rows = -(-len(tiles) // cols)
    out = np.full((rows * th + (rows - 1) * gap, cols * tw + (cols - 1) * gap, 3), fill, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        out[r * (th + gap) : r * (th + gap) + th, c * (tw + gap) : c * (tw + gap) + tw] = tile
    return out


def token_labels(layout: TokenLayout) -> list[str]:
    """Names of the prefix tokens: CLS, DIST, REG1 … in sequence order."""
    out, regs = [], 0
    for kind in layout.prefix:
        if kind == "reg":
            regs += 1
            out.append(f"REG{regs}")
        else:
            out.append(TOKEN_NAMES[kind])
    return out


def _head_points(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Layer and head index of every entry of a ``[L, H]`` statistic, and its customdata
    ``[layer, head, value]`` (head fastest, the order the page decodes clicks in)."""
    layers, heads = values.shape
    ll, hh = np.meshgrid(np.arange(layers), np.arange(heads), indexing="ij")
    return ll.ravel(), hh.ravel(), np.column_stack([ll.ravel(), hh.ravel(), values.ravel()])


def head_colours(heads: int) -> list[str]:
    """One categorical colour per head (heads are names, not amounts: no colour scale);
    Plotly's 10 colours, Dark24's past 10 heads, repeated past 24."""
    from plotly.colors import qualitative

    palette = qualitative.Plotly if heads <= 10 else qualitative.Dark24
    return [palette[h % len(palette)] for h in range(heads)]


def distance_figure(distance: np.ndarray, selected: tuple[int, int] | None) -> go.Figure:
    """Mean attention distance of every head against layer depth (ViT paper, Fig. 7 right)."""
    ll, hh, custom = _head_points(distance)
    palette = head_colours(distance.shape[1])
    fig = go.Figure(
        go.Scatter(
            x=ll,
            y=distance.ravel(),
            mode="markers",
            marker=dict(
                size=10,
                color=[palette[h] for h in hh],  # a category each: no colour bar, no order
                line=dict(width=0.5, color="white"),
            ),
            customdata=custom,
            hovertemplate=raw("figures.distance_hover") + "<extra></extra>",
            name="heads",
            showlegend=False,
        )
    )
    for head, colour in enumerate(palette):  # the legend: one entry per head, nothing drawn
        fig.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                mode="markers",
                marker=dict(size=10, color=colour),
                name=t("widgets.head_n", head=head),
                legendgroup="heads",
                hoverinfo="skip",
            )
        )
    if selected is not None:
        fig.add_trace(
            go.Scatter(
                x=[selected[0]],
                y=[distance[selected]],
                mode="markers",
                marker=dict(size=18, symbol="circle-open", color="#d62728", line=dict(width=3)),
                hoverinfo="skip",
                name="selected",
                showlegend=False,
            )
        )
    fig.update_layout(
        xaxis_title=t("figures.layer_depth"),
        yaxis_title=t("figures.distance_px"),
        height=360,
        margin=dict(l=10, r=10, t=10, b=10),
        showlegend=True,
        legend=dict(title=dict(text=t("figures.head")), itemclick=False, itemdoubleclick=False),
        dragmode=False,
        clickmode="event+select",
    )
    fig.update_xaxes(dtick=1)
    return fig


def entropy_figure(entropy: np.ndarray) -> go.Figure:
    """Attention entropy per layer (rows) and head (columns) as clickable squares."""
    layers, heads = entropy.shape
    ll, hh, custom = _head_points(entropy)
    fig = go.Figure(
        go.Scatter(
            x=hh,
            y=ll,
            mode="markers",
            marker=dict(
                symbol="square",
                size=max(10, min(28, 320 // max(layers, heads))),
                color=entropy.ravel(),
                colorscale="Viridis",
                colorbar=dict(title="nats"),
            ),
            customdata=custom,
            hovertemplate=raw("figures.entropy_hover") + "<extra></extra>",
            name="heads",
        )
    )
    fig.update_layout(
        xaxis_title=t("figures.head"),
        yaxis_title=t("figures.layer"),
        height=360,
        margin=dict(l=10, r=10, t=10, b=10),
        dragmode=False,
        clickmode="event+select",
    )
    fig.update_xaxes(dtick=1)
    fig.update_yaxes(dtick=1, autorange="reversed")
    return fig


def numbered_grid(image: np.ndarray, layout: TokenLayout, factor: int) -> np.ndarray:
    """The (upscaled) input with its patch grid and every patch's number."""
    out = render.draw_patch_grid(upscale(image, factor), layout.grid, thickness=1)
    gh, gw = layout.grid
    ch, cw = out.shape[0] / gh, out.shape[1] / gw
    scale = min(ch, cw) / 80
    for i in range(gh * gw):
        r, c = divmod(i, gw)
        org = (int(c * cw + 2), int(r * ch + ch * 0.4))
        for colour, thick in (((0, 0, 0), 2), ((255, 255, 255), 1)):
            cv2.putText(out, str(i), org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thick)
    return out


def token_sequence(
    image: np.ndarray, layout: TokenLayout, per_row: int = 28, tile: int = 22, gap: int = 3
) -> np.ndarray:
    """The flattened token sequence: prefix tokens first, then every patch in order."""
    gh, gw = layout.grid
    ph, pw = layout.patch_size
    tiles: list[np.ndarray] = []
    colours = {"cls": (214, 39, 40), "dist": (255, 127, 14), "reg": (44, 160, 44)}
    for kind, name in zip(layout.prefix, token_labels(layout), strict=True):
        t = np.full((tile, tile, 3), colours[kind], np.uint8)
        scale = 0.26 if len(name) > 3 else 0.3
        cv2.putText(t, name, (1, tile // 2 + 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (255,) * 3, 1)
        tiles.append(t)
    for i in range(gh * gw):
        r, c = divmod(i, gw)
        patch = image[r * ph : (r + 1) * ph, c * pw : (c + 1) * pw]
        tiles.append(cv2.resize(patch, (tile, tile), interpolation=cv2.INTER_AREA))
    return mosaic(tiles, min(per_row, len(tiles)), gap=gap)


def filters_mosaic(filters: np.ndarray, size: int = 40, cols: int = 14) -> np.ndarray:
    """Principal components of the patch embedding as a mosaic of enlarged tiles."""
    tiles = [cv2.resize(f, (size, size), interpolation=cv2.INTER_NEAREST) for f in filters]
    return mosaic(tiles, min(cols, len(tiles)), gap=3)


def position_mosaic(similarity: np.ndarray, grid: tuple[int, int], cell: int = 3) -> np.ndarray:
    """Every patch's position-embedding similarity map, arranged on the grid (scale −1…1)."""
    gh, gw = grid
    tiles = []
    for m in similarity:
        rgb = render.colorize(np.clip((m + 1) / 2, 0, 1), "viridis")
        tiles.append(cv2.resize(rgb, (gw * cell, gh * cell), interpolation=cv2.INTER_NEAREST))
    return mosaic(tiles, gw, gap=2)
