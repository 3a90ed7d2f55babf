"""Head atlas: per-head statistics over a folder of images, streamed with bounded memory.

:func:`head_atlas` reads the image files of a folder in name order, decodes each with
:func:`vitviz.inputs.images.load_image_file` (reduced at once to the model's input), runs them
through a :class:`~vitviz.backends.Backend` a batch at a time and folds each image's head table
(:func:`vitviz.methods.statistics.head_columns`: mean attention distance, entropy, attention to
prefix tokens and to self) into running float64 means and variances (Welford). Only one batch
of images and attention tensors is alive at a time, plus the first image's readout rows for
the example maps. Files that cannot be read are skipped, reported and listed.

Per head the atlas gives the mean over images of each statistic and its **population**
standard deviation (``ddof=0``: the spread of the values in this image set; 0 for one image),
and a kind label from the means by the head table's rules
(:func:`vitviz.methods.statistics.head_kinds`, with the mean over images of the uniform-attention
distance, which is the layout's own when all inputs share one size).

:func:`write_atlas` writes ``atlas.json``, ``atlas.csv`` and a self-contained ``atlas.html``
(no network, no JavaScript): the mean-distance-vs-depth figure as inline SVG, example maps of
the most local and most global heads on the first image as PNG data URLs, and the head table.
"""

from __future__ import annotations

import base64
import html
import json
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitviz import methods
from vitviz.errors import ImageError, OptionsError, ServerError
from vitviz.methods.statistics import (
    LOCAL_RATIO,
    SELF_SHARE,
    SINK_SHARE,
    head_columns,
    head_kinds,
    uniform_distance,
)
from vitviz.output import render
from vitviz.output.exports import csv_text
from vitviz.results import ModelInfo

if TYPE_CHECKING:
    from vitviz.backends import Backend

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
"""File name endings the atlas reads (any case); other files in the folder are ignored."""

COLUMNS = ("mean_distance", "entropy", "to_prefix", "to_self")
"""The head table's numeric columns the atlas aggregates."""

UNITS = {"mean_distance": "px", "entropy": "nats", "to_prefix": "share", "to_self": "share"}

STD = "population standard deviation over images (ddof=0)"


@dataclass(frozen=True)
class Skipped:
    """A file left out of the atlas and why (one line, no directories of this machine)."""

    file: str
    reason: str


class RunningStats:
    """Running mean and population variance of equally shaped arrays (Welford, float64)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None

    def add(self, value: Any) -> None:
        """Fold one observation in."""
        x = np.asarray(value, np.float64)
        if self.mean is None or self._m2 is None:
            self.mean, self._m2 = np.zeros_like(x), np.zeros_like(x)
        self.count += 1
        delta = x - self.mean
        self.mean += delta / self.count
        self._m2 += delta * (x - self.mean)

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation (``ddof=0``)."""
        if self._m2 is None or self.count == 0:
            raise ValueError("no observations")
        return np.sqrt(np.maximum(self._m2, 0.0) / self.count)


@dataclass
class Example:
    """The first image as the model saw it and every head's readout map on it."""

    name: str
    image: np.ndarray  # [h, w, 3] uint8
    maps: np.ndarray  # [L, H, gh, gw] float32: raw readout attention of each head


@dataclass
class HeadAtlas:
    """Per-head statistics over an image set.

    Attributes:
        info: the model (as the backend describes it).
        images: how many images went in.
        skipped: files left out, with the reason.
        mean: per statistic of :data:`COLUMNS`, the mean over images ``[L, H]``.
        std: per statistic, the population standard deviation over images ``[L, H]``.
        uniform: mean over images of the uniform-attention distance (px) the rule uses.
        kinds: each head's kind from the means ``[L, H]`` (strings).
        example: the first image and its per-head readout maps (None if not kept).
        settings: how the atlas was made (folder name, batch size, limit, recursive).
    """

    info: ModelInfo
    images: int
    skipped: list[Skipped]
    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]
    uniform: float
    kinds: np.ndarray
    example: Example | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        """(layers, heads)."""
        layers, heads = self.kinds.shape
        return int(layers), int(heads)

    def rows(self) -> list[dict[str, Any]]:
        """One row per head, layer-major: ``layer``, ``head``, ``<stat>_mean``, ``<stat>_std``
        for each statistic of :data:`COLUMNS`, and ``kind``."""
        layers, heads = self.shape
        out = []
        for layer in range(layers):
            for head in range(heads):
                row: dict[str, Any] = {"layer": layer, "head": head}
                for c in COLUMNS:
                    row[f"{c}_mean"] = float(self.mean[c][layer, head])
                    row[f"{c}_std"] = float(self.std[c][layer, head])
                row["kind"] = str(self.kinds[layer, head])
                out.append(row)
        return out

    def extremes(self, count: int = 3) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """The ``count`` heads with the smallest mean distance (most local first) and the
        ``count`` with the largest (most global first), as (layer, head); never the same head
        in both lists."""
        _, heads = self.shape
        order = np.argsort(self.mean["mean_distance"].ravel(), kind="stable")
        count = max(0, min(count, len(order) // 2))
        pairs = [(int(i) // heads, int(i) % heads) for i in order]
        return pairs[:count], pairs[::-1][:count]

    def to_dict(self) -> dict[str, Any]:
        """What ``atlas.json`` holds (the weights location without this machine's folders)."""
        from vitviz.output.provenance import public_info

        layers, heads = self.shape
        return {
            "model": public_info(self.info).to_dict(),
            "images": self.images,
            "example_image": None if self.example is None else self.example.name,
            "skipped": [{"file": s.file, "reason": s.reason} for s in self.skipped],
            "settings": self.settings,
            "layers": layers,
            "heads": heads,
            "statistics": {c: UNITS[c] for c in COLUMNS},
            "std": STD,
            "rules": {
                "order": "the first that holds: prefix sink, diagonal, local, else global",
                "prefix_sink": f"to_prefix_mean >= {SINK_SHARE}",
                "diagonal": f"to_self_mean >= {SELF_SHARE}",
                "local": f"mean_distance_mean < {LOCAL_RATIO} x uniform_distance",
                "uniform_distance": self.uniform,
            },
            "heads_table": self.rows(),
        }


def image_files(
    folder: str | os.PathLike[str], *, recursive: bool = False
) -> tuple[list[tuple[Path, str]], list[Skipped]]:
    """The image files of ``folder`` sorted by their name relative to it, as (path, name).

    Only names ending in :data:`IMAGE_SUFFIXES` count. Links are followed only to files
    inside ``folder`` (others are returned as skipped); linked folders are not entered.

    Raises:
        OptionsError: ``folder`` is not a folder that can be listed.
    """
    root = Path(folder)
    if not root.is_dir():
        raise OptionsError(f"{folder}: not a folder; give a folder of image files")
    real_root = root.resolve()
    found: list[tuple[Path, str]] = []
    skipped: list[Skipped] = []
    try:
        if recursive:
            walk: Iterable[tuple[str, list[str], list[str]]] = os.walk(root, followlinks=False)
            candidates = [Path(d) / f for d, _, files in walk for f in files]
        else:
            candidates = [Path(e.path) for e in os.scandir(root) if not e.is_dir()]
    except OSError as err:
        raise OptionsError(
            f"{folder}: cannot list the folder ({err.strerror or type(err).__name__})"
        ) from None
    for path in candidates:
        if not path.name.lower().endswith(IMAGE_SUFFIXES):
            continue
        name = path.relative_to(root).as_posix()
        if path.is_symlink():
            target = path.resolve()
            if not target.is_relative_to(real_root):
                skipped.append(Skipped(name, "a link to a file outside the folder; not followed"))
                continue
        found.append((path, name))
    found.sort(key=lambda p: p[1])
    skipped.sort(key=lambda s: s.file)
    return found, skipped


def _stderr(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


def head_atlas(
    backend: Backend,
    folder: str | os.PathLike[str],
    *,
    batch_size: int | None = None,
    limit: int | None = None,
    recursive: bool = False,
    progress: bool | None = None,
    report: Callable[[str], None] | None = None,
) -> HeadAtlas:
    """Aggregate every head's statistics over the images of ``folder``.

    Args:
        backend: any :class:`~vitviz.backends.Backend` (its ``explain`` is called per batch).
        folder: the images (see :func:`image_files`).
        batch_size: images per ``explain`` call (default: the backend's).
        limit: stop after this many valid images (the first by name).
        recursive: also read sub-folders.
        progress: a progress bar on stderr (None: only when stderr is a terminal).
        report: called with one line per skipped file (default: printed on stderr).

    Raises:
        OptionsError: a bad folder, batch size or limit.
        ImageError: the folder holds no image that could be read.
    """
    from tqdm import tqdm

    from vitviz.inputs.images import load_image_file

    batch = int(batch_size or backend.batch_size)
    if batch < 1:
        raise OptionsError(f"--batch-size must be at least 1, got {batch}")
    if limit is not None and limit < 1:
        raise OptionsError(f"--limit must be at least 1, got {limit}")
    say = report or _stderr
    files, skipped = image_files(folder, recursive=recursive)
    for s in skipped:
        say(f"skipped {s.file}: {s.reason}")
    if not files:
        raise ImageError(
            f"{folder}: no image files ({', '.join(s[1:] for s in IMAGE_SUFFIXES)}) "
            f"in this folder{'' if recursive else ' (add --recursive for sub-folders)'}"
        )
    info = backend.info()
    stats = {c: RunningStats() for c in COLUMNS}
    uniform = RunningStats()
    example: Example | None = None
    pending: list[tuple[str, Any]] = []

    def skip(name: str, reason: str) -> None:
        skipped.append(Skipped(name, reason))
        say(f"skipped {name}: {reason}")

    def flush() -> None:
        nonlocal example
        if not pending:
            return
        try:
            explained = backend.explain([im for _, im in pending], top_k=1, seen=True)
        except ServerError as err:  # e.g. a busy server: these images, not the run
            for name, _ in pending:
                skip(name, str(err))
            pending.clear()
            return
        for (name, _), expl in zip(pending, explained, strict=True):
            columns = head_columns(expl.attention, expl.layout)
            for c in COLUMNS:
                stats[c].add(columns[c])
            uniform.add(uniform_distance(expl.layout))
            if example is None:
                heads = expl.attention.shape[-3]
                rows = methods.head_rows(expl.attention, expl.layout)[..., :heads, :]
                maps = np.asarray(methods.to_grid(rows, expl.layout), np.float32)
                example = Example(name, np.asarray(expl.image, np.uint8).copy(), maps)
        pending.clear()

    total = len(files) if limit is None else min(len(files), limit)
    bar = tqdm(
        total=total,
        desc="atlas",
        unit="image",
        file=sys.stderr,
        disable=not (sys.stderr.isatty() if progress is None else progress),
    )
    try:
        for path, name in files:
            if limit is not None and stats["entropy"].count + len(pending) >= limit:
                break
            try:
                decoded = load_image_file(path, reduce=backend.geometry)
            except ImageError as err:
                skip(name, _reason(err, path))
            else:
                pending.append((name, decoded.image))
                del decoded
            bar.update(1)
            if len(pending) >= batch:
                flush()
        flush()
    finally:
        bar.close()
    count = stats["entropy"].count
    if count == 0:
        raise ImageError(
            f"{folder}: none of its {len(files)} image files could be read "
            f"({len(skipped)} skipped, see above)"
        )
    mean = {c: np.asarray(stats[c].mean) for c in COLUMNS}
    u = float(np.asarray(uniform.mean))
    kinds = head_kinds(mean["mean_distance"], mean["to_prefix"], mean["to_self"], u)
    return HeadAtlas(
        info=info,
        images=count,
        skipped=skipped,
        mean=mean,
        std={c: stats[c].std for c in COLUMNS},
        uniform=u,
        kinds=np.asarray(kinds),
        example=example,
        settings={
            "folder": Path(folder).resolve().name,
            "batch_size": batch,
            "limit": limit,
            "recursive": recursive,
        },
    )


def _reason(err: Exception, path: Path) -> str:
    """The error's message without the file's path (the caller names the file)."""
    text = str(err)
    prefix = f"{os.fsdecode(path)}: "
    if text.startswith(prefix):
        text = text[len(prefix) :]
    return text.replace(os.fsdecode(path), path.name)


# -- files ------------------------------------------------------------------------------------


def atlas_csv(atlas: HeadAtlas) -> str:
    """One row per head: ``layer, head, <stat>_mean, <stat>_std … , kind`` (every field
    quoted, no cell a formula: :func:`vitviz.output.exports.csv_text`)."""
    rows = atlas.rows()
    names = list(rows[0])
    return csv_text([names, *([row[n] for n in names] for row in rows)])


def write_atlas(atlas: HeadAtlas, out: str | os.PathLike[str], *, examples: int = 3) -> list[Path]:
    """Write ``atlas.json``, ``atlas.csv`` and ``atlas.html`` into ``out``; returns the paths."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "atlas.json", folder / "atlas.csv", folder / "atlas.html"]
    data = atlas.to_dict() | {"files": {"csv": "atlas.csv", "html": "atlas.html"}}
    paths[0].write_text(json.dumps(data, indent=2))
    paths[1].write_text(atlas_csv(atlas))
    paths[2].write_text(atlas_html(atlas, examples=examples), encoding="utf-8")
    return paths


# -- the HTML report --------------------------------------------------------------------------

KIND_COLOURS = {
    "local": "#1f77b4",
    "global": "#d62728",
    "prefix sink": "#7f7f7f",
    "diagonal": "#2ca02c",
}

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em}
.warn{background:#c62828;color:#fff;padding:.6em 1em;font-weight:bold;font-size:1.2em}
.note{color:#555}table{border-collapse:collapse;font-size:.85em}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#f3f3f3}
td.k{text-align:left}.maps{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;width:224px}figure img{width:224px;image-rendering:pixelated}
figcaption{font-size:.8em}dl{display:grid;grid-template-columns:max-content auto;gap:2px 1em}
dt{font-weight:bold}dd{margin:0}
"""


def _nice_ticks(top: float, count: int = 5) -> list[float]:
    """Round tick values from 0 to at least ``top``."""
    raw = max(top, 1e-9) / count
    step = 10 ** np.floor(np.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if m * step >= raw:
            step *= m
            break
    return [float(i * step) for i in range(int(np.ceil(top / step)) + 1)]


def distance_figure(atlas: HeadAtlas, width: int = 720, height: int = 380) -> str:
    """Mean attention distance against depth as inline SVG: every head a dot per layer (with
    its ±1 std bar), the mean over heads as a line, uniform attention and the local threshold
    as dashed lines."""
    layers, heads = atlas.shape
    d, s = atlas.mean["mean_distance"], atlas.std["mean_distance"]
    left, right, top, bottom = 60, 130, 20, 45
    pw, ph = width - left - right, height - top - bottom
    ticks = _nice_ticks(max(float((d + s).max()), atlas.uniform) * 1.05)
    ymax = ticks[-1]
    band = pw / layers

    def x(layer: float) -> float:
        return left + (layer + 0.5) * band

    def y(value: float) -> float:
        return top + ph * (1 - value / ymax)

    e = html.escape
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" font-size="11" font-family="sans-serif">',
        "<title>Mean attention distance vs depth</title>",
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>',
    ]
    for t in ticks:
        out.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{y(t):.1f}" y2="{y(t):.1f}" stroke="#eee"/>'
            f'<text x="{left - 6}" y="{y(t) + 4:.1f}" text-anchor="end">{t:g}</text>'
        )
    every = max(1, int(np.ceil(layers / 24)))
    for layer in range(0, layers, every):
        out.append(
            f'<text x="{x(layer):.1f}" y="{top + ph + 16}" text-anchor="middle">{layer}</text>'
        )
    out.append(
        f'<text x="{left + pw / 2}" y="{height - 8}" text-anchor="middle">layer (depth)</text>'
        f'<text transform="translate(16 {top + ph / 2}) rotate(-90)" text-anchor="middle">'
        "mean attention distance (px)</text>"
    )
    for value, label in ((atlas.uniform, "uniform"), (LOCAL_RATIO * atlas.uniform, "local <")):
        out.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{y(value):.1f}" y2="{y(value):.1f}" '
            f'stroke="#999" stroke-dasharray="4 3"/>'
            f'<text x="{left + pw + 4}" y="{y(value) + 4:.1f}" fill="#666">{e(label)} '
            f"{value:.0f}</text>"
        )
    spread = min(band * 0.6, 8.0 * heads)
    for layer in range(layers):
        for head in range(heads):
            cx = x(layer) + (head - (heads - 1) / 2) * (spread / max(heads, 1))
            v, sd, kind = (
                float(d[layer, head]),
                float(s[layer, head]),
                str(atlas.kinds[layer, head]),
            )
            colour = KIND_COLOURS.get(kind, "#000")
            out.append(
                f"<g><title>layer {layer}, head {head}: {v:.1f} ± {sd:.1f} px ({e(kind)})</title>"
                f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{y(v - sd):.1f}" y2="{y(v + sd):.1f}" '
                f'stroke="{colour}" stroke-opacity="0.35"/>'
                f'<circle cx="{cx:.1f}" cy="{y(v):.1f}" r="3.2" fill="{colour}"/></g>'
            )
    line = " ".join(f"{x(layer):.1f},{y(float(d[layer].mean())):.1f}" for layer in range(layers))
    out.append(f'<polyline points="{line}" fill="none" stroke="#222" stroke-width="1.6"/>')
    legend = [("mean over heads", "#222")] + [
        (k, c) for k, c in KIND_COLOURS.items() if (atlas.kinds == k).any()
    ]
    for i, (label, colour) in enumerate(legend):
        ly = top + 10 + i * 16
        mark = (
            f'<line x1="{left + pw + 8}" x2="{left + pw + 20}" y1="{ly}" y2="{ly}" '
            f'stroke="{colour}" stroke-width="1.6"/>'
            if i == 0
            else f'<circle cx="{left + pw + 14}" cy="{ly}" r="3.2" fill="{colour}"/>'
        )
        out.append(f'{mark}<text x="{left + pw + 26}" y="{ly + 4}">{e(label)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _example_png(atlas: HeadAtlas, layer: int, head: int) -> str:
    """One head's readout map over the first image, as a PNG data URL."""
    assert atlas.example is not None
    picture = render.overlay(atlas.example.image, atlas.example.maps[layer, head], alpha=0.6)
    if atlas.info.weights.warning:
        picture = render.stamp_banner(picture, "RANDOM WEIGHTS - NOT A TRAINED MODEL")
    return "data:image/png;base64," + base64.b64encode(render.to_png(picture)).decode("ascii")


def atlas_html(atlas: HeadAtlas, *, examples: int = 3) -> str:
    """The one-page report: summary, distance-vs-depth figure, example maps, head table."""
    from vitviz.output.provenance import public_info

    e = html.escape
    info = public_info(atlas.info)
    layers, heads = atlas.shape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Head atlas: {e(info.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Head atlas: {e(info.title)}</h1>",
    ]
    if info.weights.warning:
        parts.append(f'<p class="warn">{e(info.weights.warning)}</p>')
    where = f" ({e(info.weights.location)})" if info.weights.location else ""
    summary = [
        ("model", f"{e(info.name)} — timm {e(info.timm_name)}"),
        ("weights", f"{e(info.weights.source)}{where}"),
        ("heads", f"{layers} layers × {heads} heads"),
        ("images", f"{atlas.images} from folder {e(str(atlas.settings.get('folder', '')))}"),
        ("skipped", str(len(atlas.skipped))),
        ("spread", e(STD)),
    ]
    if info.weights.note:
        summary.append(("note", e(info.weights.note)))
    parts.append("<dl>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in summary) + "</dl>")
    if atlas.skipped:
        items = "".join(f"<li>{e(s.file)}: {e(s.reason)}</li>" for s in atlas.skipped)
        parts.append(f"<details><summary>skipped files</summary><ul>{items}</ul></details>")
    parts += [
        "<h2>Mean attention distance vs depth</h2>",
        '<p class="note">Each dot is one head (mean over the images, bar ±1 std); the line is '
        "the mean over the heads of a layer. Distance in input pixels between patch centres "
        "(ViT paper, Fig. 7).</p>",
        distance_figure(atlas),
    ]
    if atlas.example is not None:
        local, far = atlas.extremes(examples)
        d, s = atlas.mean["mean_distance"], atlas.std["mean_distance"]
        parts.append(
            f"<h2>Most local and most global heads on {e(atlas.example.name)}</h2>"
            '<p class="note">The readout\'s attention over the patches of one head, on the first '
            "image as the model saw it.</p>"
        )
        for title, group in (("Most local", local), ("Most global", far)):
            figures = "".join(
                f'<figure><img alt="layer {lay} head {hd}" src="{_example_png(atlas, lay, hd)}">'
                f"<figcaption>layer {lay}, head {hd}: {d[lay, hd]:.1f} ± {s[lay, hd]:.1f} px, "
                f"{e(str(atlas.kinds[lay, hd]))}</figcaption></figure>"
                for lay, hd in group
            )
            parts.append(f'<h3>{title}</h3><div class="maps">{figures}</div>')
    parts.append(
        "<h2>Heads</h2>"
        f'<p class="note">Kind from the means, the first rule that holds: prefix sink if '
        f"to prefix ≥ {SINK_SHARE:g}; diagonal if to self ≥ {SELF_SHARE:g}; local if the mean "
        f"distance is under {LOCAL_RATIO:g} × {atlas.uniform:.1f} px (uniform attention); "
        "else global. Values are mean ± std over the images.</p>"
    )
    head = "".join(f"<th>{e(c)} ({UNITS[c]})</th>" for c in COLUMNS)
    body = []
    for row in atlas.rows():
        cells = "".join(
            f"<td>{row[f'{c}_mean']:.{1 if c == 'mean_distance' else 3}f} ± "
            f"{row[f'{c}_std']:.{1 if c == 'mean_distance' else 3}f}</td>"
            for c in COLUMNS
        )
        body.append(
            f"<tr><td>{row['layer']}</td><td>{row['head']}</td>{cells}"
            f'<td class="k">{e(row["kind"])}</td></tr>'
        )
    parts.append(
        f"<table><thead><tr><th>layer</th><th>head</th>{head}<th>kind</th></tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )
    parts.append('<p class="note">Made by vitviz (python -m vitviz atlas).</p></body></html>')
    return "\n".join(parts)
