""" "Does a head matter?" under the Head statistics view: every attention head removed in turn
(Michel, Levy & Neubig, NeurIPS 2019; :mod:`vitviz.engine.ablation`) and the change of one
class's logit and probability, shown as a layers × heads map, a whole-layer column and a table.

The work (``L·H + L + 1`` copies of the image, in batched forwards) starts only on the button,
is admitted by the bytes :func:`ablation_cost` gives before it runs, runs one at a time per page
process (a second visitor sees that they wait) and is kept per (model, image, class, kind) in a
byte-bounded cache, so changing the measure or reopening the view never runs it again.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from PIL import Image

from vitviz.errors import MemoryBusy, MemoryRefused, VitvizError
from vitviz.inputs.classes import probabilities, ranked
from vitviz.memory.cache import ByteLRU
from vitviz.memory.cost import ablation_cost, ablation_forwards, size_text
from vitviz.results import ABLATIONS, HeadAblation
from vitviz.ui import i18n, resources, session, widgets
from vitviz.ui.context import ViewContext
from vitviz.ui.i18n import error_text, fill, t
from vitviz.ui.text import plain

BATCH = 16  # ablated copies of the image per forward
MEASURES = ("logit", "probability")
CLASS, KIND, MEASURE = "abl_class", "abl_kind", "abl_measure"  # widget keys = URL names
CONTEXT = "abl_class_context"  # the (model, image) the class picker last started on
KIND_WORDS = {"zero": "ablation.kind_zero", "mean": "ablation.kind_mean"}
KIND_HELP = {"zero": "ablation.kind_zero_help", "mean": "ablation.kind_mean_help"}
MEASURE_WORDS = {"logit": "ablation.measure_logit", "probability": "ablation.measure_probability"}
# ~L·H forwards an ablation (ViT-B/16: 157 copies of the image): one at a time per page
# process, whoever asks; one that waits longer than WAIT_S is not started (the visitor is told)
RUNS = resources.JobSlot()
WAIT_S = 120.0
NEGATIVE, POSITIVE = "#2166ac", "#b2182b"  # RdBu's ends, as the exports colour a Δ
VIEW = "Head statistics"  # the view the panel is in (its exports' settings say so)
CACHE_BYTES = 4 * 2**20  # a ViT-B/16 result holds ~5 KB: hundreds of (image, class, kind)


Busy = resources.Busy


@st.cache_resource(show_spinner=False)
def results() -> ByteLRU[HeadAblation]:
    """Every session's ablations of this page process by (model, image, class, kind)."""
    return ByteLRU(CACHE_BYTES)


def result_key(ctx: ViewContext, target: int, kind: str) -> tuple[str, str, int, str]:
    """The cache key of one ablation."""
    return (ctx.model_id, ctx.image_digest, int(target), kind)


def measure(ctx: ViewContext, target: int, kind: str) -> HeadAblation:
    """Ablate every head of this image for class ``target`` (or the cached result), with a
    progress bar, admitted by bytes, one ablation at a time per page process.

    Raises:
        Busy: another visitor's ablation ran longer than :data:`WAIT_S`.
        MemoryRefused / MemoryBusy: the page's memory budget.
        VitvizError: the backend's own refusal.
    """
    backend = ctx.backend
    script = threading.current_thread()

    def compute() -> HeadAblation:
        with RUNS.held(WAIT_S):
            note.empty()
            hw = ctx.layout.image_size
            bar = st.progress(0.0, text=t("ablation.progress", done=0, total="…"))

            def progress(done: int, total: int) -> None:
                if threading.current_thread() is script and total > 0:
                    frac = min(1.0, done / total)
                    bar.progress(frac, text=t("ablation.progress", done=done, total=total))

            try:
                seen = Image.fromarray(ctx.expl.image)  # the image as the model saw it
                with resources.admitted_work(backend, hw, partial(ablation_cost, batch=BATCH)):
                    return backend.ablate_heads(
                        seen, target, kind=kind, batch=BATCH, progress=progress
                    )
            finally:
                bar.empty()

    # whoever waits (for the slot, or for another visitor measuring the same thing) is told
    note = st.empty()
    if RUNS.busy():
        note.info(t("ablation.waiting"), icon="⏳")
    try:
        return results().get_or_compute(result_key(ctx, target, kind), compute)
    finally:
        note.empty()


# ----------------------------------------------------------------------------------- controls


def _names(values: Any, name: Callable[[Any], str]) -> Callable[[Any], str | None]:
    """A widget's format function: each value's words made now, in this run's language."""
    return {v: name(v) for v in values}.get


def class_choice(ctx: ViewContext) -> int:
    """The class to explain: the top prediction first, the top classes, then any class by name
    (type to search); a new image or model starts on its top class, a link's class (a valid
    index) is taken on a session's first run."""
    labels, top = ctx.labels, ctx.top_classes
    state = st.session_state
    context = ctx.model_id + ctx.image_digest
    if state.get(CONTEXT) != context or state.get(CLASS) not in range(len(labels)):
        linked = st.query_params.get(CLASS) if CONTEXT not in state else None
        state[CONTEXT] = context
        state[CLASS] = int(linked) if linked in map(str, range(len(labels))) else top[0]
    probs = probabilities(ctx.expl.logits)
    short = not ctx.info.label_set
    chosen = st.selectbox(
        t("ablation.class"),
        ranked(labels, top),
        format_func=_names(
            range(len(labels)),
            lambda i: f"{i18n.class_label(labels[i], i, both=True, short=short)} — {probs[i]:.1%}",
        ),
        key=CLASS,
        persist_state=session.KEEP,
    )
    session.keep_in_url(CLASS, str(chosen), str(top[0]))
    return int(chosen)


def kind_choice(where: Any = st) -> str:
    """Zero or mean ablation (each choice says what it does); in the URL."""
    session.choice(KIND, list(ABLATIONS), "zero")
    kind = where.radio(
        t("ablation.kind"),
        list(ABLATIONS),
        format_func=_names(ABLATIONS, lambda k: t(KIND_WORDS[k])),
        captions=[t(KIND_HELP[k]) for k in ABLATIONS],
        key=KIND,
        persist_state=session.KEEP,
    )
    session.keep_in_url(KIND, kind, "zero")
    return str(kind)


def measure_choice(where: Any = st) -> str:
    """Δ logit or Δ probability; in the URL."""
    session.choice(MEASURE, list(MEASURES), "logit")
    chosen = where.segmented_control(
        t("ablation.measure"),
        list(MEASURES),
        format_func=_names(MEASURES, lambda m: t(MEASURE_WORDS[m])),
        key=MEASURE,
        required=True,
        persist_state=session.KEEP,
    )
    session.keep_in_url(MEASURE, chosen, "logit")
    return str(chosen)


# ----------------------------------------------------------------------------------- the result


def deltas(result: HeadAblation, which: str) -> tuple[np.ndarray, np.ndarray]:
    """Per head ``[L, H]`` and per whole layer ``[L]`` Δ of the chosen measure."""
    if which == "probability":
        return np.asarray(result.probability), np.asarray(result.layer_probability)
    return np.asarray(result.logit), np.asarray(result.layer_logit)


def head_rows(result: HeadAblation, which: str) -> dict[str, list]:
    """The table: every head, most harmful removal first (rank 1: the lowest Δ of the chosen
    measure; ties keep layer-then-head order)."""
    values, _ = deltas(result, which)
    heads = values.shape[1]
    order = np.argsort(values, axis=None, kind="stable")
    layer, head = (order // heads).tolist(), (order % heads).tolist()
    return {
        "layer": layer,
        "head": head,
        "logit": [float(result.logit[a, b]) for a, b in zip(layer, head, strict=True)],
        "probability": [float(result.probability[a, b]) for a, b in zip(layer, head, strict=True)],
        "rank": list(range(1, len(order) + 1)),
    }


def _limit(values: np.ndarray) -> float:
    """The colour scale's half-width: symmetric about 0 (never 0 itself)."""
    top = float(np.max(np.abs(values))) if values.size else 0.0
    return top if top > 0 and math.isfinite(top) else 1.0


def heads_figure(values: np.ndarray, which: str) -> go.Figure:
    """Δ of every head as clickable squares, layers down and heads across, in diverging
    colours centred on 0 (blue: the class lost, red: it gained, as
    :func:`vitviz.output.research.ablation_svg` draws them). Scatter squares, not a
    heatmap: Streamlit reports no selection for heatmap traces."""
    layers, heads = values.shape
    ll, hh = np.meshgrid(np.arange(layers), np.arange(heads), indexing="ij")
    custom = np.column_stack([ll.ravel(), hh.ravel(), values.ravel()])
    edge = _limit(values)
    fig = go.Figure(
        go.Scatter(
            x=hh.ravel(),
            y=ll.ravel(),
            mode="markers",
            marker=dict(
                symbol="square",
                size=max(10, min(28, 320 // max(layers, heads))),
                color=values.ravel(),
                colorscale="RdBu_r",  # low blue, 0 white, high red
                cmin=-edge,
                cmax=edge,
                cmid=0.0,
                colorbar=dict(title="Δ"),
                line=dict(width=0.5, color="#888"),
            ),
            customdata=custom,
            hovertemplate=fill("ablation.hover", measure=t(MEASURE_WORDS[which]))
            + "<extra></extra>",
            name="heads",
        )
    )
    fig.update_layout(
        xaxis_title=t("figures.head"),
        yaxis_title=t("figures.layer"),
        height=max(260, min(520, 30 * layers + 90)),
        margin=dict(l=10, r=10, t=10, b=10),
        dragmode=False,
        clickmode="event+select",
    )
    fig.update_xaxes(dtick=1)
    fig.update_yaxes(dtick=1, autorange="reversed")
    return fig


def layers_figure(values: np.ndarray, which: str) -> go.Figure:
    """Δ when every head of a layer is removed at once, one bar per layer (rows as in
    :func:`heads_figure`), blue for a loss and red for a gain."""
    layers = len(values)
    fig = go.Figure(
        go.Bar(
            x=values,
            y=np.arange(layers),
            orientation="h",
            marker=dict(color=[NEGATIVE if v < 0 else POSITIVE for v in values]),
            hovertemplate=fill("ablation.layer_hover", measure=t(MEASURE_WORDS[which]))
            + "<extra></extra>",
            name="layers",
        )
    )
    fig.update_layout(
        xaxis_title=t("ablation.whole_layer"),
        yaxis_title=t("figures.layer"),
        height=max(260, min(520, 30 * layers + 90)),
        margin=dict(l=10, r=10, t=10, b=10),
        dragmode=False,
        showlegend=False,
    )
    fig.update_xaxes(nticks=4, tickangle=0)
    fig.update_yaxes(dtick=1, autorange="reversed")
    fig.add_vline(x=0, line_width=1, line_color="#444")
    return fig


def show(
    ctx: ViewContext,
    result: HeadAblation,
    which: str,
    on_point: Callable[[str, int], None],
    on_row: Callable[[str, dict], None],
) -> None:
    """The result: what was measured, the two figures and the ranked table."""
    values, layer_values = deltas(result, which)
    st.caption(
        t(
            "ablation.caption",
            label=plain(ctx.class_title(result.target)),
            kind=t(KIND_WORDS[result.kind]),
            logit=f"{result.clean_logit:.3f}",
            probability=f"{result.clean_probability:.1%}",
            forwards=result.forwards,
            batch=result.batch,
        )
    )
    st.caption(t("ablation.sign"))
    c1, c2 = st.columns([3, 1.3])
    with c1:
        st.plotly_chart(
            heads_figure(values, which),
            key="ablation",
            on_select=lambda: on_point("ablation", ctx.info.heads),
            selection_mode="points",
            config={"displayModeBar": False},
        )
    with c2:
        st.plotly_chart(
            layers_figure(layer_values, which),
            key="ablation-layers",
            config={"displayModeBar": False},
        )
    downloads(ctx, result, which)
    table = head_rows(result, which)
    st.dataframe(
        {
            t("heads_table.layer"): table["layer"],
            t("heads_table.head"): table["head"],
            t("ablation.delta_logit"): table["logit"],
            t("ablation.delta_probability"): table["probability"],
            t("ablation.rank"): table["rank"],
        },
        key="ablation_table",
        on_select=lambda: on_row("ablation_table", table),
        selection_mode="single-row",
        hide_index=True,
        height=280,
        column_config={
            t("ablation.delta_logit"): st.column_config.NumberColumn(format="%.4f"),
            t("ablation.delta_probability"): st.column_config.NumberColumn(format="%.5f"),
        },
    )


def settings(ctx: ViewContext, result: HeadAblation) -> dict[str, Any]:
    """Every setting of one ablation, for its exports: the model (no directory of this
    machine), the image, the view, the class, the kind and the batch."""
    from vitviz.output import exports
    from vitviz.output.provenance import public_info

    labels = ctx.labels
    label = labels[result.target] if 0 <= result.target < len(labels) else str(result.target)
    out = exports.make_settings(
        public_info(ctx.info),
        image=ctx.image_name,
        method="head-ablation",
        options={"kind": result.kind, "batch": result.batch},
        layout=ctx.layout,
        view=VIEW,
        target=(result.target, label),
    )
    for drawn in ("colormap", "alpha", "smooth"):  # a map's drawing: not this result's
        out.pop(drawn, None)
    return out


def downloads(ctx: ViewContext, result: HeadAblation, which: str) -> None:
    """CSV, npz and SVG of the result (:mod:`vitviz.output.research`), each made when clicked."""
    from vitviz.output import research

    given = settings(ctx, result)
    stem = f"{ctx.stem}-ablation-{result.kind}-class{result.target}"
    title = f"Head ablation ({result.kind}), class {given['class_index']}: {given['class_label']}"
    files = (
        ("csv", "text/csv", lambda: research.ablation_csv(result, given)),
        ("npz", "application/octet-stream", lambda: research.research_npz(result, given)),
        (
            "svg",
            "image/svg+xml",
            lambda: research.ablation_svg(result, metric=which, title=title),
        ),
    )
    words = {
        "csv": "ablation.download_csv",
        "npz": "ablation.download_npz",
        "svg": "ablation.download_svg",
    }
    widgets.download_row(
        "abl",
        [
            (t(words[ext]), f"{stem}-{which}.svg" if ext == "svg" else f"{stem}.{ext}", make, mime)
            for ext, mime, make in files
        ],
    )


def panel(
    ctx: ViewContext,
    on_point: Callable[[str, int], None],
    on_row: Callable[[str, dict], None],
) -> None:
    """The whole section: its heading, the three choices, the button and the result.

    Args:
        ctx: the view's context.
        on_point: chart callback ``(key, heads)`` opening a clicked head in the Heads view.
        on_row: table callback ``(key, table)`` opening a selected row's head there.
    """
    st.subheader(t("ablation.heading"), anchor=False)
    backend = ctx.backend
    if not backend.offers("head_ablation"):
        st.info(t("ablation.remote" if ctx.info.remote else "ablation.not_offered"))
        return
    if not ctx.labels or not ctx.top_classes:
        st.info(t("ablation.not_offered"))
        return
    st.caption(t("ablation.intro"))
    target = class_choice(ctx)
    c1, c2 = st.columns([2, 1])
    kind = kind_choice(c1)
    which = measure_choice(c2)
    info = ctx.info
    heads = info.layers * info.heads
    pressed = st.button(
        t(
            "ablation.run",
            layers=info.layers,
            heads=info.heads,
            count=heads,
            forwards=ablation_forwards(info.layers, info.heads, BATCH),
            batch=BATCH,
        ),
        key="abl_run",
    )
    result = results().get(result_key(ctx, target, kind))
    if result is None and pressed:
        try:
            result = measure(ctx, target, kind)
        except Busy:
            st.info(t("ablation.busy"))
            return
        except MemoryRefused as err:  # can never fit: the sizes and the way out
            st.info(
                t(
                    "ablation.refused",
                    needed=size_text(err.needed),
                    available=size_text(err.available),
                    total=size_text(err.total),
                )
            )
            return
        except MemoryBusy as err:
            st.info(error_text(err))
            return
        except VitvizError as err:  # e.g. the backend's own refusal
            st.warning(error_text(err))
            return
    if result is None:
        st.caption(t("ablation.not_yet"))
        return
    show(ctx, result, which, on_point, on_row)
