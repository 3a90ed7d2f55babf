"""The head atlas: streamed per-head statistics over a folder, against single runs."""

from __future__ import annotations

import csv
import json
import shutil
import weakref
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ASSETS
from vitviz import methods
from vitviz.analysis.atlas import (
    COLUMNS,
    HeadAtlas,
    atlas_csv,
    head_atlas,
    image_files,
    write_atlas,
)
from vitviz.backends.local import LocalBackend
from vitviz.cli import main
from vitviz.errors import ImageError, OptionsError
from vitviz.inputs.images import load_image_file
from vitviz.layout import TokenLayout
from vitviz.methods.statistics import LOCAL_RATIO, SELF_SHARE, SINK_SHARE
from vitviz.results import ImageExplanation, ModelInfo, WeightsInfo

SCENES = [ASSETS / f"demo-scene-{i}.png" for i in (1, 2, 3)]


@pytest.fixture
def scenes(tmp_path) -> Path:
    """A folder with the three demo scenes (and a text file, which is not an image)."""
    folder = tmp_path / "scenes"
    folder.mkdir()
    for path in SCENES:
        shutil.copy(path, folder / path.name)
    (folder / "notes.txt").write_text("not an image")
    return folder


def rule(distance: float, to_prefix: float, to_self: float, uniform: float) -> str:
    """The head table's rules, written out again."""
    if to_prefix >= SINK_SHARE:
        return "prefix sink"
    if to_self >= SELF_SHARE:
        return "diagonal"
    return "local" if distance < LOCAL_RATIO * uniform else "global"


def single_runs(backend: LocalBackend, paths: list[Path]) -> dict[str, np.ndarray]:
    """Each image explained on its own; head_table's columns stacked ``[images, L, H]``."""
    layers, heads = backend.info().layers, backend.info().heads
    tables = []
    for path in paths:
        (expl,) = backend.explain([load_image_file(path).image])
        tables.append(methods.head_table(expl.attention, expl.layout))
    return {c: np.array([t[c] for t in tables]).reshape(-1, layers, heads) for c in COLUMNS}


def test_the_atlas_is_the_mean_and_std_of_single_runs(demo, scenes):
    want = single_runs(demo, SCENES)
    for batch in (1, 2):
        atlas = head_atlas(demo, scenes, batch_size=batch, progress=False)
        assert atlas.images == 3 and atlas.skipped == [] and atlas.shape == (6, 3)
        # batch 1 runs exactly the single runs' forwards; a batch of 2 may round differently
        tol = 1e-12 if batch == 1 else 1e-5
        for c in COLUMNS:
            np.testing.assert_allclose(atlas.mean[c], want[c].mean(0), rtol=tol, atol=tol)
            np.testing.assert_allclose(atlas.std[c], want[c].std(0), rtol=10 * tol, atol=tol)
        assert (atlas.std["mean_distance"] > 0).all()  # three different scenes
    one = head_atlas(demo, scenes, batch_size=1, progress=False)
    two = head_atlas(demo, scenes, batch_size=2, progress=False)
    for c in COLUMNS:
        np.testing.assert_allclose(one.mean[c], two.mean[c], rtol=1e-5)
        np.testing.assert_allclose(one.std[c], two.std[c], rtol=1e-4, atol=1e-7)
    assert (one.kinds == two.kinds).all()


def test_kinds_follow_the_rule_on_the_means(demo, scenes):
    atlas = head_atlas(demo, scenes, progress=False)
    layers, heads = atlas.shape
    for layer in range(layers):
        for head in range(heads):
            m = {c: atlas.mean[c][layer, head] for c in COLUMNS}
            expected = rule(m["mean_distance"], m["to_prefix"], m["to_self"], atlas.uniform)
            assert atlas.kinds[layer, head] == expected
    (expl,) = demo.explain([load_image_file(SCENES[0]).image])
    assert atlas.uniform == pytest.approx(methods.statistics.uniform_distance(expl.layout))
    rows = atlas.rows()
    assert [r["kind"] for r in rows] == atlas.kinds.ravel().tolist()
    # the example maps are the raw readout attention of each head on the first image
    assert atlas.example is not None and atlas.example.name == SCENES[0].name
    np.testing.assert_allclose(
        atlas.example.maps[2, 1],
        methods.compute_map("attention", expl.attention, expl.layout, layer=2, head=1),
        rtol=1e-5,
        atol=1e-7,
    )


# -- a backend with attention built to be local, global, sink or diagonal ---------------------

LAYOUT = TokenLayout(("cls",), (4, 4), (16, 16), "cls")


def _heads() -> dict[str, np.ndarray]:
    n, p = 17, 16
    centres = LAYOUT.patch_centers()
    local = np.zeros((n, n))
    for q in range(p):
        near = [k for k in range(p) if np.abs(centres[k] - centres[q]).sum() <= 16]
        local[q + 1, [k + 1 for k in near]] = 1 / len(near)
    sink = np.full((n, n), 0.1 / p)
    sink[:, 0] = 0.9
    diagonal = np.full((n, n), 0.1 / (n - 1))
    np.fill_diagonal(diagonal, 0.9)
    out = {"local": local, "global": np.full((n, n), 1 / n), "sink": sink, "diagonal": diagonal}
    for a in out.values():
        a[0] = 1 / n
    return out


HEADS = _heads()
# image k (its red value) → the pattern of each of 4 heads. Head 1 is a sink in one image of
# three, head 3 local in two of three; by a vote of the images head 3 would be local, by its
# mean distance (2 × 11.9 px + 32.1 px) / 3 = 18.6 px ≥ 0.5 × 32.1 px it is global.
PLAN = {
    0: ("local", "sink", "diagonal", "local"),
    1: ("local", "global", "diagonal", "local"),
    2: ("local", "global", "diagonal", "global"),
}


class FakeBackend:
    """Any :class:`~vitviz.backends.Backend`: the attention comes from the image's colour."""

    batch_size = 8

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.alive_at_call: list[int] = []
        self._refs: list[weakref.ref] = []

    def info(self) -> ModelInfo:
        weights = WeightsInfo("file", "/home/someone/secret/fake.safetensors")
        return ModelInfo(
            "fake", "Fake ViT <b>", "fake_vit", weights, "cpu", "CPU", "fp32",
            1, 4, 0, False, (16, 16), {"input_size": [3, 64, 64]},
        )  # fmt: skip

    @property
    def labels(self) -> None:
        return None

    @property
    def geometry(self):
        return lambda im: im.convert("RGB").resize((64, 64))

    def explain(self, images, *, top_k=5, seen=False):
        self.calls.append(len(images))
        self.alive_at_call.append(sum(r() is not None for r in self._refs))
        out = []
        for im in images:
            plan = PLAN[im.getpixel((0, 0))[0] // 50]
            attn = np.stack([HEADS[k] for k in plan])[None].astype(np.float32)
            self._refs.append(weakref.ref(attn))
            out.append(ImageExplanation(np.asarray(im), LAYOUT, attn, None))
        return out


def _write(folder: Path, name: str, k: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (80, 64), (k * 50, 0, 0)).save(folder / name)


def _fake_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "fake"
    for k, name in enumerate(["b.png", "a.jpg", "c.PNG"]):
        _write(folder, name, [1, 0, 2][k])
    return folder


def test_any_backend_and_the_labels_come_from_the_means(tmp_path):
    backend = FakeBackend()
    atlas = head_atlas(backend, _fake_folder(tmp_path), batch_size=2, progress=False)
    assert backend.calls == [2, 1]  # batches of at most batch_size images
    assert backend.alive_at_call == [0, 0]  # no earlier batch's attention is still held
    assert atlas.images == 3 and atlas.example is not None and atlas.example.name == "a.jpg"
    assert atlas.kinds.tolist() == [["local", "global", "diagonal", "global"]]
    for c in COLUMNS:  # each image's head table, by hand: [images, heads]
        per_image = np.array(
            [
                [
                    methods.head_table(HEADS[p][None, None].astype(np.float32), LAYOUT)[c][0]
                    for p in PLAN[k]
                ]
                for k in PLAN
            ]
        )
        np.testing.assert_allclose(atlas.mean[c][0], per_image.mean(0), rtol=1e-6)
        np.testing.assert_allclose(atlas.std[c][0], per_image.std(0), rtol=1e-5, atol=1e-6)
    assert atlas.mean["to_prefix"][0, 1] == pytest.approx((0.9 + 2 / 17) / 3)
    assert atlas.std["to_prefix"][0, 1] > 0.3 and atlas.std["to_self"][0, 2] < 1e-7
    # the rule on the means, checked again by hand (head 1: one sink image of three)
    for h in range(4):
        m = {c: atlas.mean[c][0, h] for c in COLUMNS}
        want = rule(m["mean_distance"], m["to_prefix"], m["to_self"], atlas.uniform)
        assert atlas.kinds[0, h] == want


def test_limit_recursive_and_links_out_of_the_folder(tmp_path):
    folder = _fake_folder(tmp_path)
    _write(folder / "sub", "d.png", 0)
    outside = tmp_path / "elsewhere.png"
    _write(tmp_path, "elsewhere.png", 0)
    (folder / "link.png").symlink_to(outside)
    (folder / "inside.png").symlink_to(folder / "a.jpg")
    files, skipped = image_files(folder)
    assert [n for _, n in files] == ["a.jpg", "b.png", "c.PNG", "inside.png"]
    assert [s.file for s in skipped] == ["link.png"]
    files, _ = image_files(folder, recursive=True)
    assert [n for _, n in files] == ["a.jpg", "b.png", "c.PNG", "inside.png", "sub/d.png"]
    lines: list[str] = []
    atlas = head_atlas(FakeBackend(), folder, limit=2, report=lines.append, progress=False)
    assert atlas.images == 2 and lines == [
        "skipped link.png: a link to a file outside the folder; not followed"
    ]
    atlas = head_atlas(FakeBackend(), folder, recursive=True, report=lines.append)
    assert atlas.images == 5 and atlas.settings["recursive"] is True
    with pytest.raises(OptionsError, match="--limit"):
        head_atlas(FakeBackend(), folder, limit=0)


def test_a_corrupt_file_is_skipped_and_reported(demo, scenes, capsys):
    (scenes / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (scenes / "empty.jpg").write_bytes(b"")
    atlas = head_atlas(demo, scenes, batch_size=2)
    assert atlas.images == 3
    assert [s.file for s in atlas.skipped] == ["broken.png", "empty.jpg"]
    assert "empty" in atlas.skipped[1].reason and str(scenes) not in atlas.skipped[0].reason
    err = capsys.readouterr().err
    assert "skipped broken.png: " in err and "skipped empty.jpg: the file is empty" in err
    assert len([line for line in err.splitlines() if line.startswith("skipped")]) == 2
    clean = head_atlas(demo, SCENES[0].parent, limit=1, progress=False)
    assert clean.images == 1 and (clean.std["entropy"] == 0).all()


def test_an_empty_folder_or_no_readable_image_is_a_clear_error(tmp_path, demo):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(ImageError, match="no image files"):
        head_atlas(demo, empty, progress=False)
    (empty / "bad.png").write_text("x")
    with pytest.raises(ImageError, match="none of its 1 image files could be read"):
        head_atlas(demo, empty, progress=False, report=lambda _: None)
    with pytest.raises(OptionsError, match="not a folder"):
        head_atlas(demo, tmp_path / "missing", progress=False)


def test_the_report_files(tmp_path):
    atlas = head_atlas(FakeBackend(), _fake_folder(tmp_path), progress=False)
    paths = write_atlas(atlas, tmp_path / "out", examples=2)
    assert [p.name for p in paths] == ["atlas.json", "atlas.csv", "atlas.html"]
    text = paths[0].read_text()
    assert "/home/someone" not in text and str(tmp_path) not in text
    data = json.loads(text)
    assert data["model"]["weights"]["location"] == "fake.safetensors"
    assert data["images"] == 3 and len(data["heads_table"]) == 4
    assert data["heads_table"][1]["kind"] == "global" and "ddof=0" in data["std"]
    page = paths[2].read_text()
    assert "Fake ViT &lt;b&gt;" in page and "Fake ViT <b>" not in page
    assert page.count("data:image/png;base64,") == 4  # 2 most local + 2 most global
    assert isinstance(atlas, HeadAtlas)


def test_the_atlas_csv_quotes_every_field_and_starts_no_formula(tmp_path):
    """Issue 21: the atlas CSV is written like every CSV of the project (exports.csv_text)."""
    import dataclasses
    import io

    import pandas as pd

    atlas = head_atlas(FakeBackend(), _fake_folder(tmp_path), progress=False)
    kinds = atlas.kinds.astype(object)
    kinds[0, 0] = "=cmd|' -C calc'!A0"
    text = atlas_csv(dataclasses.replace(atlas, kinds=kinds))
    assert all(line.startswith('"') and line.endswith('"') for line in text.splitlines())
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows[0]["kind"] == "'=cmd|' -C calc'!A0" and rows[1]["kind"] == atlas.kinds[0, 1]
    df = pd.read_csv(io.StringIO(text))
    want = atlas.rows()
    assert df["layer"].tolist() == [r["layer"] for r in want]
    np.testing.assert_array_equal(df["entropy_mean"], [r["entropy_mean"] for r in want])


def _cli(args: list[str]) -> int:
    return main(["atlas", *args, "--model", "demo", "--device", "cpu", "--quiet"])


def test_cli_writes_json_csv_and_html(scenes, tmp_path, capsys):
    shutil.copy(SCENES[0], scenes / "a <b> & c.png")
    (scenes / "zz-bad.png").write_bytes(b"garbage")
    out = tmp_path / "out"
    assert _cli([str(scenes), "--out", str(out), "--batch-size", "3"]) == 1  # one skipped
    err = capsys.readouterr().err
    assert "skipped zz-bad.png:" in err and "over 4 images, 1 skipped" in err
    assert "Traceback" not in err
    with open(out / "atlas.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 * 3
    stats = [f"{c}_{s}" for c in COLUMNS for s in ("mean", "std")]
    assert list(rows[0]) == ["layer", "head", *stats, "kind"]
    assert [(int(r["layer"]), int(r["head"])) for r in rows[:4]] == [(0, 0), (0, 1), (0, 2), (1, 0)]
    assert all(r["kind"] in methods.HEAD_KINDS for r in rows)
    data = json.loads((out / "atlas.json").read_text())
    assert data["images"] == 4 and data["skipped"][0]["file"] == "zz-bad.png"
    assert data["model"]["name"] == "demo"
    assert data["model"]["weights"]["source"] == "bundled"
    assert data["example_image"] == "a <b> & c.png"
    assert str(ASSETS.parent) not in json.dumps(data) and str(tmp_path) not in json.dumps(data)
    for row, want in zip(rows, data["heads_table"], strict=True):
        assert float(row["entropy_mean"]) == pytest.approx(want["entropy_mean"])
    page = (out / "atlas.html").read_text()
    assert "a &lt;b&gt; &amp; c.png" in page and "a <b> & c.png" not in page
    assert "<svg" in page and "Mean attention distance vs depth" in page
    assert page.count("<circle") >= 18 and page.count("data:image/png;base64,") == 6
    assert "<script" not in page and 'src="http' not in page and 'href="http' not in page


def test_cli_errors_exit_2_without_a_traceback(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = str(tmp_path / "out")
    assert _cli([str(empty), "--out", out]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "no image files" in err and "Traceback" not in err
    assert _cli([str(tmp_path / "missing"), "--out", out]) == 2
    assert "not a folder" in capsys.readouterr().err
    (empty / "x.png").write_text("x")
    assert _cli([str(empty), "--out", out]) == 2
    assert "none of its 1 image files could be read" in capsys.readouterr().err
    assert _cli([str(empty), "--out", out, "--limit", "0"]) == 2
    assert "--limit must be at least 1" in capsys.readouterr().err
