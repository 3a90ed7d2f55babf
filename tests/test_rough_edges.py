"""Rough edges a researcher found (issue 24, point 5): state a link lost, titles that repeated
themselves, exports of one map out of two, small figures, a covered trust plot, downloads that
reran the page, the CLIP caption's start layer and a colour bar for head numbers."""

from __future__ import annotations

import ast
import io
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest
from streamlit.testing.v1.element_tree import Block

from tests.test_app import chart, ok, shown, start
from tests.test_exports import deferred  # noqa: F401 - a fixture
from tests.test_page_state import from_url
from vitviz.ui import figures

pytestmark = pytest.mark.usefixtures("fresh_cache")  # tests/conftest.py

UI = Path(__file__).resolve().parent.parent / "vitviz" / "ui"


# ---------------------------------------------------------------- downloads never rerun the page


def test_every_download_button_of_the_page_ignores_its_click():
    calls = []
    for path in sorted(UI.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            func = getattr(node, "func", None)
            if isinstance(node, ast.Call) and getattr(func, "attr", None) == "download_button":
                given = {k.arg: k.value for k in node.keywords}
                value = given.get("on_click")
                ignored = isinstance(value, ast.Constant) and value.value == "ignore"
                calls.append((path.name, node.lineno, ignored))
    assert len(calls) >= 3, calls  # the page's arrays, the head table, each map's exports
    assert all(ignored for _, _, ignored in calls), calls


def test_a_download_does_not_rerun_the_script():
    at = start()
    ok(at)
    buttons = at.get("download_button")
    assert buttons
    # the browser downloads without telling the script: no rerun, no scroll to the top
    assert all(b.proto.ignore_rerun for b in buttons), [b.proto.label for b in buttons]


# --------------------------------------------------------------- head statistics: heads are names


def test_heads_get_a_colour_each_not_a_colour_bar():
    distance = np.arange(12, dtype=float).reshape(4, 3)
    fig = figures.distance_figure(distance, (1, 2)).to_plotly_json()
    assert "coloraxis" not in fig["layout"]
    points = fig["data"][0]
    assert "colorbar" not in points["marker"] and "colorscale" not in points["marker"]
    colours = list(points["marker"]["color"])
    by_head = [colours[i::3] for i in range(3)]  # head fastest
    assert all(len(set(c)) == 1 for c in by_head)  # one colour per head ...
    assert len({c[0] for c in by_head}) == 3  # ... each its own
    legend = [d for d in fig["data"] if d.get("showlegend") is not False]
    assert [d["name"] for d in legend] == ["head 0", "head 1", "head 2"]
    assert [d["marker"]["color"] for d in legend] == [c[0] for c in by_head]
    assert fig["layout"]["showlegend"] is True
    assert len(set(figures.head_colours(16))) == 16  # ViT-H's 16 heads: still one each


def test_the_pages_distance_chart_has_a_legend_of_heads():
    at = start()
    at.segmented_control(key="view").set_value("Head statistics").run()
    ok(at)
    fig = chart(at, "distance")
    assert "coloraxis" not in fig["layout"]
    assert all("colorbar" not in d.get("marker", {}) for d in fig["data"])
    names = [d["name"] for d in fig["data"] if d.get("showlegend") is not False]
    assert names == ["head 0", "head 1", "head 2"]  # the demo model's three heads


# ------------------------------------------------------------------ the Rollout view in the URL


def _rollout_state(at) -> dict:
    """Every Rollout control's value (None: not shown)."""
    kinds = {
        "discard": "slider",
        "roll_fusion": "segmented_control",
        "start_layer": "slider",
        "end_layer": "slider",
        "mask_on": "toggle",
        "mask_threshold": "slider",
        "mask_source": "radio",
        "why_class": "toggle",
        "class_method": "segmented_control",
        "target_class": "selectbox",
        "attn-grad-negative": "toggle",
        "strip_on": "toggle",
        "trust_on": "toggle",
    }
    out = {}
    for key, kind in kinds.items():
        found = [w for w in getattr(at, kind) if w.key == key]
        out[key] = found[0].value if found else None
    return out


def test_a_copied_link_reopens_the_rollout_views_every_setting():
    at = start()
    ok(at)
    defaults = {k: at.query_params.get(k) for k in ("discard", "roll_fusion", "why_class")}
    assert defaults == {"discard": None, "roll_fusion": None, "why_class": None}  # short links
    at.slider(key="discard").set_value(0.3).run()
    at.segmented_control(key="roll_fusion").set_value("max").run()
    at.slider(key="start_layer").set_value(1).run()
    at.slider(key="end_layer").set_value(4).run()
    at.toggle(key="mask_on").set_value(True).run()
    at.slider(key="mask_threshold").set_value(0.8).run()
    at.radio(key="mask_source").set_value("rollout").run()
    at.toggle(key="why_class").set_value(True).run()
    at.segmented_control(key="class_method").set_value("attn-grad").run()
    at.toggle(key="attn-grad-negative").set_value(True).run()
    top = at.selectbox(key="target_class").value
    other = next(o for o in at.selectbox(key="target_class").options if o != str(top))
    cls = int(next(i for i in range(8) if at.selectbox(key="target_class").format_func(i) == other))
    at.selectbox(key="target_class").set_value(cls).run()
    at.toggle(key="strip_on").set_value(True).run()
    at.toggle(key="trust_on").set_value(True).run()
    ok(at)
    want = _rollout_state(at)
    assert want["discard"] == 0.3 and want["trust_on"] and want["target_class"] == cls
    params = {k: at.query_params[k] for k in at.query_params}
    for key in ("discard", "roll_fusion", "start_layer", "end_layer", "mask_on", "why_class"):
        assert key in params, (key, params)
    assert params["discard"] == "0.3" and params["roll_fusion"] == "max"
    again = from_url(**params)
    ok(again)
    assert _rollout_state(again) == want
    assert again.query_params.get("discard") == "0.3"  # and the link stays in the URL


def test_a_malformed_link_opens_the_rollout_view_at_its_defaults():
    at = from_url(
        discard="2",
        roll_fusion="evil",
        fusion="evil",
        start_layer="-3",
        end_layer="99",
        mask_on="yes",
        mask_threshold="nan",
        mask_source="<script>",
        why_class="1",
        class_method="evil",
        target_class="1e9",
        trust_on="2",
        strip_on="",
    )
    ok(at)
    state = _rollout_state(at)
    assert state["discard"] == 0.0 and state["roll_fusion"] == "mean"
    assert (state["start_layer"], state["end_layer"]) == (0, 5)  # the demo's six layers
    assert state["mask_on"] is False and state["trust_on"] is False and state["strip_on"] is False
    assert state["why_class"] is True  # the one valid value
    assert state["class_method"] == "chefer" and state["attn-grad-negative"] is None
    assert not at.error
    for key in ("discard", "roll_fusion", "start_layer", "end_layer", "class_method"):
        assert key not in at.query_params, key  # the bad values are dropped from the link


# ------------------------------------------------------ exports: every map shown, print-sized


def _ink_height(png: bytes) -> tuple[int, int]:
    """The figure's width and the tallest run of rows holding caption text (dark grey ink)
    below its colour bar."""
    fig = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    width = fig.shape[1]
    band = max(48, round(width * 0.16))
    below = width + band // 6 + max(6, band // 5) + 2  # square input: the image is W tall
    rows = fig[below:].astype(int)
    grey = (rows.max(-1) - rows.min(-1) < 30) & (rows.max(-1) < 110)
    inked = grey.any(axis=1)
    best = run = 0
    for on in inked:
        run = run + 1 if on else 0
        best = max(best, run)
    return width, best


def test_both_maps_beside_each_other_are_exported_at_the_chosen_width(
    deferred,  # noqa: F811
):
    at = start()
    at.toggle(key="why_class").set_value(True).run()
    ok(at)
    cls = at.selectbox(key="target_class").value
    keys = {
        b.proto.id.split("-dl-", 1)[1] for b in at.get("download_button") if "-dl-" in b.proto.id
    }
    for kind in ("png", "svg", "csv", "npz"):
        assert f"{kind}-rollout" in keys and f"{kind}-chefer-class{cls}" in keys, keys
    stem = "demo-scene-1-demo"
    rollout, klass = f"{stem}-rollout", f"{stem}-chefer-class{cls}"
    names = {f"{m}{end}" for m in (rollout, klass) for end in (".png", ".svg", "-values.csv")}
    assert names <= set(deferred)
    values = {
        m: np.load(io.BytesIO(deferred[f"{m}-values.npz"]()))["values"] for m in (rollout, klass)
    }
    np.testing.assert_array_equal(values[rollout], shown(at, "rollout"))
    np.testing.assert_array_equal(values[klass], shown(at, "class-map"))
    assert at.segmented_control(key="export_width").value == 1024  # the stated default
    for width in (512, 1024, 2048):
        deferred.clear()
        at.segmented_control(key="export_width").set_value(width).run()
        for m in (rollout, klass):
            got, ink = _ink_height(deferred[f"{m}.png"]())
            assert got == width
            assert ink >= 0.015 * width, (width, ink)  # the caption is legible in print
        ET.fromstring(deferred[f"{klass}.svg"]().encode("utf-8"))  # the SVG is still there


def test_the_figure_keeps_the_images_width_unless_asked():
    from vitviz.output import exports

    image = np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    values = np.random.default_rng(1).random((14, 14))
    settings = {"method": "rollout", "options": {}, "model": "demo", "image": "x.png"}
    assert exports.figure(values, image, settings).shape[1] == 224  # the CLI's figures
    png = exports.figure_png(values, image, settings, 2048)
    assert _ink_height(png)[0] == 2048
    with pytest.raises(ValueError, match="width"):
        exports.figure(values, image, settings, 0)


# ------------------------------------------------------------ the trust plot: a heading, uncovered


def _in_order(node):
    if isinstance(node, Block):
        for child in node.children.values():
            yield from _in_order(child)
    else:
        yield node


def test_the_trust_plot_has_a_heading_and_no_popover_above_it():
    at = start()
    at.toggle(key="trust_on").set_value(True).run()
    ok(at)
    order = list(_in_order(at.main))
    heading = next(
        i
        for i, e in enumerate(order)
        if getattr(e, "value", None) == "How far can I trust this map?"
    )
    plot = next(
        i for i, e in enumerate(order) if e.type == "plotly_chart" and "trust" in e.proto.id
    )
    assert heading < plot
    # the exports above it open in place (an expander pushes the plot down), not as an
    # overlay: no popover on the Rollout view
    blocks = []
    stack = [at.main]
    while stack:
        b = stack.pop()
        if isinstance(b, Block):
            blocks.append(b)
            stack.extend(b.children.values())
    assert not [b for b in blocks if b.type == "popover"]
    assert [b for b in blocks if b.type == "expander"]


# ------------------------------------------------------------- in the browser (system Chromium)


def test_in_the_browser_the_shared_scale_is_drawn_and_the_trust_plot_is_uncovered(
    browser_page,
):
    from tests.test_browser import canvas, settle

    page, server = browser_page
    page.goto(f"{server}/?view=Compare&cmp_shared_scale=1")
    a, b = canvas(page, "cmp-a"), canvas(page, "cmp-b")
    settle(page)
    low = min(float(a.get_attribute("data-min")), float(b.get_attribute("data-min")))
    high = max(float(a.get_attribute("data-max")), float(b.get_attribute("data-max")))
    for c in (a, b):  # both legends (and colours) span the joint range
        assert float(c.get_attribute("data-min")) == pytest.approx(low)
        assert float(c.get_attribute("data-max")) == pytest.approx(high)
    # the trust plot under its heading; the exports open in place above it
    page.goto(f"{server}/?trust_on=1")
    heading = page.get_by_text("How far can I trust this map?")
    plot = page.locator(".st-key-trust-chart")
    heading.wait_for()
    plot.wait_for()
    settle(page)
    assert heading.bounding_box()["y"] < plot.bounding_box()["y"]
    page.get_by_text("Export", exact=True).first.click()
    button = page.get_by_text("Figure with legend (PNG)").first
    button.wait_for()
    settle(page)
    # the expander opens with an animation that pushes the plot down: wait until it has
    # (a real overlay never separates, and the wait fails with the two boxes)
    page.wait_for_function(
        "([b, c]) => b.getBoundingClientRect().bottom <= c.getBoundingClientRect().top + 0.5",
        arg=[button.element_handle(), plot.element_handle()],
        polling=100,
    )
    box, chart = button.bounding_box(), plot.bounding_box()
    assert box["y"] + box["height"] <= chart["y"] + 0.5  # nothing of the exports over the plot


@pytest.fixture
def browser_page():
    from tests.test_browser import ARGS, CHROMIUM, _missing, new_page

    why = _missing()
    if why:
        pytest.skip(f"browser test skipped: {why}")
    from playwright.sync_api import sync_playwright

    from tests.conftest import page_process

    with page_process() as (url, _), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = new_page(browser)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        yield page, url
        assert page.locator('[data-testid="stException"]').count() == 0
        assert not errors, errors
        browser.close()
