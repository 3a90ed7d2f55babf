"""Exports of head ablation, the logit lens and token norms (vitviz.output.research): each CSV
read back equals the result's arrays (rows found by their own layer/head/token columns), ranks
equal an argsort done here, hostile labels come out inert, the npz holds every array, and the
SVGs draw one cell per entry in colours that order like the values."""

from __future__ import annotations

import csv
import io
import json
import re
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest

from vitviz.analysis.norms import token_norms
from vitviz.engine.lens import lens_from_logits
from vitviz.layout import TokenLayout
from vitviz.output import render, research
from vitviz.results import HeadAblation, LogitLens, TokenNorms

SVG = "{http://www.w3.org/2000/svg}"
HOSTILE = ["<script>alert(1)</script>", "=cmd|' /C calc'!A0", "+1", "@SUM(A1)", "a\x00b"]


def ablation(seed: int = 0, layers: int = 4, heads: int = 3) -> HeadAblation:
    rng = np.random.default_rng(seed)
    return HeadAblation(
        target=5,
        kind="zero",
        clean_logit=3.25,
        clean_probability=0.625,
        logit=rng.normal(size=(layers, heads)),
        probability=rng.normal(scale=0.1, size=(layers, heads)),
        layer_logit=rng.normal(scale=4, size=layers),
        layer_probability=rng.normal(scale=0.3, size=layers),
        batch=8,
        forwards=3,
    )


def lens_logits(seed: int = 1, layers: int = 5, classes: int = 9) -> np.ndarray:
    return np.random.default_rng(seed).normal(scale=2.0, size=(layers, classes))


REG = TokenLayout(prefix=("cls", "reg", "reg"), grid=(3, 4), patch_size=(14, 14), readout="cls")


def planted_norms() -> tuple[np.ndarray, TokenNorms]:
    rng = np.random.default_rng(2)
    norms = rng.uniform(0.9, 1.1, size=(3, REG.num_tokens))
    norms[:, 1:3] = 20.0 + np.arange(6).reshape(3, 2)  # registers, high but not patches
    norms[2, 3 + 5] = 40.0  # patch 5 (row 1, col 1) at the last layer
    norms[1, 3 + 11] = 9.0  # patch 11 (row 2, col 3) at layer 1
    return norms, token_norms(norms, REG, k=3.0)


def read(text: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(text), comment="#")


def settings_of(text: str) -> dict:
    out = {}
    for row in csv.reader(io.StringIO(text)):
        if row and row[0] == "#" and ": " in row[1]:
            key, _, value = row[1].partition(": ")
            out[key] = json.loads(value)
    return out


def hex_rgb(fill: str) -> tuple[int, int, int]:
    return tuple(int(fill[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def rects(svg: str, cls: str) -> list[ET.Element]:
    root = ET.fromstring(svg.encode())
    return [e for e in root.iter(f"{SVG}rect") if cls in (e.get("class") or "").split()]


def readable(svg: str) -> None:
    root = ET.fromstring(svg.encode())
    assert float(root.get("width")) >= 600
    sizes = [float(e.get("font-size")) for e in root.iter() if e.get("font-size")]
    assert sizes and min(sizes) >= 10


# ------------------------------------------------------------------------------------- ablation


def test_ablation_csv_reads_back_as_the_result_with_argsort_ranks():
    r = ablation()
    text = research.ablation_csv(r, {"model": "demo", "image": "cat.png"})
    df = read(text)
    assert list(df.columns) == list(research.ABLATION_COLUMNS)
    heads = df[df["head"] != "all"]
    layers = df[df["head"] == "all"]
    assert len(heads) == r.logit.size and len(layers) == r.logit.shape[0]
    li, hi = heads["layer"].to_numpy(int), heads["head"].astype(int).to_numpy()
    np.testing.assert_allclose(heads["delta_logit"], r.logit[li, hi], rtol=1e-8)
    np.testing.assert_allclose(heads["delta_probability"], r.probability[li, hi], rtol=1e-8)
    # rank 1 = the most negative Δlogit: position in an argsort of every head's Δ
    order = np.argsort(r.logit.ravel())
    want = np.empty(order.size, int)
    want[order] = np.arange(1, order.size + 1)
    np.testing.assert_array_equal(heads["rank"], want[li * r.logit.shape[1] + hi])
    top = heads.sort_values("rank").iloc[0]
    assert (int(top["layer"]), int(top["head"])) == r.ranked()[0][:2]
    ll = layers["layer"].to_numpy(int)
    np.testing.assert_allclose(layers["delta_logit"], r.layer_logit[ll], rtol=1e-8)
    np.testing.assert_allclose(layers["delta_probability"], r.layer_probability[ll], rtol=1e-8)
    layer_order = np.argsort(r.layer_logit)
    np.testing.assert_array_equal(layers["rank"], np.argsort(layer_order)[ll] + 1)
    meta = settings_of(text)
    assert meta["model"] == "demo" and meta["class"] == 5 and meta["kind"] == "zero"
    assert meta["clean_logit"] == 3.25


def test_hostile_settings_stay_in_their_comment_cell():
    text = research.ablation_csv(ablation(), {"image": "=cmd|x\nnew,line", "note": HOSTILE[1]})
    meta = settings_of(text)
    assert meta["image"] == "=cmd|x\nnew,line"  # JSON on one line, read back exactly
    for row in csv.reader(io.StringIO(text)):
        assert not any(str(cell).startswith(("=", "+", "@")) for cell in row)
    assert len(read(text)) == 4 * 3 + 4


def test_ablation_svg_has_a_cell_per_head_coloured_in_value_order():
    r = ablation(seed=3, layers=6, heads=4)
    for metric, values, per_layer in (
        ("logit", r.logit, r.layer_logit),
        ("probability", r.probability, r.layer_probability),
    ):
        svg = research.ablation_svg(r, metric=metric, title="<b>&")
        readable(svg)
        cells = rects(svg, "head-cell")
        assert len(cells) == 6 * 4
        assert {(int(c.get("data-layer")), int(c.get("data-head"))) for c in cells} == {
            (i, j) for i in range(6) for j in range(4)
        }
        # diverging scale: red − blue grows with the value; negative cells are bluer than red
        got = [values[int(c.get("data-layer")), int(c.get("data-head"))] for c in cells]
        warmth = [hex_rgb(c.get("fill"))[0] - hex_rgb(c.get("fill"))[2] for c in cells]
        ranked = np.argsort(got)
        assert np.all(np.diff(np.asarray(warmth)[ranked]) >= 0)
        assert all((w < 0) == (v < 0) for v, w in zip(got, warmth, strict=True) if abs(v) > 0.05)
        layer_cells = rects(svg, "layer-cell")
        assert len(layer_cells) == 6
        lw = [hex_rgb(c.get("fill"))[0] - hex_rgb(c.get("fill"))[2] for c in layer_cells]
        lv = [per_layer[int(c.get("data-layer"))] for c in layer_cells]
        assert np.all(np.diff(np.asarray(lw)[np.argsort(lv)]) >= 0)
    with pytest.raises(ValueError, match="metric"):
        research.ablation_svg(r, metric="entropy")


def test_ablation_colour_bar_is_centred_on_zero_with_numbers():
    r = ablation(seed=4)
    svg = research.ablation_svg(r)
    root = ET.fromstring(svg.encode())
    bar = next(g for g in root.iter(f"{SVG}g") if g.get("class") == "heads-bar")
    ticks = [float(t.text) for t in bar.iter(f"{SVG}text") if t.get("class") == "tick"]
    limit = float(np.abs(r.logit).max())
    assert ticks == pytest.approx([limit, 0.0, -limit], abs=limit * 1e-2)


# ----------------------------------------------------------------------------------------- lens


def test_lens_csv_equals_a_softmax_and_argsort_done_here():
    z = lens_logits()
    lens = lens_from_logits(z, top_k=3)
    labels = [f"class {i}" for i in range(z.shape[1])]
    df = read(research.lens_csv(lens, labels, {"model": "m"}))
    assert list(df.columns) == list(research.LENS_COLUMNS)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    final = int(np.argmax(z[-1]))
    for layer in range(z.shape[0]):
        rows = df[df["layer"] == layer]
        top = rows[rows["rank"] <= 3].sort_values("rank")
        want = np.argsort(-z[layer])[:3]
        np.testing.assert_array_equal(top["class"], want)
        np.testing.assert_allclose(top["probability"], p[layer, want], rtol=1e-6)
        assert list(top["label"]) == [labels[c] for c in want]
        fin = rows[rows["final"]]
        assert len(fin) == 1 and int(fin["class"].iloc[0]) == final
        assert float(fin["probability"].iloc[0]) == pytest.approx(p[layer, final], rel=1e-6)
        assert int(fin["rank"].iloc[0]) == 1 + int((z[layer] > z[layer, final]).sum())
    assert df["final"].dtype == bool


def test_hostile_labels_are_inert_in_csv_and_svg():
    z = lens_logits(seed=5, classes=len(HOSTILE))
    lens = lens_from_logits(z, top_k=len(HOSTILE))
    text = research.lens_csv(lens, HOSTILE, {})
    df = read(text)
    labels = set(df["label"])
    assert "'=cmd|' /C calc'!A0" in labels and "'+1" in labels and "'@SUM(A1)" in labels
    for row in csv.reader(io.StringIO(text)):
        assert not any(cell.startswith(("=", "+", "@", "-")) for cell in row if cell)
    svg = research.lens_svg(lens, HOSTILE, title="<script>t</script>")
    root = ET.fromstring(svg.encode())  # parses: the NUL byte is gone, < > escaped
    assert not [e for e in root.iter() if e.tag.endswith("script")]
    shown = [e.text for e in root.iter(f"{SVG}text") if e.get("class") == "class-label"]
    assert "<script>alert(1)</script>" in shown and "a b" in shown
    assert "<script>" not in svg


def test_lens_svg_marks_the_final_class_and_says_it_approximates():
    z = lens_logits(seed=6, layers=7, classes=30)
    lens = lens_from_logits(z, top_k=4)
    labels = [f"c{i}" for i in range(30)]
    svg = research.lens_svg(lens, labels)
    readable(svg)
    final = int(np.argmax(z[-1]))
    (marked,) = rects(svg, "final")
    assert int(marked.get("data-class")) == final
    root = ET.fromstring(svg.encode())
    bold = [e.text for e in root.iter(f"{SVG}text") if e.get("font-weight") == "bold"]
    assert bold == [labels[final]]
    cells = rects(svg, "lens-cell")
    columns = {int(c.get("data-class")) for c in cells}
    assert columns == set(np.argsort(-z, axis=1)[:, :4].ravel().tolist()) | {final}
    assert len(cells) == 7 * len(columns)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    got = [p[int(c.get("data-layer")), int(c.get("data-class"))] for c in cells]
    darkness = [-sum(hex_rgb(c.get("fill"))) for c in cells]
    assert np.all(np.diff(np.asarray(darkness)[np.argsort(got)]) >= 0)
    assert "approximation" in svg


# ---------------------------------------------------------------------------------------- norms


def test_norms_csv_reads_back_with_kinds_and_outliers():
    norms, r = planted_norms()
    df = read(research.norms_csv(r, {"prefix_tokens": list(REG.prefix)}))
    assert list(df.columns) == list(research.NORMS_COLUMNS)
    assert len(df) == 3 * REG.num_tokens
    np.testing.assert_allclose(
        df["norm"], norms[df["layer"].to_numpy(int), df["token"].to_numpy(int)], rtol=1e-6
    )
    kinds = df[df["layer"] == 0].set_index("token")["kind"]
    assert list(kinds) == ["prefix", "register", "register"] + ["patch"] * 12
    # the rule written out: a patch above 3 × its layer's median patch norm
    patches = norms[:, 3:]
    want = patches > 3.0 * np.median(patches, axis=1, keepdims=True)
    flagged = df[df["outlier"]]
    assert sorted(zip(flagged["layer"], flagged["token"] - 3, strict=True)) == [
        (int(a), int(b)) for a, b in np.argwhere(want)
    ]
    assert [tuple(x) for x in np.argwhere(want)] == [(1, 11), (2, 5)]
    # without the layout in the settings, the registers are the last prefix tokens (timm)
    df2 = read(research.norms_csv(r, {}))
    assert list(df2[df2["layer"] == 0]["kind"][:4]) == ["prefix", "register", "register", "patch"]


def test_norms_svg_outlines_the_outliers_and_draws_the_share():
    _, r = planted_norms()
    svg = research.norms_svg(r, 2, (3, 4))
    readable(svg)
    cells = rects(svg, "patch-cell")
    assert len(cells) == 12
    marked = [(int(e.get("data-row")), int(e.get("data-col"))) for e in rects(svg, "outlier")]
    assert marked == [(1, 1)]  # patch 5 of a 3×4 grid
    norms = np.asarray(r.norms)[2, 3:].reshape(3, 4)
    got = [norms[int(c.get("data-row")), int(c.get("data-col"))] for c in cells]
    # inferno from the lowest norm (its first colour) to the highest (its last)
    lut = render.colormap_lut("inferno")
    t = (np.asarray(got) - norms.min()) / (norms.max() - norms.min())
    want = [tuple(lut[round(x * 255)].tolist()) for x in t]
    assert [hex_rgb(c.get("fill")) for c in cells] == want
    assert want[int(np.argmin(got))] == tuple(lut[0]) and want[5] == tuple(lut[255])
    bars = rects(svg, "share-bar")
    heights = [float(b.get("height")) for b in bars]
    assert len(bars) == 3 and heights[0] == 0 and heights[1] > 0
    assert heights[1] == pytest.approx(heights[2])  # one outlier of 12 at layers 1 and 2
    assert [
        (int(e.get("data-row")), int(e.get("data-col")))
        for e in rects(research.norms_svg(r, 1, (3, 4)), "outlier")
    ] == [(2, 3)]
    with pytest.raises(ValueError, match="layer"):
        research.norms_svg(r, 3, (3, 4))
    with pytest.raises(ValueError, match="grid"):
        research.norms_svg(r, 0, (4, 4))


# ------------------------------------------------------------------------------------------ npz


@pytest.mark.parametrize("kind", ["ablation", "lens", "norms"])
def test_npz_round_trip_holds_every_array_and_the_settings(kind):
    result = {
        "ablation": ablation,
        "lens": lambda: lens_from_logits(lens_logits(), 4),
        "norms": lambda: planted_norms()[1],
    }[kind]()
    settings = {"model": "demo", "label": HOSTILE[0], "options": {"k": 3}}
    with np.load(io.BytesIO(research.research_npz(result, settings))) as npz:
        assert json.loads(str(npz["settings"])) == settings
        assert str(npz["result"]) == type(result).__name__
        for name, value in vars(result).items():
            if value is None:
                assert name not in npz.files
                continue
            got = npz[name]
            want = np.asarray(value)
            assert got.dtype == want.dtype and got.shape == want.shape, name
            np.testing.assert_array_equal(got, want)
    with pytest.raises(TypeError):
        research.research_npz(object(), {})  # type: ignore[arg-type]


def test_lens_result_fields_are_those_the_npz_names():
    lens: LogitLens = lens_from_logits(lens_logits(), 2)
    with np.load(io.BytesIO(research.research_npz(lens, {}))) as npz:
        assert set(npz.files) == {*vars(lens), "result", "settings"}
        assert re.fullmatch(r"\d+", str(npz["final"]))
