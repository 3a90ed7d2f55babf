"""The Logit lens and Token norms views (issue 24, points 2 and 3), driven by AppTest: what the
page shows against the backend's own result computed here for the same seen image, and the
softmax, ranks, medians and attention shares recomputed independently (torch, numpy by hand);
options from a link; a backend without the capability; a refusal over the memory budget."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import ASSETS, plotly_array, words
from tests.test_app import canvas, chart, ok
from tests.test_exports import deferred  # noqa: F401 - a fixture
from tests.test_page_state import from_url
from vitviz.backends.local import LocalBackend
from vitviz.inputs.images import decode_image
from vitviz.memory.cost import WorkCost
from vitviz.ui import canvas as vcanvas
from vitviz.ui import depth, i18n

pytestmark = pytest.mark.usefixtures("fresh_cache")  # tests/conftest.py

SAMPLE = "demo-scene-1.png"  # the page's first image offline


@pytest.fixture(scope="module")
def seen(demo):
    """The demo model's explanation of the page's default sample, and that image as seen."""
    image = decode_image((ASSETS / SAMPLE).read_bytes(), SAMPLE).image
    expl = demo.explain([image])[0]
    return expl, Image.fromarray(expl.image)


def texts(elements) -> str:
    return " ".join(words(e.value) for e in elements)


# ------------------------------------------------------------------------------ logit lens


def test_the_lens_heatmap_is_the_backends_lens(demo, seen):
    expl, image = seen
    at = from_url(view="Logit lens")
    ok(at)
    ref = demo.logit_lens(image, top_k=5)
    logits = torch.tensor(np.asarray(ref.logits, np.float64))
    probs = torch.softmax(logits, dim=-1).numpy()  # independent of the page's softmax
    # the final row is the model's prediction, and the explanation's top class
    assert ref.final == expl.predictions[0].index == int(np.argmax(probs[-1]))
    columns = {int(c) for c in torch.topk(logits, 5, dim=-1).indices.ravel()} | {ref.final}
    fig = chart(at, "lens-heatmap")
    heat = fig["data"][0]
    z = plotly_array(heat["z"]).astype(float)
    shown = plotly_array(heat["customdata"]).astype(float)  # the logits behind each cell
    assert z.shape == (len(probs), len(columns))
    # each column is one of the union's classes: find it by its logits, then its probabilities
    order = [
        int(np.argmin(np.abs(logits.numpy().T - shown[:, j]).sum(axis=1)))
        for j in range(z.shape[1])
    ]
    assert set(order) == columns and order[0] == ref.final
    np.testing.assert_allclose(z, probs[:, order], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(shown, logits.numpy()[:, order], rtol=1e-5, atol=1e-5)
    label = i18n.class_label(demo.labels[ref.final], ref.final)
    assert fig["layout"]["xaxis"]["ticktext"][0] == f"★ {label}"
    assert fig["layout"]["shapes"][0]["x0"] == -0.5 and fig["layout"]["shapes"][0]["x1"] == 0.5
    # the prediction's probability and rank per layer
    final = chart(at, "lens-final")["data"]
    np.testing.assert_allclose(
        plotly_array(final[0]["y"]).astype(float), probs[:, ref.final], rtol=1e-5
    )
    ranks = 1 + (logits > logits[:, ref.final : ref.final + 1]).sum(dim=1).numpy()
    np.testing.assert_array_equal(plotly_array(final[1]["y"]).astype(int), ranks)
    # the caption: the first layer from which the prediction stays on top, and the output row
    settled = max((i + 1 for i, r in enumerate(ranks) if r != 1), default=0)
    caption = texts(at.caption)
    assert f"is the top class from layer {settled} on" in caption
    assert f"the last row (layer {len(ranks) - 1}) is the model's own output" in caption
    assert "approximation" in caption


def test_the_lens_top_k_survives_a_copied_link(demo, seen):
    _, image = seen
    at = from_url(view="Logit lens")
    ok(at)
    assert "lens_top" not in at.query_params  # the default keeps links short
    at.slider(key="lens_top").set_value(2).run()
    ok(at)
    params = {k: at.query_params[k] for k in at.query_params}
    assert params["lens_top"] == "2"
    again = from_url(**params)
    ok(again)
    assert again.slider(key="lens_top").value == 2
    ref = demo.logit_lens(image, top_k=2)
    union = {int(c) for c in np.asarray(ref.top).ravel()} | {ref.final}
    z = plotly_array(chart(again, "lens-heatmap")["data"][0]["z"])
    assert z.shape[1] == len(union)
    # a malformed link opens the default, and the bad value leaves the URL
    bad = from_url(view="Logit lens", lens_top="99")
    ok(bad)
    assert bad.slider(key="lens_top").value == depth.TOP_K[2]
    assert "lens_top" not in bad.query_params


# ----------------------------------------------------------------------------- token norms


def test_the_norms_maps_are_the_backends_norms(demo, seen):
    expl, image = seen
    k = 1.5  # the demo model's patches stay within 2× the median: 1.5 finds some outliers
    at = from_url(view="Token norms", norms_k="1.5")
    ok(at)
    assert at.slider(key="norms_k").value == k
    ref = demo.token_norms(image, k=k)
    p = expl.layout.num_prefix
    data = vcanvas.decode(canvas(at, "norms-canvas"))
    np.testing.assert_allclose(data["maps"][:, 0], ref.norms[:, p:], rtol=1e-6)
    np.testing.assert_allclose(data["prefix"][:, 0], ref.norms[:, :p], rtol=1e-6)
    # the outliers by the rule written out: norm > k × the layer's median patch norm
    patches = np.asarray(ref.norms, np.float64)[:, p:]
    mask = patches > k * np.median(patches, axis=1, keepdims=True)
    assert mask.any()  # the check can fail
    marked = vcanvas.decode(canvas(at, "norms-outliers"))["maps"][:, 0]
    np.testing.assert_array_equal(marked, mask.astype(np.float32))
    # the strip of extra tokens says norms, not attention
    assert canvas(at, "norms-canvas")["text"]["to_extra"] == "the extra tokens' norms:"
    assert canvas(at, "norms-outliers")["text"]["to_extra"] == "the extra tokens (not judged):"
    share = plotly_array(chart(at, "norms-share")["data"][0]["y"]).astype(float)
    np.testing.assert_allclose(share, mask.mean(axis=1))
    # the readout's last-layer attention (mean over heads) to the last layer's outliers
    row = expl.layout.readout_weights() @ np.asarray(expl.attention[-1], np.float64).mean(axis=0)
    expected = float(row[p:][mask[-1]].sum())
    assert expected > 0
    said = texts(at.markdown)
    assert f"gives **{expected:.1%}** of its attention" in said
    assert f"to the {int(mask[-1].sum())} outlier patches" in said
    caption = texts(at.caption)
    assert "k = 1.5" in caption and "median patch norm" in caption
    assert "no register tokens" in caption  # the demo model has none


def test_the_norms_options_survive_a_copied_link():
    at = from_url(view="Token norms", norms_k="2.5", norms_layer="2")
    ok(at)
    assert at.slider(key="norms_k").value == 2.5
    assert canvas(at, "norms-canvas")["layer"] == 2 == canvas(at, "norms-outliers")["layer"]
    assert at.query_params.get("norms_k") == "2.5" and at.query_params.get("norms_layer") == "2"
    at.slider(key="norms_k").set_value(4.0).run()
    assert at.query_params.get("norms_k") == "4"
    bad = from_url(view="Token norms", norms_k="nan", norms_layer="99")
    ok(bad)
    assert bad.slider(key="norms_k").value == 3.0
    assert canvas(bad, "norms-canvas")["layer"] == 5  # the demo's last layer
    assert "norms_k" not in bad.query_params and "norms_layer" not in bad.query_params


def test_a_model_with_registers_shows_their_norms():
    name = "vit_little_patch16_reg4_gap_256"  # random weights: 4 registers, average pooling
    at = from_url(
        model="__timm__", timm_name=name, random_weights="true", view="Token norms", sample=SAMPLE
    )
    ok(at)
    from vitviz.ui import resources

    backend = resources.page_caches().models.get((name, None, True))  # the page's own model
    assert isinstance(backend, LocalBackend)
    image = decode_image((ASSETS / SAMPLE).read_bytes(), SAMPLE, reduce=backend.geometry).image
    ref = backend.token_norms(image, k=3.0)  # decoded to the model's input: as the page
    layout = backend.explain([image], seen=True)[0].layout
    regs = layout.token_indices("reg")
    assert len(regs) == 4
    traces = chart(at, "norms-registers")["data"]
    assert [t["name"] for t in traces[:4]] == ["REG1", "REG2", "REG3", "REG4"]
    for r, trace in zip(regs, traces[:4], strict=True):
        np.testing.assert_allclose(
            plotly_array(trace["y"]).astype(float), ref.norms[:, r], rtol=1e-5
        )
    median = np.median(np.asarray(ref.norms, np.float64)[:, layout.num_prefix :], axis=1)
    np.testing.assert_allclose(plotly_array(traces[4]["y"]).astype(float), median, rtol=1e-5)
    assert "no register tokens" not in texts(at.caption)


# -------------------------------------------------------------- not offered, over budget


@pytest.mark.parametrize(
    ("view", "capability", "key"),
    [
        ("Logit lens", "logit_lens", "lens.not_offered"),
        ("Token norms", "token_norms", "norms.not_offered"),
    ],
)
def test_a_backend_without_the_capability_says_why(monkeypatch, view, capability, key):
    offers = LocalBackend.offers
    monkeypatch.setattr(
        LocalBackend, "offers", lambda self, name: name != capability and offers(self, name)
    )
    at = from_url(view=view, lang="zh-Hant")
    ok(at)
    assert i18n.t(key, "zh-Hant") in [i.value for i in at.info]
    drawn = [e.proto.id for e in (*at.get("plotly_chart"), *at.get("bidi_component"))]
    assert not [i for i in drawn if re.search(r"-(lens|norms)-", i)], drawn


@pytest.mark.parametrize(
    ("view", "work"), [("Logit lens", "lens_work"), ("Token norms", "norms_work")]
)
@pytest.mark.parametrize("lang", ["en", "zh-Hant"])
def test_work_over_the_budget_is_refused_in_words(monkeypatch, view, work, lang):
    huge = WorkCost("work", 2**50, 0, {"everything": 2**50})  # more than any page's budget
    monkeypatch.setattr(depth, work, lambda *args: huge)
    calls = []
    for method in ("logit_lens", "token_norms"):
        real = getattr(LocalBackend, method)
        monkeypatch.setattr(
            LocalBackend,
            method,
            lambda self, *a, _r=real, **kw: calls.append(1) or _r(self, *a, **kw),
        )
    at = from_url(view=view, lang=lang)
    ok(at)
    said = " ".join(i.value for i in at.info)
    template = i18n.t(
        "error_code.memory_refused", lang, what="\0", needed="\0", available="\0", total="\0"
    )
    pieces = [re.escape(s) for s in template.split("\0")]
    assert re.search(".+".join(pieces), said), said
    assert i18n.t("memory.work", lang) in said
    assert calls == []  # refused before any work


# ------------------------------------------------------------------------------- downloads


def test_the_downloads_hold_the_numbers_shown(demo, seen, deferred):  # noqa: F811
    import pandas as pd

    from vitviz.output.research import read_settings

    _, image = seen
    stem = "demo-scene-1-demo"
    at = from_url(view="Logit lens", lens_top="3")
    ok(at)
    ref = demo.logit_lens(image, top_k=3)
    table = pd.read_csv(io.StringIO(deferred[f"{stem}-lens.csv"]()), comment="#")
    tops = table[table["rank"] <= 3].sort_values(["layer", "rank"])
    np.testing.assert_array_equal(tops["class"].to_numpy(), np.asarray(ref.top).ravel())
    np.testing.assert_allclose(
        tops["probability"].to_numpy().reshape(ref.top.shape), ref.top_probability, rtol=1e-5
    )
    npz = np.load(io.BytesIO(deferred[f"{stem}-lens.npz"]()))
    np.testing.assert_allclose(npz["logits"], ref.logits, rtol=1e-6)
    assert read_settings(npz)["options"] == {"top": 3}
    assert read_settings(npz)["image"] == SAMPLE and read_settings(npz)["view"] == "Logit lens"
    assert deferred[f"{stem}-lens.svg"]().lstrip().startswith("<")
    at = from_url(view="Token norms", norms_k="1.5", norms_layer="4")
    ok(at)
    ref = demo.token_norms(image, k=1.5)
    table = pd.read_csv(io.StringIO(deferred[f"{stem}-norms.csv"]()), comment="#")
    np.testing.assert_allclose(
        table["norm"].to_numpy().reshape(ref.norms.shape), ref.norms, rtol=1e-5
    )
    patches = table[table["kind"] == "patch"]["outlier"].to_numpy().astype(bool)
    np.testing.assert_array_equal(patches.reshape(ref.outliers.shape), ref.outliers)
    npz = np.load(io.BytesIO(deferred[f"{stem}-norms.npz"]()))
    assert read_settings(npz)["options"] == {"k": 1.5, "layer": 4}
    assert "svg" in deferred[f"{stem}-norms.svg"]()[:400]


# --------------------------------------------------------------------- cached, one at a time


def test_a_rerun_or_a_return_to_an_option_does_not_run_the_model_again(monkeypatch):
    calls: list[str] = []
    for method in ("logit_lens", "token_norms"):
        real = getattr(LocalBackend, method)

        def counting(self, *args, _real=real, _name=method, **kwargs):
            calls.append(_name)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(LocalBackend, method, counting)
    at = from_url(view="Logit lens")
    ok(at)
    at.run()
    at.slider(key="lens_top").set_value(3).run()
    at.slider(key="lens_top").set_value(5).run()
    ok(at)
    assert calls == ["logit_lens", "logit_lens"]  # top 5, top 3; top 5 again from the cache
    at.segmented_control(key="view").set_value("Token norms").run()
    at.slider(key="norms_k").set_value(2.0).run()
    at.slider(key="norms_k").set_value(3.0).run()
    ok(at)
    assert calls[2:] == ["token_norms", "token_norms"]


def test_a_visitor_waiting_too_long_for_the_slot_is_told_to_try_again(monkeypatch):
    monkeypatch.setattr(depth, "WAIT_S", 0.05)
    assert depth.JOBS.acquire(timeout=60)  # another visitor's job holds the slot
    try:
        at = from_url(view="Token norms")
    finally:
        depth.JOBS.release()
    ok(at)
    assert i18n.t("norms.wait") in [i.value for i in at.info]
    # the refusal was not cached: the next run computes the norms
    at.run()
    ok(at)
    assert canvas(at, "norms-canvas")["layers"] == 6
