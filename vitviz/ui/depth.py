"""What the Logit lens and Token norms views ask of the backend (issue 24): each a forward pass
of the model with the residual stream recorded, run the way the trust panel runs its checks —
one at a time per page process, admitted by the bytes it will hold before it starts (the
visitor sees the queue; work that can never fit is refused in words), and cached with the
explanation so a rerun or another visitor asking the same does not redo it.

Also the small array reshaping the two views draw from (the lens's classes and probabilities,
the norms' canvas rows), kept here so tests can read exactly what the page shows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import streamlit as st
from PIL import Image

from vitviz.errors import MemoryBusy, MemoryRefused, VitvizError
from vitviz.inputs.classes import probabilities
from vitviz.memory.cost import ModelShape, WorkCost, lens_cost, norms_cost
from vitviz.results import LogitLens, TokenNorms
from vitviz.ui import resources, widgets
from vitviz.ui.context import ViewContext
from vitviz.ui.i18n import error_text, t

T = TypeVar("T")

__all__ = [
    "Busy",
    "attempt",
    "download_row",
    "lens",
    "lens_columns",
    "lens_work",
    "norms",
    "norms_rows",
    "norms_work",
    "outlier_rows",
    "seed_int",
    "settings",
    "settled_from",
]

# one forward with the stream recorded per job: one job at a time per page process, whoever
# asks, so a class opening the view together queues instead of multiplying the work; a job
# that waits longer than WAIT_S is not started (the visitor is told to try again)
JOBS = resources.JobSlot()
WAIT_S = 60.0
TOP_K = (1, 10, 5)  # the lens's classes per layer: lowest, highest, default
K_RANGE = (1.5, 10.0)  # the outlier factor's slider


Busy = resources.Busy


def lens_work(shape: ModelShape, input_hw: tuple[int, int], classes: int) -> WorkCost:
    """What the logit lens holds in this process (:func:`vitviz.memory.cost.lens_cost`); a
    server's work is its own."""
    return lens_cost(shape, input_hw, classes)


def norms_work(shape: ModelShape, input_hw: tuple[int, int]) -> WorkCost:
    """What the token norms hold in this process (:func:`vitviz.memory.cost.norms_cost`)."""
    return norms_cost(shape, input_hw)


def _job(ctx: ViewContext, cost: Callable[[ModelShape, tuple[int, int]], WorkCost], run):
    """``run()`` once the slot is free and its cost admitted beside what the page run holds."""
    with JOBS.held(WAIT_S), resources.admitted_work(ctx.backend, ctx.layout.image_size, cost):
        return run()


def _seen(ctx: ViewContext) -> Image.Image:
    return Image.fromarray(ctx.expl.image)  # the image as the model saw it


def lens(ctx: ViewContext, top_k: int) -> LogitLens:
    """The logit lens of this page's image with ``top_k`` classes per layer, cached per
    (model, image, top_k).

    Raises:
        Busy, MemoryRefused, MemoryBusy, VitvizError: said by the view.
    """
    classes = max(len(ctx.labels), 1)
    top_k = int(top_k)

    def compute() -> LogitLens:
        return _job(
            ctx,
            lambda shape, hw: lens_work(shape, hw, classes),
            lambda: ctx.backend.logit_lens(_seen(ctx), top_k=top_k),
        )

    with st.spinner(t("lens.busy"), show_time=True):
        return ctx.entry.get(("logit-lens", top_k), compute)


def norms(ctx: ViewContext, k: float) -> TokenNorms:
    """The token norms and outliers of this page's image for factor ``k``, cached per
    (model, image, k).

    Raises:
        Busy, MemoryRefused, MemoryBusy, VitvizError: said by the view.
    """
    k = float(k)

    def compute() -> TokenNorms:
        return _job(ctx, norms_work, lambda: ctx.backend.token_norms(_seen(ctx), k=k))

    with st.spinner(t("norms.busy"), show_time=True):
        return ctx.entry.get(("token-norms", k), compute)


# ------------------------------------------------------------------ what the views draw


def settled_from(result: LogitLens) -> int | None:
    """The first layer from which the model's prediction is the lens's top class at every
    later layer (the last layer always qualifies; None only for an empty result)."""
    ranks = np.asarray(result.final_rank)
    if ranks.size == 0:
        return None
    layer = ranks.size
    while layer > 0 and ranks[layer - 1] == 1:
        layer -= 1
    return layer if layer < ranks.size else None


def seed_int(key: str, low: int, high: int) -> None:
    """Before an integer control is drawn: on a session's first run, its value from the URL
    when that is a whole number in ``[low, high]`` (a link is untrusted: anything else is
    ignored and the default shown)."""
    from vitviz.ui import session

    text = st.query_params.get(key)
    try:
        value = int(text) if text is not None else None
    except ValueError:
        value = None
    session.seed(key, value if value is not None and low <= value <= high else None)


def settings(ctx: ViewContext, view: str, analysis: str, options: Mapping[str, Any]) -> dict:
    """What the downloaded files say about how they were made (as the command line's, see
    :func:`vitviz.cli._research.settings`): the model as
    :func:`~vitviz.output.provenance.public_info` tells it (no directory of this machine), the
    image's name, the view, the analysis with its options and the token layout."""
    from vitviz.output.provenance import public_info

    info = public_info(ctx.info)
    return {
        "model": info.name,
        "timm_name": info.timm_name,
        "weights": info.weights.source,
        "weights_location": info.weights.location,
        "precision": info.precision,
        "image": ctx.image_name,
        "view": view,
        "analysis": analysis,
        "options": dict(options),
        "prefix_tokens": list(ctx.layout.prefix),
        "grid": list(ctx.layout.grid),
    }


def download_row(
    stem: str, kind: str, files: Sequence[tuple[str, str, Callable[[], Any], str]]
) -> None:
    """One download button per ``(label, extension, data, MIME type)``, named
    ``STEM-KIND.EXT`` as the page's other files (:func:`vitviz.ui.widgets.download_row`)."""
    widgets.download_row(
        kind, [(label, f"{stem}-{kind}.{ext}", data, mime) for label, ext, data, mime in files]
    )


def lens_columns(result: LogitLens) -> tuple[list[int], np.ndarray]:
    """The classes the lens heatmap shows — the union of every layer's top classes, the
    model's prediction first, then by their highest probability at any layer — and their
    probabilities ``[L, columns]``."""
    probs = probabilities(result.logits)
    union = {int(c) for c in np.asarray(result.top).ravel()} | {int(result.final)}
    others = sorted(union - {int(result.final)}, key=lambda c: (-probs[:, c].max(), c))
    columns = [int(result.final), *others]
    return columns, probs[:, columns]


def norms_rows(result: TokenNorms) -> np.ndarray:
    """``[L, N]`` every token's norm per layer (the canvas's rows; prefix tokens first)."""
    return np.asarray(result.norms, np.float32)


def outlier_rows(result: TokenNorms) -> np.ndarray:
    """``[L, N]`` 1 where a patch token is an outlier, else 0 (prefix tokens 0: the rule is
    about patches)."""
    mask = np.asarray(result.outliers, np.float32)
    prefix = np.zeros((mask.shape[0], result.num_prefix), np.float32)
    return np.concatenate([prefix, mask], axis=1)


def attempt(fetch: Callable[[], T], busy: str, failed: str) -> T | None:
    """``fetch()``, or None after saying why not: the slot busy too long (the catalog's
    ``busy``), the memory budget's refusal or wait (:func:`vitviz.ui.i18n.error_text`), or an
    engine or server error (``failed``, with its words as ``{detail}``): never a traceback."""
    try:
        return fetch()
    except Busy:
        st.info(t(busy))
    except (MemoryRefused, MemoryBusy) as err:  # the page's memory budget: said, page kept
        st.info(error_text(err))
    except VitvizError as err:  # e.g. a server that failed or a model the engine refuses
        st.warning(t(failed, detail=error_text(err)))
    return None
