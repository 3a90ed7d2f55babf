""" "How far can I trust this map?" under the Rollout view's maps: deletion and insertion curves
of the map shown, their random baseline, and its rank correlation with patch occlusion
(:mod:`vitviz.analysis.trust`), computed by the backend (``trust``: the model runs on perturbed
copies of the image, in this process or on a server); cached with the explanation."""

from __future__ import annotations

import hashlib
from functools import partial

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from PIL import Image

from vitviz.errors import MemoryBusy, MemoryRefused, VitvizError
from vitviz.memory.cost import trust_cost
from vitviz.results import TrustReport
from vitviz.ui import resources
from vitviz.ui.context import ViewContext
from vitviz.ui.i18n import error_text, raw, t

STEPS, SEEDS, BATCH = 16, 2, 16
# ~200 perturbed forwards a check: one check at a time per page process, whoever asks, so a
# classroom turning it on together queues instead of multiplying the CPU's work; a check
# that waits longer than WAIT_S is not started (the visitor is told to try again)
CHECKS = resources.JobSlot()
WAIT_S = 60.0
Busy = resources.Busy


def report(ctx: ViewContext, grid: np.ndarray, name: str, target: int) -> TrustReport | None:
    """The trust report of ``grid`` (the map named ``name``) for class ``target``, or None
    when the backend does not offer trust checks."""
    backend = ctx.backend
    if not backend.offers("trust"):
        return None
    values = np.ascontiguousarray(grid, np.float64)
    key = ("trust", name, target, hashlib.sha1(values.tobytes()).hexdigest())

    def compute() -> TrustReport:
        hw = ctx.layout.image_size
        cost = partial(trust_cost, steps=STEPS, batch=BATCH)
        with CHECKS.held(WAIT_S), resources.admitted_work(backend, hw, cost):
            return backend.trust(
                Image.fromarray(ctx.expl.image),
                target,
                {name: values},
                name,
                steps=STEPS,
                seeds=SEEDS,
                batch=BATCH,
                seen=True,
            )

    with st.spinner(t("busy.trust"), show_time=True):
        return ctx.entry.get(key, compute)


def figure(rep: TrustReport) -> go.Figure:
    """The two curves and their random baselines (probability against patches changed)."""
    fig = go.Figure()
    lines = (
        (rep.deletion, t("trust.deletion"), "#d62728", "solid"),
        (rep.insertion, t("trust.insertion"), "#1f77b4", "solid"),
        (rep.random_deletion, t("trust.random_deletion"), "#d62728", "dot"),
        (rep.random_insertion, t("trust.random_insertion"), "#1f77b4", "dot"),
    )
    for curve, name, colour, dash in lines:
        fig.add_trace(
            go.Scatter(
                x=curve.fractions,
                y=curve.probabilities,
                name=f"{name} (AUC {curve.auc:.3f})",
                line=dict(color=colour, dash=dash),
                hovertemplate=raw("trust.hover") + "<extra></extra>",
            )
        )
    fig.update_layout(
        height=260,
        margin=dict(l=10, r=10, t=10, b=10),
        xaxis_title=t("trust.fraction"),
        yaxis_title=t("trust.probability"),
        yaxis_range=[0, 1],
        legend=dict(orientation="h", y=-0.35),
    )
    return fig


def panel(ctx: ViewContext, grid: np.ndarray, name: str, title: str, target: int) -> None:
    """The curves of the map shown under a heading, with a caption that reads them."""
    st.subheader(t("trust.heading"), anchor=False)
    try:
        rep = report(ctx, grid, name, target)
    except Busy:
        st.info(t("trust.busy"))
        return
    except (MemoryRefused, MemoryBusy) as err:  # the page's memory budget: said, page kept
        st.info(error_text(err))
        return
    except VitvizError as err:  # e.g. a server that failed or sent a malformed answer
        st.warning(error_text(err))
        return
    if rep is None:
        st.info(t("trust.remote" if ctx.info.remote else "trust.not_offered"))
        return
    st.plotly_chart(figure(rep), key="trust-chart", config={"displayModeBar": False})
    st.caption(
        t(
            "trust.caption",
            map=title,
            deletion=f"{rep.deletion.auc:.3f}",
            random_deletion=f"{rep.random_deletion.auc:.3f}",
            insertion=f"{rep.insertion.auc:.3f}",
            random_insertion=f"{rep.random_insertion.auc:.3f}",
            rho=f"{rep.correlations[name]:.2f}",
        )
    )
