"""The CLI end to end on the sample photos."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import ASSETS, never_waits_on
from vitviz import methods
from vitviz.cli import main
from vitviz.layout import TokenLayout


def run(args: list[str]) -> int:
    return main(args)


def test_explain_writes_png_json_npz(tmp_path, weights_file, capsys):
    rc = run(
        ["explain", str(ASSETS / "chelsea.png"), str(ASSETS / "coffee.png"), "--model",
         "vit_tiny_patch16_224", "--weights", str(weights_file), "--out", str(tmp_path),
         "--method", "rollout", "--discard", "0.3", "--fusion", "max"]
    )  # fmt: skip
    assert rc == 0
    for stem in ("chelsea", "coffee"):
        rec = json.loads((tmp_path / f"{stem}.json").read_text())
        npz = np.load(tmp_path / f"{stem}.npz")
        layout = TokenLayout.from_dict(rec["layout"])
        assert rec["method"] == "rollout"
        assert rec["options"] == {
            "fusion": "max",
            "discard": 0.3,
            "start_layer": 0,
            "end_layer": -1,
        }
        assert rec["model"]["weights"]["source"] == "file"
        assert rec["input_size"] == [224, 224]
        stats = rec["head_statistics"]
        assert np.array(stats["mean_distance"]).shape == (12, 3)
        preds = rec["predictions"]
        assert len(preds) == 5 and all(p["label"] for p in preds)
        probs = [p["probability"] for p in preds]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        attn = npz["attention"]
        assert attn.shape == (12, 3, 197, 197)
        np.testing.assert_allclose(attn.sum(-1), 1.0, atol=1e-5)
        np.testing.assert_allclose(
            stats["entropy"], methods.attention_entropy(attn, layout), atol=1e-4
        )
        expected = methods.compute_map("rollout", attn, layout, fusion="max", discard=0.3)
        np.testing.assert_allclose(npz["map"], expected, rtol=1e-6)
        softmax = torch.from_numpy(npz["logits"]).softmax(-1)
        assert softmax[preds[0]["index"]].item() == pytest.approx(probs[0], rel=1e-5)
        png = cv2.imread(str(tmp_path / f"{stem}.png"))
        assert png.shape == (224, 224, 3)
        assert not np.array_equal(png[..., ::-1], npz["image"])  # the overlay is drawn on it
    assert "2 of 2 images explained" in capsys.readouterr().err


def test_each_method_by_name(tmp_path, weights_file):
    for method, extra in [
        ("attention", ["--layer", "1", "--head", "2"]),
        ("query", ["--patch", "17", "--rolled"]),
        ("mask", ["--threshold", "0.5"]),
    ]:
        out = tmp_path / method
        args = ["explain", str(ASSETS / "chelsea.png"), "--model", "vit_tiny_patch16_224",
                "--weights", str(weights_file), "--out", str(out),
                "--method", method, *extra]  # fmt: skip
        assert run(args) == 0
        npz = np.load(out / "chelsea.npz")
        layout = TokenLayout.from_dict(json.loads((out / "chelsea.json").read_text())["layout"])
        a = npz["attention"]
        if method == "attention":
            np.testing.assert_allclose(npz["map"].ravel(), a[1, 2, 0, 1:], rtol=1e-6)
        elif method == "query":
            expected = methods.rollout_matrix(a, layout)[1 + 17, 1:]
            np.testing.assert_allclose(npz["map"].ravel(), expected, rtol=1e-5)
        else:
            base = methods.compute_map("attention", a, layout)
            assert set(np.unique(npz["map"])) <= {0.0, 1.0}
            assert base[npz["map"] > 0].sum() >= 0.5 * base.sum()


def test_bad_files_do_not_stop_the_others(tmp_path, weights_file, capsys):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("hello")
    out = tmp_path / "out"
    rc = run(
        ["explain", str(empty), str(ASSETS / "rocket.jpg"), str(text), str(tmp_path / "gone.png"),
         "--model", "vit_tiny_patch16_224", "--weights", str(weights_file), "--out", str(out)]
    )  # fmt: skip
    assert rc == 1
    err = capsys.readouterr().err
    assert f"error: {empty}: the file is empty" in err
    assert f"error: {text}:" in err and "not an image" in err
    assert "gone.png: no such file" in err
    assert "1 of 4 images explained" in err
    assert (out / "rocket.png").exists() and (out / "rocket.npz").exists()
    assert "Traceback" not in err


def test_random_weights_are_flagged_everywhere(tmp_path, capsys):
    rc = run(["explain", str(ASSETS / "chelsea.png"), "--model", "vit_tiny_patch16_224",
              "--random-weights", "--out", str(tmp_path)])  # fmt: skip
    assert rc == 0
    assert "RANDOM WEIGHTS" in capsys.readouterr().err
    rec = json.loads((tmp_path / "chelsea.json").read_text())
    assert rec["model"]["weights"]["source"] == "random"
    assert "RANDOM WEIGHTS" in rec["model"]["weights"]["warning"]
    png = cv2.imread(str(tmp_path / "chelsea.png"))[..., ::-1]
    top = png[:20].reshape(-1, 3).astype(int)
    assert ((top[:, 0] > 150) & (top[:, 1] < 80)).mean() > 0.5  # the red banner


def test_bad_options_and_models_exit_2(tmp_path, weights_file, capsys):
    base = ["explain", str(ASSETS / "chelsea.png"), "--model", "vit_tiny_patch16_224",
            "--weights", str(weights_file), "--out", str(tmp_path)]  # fmt: skip
    assert run([*base, "--method", "rollout", "--layer", "2"]) == 2
    assert "takes no option layer" in capsys.readouterr().err
    assert run([*base, "--method", "attention", "--layer", "12"]) == 2
    assert "layer 12 is out of range: the model has 12 layers" in capsys.readouterr().err
    assert run(["explain", "x.png", "--model", "swin_tiny_patch4_window7_224"]) == 2
    assert "windowed attention" in capsys.readouterr().err
    assert run(["explain", "x.png", "--model", "vit-b16"]) == 2
    assert "--weights" in capsys.readouterr().err


def test_models_lists_curated_and_weight_sources(capsys):
    assert run(["models"]) == 0
    out = capsys.readouterr().out
    for key in ("vit-b16", "vit-s16", "deit-s16", "deit-b16-distilled", "dino-s16"):
        assert key in out
    assert "dinov2-s14-reg" in out and "download on first use" in out


def test_module_entry_point_runs_in_a_subprocess(tmp_path, weights_file):
    proc = subprocess.run(
        [sys.executable, "-m", "vitviz", "explain", str(ASSETS / "astronaut.png"), "--model",
         "vit_tiny_patch16_224", "--weights", str(weights_file), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=ASSETS.parent,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HF_HOME": str(tmp_path / "hf")},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "astronaut.json").exists()


def test_patch_beyond_one_images_grid_fails_that_image_only(tmp_path, weights_file, capsys):
    # keep-aspect: the wide rocket photo gets a 14×21 grid (294 patches), the square astronaut
    # 14×14 (196): patch 250 exists only in the first.
    rc = run(
        ["explain", str(ASSETS / "rocket.jpg"), str(ASSETS / "astronaut.png"), "--keep-aspect",
         "--model", "vit_tiny_patch16_224", "--weights", str(weights_file), "--out", str(tmp_path),
         "--method", "query", "--patch", "250"]
    )  # fmt: skip
    assert rc == 1
    err = capsys.readouterr().err
    assert "astronaut.png: patch 250 is out of range: the grid is 14×14" in err
    rec = json.loads((tmp_path / "rocket.json").read_text())
    assert rec["layout"]["grid"] == [14, 21] and rec["input_size"] == [224, 336]
    npz = np.load(tmp_path / "rocket.npz")
    assert npz["map"].shape == (14, 21)
    np.testing.assert_allclose(npz["map"].ravel(), npz["attention"][-1].mean(0)[1 + 250, 1:])


def test_class_specific_methods(tmp_path, capsys):
    from vitviz.backends.local import LocalBackend
    from vitviz.inputs.images import load_image_file

    scene = ASSETS / "demo-scene-2.png"
    backend = LocalBackend.from_name("demo", device="cpu")
    image = load_image_file(scene).image
    for method, extra, cls, needed in [
        ("chefer", ["--class", "anti-diagonal"], 3, range(6)),
        ("grad-rollout", ["--class", "0", "--fusion", "max", "--start-layer", "1"], 0, range(1, 6)),
        ("attn-grad", ["--layer", "2", "--head", "1"], None, [2]),
    ]:
        out = tmp_path / method
        args = ["explain", str(scene), "--model", "demo", "--out", str(out),
                "--method", method, *extra]  # fmt: skip
        assert run(args) == 0
        record = json.loads((out / "demo-scene-2.json").read_text())
        npz = np.load(out / "demo-scene-2.npz")
        top = record["predictions"][0]["index"]
        want = top if cls is None else cls
        assert record["explained_class"]["index"] == want
        # independent: the backend's gradients for that class and the method by hand
        ref = backend.explain_classes([image], [[want]], full_gradients=True)[0]
        needed = list(needed)
        got = npz["gradients"]
        np.testing.assert_allclose(got[needed], ref.gradients[0][needed], rtol=1e-4, atol=1e-7)
        assert not np.delete(got, needed, axis=0).any()  # layers no method reads: not computed
        a, g = ref.explanation.attention, ref.gradients[0]
        layout = ref.explanation.layout
        if method == "chefer":
            expected = methods.compute_map("chefer", a, layout, grads=g)
        elif method == "grad-rollout":
            expected = methods.compute_map(
                "grad-rollout", a, layout, grads=g, fusion="max", start_layer=1
            )
        else:
            expected = np.clip(a[2, 1] * g[2, 1], 0, None)[0, 1:].reshape(14, 14)
        np.testing.assert_allclose(npz["map"], expected, rtol=1e-4, atol=1e-8)


def test_class_errors_exit_2(tmp_path, capsys):
    scene = str(ASSETS / "demo-scene-2.png")
    base = ["explain", scene, "--model", "demo", "--out", str(tmp_path)]
    assert run([*base, "--method", "chefer", "--class", "zebra"]) == 2
    assert "no class named 'zebra'" in capsys.readouterr().err
    assert run([*base, "--method", "chefer", "--class", "stripes"]) == 2
    assert "matches several classes" in capsys.readouterr().err
    assert run([*base, "--method", "rollout", "--class", "1"]) == 2
    assert "--class applies to the class-specific methods" in capsys.readouterr().err
    assert run([*base, "--method", "chefer", "--class", "12"]) == 2
    assert "class 12 does not exist" in capsys.readouterr().err


def test_unusable_output_folders_exit_2_before_any_model_work(tmp_path, capsys):
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    image = str(ASSETS / "chelsea.png")
    for out in (a_file, a_file / "below", Path("/proc/vitviz-cannot-write-here")):
        assert run(["explain", image, "--model", "demo", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"--out {out}: cannot write output files there" in err and "Traceback" not in err


@pytest.mark.parametrize("k", ["-5", "0"])
def test_top_k_must_be_positive(tmp_path, capsys, k):
    image = str(ASSETS / "chelsea.png")
    assert run(["explain", image, "--model", "demo", "--out", str(tmp_path), "--top-k", k]) == 2
    err = capsys.readouterr().err
    assert "--top-k must be at least 1" in err and "self-supervised" not in err


def test_a_fifo_among_the_images_fails_that_one_at_once(tmp_path, capsys):
    import os

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    args = ["explain", str(fifo), str(ASSETS / "chelsea.png"), "--model", "demo"]
    with never_waits_on(fifo):
        assert run([*args, "--out", str(tmp_path / "out")]) == 1
    assert "not a regular file" in capsys.readouterr().err
    assert (tmp_path / "out" / "chelsea.json").is_file()


# ``python -m vitviz`` with Ray's start replaced by an exit that says so (status 1, not 2);
# malloc is tuned first, as ``main`` does before its imports (they take twice as long untuned)
NO_RAY = (
    "import sys; from vitviz.engine.runtime import tune_allocator; tune_allocator(); "
    "import vitviz.server.serve as s; "
    "s.run_server = lambda *a, **k: sys.exit('run_server: Ray would start now'); "
    "from vitviz.cli import main; sys.exit(main(sys.argv[1:]))"
)


def test_serve_checks_model_and_weights_before_starting_ray(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    empty = tmp_path / "empty.safetensors"
    save_file({}, str(empty))
    for args, words in [
        (["--weights", str(bad)], "refused to load"),
        (["--weights", str(empty)], "holds no tensors"),
        (["--model", "swin_tiny_patch4_window7_224"], "windowed attention"),
        (["--queue-limit", "0"], "--queue-limit must be at least 1"),
        (["--upload-timeout", "0"], "--upload-timeout must be positive"),
    ]:
        cmd = [sys.executable, "-c", NO_RAY, "serve", "--model", "vit_tiny_patch16_224", *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr  # refused before Ray would start
        assert words in done.stderr and "Traceback" not in done.stderr
        assert "ray" not in done.stderr.lower().replace("refused to load", "")
        assert len(done.stderr.strip().splitlines()) == 1


def test_legend_puts_the_scale_and_settings_under_the_same_picture(tmp_path, weights_file):
    from PIL import Image

    common = [
        "explain", str(ASSETS / "chelsea.png"), "--model", "vit_tiny_patch16_224",
        "--weights", str(weights_file), "--method", "rollout", "--discard", "0.3",
    ]  # fmt: skip
    assert run([*common, "--out", str(tmp_path / "plain")]) == 0
    assert run([*common, "--out", str(tmp_path / "legend"), "--legend"]) == 0
    plain = np.asarray(Image.open(tmp_path / "plain" / "chelsea.png"))
    legend = np.asarray(Image.open(tmp_path / "legend" / "chelsea.png"))
    assert legend.shape[0] > plain.shape[0] and legend.shape[1] == plain.shape[1]
    np.testing.assert_array_equal(legend[: plain.shape[0]], plain)
    npz = np.load(tmp_path / "legend" / "chelsea.npz")
    from vitviz.output import exports
    from vitviz.output.render import with_legend

    rec = json.loads((tmp_path / "legend" / "chelsea.json").read_text())
    caption = exports.caption(
        {"method": "rollout", "options": rec["options"], "model": "vit_tiny_patch16_224",
         "timm_name": rec["model"]["timm_name"], "weights": "file", "image": "chelsea.png"}
    )  # fmt: skip
    assert caption.startswith("rollout fusion=mean discard=0.3 start_layer=0 ")
    assert caption.endswith(" | image chelsea.png") and "file weights" in caption
    want = with_legend(
        plain, float(npz["map"].min()), float(npz["map"].max()), "inferno", caption, "rollout"
    )
    np.testing.assert_array_equal(legend, want)  # the map's own range and every setting
