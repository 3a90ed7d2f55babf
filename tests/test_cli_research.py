"""Issue 15 from the command line and Python: ``compare`` (options carried by relative depth)
and ``features`` (PCA picture, patch similarity), checked against the engine and by hand."""

from __future__ import annotations

import json

import numpy as np
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
