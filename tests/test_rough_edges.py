"""Rough edges a researcher found (issue 24, point 5): state a link lost, titles that repeated
themselves, exports of one map out of two, small figures, a covered trust plot, downloads that
reran the page, the CLIP caption's start layer and a colour bar for head numbers."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from tests.test_app import chart, ok, start
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
