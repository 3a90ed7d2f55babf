"""The page's "Does a head matter?" (issue 24, point 1) in the Head statistics view, driven by
AppTest on the demo model: the numbers shown against :meth:`LocalBackend.ablate_heads` run
independently here on the same seen image, class and kind; the work only on the button, once
per (model, image, class, kind); its options in the URL; a head opened from the result; the
notes for a backend without ablation, a busy page and work over the memory budget."""

from __future__ import annotations

import csv
import io
import json
import threading
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import ASSETS, plotly_array, words
from tests.test_app import chart, ok, start
from tests.test_browser import page as browser_page  # noqa: F401 - a fixture
from tests.test_browser import server  # noqa: F401 - a fixture (the page in a process)
from tests.test_exports import deferred  # noqa: F401 - a fixture
from tests.test_page_state import from_url
from vitviz.backends.local import LocalBackend
from vitviz.inputs.images import decode_image
from vitviz.memory.cost import size_text
from vitviz.results import HeadAblation
from vitviz.ui import ablation_panel as panel
from vitviz.ui import i18n, resources

pytestmark = pytest.mark.usefixtures("fresh_cache")  # tests/conftest.py

VIEW = "Head statistics"
SAMPLE = "demo-scene-1.png"  # the page's default sample offline


@pytest.fixture(scope="module")
def reference(demo) -> dict:
    """The engine's own ablations of the page's default image, as the model saw it: the top
    class with both kinds and another class (computed here, before any test counts calls)."""
    data = (ASSETS / SAMPLE).read_bytes()
    seen = decode_image(data, SAMPLE, reduce=demo.geometry).image  # what the page explains
    expl = demo.explain([seen], seen=True)[0]
    top = [p.index for p in expl.predictions]
    other = top[2]
    out = {"top": top[0], "other": other, "shape": demo.memory_shape()}
    out["hw"] = expl.layout.image_size
    for cls, kind in ((top[0], "zero"), (top[0], "mean"), (other, "mean")):
        out[cls, kind] = demo.ablate_heads(seen, cls, kind=kind)
    return out


@pytest.fixture
def calls(monkeypatch) -> list[tuple[int, str]]:
    """Every (class, kind) the page asks the backend to ablate."""
    seen: list[tuple[int, str]] = []
    original = LocalBackend.ablate_heads

    def counted(self, image, target, **options):
        seen.append((int(target), options.get("kind", "zero")))
        return original(self, image, target, **options)

    monkeypatch.setattr(LocalBackend, "ablate_heads", counted)
    return seen


def on_view(**state) -> AppTest:
    at = start(**state)
    at.segmented_control(key="view").set_value(VIEW).run()
    ok(at)
    return at


def table(at: AppTest):
    """The ablation table as shown (a DataFrame with the catalog's column names)."""
    frames = [d.value for d in at.dataframe if i18n.t("ablation.rank", "en") in d.value.columns]
    assert len(frames) == 1, [list(d.value.columns) for d in at.dataframe]
    return frames[0]


def has_result(at: AppTest) -> bool:
    return any(i18n.t("ablation.rank", "en") in d.value.columns for d in at.dataframe)


def captions(at: AppTest) -> str:
    return "\n".join(words(c.value) for c in at.caption)


def assert_shows(at: AppTest, ref: HeadAblation, measure: str) -> None:
    """The table, the heads' squares and the whole-layer bars equal ``ref``."""
    df = table(at)
    values = ref.logit if measure == "logit" else ref.probability
    heads = values.shape[1]
    order = np.argsort(values, axis=None, kind="stable")  # rank 1: the lowest Δ
    np.testing.assert_array_equal(df["layer"], order // heads)
    np.testing.assert_array_equal(df["head"], order % heads)
    np.testing.assert_array_equal(df["rank"], np.arange(1, values.size + 1))
    layer, head = df["layer"].to_numpy(), df["head"].to_numpy()
    np.testing.assert_allclose(df["Δ logit"], ref.logit[layer, head], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(
        df["Δ probability"], ref.probability[layer, head], rtol=1e-6, atol=1e-12
    )
    squares = chart(at, "ablation")["data"][0]
    custom = plotly_array(squares["customdata"]).astype(float).reshape(-1, 3)
    np.testing.assert_array_equal(custom[:, :2], np.argwhere(np.ones_like(values)))  # layer-major
    np.testing.assert_allclose(custom[:, 2], values.ravel(), rtol=1e-6, atol=1e-12)
    marker = squares["marker"]
    assert marker["cmid"] == 0 and marker["cmin"] == -marker["cmax"]  # diverging, centred on 0
    bars = chart(at, "ablation-layers")["data"][0]
    whole = ref.layer_logit if measure == "logit" else ref.layer_probability
    np.testing.assert_allclose(plotly_array(bars["x"]), whole, rtol=1e-6, atol=1e-12)


# ------------------------------------------------------------------------------ the result


def test_the_button_measures_every_head_and_shows_the_engines_numbers(reference, calls):
    at = on_view()
    assert not has_result(at) and calls == []  # opening the view runs nothing
    top = reference["top"]
    assert at.selectbox(key="abl_class").value == top  # the top prediction by default
    assert at.radio(key="abl_kind").value == "zero"
    assert at.segmented_control(key="abl_measure").value == "logit"
    button = at.button(key="abl_run")
    shape = reference["shape"]
    count = shape.layers * shape.heads
    forwards = -(-(count + shape.layers + 1) // panel.BATCH)
    assert f"{shape.layers}·{shape.heads} = {count} heads" in button.label
    assert f"{forwards} forwards in batches of {panel.BATCH}" in button.label
    button.click().run()
    ok(at)
    assert calls == [(top, "zero")]
    ref = reference[top, "zero"]
    assert_shows(at, ref, "logit")
    said = captions(at)
    assert f"logit {ref.clean_logit:.3f}" in said
    assert f"probability {ref.clean_probability:.1%}" in said
    assert "heads removed by **zero**" in said
    assert "Δ = ablated − clean" in said


def test_switching_the_measure_or_the_view_does_not_run_the_model_again(reference, calls):
    at = on_view()
    at.button(key="abl_run").click().run()
    top = reference["top"]
    assert calls == [(top, "zero")]
    at.segmented_control(key="abl_measure").set_value("probability").run()
    ok(at)
    assert calls == [(top, "zero")]
    assert_shows(at, reference[top, "zero"], "probability")
    at.segmented_control(key="view").set_value("Heads").run()
    at.segmented_control(key="view").set_value(VIEW).run()
    ok(at)
    assert has_result(at) and calls == [(top, "zero")]  # reopened: shown from the cache
    # another kind is another measurement: not shown until asked for, then run once
    at.radio(key="abl_kind").set_value("mean").run()
    assert not has_result(at) and calls == [(top, "zero")]
    at.button(key="abl_run").click().run()
    ok(at)
    assert calls == [(top, "zero"), (top, "mean")]
    assert_shows(at, reference[top, "mean"], "probability")
    assert "heads removed by **mean**" in captions(at)


def test_a_copied_link_brings_the_options_back(reference, calls):
    other = reference["other"]
    at = on_view()
    at.selectbox(key="abl_class").set_value(other).run()
    at.radio(key="abl_kind").set_value("mean").run()
    at.segmented_control(key="abl_measure").set_value("probability").run()
    ok(at)
    params = {k: at.query_params[k] for k in at.query_params}
    assert params["abl_class"] == str(other)
    assert params["abl_kind"] == "mean" and params["abl_measure"] == "probability"
    again = from_url(**params)
    ok(again)
    assert again.selectbox(key="abl_class").value == other
    assert again.radio(key="abl_kind").value == "mean"
    assert again.segmented_control(key="abl_measure").value == "probability"
    assert not has_result(again) and calls == []
    again.button(key="abl_run").click().run()
    ok(again)
    assert calls == [(other, "mean")]
    assert_shows(again, reference[other, "mean"], "probability")
    # the same link opened by someone else: the result is on the page at once, not run again
    third = from_url(**params)
    ok(third)
    assert has_result(third) and calls == [(other, "mean")]
    assert_shows(third, reference[other, "mean"], "probability")


def test_a_link_with_values_the_page_does_not_have_gets_the_defaults(reference):
    at = from_url(view=VIEW, abl_class="99999", abl_kind="<script>", abl_measure="-1")
    ok(at)
    assert at.selectbox(key="abl_class").value == reference["top"]
    assert at.radio(key="abl_kind").value == "zero"
    assert at.segmented_control(key="abl_measure").value == "logit"


def test_the_downloads_hold_the_result_shown(reference, deferred):  # noqa: F811
    at = on_view()
    at.button(key="abl_run").click().run()
    at.segmented_control(key="abl_measure").set_value("probability").run()
    ok(at)
    top = reference["top"]
    ref = reference[top, "zero"]
    stem = f"demo-scene-1-demo-ablation-zero-class{top}"
    labels = {b.proto.label for b in at.get("download_button")}
    assert {"Ablation (CSV)", "Ablation (npz)", "Ablation (SVG)"} <= labels
    assert {f"{stem}.csv", f"{stem}.npz", f"{stem}-probability.svg"} <= set(deferred)
    text = deferred[f"{stem}.csv"]()
    df = pd.read_csv(io.StringIO(text), comment="#")
    heads = df[df["head"] != "all"]
    layer, head = heads["layer"].to_numpy(int), heads["head"].to_numpy(int)
    np.testing.assert_allclose(heads["delta_logit"], ref.logit[layer, head], rtol=1e-8)
    np.testing.assert_allclose(heads["delta_probability"], ref.probability[layer, head], rtol=1e-8)
    whole = df[df["head"] == "all"]
    np.testing.assert_allclose(whole["delta_logit"], ref.layer_logit, rtol=1e-8)
    said = {
        row[1].partition(": ")[0]: json.loads(row[1].partition(": ")[2])
        for row in csv.reader(io.StringIO(text))
        if row and row[0] == "#" and ": " in row[1]
    }
    assert said["class_index"] == top and said["kind"] == "zero"
    assert said["view"] == "Head statistics" and said["image"] == SAMPLE
    assert said["options"] == {"kind": "zero", "batch": panel.BATCH}
    with np.load(io.BytesIO(deferred[f"{stem}.npz"]())) as npz:
        np.testing.assert_array_equal(npz["logit"], ref.logit)
        np.testing.assert_array_equal(npz["layer_probability"], ref.layer_probability)
        assert json.loads(str(npz["settings"]))["class_index"] == top
    svg = ET.fromstring(deferred[f"{stem}-probability.svg"]())
    cells = [e for e in svg.iter() if e.get("class") == "head-cell"]
    assert len(cells) == ref.logit.size  # one cell per head, of the measure shown
    assert "Δ probability" in "".join(svg.itertext())


# ------------------------------------------------------------------------- opening a head


def _open(point: int | None, row: int | None, heads: int, table: dict) -> None:
    """A page script that calls the view's callbacks with a selection in session state."""
    import streamlit as st

    from vitviz.ui.views import statistics

    if point is not None:
        st.session_state["ablation"] = {"selection": {"points": [{"point_index": point}]}}
        statistics._jump("ablation", heads)
    if row is not None:
        st.session_state["ablation_table"] = {"selection": {"rows": [row]}}
        statistics._open_row("ablation_table", table)


def test_a_clicked_square_or_a_selected_row_opens_that_head(reference):
    ref = reference[reference["top"], "zero"]
    layers, heads = ref.logit.shape
    rows = panel.head_rows(ref, "logit")
    # a square: its point index is layer-major, as the figure lays the points out
    fig = panel.heads_figure(np.asarray(ref.logit), "logit").to_plotly_json()
    custom = plotly_array(fig["data"][0]["customdata"]).reshape(-1, 3)
    point = 4
    at = AppTest.from_function(_open, args=(point, None, heads, rows), default_timeout=60).run()
    assert not at.exception
    assert (at.session_state["layer"], at.session_state["head"]) == tuple(custom[point, :2])
    assert at.session_state["view"] == "Heads"
    assert (at.query_params["layer"], at.query_params["head"]) == ("1", "1")  # 4 = 1·3 + 1
    # a row of the ranked table: the head in that row, not the row's number
    row = 2
    at = AppTest.from_function(_open, args=(None, row, heads, rows), default_timeout=60).run()
    assert not at.exception
    assert at.session_state["view"] == "Heads"
    want = np.unravel_index(np.argsort(ref.logit, axis=None, kind="stable")[row], (layers, heads))
    assert (at.session_state["layer"], at.session_state["head"]) == tuple(int(v) for v in want)


# ------------------------------------------------------------------------------ the refusals


def test_a_backend_without_head_ablation_says_why(monkeypatch, calls):
    offers = LocalBackend.offers
    monkeypatch.setattr(
        LocalBackend, "offers", lambda self, c: c != "head_ablation" and offers(self, c)
    )
    at = on_view()
    notes = [i.value for i in at.info]
    assert i18n.t("ablation.not_offered", "en") in notes
    assert not [b for b in at.button if b.key == "abl_run"] and calls == []
    zh = on_view(lang="zh-Hant")
    assert i18n.t("ablation.not_offered", "zh-Hant") in [i.value for i in zh.info]


def test_work_over_the_memory_budget_is_refused_before_it_runs(reference, calls, monkeypatch):
    at = on_view()
    cost = panel.ablation_cost(reference["shape"], reference["hw"], panel.BATCH)
    memory = resources.page_caches().memory
    monkeypatch.setattr(memory, "total", memory.base + cost.peak // 2)  # it can never fit
    at.button(key="abl_run").click().run()
    ok(at)
    assert calls == [] and not has_result(at)
    said = [i.value for i in at.info if "Measuring every head" in i.value]
    assert len(said) == 1, [i.value for i in at.info]
    assert f"would need {size_text(cost.peak)} of memory" in said[0]
    assert f"(its memory budget is {size_text(memory.total)})" in said[0]


def test_a_second_visitor_waits_for_the_running_ablation_and_is_told(reference, calls, monkeypatch):
    monkeypatch.setattr(panel, "WAIT_S", 0.5)
    at = on_view()
    assert panel.RUNS.acquire(timeout=60)  # another visitor's ablation holds the slot
    try:
        at.button(key="abl_run").click().run()
    finally:
        panel.RUNS.release()
    ok(at)
    assert calls == [] and not has_result(at)
    assert i18n.t("ablation.busy", "en") in [i.value for i in at.info]
    # once it is free, the same button runs it
    at.button(key="abl_run").click().run()
    ok(at)
    assert calls == [(reference["top"], "zero")] and has_result(at)


def test_concurrent_visitors_run_one_ablation_at_a_time(reference, monkeypatch):
    """Two sessions asking for different classes at once: never two ablations together."""
    running, most = [0], [0]
    lock = threading.Lock()
    original = LocalBackend.ablate_heads

    def watched(self, image, target, **options):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            return original(self, image, target, **options)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(LocalBackend, "ablate_heads", watched)
    pages = [on_view(), on_view()]
    pages[1].selectbox(key="abl_class").set_value(reference["other"]).run()
    for p in pages:
        p.button(key="abl_run").click()  # pressed; both run below, side by side
    done = []
    threads = [threading.Thread(target=lambda p=p: done.append(p.run())) for p in pages]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert most[0] == 1
    for p in pages:
        ok(p)
        assert has_result(p)


# ------------------------------------------------------------------------------ in a browser


def test_in_a_browser_nothing_is_clipped_and_a_square_opens_its_head(
    browser_page,  # noqa: F811
    server,  # noqa: F811
):
    """The result on a real page (Chromium at 1280 px, English then Chinese): no control or
    label cut off, and clicking a square opens that head in the Heads view."""
    from tests.test_browser import CLIPPED_JS, canvas, expect, settle

    page = browser_page
    page.goto(f"{server}/?view=Head%20statistics")
    page.get_by_text("Measure every head").click()
    expect(page.get_by_text("Unablated:")).to_be_visible()
    settle(page)
    assert page.evaluate(CLIPPED_JS) == []
    # the same link in Chinese: the result is kept by the page process, shown at once
    page.goto(f"{server}/?view=Head%20statistics&lang=zh-Hant")
    expect(page.get_by_text("未移除時")).to_be_visible()
    settle(page)
    assert page.evaluate(CLIPPED_JS) == []
    points = page.locator(".st-key-ablation .scatterlayer .trace").first.locator("path.point")
    expect(points.first).to_be_visible()
    points.nth(4).scroll_into_view_if_needed()  # below the head table: into the viewport
    settle(page)
    box = points.nth(4).bounding_box()  # layer 1, head 1 (layer-major, the demo's 3 heads)
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx, cy)  # plotly's drag layer sits above the points: use the mouse
    expect(page.locator(".hovertext").first).to_contain_text("第 1 層，注意力頭 1")
    page.mouse.click(cx, cy)
    heads = canvas(page, "heads-canvas")
    expect(heads).to_have_attribute("data-layer", "1")
    expect(heads).to_have_attribute("data-head", "1")
