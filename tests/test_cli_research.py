"""Issue 15 from the command line and Python: ``compare`` (options carried by relative depth)
and ``features`` (PCA picture, patch similarity), checked against the engine and by hand; and
issue 24's ``ablate``, ``lens`` and ``norms``, whose files and JSON equal LocalBackend's results
for the same image, and whose bad input is one line and exit status 2."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest

from tests.conftest import ASSETS
from vitviz import methods
from vitviz.analysis.comparison import Side, carry_options, compare
from vitviz.backends.local import LocalBackend
from vitviz.cli import main
from vitviz.inputs.images import load_image_file
from vitviz.layout import TokenLayout


def grid(h: int, w: int) -> TokenLayout:
    return TokenLayout(prefix=("cls",), grid=(h, w), patch_size=(16, 16), readout="cls")


def test_options_are_carried_by_relative_depth_head_count_and_grid_place():
    a, b = (6, 8, grid(14, 14)), (12, 6, grid(16, 16))
    got = carry_options("attention", {"layer": 2, "head": 5, "fusion": "max"}, a, b)
    assert got == {"layer": 4, "head": 5, "fusion": "max"}  # 2·11/5 = 4.4 → 4
    assert carry_options("attention", {"layer": 5, "head": 7}, a, b)["head"] is None  # B has 6
    # query patches: row 13, col 0 → row 15, col 0; row 7, col 7 → 7·15/13 = 8.08 → (8, 8)
    assert carry_options("query", {"patch": 13 * 14}, a, b)["patch"] == 15 * 16
    assert carry_options("query", {"patch": 7 * 14 + 7}, a, b)["patch"] == 8 * 16 + 8
    assert carry_options("rollout", {"discard": 0.5, "start_layer": 5}, a, b) == {
        "fusion": "mean",
        "discard": 0.5,
        "start_layer": 11,
        "end_layer": 11,
    }


def test_compare_two_images_and_two_methods_equal_the_single_maps(demo):
    one = load_image_file(ASSETS / "demo-scene-1.png").image
    two = load_image_file(ASSETS / "coffee.png").image
    left, right = compare(Side(demo, one, "attention"), Side(demo, two, "attention"), {"layer": 3})
    for image, got in ((one, left), (two, right)):
        expl = demo.explain([image])[0]
        want = methods.compute_map("attention", expl.attention, expl.layout, layer=3)
        np.testing.assert_allclose(got.values, want, rtol=1e-6)
    left, right = compare(Side(demo, one, "rollout"), Side(demo, one, "chefer"), {"end_layer": 4})
    res = demo.explain_classes([one], [[None]], full_gradients=True)[0]
    expl = res.explanation
    want = methods.compute_map(
        "chefer", expl.attention, expl.layout, grads=res.gradients[0], end_layer=4
    )
    np.testing.assert_allclose(right.values, want, rtol=1e-4, atol=1e-9)
    assert right.target == (res.classes[0], res.labels[0]) and left.target is None


def test_cli_compare_writes_both_maps_with_the_carried_options(tmp_path, capsys):
    rc = main(
        ["compare", str(ASSETS / "demo-scene-1.png"), "--model", "demo",
         "--model-b", "vit_tiny_patch16_224", "--random-weights-b", "--method", "attention",
         "--layer", "5", "--head", "2", "--out", str(tmp_path)]
    )  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    rec = json.loads((tmp_path / "demo-scene-1-compare.json").read_text())
    assert rec["a"]["options"]["layer"] == 5 and rec["b"]["options"]["layer"] == 11
    assert rec["a"]["model"] == "demo" and rec["b"]["weights"] == "random"
    npz = np.load(tmp_path / "demo-scene-1-compare.npz")
    expl = LocalBackend.from_name("demo", device="cpu").explain(
        [load_image_file(ASSETS / "demo-scene-1.png").image]
    )[0]
    want = methods.compute_map("attention", expl.attention, expl.layout, layer=5, head=2)
    np.testing.assert_allclose(npz["values_a"], want, rtol=1e-6)
    assert npz["values_b"].shape == (14, 14)
    import cv2

    png = cv2.imread(str(tmp_path / "demo-scene-1-compare.png"))
    assert png.shape[1] > 2 * 224  # two figures side by side


def test_cli_compare_needs_a_second_side(tmp_path, capsys):
    rc = main(["compare", str(ASSETS / "coffee.png"), "--model", "demo", "--out", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--model-b" in err and "Traceback" not in err


def test_cli_features_pca_and_similarity(tmp_path, capsys):
    rc = main(
        ["features", str(ASSETS / "demo-scene-2.png"), "--model", "demo", "--patch", "30",
         "--drop-background", "--out", str(tmp_path)]
    )  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    npz = np.load(tmp_path / "demo-scene-2-features.npz")
    tokens = npz["tokens"].astype(np.float64)
    patches = tokens[1:]  # the demo model has one prefix token, [CLS]
    ref = patches[30]
    cos = patches @ ref / (np.linalg.norm(patches, axis=1) * np.linalg.norm(ref))
    np.testing.assert_allclose(npz["similarity"].ravel(), cos, rtol=1e-5, atol=1e-6)
    assert npz["similarity"].ravel()[30] == pytest.approx(1.0, abs=1e-6)
    assert npz["rgb"].shape == (14, 14, 3) and npz["rgb"].min() >= 0 and npz["rgb"].max() <= 1
    assert not npz["rgb"][~npz["foreground"]].any()  # the background is black
    assert (tmp_path / "demo-scene-2-pca.png").exists()
    assert (tmp_path / "demo-scene-2-similarity-p30.png").exists()
    rc = main(["features", str(ASSETS / "coffee.png"), "--model", "demo", "--patch", "196",
               "--out", str(tmp_path)])  # fmt: skip
    assert rc == 2 and "--patch 196" in capsys.readouterr().err


def test_cli_refuses_a_reversed_span_and_judging_why_not_before_any_work(tmp_path, capsys):
    img = str(ASSETS / "coffee.png")
    rc = main(["explain", img, "--model", "demo", "--start-layer", "4", "--end-layer", "1",
               "--out", str(tmp_path)])  # fmt: skip
    assert rc == 2 and "before the start layer" in capsys.readouterr().err
    rc = main(["trust", img, "--model", "demo", "--method", "chefer", "--negative",
               "--out", str(tmp_path)])  # fmt: skip
    assert rc == 2 and "why not" in capsys.readouterr().err


def test_cli_explains_a_backbone_by_its_readout_feature(tmp_path, capsys):
    from safetensors.torch import save_file

    from tests.conftest import tiny

    loaded = tiny("vit_tiny_patch16_224", seed=3, model_kwargs={"depth": 2, "num_classes": 0})
    path = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in loaded.model.state_dict().items()}, str(path))
    out = str(tmp_path / "o")
    rc = main(["explain", str(ASSETS / "coffee.png"), "--model", "vit_tiny_patch16_224",
               "--weights", str(path), "--method", "chefer", "--out", out])  # fmt: skip
    assert rc == 0 and "readout feature" in capsys.readouterr().err
    backend = LocalBackend.from_name("vit_tiny_patch16_224", weights=str(path), device="cpu")
    res = backend.explain_classes(
        [load_image_file(ASSETS / "coffee.png").image], [[None]], full_gradients=True
    )[0]
    want = methods.compute_map(
        "chefer", res.explanation.attention, res.explanation.layout, grads=res.gradients[0]
    )
    np.testing.assert_allclose(np.load(tmp_path / "o" / "coffee.npz")["map"], want, rtol=1e-4)
    rc = main(["explain", str(ASSETS / "coffee.png"), "--model", "vit_tiny_patch16_224",
               "--weights", str(path), "--method", "chefer", "--class", "3",
               "--out", str(tmp_path / "o")])  # fmt: skip
    assert rc == 2 and "no classifier" in capsys.readouterr().err


# ------------------------------------------------------------------- issue 24: ablate, lens, norms

SCENE = ASSETS / "demo-scene-1.png"
DEMO = ["--model", "demo", "--device", "cpu"]


def seen_scene(backend: LocalBackend):
    return backend.geometry(load_image_file(SCENE).image)


def read_csv(path) -> pd.DataFrame:
    return pd.read_csv(path, comment="#")


def test_cli_ablate_writes_the_backends_numbers(demo, tmp_path, capsys):
    rc = main(["ablate", str(SCENE), *DEMO, "--class", "2", "--kind", "mean", "--batch", "5",
               "--out", str(tmp_path)])  # fmt: skip
    assert rc == 0
    out, err = capsys.readouterr()
    want = demo.ablate_heads(seen_scene(demo), 2, kind="mean")
    with np.load(tmp_path / "demo-scene-1.ablation.npz") as npz:
        for name in ("logit", "probability", "layer_logit", "layer_probability"):
            np.testing.assert_allclose(npz[name], getattr(want, name), atol=1e-5, err_msg=name)
        assert int(npz["target"]) == 2 and str(npz["kind"]) == "mean" and int(npz["batch"]) == 5
        settings = json.loads(str(npz["settings"]))
    assert settings["options"]["class_label"] == demo.labels[2]
    assert settings["image"] == "demo-scene-1.png" and settings["model"] == "demo"
    df = read_csv(tmp_path / "demo-scene-1.ablation.csv")
    heads = df[df["head"] != "all"]
    li, hi = heads["layer"].to_numpy(int), heads["head"].astype(int).to_numpy()
    np.testing.assert_allclose(heads["delta_logit"], want.logit[li, hi], atol=1e-5)
    # the printed table: the most needed head first, then every layer's Δ
    layer, head, delta = want.ranked()[0]
    first = next(line for line in out.splitlines() if line.strip().startswith("1 "))
    assert first.split()[:4] == ["1", str(layer), str(head), f"{delta:+.4f}"]
    assert f"{want.layer_logit[-1]:+.4f}" in out.splitlines()[-1]
    assert "ablating: 24/24" in err  # the progress line: 6 layers × 3 heads + 6 layers
    svg = (tmp_path / "demo-scene-1.ablation.svg").read_text()
    assert len([e for e in ET.fromstring(svg).iter() if e.get("class") == "head-cell"]) == 18


def test_cli_ablate_json_names_the_class_and_the_files(demo, tmp_path, capsys):
    rc = main(["ablate", str(SCENE), *DEMO, "--class", "checkerboard", "--json",
               "--out", str(tmp_path)])  # fmt: skip
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    want = demo.ablate_heads(seen_scene(demo), demo.labels.index("checkerboard"))
    assert data["class"] == demo.labels.index("checkerboard") and data["kind"] == "zero"
    np.testing.assert_allclose(data["delta_logit"], want.logit, atol=1e-5)
    np.testing.assert_allclose(data["layer_delta_probability"], want.layer_probability, atol=1e-6)
    assert data["clean"]["logit"] == pytest.approx(want.clean_logit, abs=1e-5)
    assert sorted(data["files"]) == ["csv", "npz", "svg"]
    assert all(tmp_path.joinpath(p).exists() for p in data["files"].values())


def test_cli_lens_writes_the_backends_numbers(demo, tmp_path, capsys):
    rc = main(["lens", str(SCENE), *DEMO, "--top", "3", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    want = demo.logit_lens(seen_scene(demo), top_k=3)
    with np.load(tmp_path / "demo-scene-1.lens.npz") as npz:
        np.testing.assert_allclose(npz["logits"], want.logits, atol=1e-5)
        np.testing.assert_array_equal(npz["top"], want.top)
        assert int(npz["final"]) == want.final
    df = read_csv(tmp_path / "demo-scene-1.lens.csv")
    top1 = df[df["rank"] == 1].sort_values("layer")
    np.testing.assert_array_equal(top1["class"], want.top[:, 0])
    finals = df[df["final"]].sort_values("layer")
    np.testing.assert_allclose(finals["probability"], want.final_probability, atol=1e-6)
    np.testing.assert_array_equal(finals["rank"], want.final_rank)
    # the table: one line per layer, its top-1 class last
    rows = [line for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == len(want.top)
    for layer, line in enumerate(rows):
        top = int(want.top[layer, 0])
        assert line.endswith(f"{top} {demo.labels[top]}")
    assert "approximation" in out
    rc = main(["lens", str(SCENE), *DEMO, "--json", "--out", str(tmp_path)])
    data = json.loads(capsys.readouterr().out)
    want5 = demo.logit_lens(seen_scene(demo))
    assert data["top"] == want5.top.tolist() and data["final"] == want5.final
    assert data["final_label"] == demo.labels[want5.final]
    np.testing.assert_allclose(data["final_probability"], want5.final_probability, atol=1e-6)


def test_cli_norms_writes_the_backends_numbers(demo, tmp_path, capsys):
    rc = main(["norms", str(SCENE), *DEMO, "--k", "1.3", "--layer", "1", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    want = demo.token_norms(seen_scene(demo), k=1.3)
    assert want.outliers.any()  # a low k, so that some patches are flagged
    with np.load(tmp_path / "demo-scene-1.norms.npz") as npz:
        np.testing.assert_allclose(npz["norms"], want.norms, rtol=1e-5)
        np.testing.assert_array_equal(npz["outliers"], want.outliers)
        assert float(npz["k"]) == 1.3
    df = read_csv(tmp_path / "demo-scene-1.norms.csv")
    np.testing.assert_allclose(
        df["norm"], want.norms[df["layer"].to_numpy(int), df["token"].to_numpy(int)], rtol=1e-5
    )
    patches = df[df["kind"] == "patch"]
    flags = want.outliers[patches["layer"].to_numpy(int), patches["token"].to_numpy(int) - 1]
    np.testing.assert_array_equal(patches["outlier"], flags)
    assert set(df[df["token"] == 0]["kind"]) == {"prefix"}
    # the picture is layer 1: its outlines are layer 1's outliers on the 14×14 grid
    root = ET.fromstring((tmp_path / "demo-scene-1.norms.svg").read_text())
    marked = {
        int(e.get("data-row")) * 14 + int(e.get("data-col"))
        for e in root.iter()
        if e.get("class") == "outlier"
    }
    assert marked == set(np.flatnonzero(want.outliers[1]).tolist())
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [int(r[1]) for r in rows[: len(want.share)]] == want.outliers.sum(1).tolist()
    assert f"{want.attention_share:.2%}" in out
    rc = main(["norms", str(SCENE), *DEMO, "--json", "--out", str(tmp_path)])
    data = json.loads(capsys.readouterr().out)
    want3 = demo.token_norms(seen_scene(demo))
    np.testing.assert_allclose(data["share"], want3.share)
    assert data["k"] == 3.0 and data["settings"]["options"]["layer"] == 5


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["ablate", "--class", "8"], "class 8 does not exist"),
        (["ablate", "--class", "-1"], "class -1 does not exist"),
        (["ablate", "--class", "teapot"], "no class named 'teapot'"),
        (["ablate", "--kind", "other"], "--kind must be zero or mean"),
        (["ablate", "--batch", "0"], "--batch must be at least 1"),
        (["lens", "--top", "0"], "--top must be from 1"),
        (["norms", "--k", "0.5"], "--k must be a number above 1"),
        (["norms", "--k", "nan"], "--k must be a number above 1"),
        (["norms", "--layer", "6"], "--layer must be from 0 to 5"),
        (["norms", "--layer", "-1"], "--layer must be from 0 to 5"),
    ],
)
def test_cli_research_bad_options_are_one_line(tmp_path, capsys, argv, words):
    rc = main([argv[0], str(SCENE), *DEMO, *argv[1:], "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and words in err and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert not list(tmp_path.glob("demo-scene-1.*"))


@pytest.mark.parametrize("command", ["ablate", "lens", "norms"])
def test_cli_research_bad_images_are_one_line(tmp_path, capsys, command):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    for path in (tmp_path / "missing.png", text):
        rc = main([command, str(path), *DEMO, "--out", str(tmp_path)])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1, err
        assert path.name in err and "Traceback" not in err
    assert not list(tmp_path.glob("*.csv"))


def test_cli_research_refuses_work_that_does_not_fit_before_it_runs(tmp_path, capsys, monkeypatch):
    import vitviz.memory.admission as admission

    monkeypatch.setattr(admission, "machine_memory", lambda: 1)
    for argv in (["ablate", "--class", "1"], ["ablate"], ["lens"], ["norms"]):
        rc = main([argv[0], str(SCENE), *DEMO, *argv[1:], "--out", str(tmp_path)])
        err = capsys.readouterr().err
        assert rc == 2 and "would hold" in err and err.count("\n") == 1, err
    assert not list(tmp_path.glob("demo-scene-1.*"))


def test_cli_research_over_a_server_without_the_capability(tmp_path, capsys, monkeypatch, demo):
    import vitviz.backends.remote as remote

    class Served:  # a server that answers /v1/model but offers none of issue 24's calls
        def __init__(self, url, token=None):
            self.url = url

        def info(self):
            return demo.info()

        def offers(self, capability):
            return capability == "explain"

    monkeypatch.setattr(remote, "RemoteBackend", Served)
    for command, what in (("ablate", "head ablation"), ("lens", "logit lens"),
                          ("norms", "token norms")):  # fmt: skip
        rc = main([command, str(SCENE), "--server", "http://127.0.0.1:9", "--out", str(tmp_path)])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1, err
        assert f"does not offer {'the ' if command == 'lens' else ''}{what}" in err
    rc = main(["lens", str(SCENE), "--server", "http://x", "--random-weights"])
    assert rc == 2 and "server's choice" in capsys.readouterr().err


def test_cli_research_on_a_backbone_says_what_is_missing(tmp_path, capsys):
    from safetensors.torch import save_file

    from tests.conftest import tiny

    loaded = tiny("vit_tiny_patch16_224", seed=3, model_kwargs={"depth": 2, "num_classes": 0})
    path = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in loaded.model.state_dict().items()}, str(path))
    model = ["--model", "vit_tiny_patch16_224", "--weights", str(path), "--device", "cpu"]
    for command in ("ablate", "lens"):
        rc = main([command, str(SCENE), *model, "--out", str(tmp_path)])
        err = capsys.readouterr().err
        assert rc == 2 and "does not offer" in err and err.count("\n") == 1, err
    # token norms need no classifier: the backbone's norms are written
    assert main(["norms", str(SCENE), *model, "--json", "--out", str(tmp_path)]) == 0
    assert len(json.loads(capsys.readouterr().out)["share"]) == 2


def test_the_csv_reader_sees_the_settings_lines(tmp_path, capsys):
    main(["lens", str(SCENE), *DEMO, "--out", str(tmp_path)])
    capsys.readouterr()
    text = (tmp_path / "demo-scene-1.lens.csv").read_text()
    lines = [line for line in io.StringIO(text) if line.startswith("#,")]
    assert any(line.startswith('#,"model: ""demo""') for line in lines)
    assert any("approximation" in line for line in lines)
