"""Exports a paper can use (issue 15, item 6): the map's values with every setting (npz, CSV)
and the figure with a colour legend and a caption (PNG, SVG), from the API, the CLI and the page.
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from streamlit.runtime.media_file_manager import MediaFileManager
from streamlit.testing.v1 import AppTest

from tests.conftest import ASSETS
from vitviz.cli import main
from vitviz.layout import TokenLayout
from vitviz.output import exports, render
from vitviz.results import ModelInfo, WeightsInfo

ROOT = Path(__file__).resolve().parent.parent
SVG = "{http://www.w3.org/2000/svg}"
HOSTILE = 'evil\nname\r\n# x,"y"\u2028<script>alert(1)</script> & 貓.png'
# names and labels a spreadsheet would run as formulas, or that split a line into cells
FORMULAS = [
    "x,=cmd|' -C calc'!A0,y.png",
    "=1+1.png",
    "+SUM(A1).png",
    "-2+3.png",
    "@SUM(1).png",
    "\t=1+1.png",
    "\r=1+1.png",
    '"=1",=2,"=3".png',
    'a"b,"c\n=HYPERLINK("x")',
    "line\r\n=next\n+line",
    "\uff1dfull-width.png",
    "'quoted.png",
]
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def _cells(text: str) -> list[list[str]]:
    """Every row of the CSV text as Python's csv module reads it."""
    return list(csv.reader(io.StringIO(text, newline="")))


def _settings_of(text: str) -> dict:
    """The settings read back from the ``#`` rows of a values CSV."""
    out = {}
    for row in _cells(text):
        if row and row[0] == "#" and ": " in row[1]:
            key, _, value = row[1].partition(": ")
            out[key] = json.loads(value)
    return out


def _info(source: str = "file", location: str = "weights/tiny.safetensors") -> ModelInfo:
    return ModelInfo(
        name="vit-s16",
        title="ViT-S/16",
        timm_name="vit_small_patch16_224.augreg_in21k_ft_in1k",
        weights=WeightsInfo(source, location),
        device="cpu",
        device_name="CPU",
        precision="fp32",
        layers=12,
        heads=6,
        classes=1000,
        keep_aspect=False,
        patch_size=(14, 16),
        input_config={},
    )


@pytest.fixture
def case():
    """A 3×4 map of non-square 14×16 patches (so rows and columns cannot be swapped unseen),
    the 42×64 image the model saw, and its settings."""
    rng = np.random.default_rng(3)
    values = rng.random((3, 4), dtype=np.float32) * np.float32(0.37) + np.float32(1e-3)
    image = rng.integers(0, 256, (42, 64, 3), dtype=np.uint8)
    layout = TokenLayout(prefix=("cls",), grid=(3, 4), patch_size=(14, 16), readout="cls")
    settings = exports.make_settings(
        _info(),
        image="cat.png",
        method="rollout",
        options={"fusion": "mean", "discard": np.float64(0.3), "start_layer": 0},
        layout=layout,
        view="Rollout",
        target=(np.int64(281), "tabby, tabby cat"),
        colormap="viridis",
        alpha=0.5,
    )
    return values, image, settings


def test_settings_are_plain_json_in_a_fixed_order(case):
    _, _, settings = case
    assert json.loads(json.dumps(settings)) == settings  # numpy scalars became plain numbers
    first = ["model", "timm_name", "weights", "weights_location", "precision", "image"]
    assert list(settings)[:6] == first
    assert settings["options"] == {"fusion": "mean", "discard": 0.3, "start_layer": 0}
    assert (settings["class_index"], settings["class_label"]) == (281, "tabby, tabby cat")
    assert settings["grid"] == [3, 4] and settings["patch_size"] == [14, 16]
    assert settings["input_size"] == [42, 64]
    assert exports.caption(settings) == (
        "rollout fusion=mean discard=0.3 start_layer=0 | class 281 tabby, tabby cat | "
        "vit-s16 (vit_small_patch16_224.augreg_in21k_ft_in1k, file weights) | image cat.png"
    )


def test_npz_round_trip_is_exact(case):
    values, image, settings = case
    npz = np.load(io.BytesIO(exports.values_npz(values, image, settings)))  # no pickles
    assert npz["values"].dtype == np.float32
    np.testing.assert_array_equal(npz["values"], values)
    assert json.loads(str(npz["settings"])) == settings
    np.testing.assert_array_equal(npz["image"], image)
    assert npz["patch_size"].tolist() == [14, 16]
    boxes = npz["boxes"]
    assert boxes.shape == (12, 4)
    # patch 6 = row 1, column 2 of a 4-wide grid: x 2·16…3·16, y 1·14…2·14
    assert boxes[6].tolist() == [32, 14, 48, 28]
    assert boxes[-1].tolist() == [48, 28, 64, 42]  # the last patch ends at the image's corner


def test_csv_reads_back_with_pandas(case):
    values, image, settings = case
    text = exports.values_csv(values, image, settings)
    df = pd.read_csv(io.StringIO(text), comment="#")
    assert list(df.columns) == list(exports.CSV_COLUMNS)
    assert len(df) == 12
    np.testing.assert_array_equal(df["value"].to_numpy(np.float32), values.ravel())
    np.testing.assert_array_equal(df["index"], np.arange(12))
    for _, r in df.iterrows():
        assert np.float32(r["value"]) == values[int(r["row"]), int(r["col"])]
    # one box by hand: patch 6 is row 1, column 2; patches are 14 high and 16 wide
    r6 = df.iloc[6]
    assert (r6["row"], r6["col"]) == (1, 2)
    assert (r6["x0"], r6["y0"], r6["x1"], r6["y1"]) == (32, 14, 48, 28)
    # the settings lead as '#,"key: <JSON>"' lines, each giving back its value exactly
    assert _settings_of(text) == settings
    assert all(line.startswith(('#,"', '"')) for line in text.splitlines())


def test_hostile_image_names_break_neither_csv_nor_svg(case):
    values, image, settings = case
    settings = {**settings, "image": HOSTILE, "class_label": "a]]><b>&amp;\x00\x1b"}
    text = exports.values_csv(values, image, settings)
    lines = text.split("\n")
    quoted = r'"[\w.\-e]+"(,"[\w.\-e]+")*'
    assert all(line.startswith('#,"') or re.fullmatch(quoted, line) for line in lines if line)
    assert not any(sep in text for sep in ("\r", "\u2028", "\u2029", "\x85"))
    df = pd.read_csv(io.StringIO(text), comment="#")
    assert len(df) == 12 and list(df.columns) == list(exports.CSV_COLUMNS)
    np.testing.assert_array_equal(df["value"].to_numpy(np.float32), values.ravel())
    assert _settings_of(text)["image"] == HOSTILE

    svg = exports.figure_svg(values, image, settings)
    root = ET.fromstring(svg.encode("utf-8"))  # well-formed XML
    tags = {el.tag for el in root.iter()}
    assert f"{SVG}script" not in tags and f"{SVG}b" not in tags
    caption = exports.caption(settings)
    assert "<script>alert(1)</script>" in caption and "貓" in caption and "\n" not in caption
    lines = [el.text for el in root.iter(f"{SVG}text") if el.get("class") == "caption"]
    assert " ".join(lines) == caption
    assert root.find(f"{SVG}title").text == caption
    meta = json.loads(root.find(f"{SVG}metadata").text)
    assert meta["image"] == HOSTILE


@pytest.mark.parametrize("name", FORMULAS)
def test_no_csv_cell_starts_a_formula(case, name):
    """Issue 21: a hostile image name, class label, typed class or prompt template cannot put a
    formula into any cell; the settings still read back exactly, and pandas the same table."""
    values, image, settings = case
    values = values - np.float32(0.2)  # negative values must stay plain numbers
    assert (values < 0).any()
    plain = pd.read_csv(io.StringIO(exports.values_csv(values, image, settings)), comment="#")
    hostile = {
        **settings,
        "image": name,
        "class_label": name,
        "typed_classes": [name, "cat", f"-{name}"],
        "prompt_template": f"{name} {{}}",
        "options": {**settings["options"], name: name},
    }
    text = exports.values_csv(values, image, hostile)
    rows = _cells(text)
    header = rows.index(list(exports.CSV_COLUMNS))
    # no text cell starts a formula; only the value column's numbers may start with "-"
    texts = [cell for row in rows[: header + 1] for cell in row]
    texts += [cell for row in rows[header + 1 :] for cell in row[:-1]]
    assert [cell for cell in texts if cell.startswith(FORMULA_START)] == []
    numbers = [row[-1] for row in rows[header + 1 :]]
    assert all(float(v) == float(v) for v in numbers) and any(v.startswith("-") for v in numbers)
    # each settings line is one line of the file and two cells: "#" and "key: <JSON>"
    comments = [line for line in text.split("\n") if line.startswith("#")]
    assert len(comments) == len(hostile) + 2
    assert all(len(row) == 2 and row[0] == "#" for row in _cells("\n".join(comments)))
    assert _settings_of(text) == hostile
    df = pd.read_csv(io.StringIO(text), comment="#")
    pd.testing.assert_frame_equal(df, plain)
    assert df["value"].dtype == np.float64 and df["x0"].dtype == np.int64
    np.testing.assert_array_equal(df["value"].to_numpy(np.float32), values.ravel())
    assert (df["value"] < 0).any()
    # every line is one whole record, every field quoted (the "#" of a comment line excepted)
    for line in text.removesuffix("\n").split("\n"):
        assert line.startswith(('#,"', '"')) and line.endswith('"'), line
        assert len(_cells(line)) == 1, line


def test_csv_cell_neutralises_text_and_keeps_numbers():
    for start in FORMULA_START:
        assert exports.csv_cell(f"{start}1+1") == f"'{start}1+1"
    assert exports.csv_cell("cat, 1") == "cat, 1" and exports.csv_cell("") == ""
    for number in (-1, -2.5, np.float32(-3.25), np.int64(-4)):
        assert exports.csv_cell(number) is number
    text = exports.csv_text([["name", "value"], ["=x", -1.5], ["-y", np.float32(-2)]], ["a\n=b"])
    assert text.split("\n")[0] == '#,"a =b"'
    assert _cells(text)[1:] == [["name", "value"], ["'=x", "-1.5"], ["'-y", "-2.0"]]
    df = pd.read_csv(io.StringIO(text), comment="#")
    assert df["value"].tolist() == [-1.5, -2.0] and df["name"].tolist() == ["'=x", "'-y"]


def test_the_head_table_csv_is_quoted_and_safe():
    from vitviz.ui.views.statistics import head_csv

    table = {
        "layer": [0, 1],
        "head": [0, 0],
        "mean_distance": [12.5, -1.0],
        "entropy": [np.float32(0.5), 1.25],
        "to_prefix": [0.1, 0.2],
        "to_self": [0.3, 0.4],
        "kind": ["local", "=cmd|' -C calc'!A0"],
    }
    text = head_csv(table)
    assert all(line.startswith('"') for line in text.splitlines())
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["kind"] for r in rows] == ["local", "'=cmd|' -C calc'!A0"]
    assert [float(r["mean_distance"]) for r in rows] == [12.5, -1.0]
    df = pd.read_csv(io.StringIO(text))
    assert df["mean_distance"].tolist() == [12.5, -1.0] and df["layer"].tolist() == [0, 1]


def test_svg_colour_bar_is_the_colormap_and_the_image_is_embedded(case):
    values, image, settings = case
    root = ET.fromstring(exports.figure_svg(values, image, settings).encode("utf-8"))
    lut = render.colormap_lut("viridis")
    stops = root.findall(f".//{SVG}linearGradient/{SVG}stop")
    assert len(stops) == 256
    colours = [tuple(int(s.get("stop-color")[i : i + 2], 16) for i in (1, 3, 5)) for s in stops]
    assert float(stops[0].get("offset")) == 0 and colours[0] == tuple(lut[0])
    assert float(stops[-1].get("offset")) == 1 and colours[-1] == tuple(lut[255])
    np.testing.assert_array_equal(np.array(colours), lut)
    bar = root.find(f".//{SVG}rect[@id='colour-bar']")
    assert bar.get("fill") == "url(#colour-scale)"
    ticks = {el.get("class"): el.text for el in root.iter(f"{SVG}text")}
    assert ticks["tick low"] == f"rollout {values.min():.4g}"
    assert ticks["tick high"] == f"{values.max():.4g}"
    # the embedded picture is the overlay, pixel for pixel
    href = root.find(f"{SVG}image").get("href")
    assert href.startswith("data:image/png;base64,")
    import base64

    png = base64.b64decode(href.split(",", 1)[1])
    shown = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    want = render.overlay(image, values, alpha=0.5, colormap="viridis")
    np.testing.assert_array_equal(shown, want)


def test_png_figure_is_the_overlay_with_a_legend_band(case):
    values, image, settings = case
    png = exports.figure_png(values, image, settings)
    fig = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    assert fig.shape[0] > image.shape[0] and fig.shape[1] == image.shape[1]
    overlay = render.overlay(image, values, alpha=0.5, colormap="viridis")
    np.testing.assert_array_equal(fig[: image.shape[0]], overlay)
    want = render.with_legend(
        overlay,
        float(values.min()),
        float(values.max()),
        "viridis",
        exports.caption(settings),
        "rollout",
    )
    np.testing.assert_array_equal(fig, want)
    # random weights: the same banner as the CLI's
    random = {**settings, "weights": "random"}
    fig = exports.figure(values, image, random)
    np.testing.assert_array_equal(
        fig[: image.shape[0]], render.stamp_banner(overlay, exports.RANDOM_BANNER)
    )


def test_a_long_caption_wraps_instead_of_running_off_the_picture():
    image = np.zeros((60, 120, 3), np.uint8)
    short = render.with_legend(image, 0, 1, "inferno", "x")
    long = render.with_legend(image, 0, 1, "inferno", " ".join(["setting=value"] * 12))
    assert long.shape[0] > short.shape[0] and long.shape[1] == 120
    np.testing.assert_array_equal(long[:80], short[:80])  # image, bar and values unchanged


def test_wrong_inputs_are_refused(case):
    values, image, settings = case
    with pytest.raises(ValueError, match="whole number of patches"):
        exports.values_csv(values, image[:40], settings)
    with pytest.raises(ValueError, match="NaN"):
        exports.values_npz(np.full((3, 4), np.nan), image, settings)
    with pytest.raises(ValueError, match="colormap"):
        exports.figure_png(values, image, {**settings, "colormap": "rainbow"})


def test_exports_load_no_torch_or_streamlit():
    code = (
        "import sys, vitviz.output.exports\n"
        "print(','.join(m for m in ('torch', 'timm', 'streamlit') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


# ----------------------------------------------------------------------------------- the CLI


def test_cli_svg_and_values_hold_the_pngs_map(tmp_path, weights_file):
    rc = main(
        ["explain", str(ASSETS / "chelsea.png"), "--model", "vit_tiny_patch16_224",
         "--weights", str(weights_file), "--out", str(tmp_path), "--method", "rollout",
         "--discard", "0.2", "--colormap", "magma", "--legend", "--svg", "--values"]
    )  # fmt: skip
    assert rc == 0
    rec = json.loads((tmp_path / "chelsea.json").read_text())
    assert rec["files"] == {
        "png": "chelsea.png",
        "npz": "chelsea.npz",
        "svg": "chelsea.svg",
        "values_npz": "chelsea.values.npz",
        "values_csv": "chelsea.values.csv",
    }
    full = np.load(tmp_path / "chelsea.npz")
    values = np.load(tmp_path / "chelsea.values.npz")
    np.testing.assert_array_equal(values["values"], full["map"])  # the PNG's map
    np.testing.assert_array_equal(values["image"], full["image"])
    settings = json.loads(str(values["settings"]))
    assert settings["method"] == "rollout" and settings["options"] == rec["options"]
    assert settings["image"] == "chelsea.png" and settings["colormap"] == "magma"
    assert settings["weights"] == "file" and settings["grid"] == [14, 14]
    df = pd.read_csv(tmp_path / "chelsea.values.csv", comment="#")
    np.testing.assert_array_equal(df["value"].to_numpy(np.float32), full["map"].ravel())
    # the PNG is the same figure the API makes, with the same caption as the SVG
    png = cv2.imread(str(tmp_path / "chelsea.png"))[..., ::-1]
    np.testing.assert_array_equal(png, exports.figure(full["map"], full["image"], settings))
    root = ET.fromstring((tmp_path / "chelsea.svg").read_bytes())
    lines = [el.text for el in root.iter(f"{SVG}text") if el.get("class") == "caption"]
    assert " ".join(lines) == exports.caption(settings)
    assert "discard=0.2" in exports.caption(settings)


# ---------------------------------------------------------------------------------- the page


@pytest.fixture
def deferred(monkeypatch):
    """Each download button's lazy data callable, by file name (AppTest keeps none)."""
    made: dict[str, object] = {}
    original = MediaFileManager.add_deferred

    def record(self, data_callable, mimetype, coordinates, file_name=None, **kw):
        made[file_name] = data_callable
        return original(self, data_callable, mimetype, coordinates, file_name, **kw)

    monkeypatch.setattr(MediaFileManager, "add_deferred", record)
    return made


def test_the_rollout_view_exports_the_map_it_shows(deferred):
    from tests.test_app import APP, shown

    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception, at.exception
    assert at.segmented_control(key="view").value == "Rollout"
    buttons = {b.proto.label: b.proto.id for b in at.get("download_button")}
    for kind, label in [
        ("png", "Figure with legend (PNG)"),
        ("svg", "Figure with legend (SVG)"),
        ("csv", "Patch values (CSV)"),
        ("npz", "Patch values (npz)"),
    ]:
        assert buttons[label].endswith(f"-dl-{kind}-rollout")
    stem = "demo-scene-1-demo-rollout"
    assert {f"{stem}.png", f"{stem}.svg", f"{stem}-values.csv", f"{stem}-values.npz"} <= set(
        deferred
    )
    npz = np.load(io.BytesIO(deferred[f"{stem}-values.npz"]()))
    np.testing.assert_array_equal(npz["values"], shown(at, "rollout"))
    settings = json.loads(str(npz["settings"]))
    assert settings["model"] == "demo" and settings["weights"] == "bundled"
    assert not Path(settings["weights_location"]).is_absolute()  # no directory of the server
    assert settings["image"] == "demo-scene-1.png" and settings["view"] == "Rollout"
    assert settings["method"] == "rollout" and settings["options"]["fusion"] == "mean"
    df = pd.read_csv(io.StringIO(deferred[f"{stem}-values.csv"]()), comment="#")
    np.testing.assert_array_equal(df["value"].to_numpy(np.float32), npz["values"].ravel())
    fig = cv2.imdecode(np.frombuffer(deferred[f"{stem}.png"](), np.uint8), cv2.IMREAD_COLOR)
    assert fig.shape[0] > 1024 and fig.shape[1] == 1024  # the page's default width
    ET.fromstring(deferred[f"{stem}.svg"]().encode("utf-8"))

    # with "why this class?", the class map is exported too, with its class
    deferred.clear()
    at.toggle(key="why_class").set_value(True).run()
    assert not at.exception, at.exception
    cls = at.selectbox(key="target_class").value
    assert f"{stem}-values.npz" in deferred  # the rollout beside it still is
    name = next(n for n in deferred if n.endswith("-values.npz") and n != f"{stem}-values.npz")
    assert re.search(rf"-class{cls}-values\.npz$", name)
    settings = json.loads(str(np.load(io.BytesIO(deferred[name]()))["settings"]))
    assert settings["class_index"] == cls and settings["class_label"]


def test_a_clip_maps_settings_hold_the_typed_classes_and_prompt():
    """A CLIP probability depends on every typed class: the page's settings name them all."""
    from types import SimpleNamespace

    from vitviz.ui import widgets

    layout = TokenLayout(prefix=("cls",), grid=(7, 7), patch_size=(32, 32), readout="cls")
    info = ModelInfo(
        "clip-b32", "CLIP", "clip:ViT-B-32/openai", WeightsInfo("random", ""), "cpu", "CPU",
        "fp32", 12, 12, 3, False, (32, 32), {}, label_set="abc",
    )  # fmt: skip
    ctx = SimpleNamespace(
        info=info, image_name="cat.png", layout=layout, labels=["cat", "a cat, sleeping", "dog"],
        backend=SimpleNamespace(template="a drawing of a {}."),  # Backend.template
    )  # fmt: skip
    got = widgets.map_settings(ctx, "Rollout", "chefer", {}, 1)
    assert got["typed_classes"] == ["cat", "a cat, sleeping", "dog"]
    assert got["prompt_template"] == "a drawing of a {}."
    assert got["class_label"] == "a cat, sleeping"
    fixed = widgets.map_settings(SimpleNamespace(**{**vars(ctx), "info": info.with_(label_set="")}),
                                 "Rollout", "chefer", {}, 1)  # fmt: skip
    assert "typed_classes" not in fixed
