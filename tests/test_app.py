"""The Streamlit page, driven by AppTest: every view's maps against the engine's arrays.

The tests run offline, so the page falls back to the bundled demo model; a second model is
loaded from a weights file the tests write. Maps are drawn by the attention canvas in the
browser; here they are compared through the data the page sends it (every layer × head row
the browser can show), which must equal what ``vitviz.methods`` computes from an independent
run of the engine on the same image. Plotly charts (head statistics) are compared through the
numbers their hover markers carry (``customdata``).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import ASSETS, plotly_array, tiny, words
from vitviz import methods
from vitviz.backends.local import LocalBackend
from vitviz.inputs.images import decode_image
from vitviz.ui import canvas as vcanvas
from vitviz.ui import downloads

APP = str(Path(__file__).resolve().parent.parent / "app.py")
TIMEOUT = 120


pytestmark = pytest.mark.usefixtures("fresh_cache")  # tests/conftest.py


@pytest.fixture(scope="module")
def demo_reference():
    """The engine's own explanation of the default sample with the demo model."""
    backend = LocalBackend.from_name("demo", device="cpu")
    image = decode_image((ASSETS / "demo-scene-1.png").read_bytes(), "demo-scene-1.png").image
    return backend.explain([image])[0]


def canvas(at: AppTest, key: str) -> dict:
    """The data the page sent to the attention canvas with this key."""
    for el in at.get("bidi_component"):
        if el.proto.id.endswith(f"-{key}"):
            return json.loads(el.proto.json)
    keys = [el.proto.id.rsplit("-", 1)[-1] for el in at.get("bidi_component")]
    raise AssertionError(f"no canvas {key!r}; canvases: {keys}")


def shown(at: AppTest, key: str, layer: int = 0, head: int = -1, fusion: str = "mean"):
    """The map the canvas shows for a layer, head (-1: fused) and fusion: ``[gh, gw]``."""
    data = canvas(at, key)
    maps = vcanvas.decode(data)["maps"]
    h = data["heads"]
    slot = 0 if not h else (head if head >= 0 else h + methods.FUSIONS.index(fusion))
    return maps[layer % data["layers"], slot].reshape(data["grid"])


def chart(at: AppTest, key: str) -> dict:
    """The figure JSON of the plotly chart with this key."""
    for el in at.get("plotly_chart"):
        if el.proto.id.endswith(f"-{key}") or el.proto.id.endswith(key):
            return json.loads(el.proto.spec)
    ids = [el.proto.id for el in at.get("plotly_chart")]
    raise AssertionError(f"no chart {key!r}; charts: {ids}")


def marker_data(fig: dict) -> np.ndarray:
    """``customdata`` of the figure's marker trace."""
    traces = [t for t in fig["data"] if t.get("type") == "scatter"]
    return plotly_array(traces[0]["customdata"]).astype(float)


def start(**state) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for k, v in state.items():
        at.session_state[k] = v
    return at.run()


def ok(at: AppTest) -> None:
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]


def test_offline_default_falls_back_to_demo_with_a_banner(demo_reference):
    at = start()
    ok(at)
    banner = " ".join(i.value for i in at.info)
    assert "ViT-B/16" in banner and "demo model" in banner
    assert at.sidebar.selectbox(key="model").value == "demo"
    bars = at.get("progress")
    assert len(bars) == 5
    top = demo_reference.predictions[0]
    bar = words(bars[0].proto.text)
    assert top.label in bar and f"{top.probability:.1%}" in bar
    # the first screen's overlay is the rollout, value for value
    values = shown(at, "rollout").ravel()
    expected = methods.compute_map(
        "rollout", demo_reference.attention, demo_reference.layout
    ).ravel()
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-7)
    assert at.segmented_control(key="view").value == "Rollout"  # a view is always selected
    heading = "vitviz — what does the Vision Transformer look at?"
    assert any(heading in m.value for m in at.markdown)


def test_rollout_controls_change_the_map(demo_reference):
    at = start()
    at.slider(key="discard").set_value(0.5)
    at.slider(key="start_layer").set_value(2)
    at.segmented_control(key="roll_fusion").set_value("max").run()
    ok(at)
    values = shown(at, "rollout").ravel()
    exp = methods.compute_map(
        "rollout",
        demo_reference.attention,
        demo_reference.layout,
        fusion="max",
        discard=0.5,
        start_layer=2,
    )
    np.testing.assert_allclose(values, exp.ravel(), rtol=1e-5, atol=1e-7)
    plain = methods.compute_map("rollout", demo_reference.attention, demo_reference.layout).ravel()
    assert not np.allclose(values, plain)
    # the class token's share is sent beside the map, for its own strip
    data = canvas(at, "rollout")
    row = methods.attention_rollout(
        demo_reference.attention, demo_reference.layout, fusion="max", discard=0.5, start_layer=2
    )
    assert data["prefix_labels"] == ["CLS"]
    np.testing.assert_allclose(vcanvas.decode(data)["prefix"].ravel(), row[:1], rtol=1e-5)


def test_dino_mask_keeps_the_smallest_set_holding_the_mass(demo_reference):
    at = start()
    at.toggle(key="mask_on").set_value(True).run()
    ok(at)
    mask_vals = shown(at, "mask").ravel()
    exp = methods.compute_map(
        "mask", demo_reference.attention, demo_reference.layout, threshold=0.6
    )
    np.testing.assert_array_equal(mask_vals, exp.ravel())
    assert 0 < mask_vals.sum() < mask_vals.size


def test_heads_view_shows_the_chosen_layer_and_head(demo_reference):
    at = start()
    at.session_state["layer"], at.session_state["head"] = 2, 1  # what the canvas reports
    at.segmented_control(key="view").set_value("Heads").run()
    ok(at)
    data = canvas(at, "heads-canvas")
    assert (data["layer"], data["head"], data["mosaic"]) == (2, 1, True)
    # the browser has every layer × head (and each fusion): each equals the engine's map
    a, lay = demo_reference.attention, demo_reference.layout
    layers, heads = a.shape[:2]
    assert (data["layers"], data["heads"]) == (layers, heads)
    for layer in range(layers):
        for head in range(heads):
            exp = methods.compute_map("attention", a, lay, layer=layer, head=head)
            np.testing.assert_allclose(
                shown(at, "heads-canvas", layer, head), exp, rtol=1e-5, atol=1e-8
            )
        for fusion in methods.FUSIONS:
            exp = methods.compute_map("attention", a, lay, layer=layer, fusion=fusion)
            got = shown(at, "heads-canvas", layer, -1, fusion)
            np.testing.assert_allclose(got, exp, rtol=1e-5, atol=1e-8)


def test_patch_explorer_follows_the_selected_patch(demo_reference):
    at = start()
    at.session_state["patch"] = 37  # what a click on the canvas stores
    at.segmented_control(key="view").set_value("Patch explorer").run()
    ok(at)
    a, lay = demo_reference.attention, demo_reference.layout
    data = canvas(at, "patch-canvas")
    assert data["clickable"] and data["selected"] == 37
    for layer, head in ((1, 1), (4, 0)):
        exp = methods.compute_map("query", a, lay, patch=37, layer=layer, head=head)
        np.testing.assert_allclose(
            shown(at, "patch-canvas", layer, head), exp, rtol=1e-5, atol=1e-8
        )
    exp = methods.compute_map("query", a, lay, patch=37, layer=1)
    np.testing.assert_allclose(shown(at, "patch-canvas", 1), exp, rtol=1e-5, atol=1e-8)
    assert any("patch 37 (row 2, column 9)" in c.value for c in at.caption)
    at.toggle(key="rolled").set_value(True).run()
    exp = methods.compute_map("query", a, lay, patch=37, rolled=True)
    np.testing.assert_allclose(shown(at, "patch-canvas"), exp, rtol=1e-5, atol=1e-8)


def test_head_statistics_match_the_engine(demo_reference):
    at = start()
    at.segmented_control(key="view").set_value("Head statistics").run()
    ok(at)
    dist = marker_data(chart(at, "distance"))
    exp = methods.mean_attention_distance(demo_reference.attention, demo_reference.layout)
    layers, heads = exp.shape
    np.testing.assert_allclose(dist[:, 2], exp.ravel(), rtol=1e-5)
    assert dist[:, :2].astype(int).tolist() == [[i, j] for i in range(layers) for j in range(heads)]
    # one layer numbering everywhere: the x axis counts layers from 0, like every control
    xs = plotly_array(chart(at, "distance")["data"][0]["x"]).astype(int)
    assert sorted(set(xs.tolist())) == list(range(layers))
    ent = marker_data(chart(at, "entropy"))
    exp = methods.attention_entropy(demo_reference.attention, demo_reference.layout)
    np.testing.assert_allclose(ent[:, 2], exp.ravel(), rtol=1e-5)


def test_pipeline_view_shows_every_step():
    at = start()
    at.segmented_control(key="view").set_value("How ViT sees this image").run()
    ok(at)
    text = " ".join(m.value for m in at.markdown)
    for step in ("Cut into patches", "Flatten", "Patch embedding", "Position embeddings"):
        assert step in text
    assert "197 tokens: CLS first" in text  # 14×14 patches + the class token
    assert len(at.get("graphviz_chart")) == 1
    dot = at.get("graphviz_chart")[0].proto.spec
    assert "6 blocks × 3 attention heads" in dot and "Linear 192 → 8 classes" in dot


def test_views_and_display_controls_never_run_the_model_again(monkeypatch):
    calls = []
    original = LocalBackend.explain

    def counting(self, images, **kw):
        calls.append(len(images))
        return original(self, images, **kw)

    monkeypatch.setattr(LocalBackend, "explain", counting)
    at = start()
    assert calls == [1]
    for view in ("Heads", "Patch explorer", "Head statistics", "How ViT sees this image"):
        at.segmented_control(key="view").set_value(view).run()
    at.segmented_control(key="view").set_value("Rollout").run()
    at.slider(key="discard").set_value(0.3).run()
    at.toggle(key="mask_on").set_value(True).run()
    at.session_state["layer"], at.session_state["patch"] = 3, 20
    at.segmented_control(key="view").set_value("Patch explorer").run()
    ok(at)
    assert calls == [1]  # layer, head, colormap and opacity change in the browser


def test_upload_then_a_bad_upload_keeps_the_page_working():
    at = start()
    at.radio(key="source").set_value("Upload").run()
    ok(at)
    data = (ASSETS / "coffee.png").read_bytes()
    at.file_uploader(key="upload").set_value(("coffee.png", data, "image/png")).run()
    ok(at)
    assert len(at.get("progress")) == 5
    at.file_uploader(key="upload").set_value(("broken.png", b"not an image", "image/png")).run()
    assert not at.exception
    assert len(at.error) == 1 and "broken.png" in words(at.error[0].value)
    # the sidebar still works: back to the samples
    at.radio(key="source").set_value("Samples").run()
    ok(at)
    assert len(at.get("progress")) == 5


def test_model_switch_to_a_weights_file(tmp_path):
    from safetensors.torch import save_file

    loaded = tiny("vit_tiny_patch16_224", seed=3, model_kwargs={"depth": 3, "num_classes": 5})
    path = tmp_path / "three-layers.safetensors"
    save_file({k: v.contiguous() for k, v in loaded.model.state_dict().items()}, str(path))
    ref = LocalBackend.from_name("vit_tiny_patch16_224", weights=path, device="cpu")
    image = decode_image((ASSETS / "chelsea.png").read_bytes(), "chelsea.png").image
    expected = ref.explain([image])[0]

    at = start()
    at.selectbox(key="model").set_value("__file__").run()
    at.text_input[0].input("vit_tiny_patch16_224")
    at.text_input[1].input(str(path)).run()
    ok(at)
    captions = words(" ".join(c.value for c in at.sidebar.caption))
    # the file by name: the page never shows the machine's directories
    assert path.name in captions and str(path.parent) not in captions
    at.session_state["sample"] = "chelsea.png"
    at.session_state["layer"] = 5  # the demo's last layer: clamped to this model's
    at.segmented_control(key="view").set_value("Heads").run()
    ok(at)
    data = canvas(at, "heads-canvas")
    assert data["layers"] == 3 and data["layer"] == 2
    exp = methods.compute_map("attention", expected.attention, expected.layout, layer=2)
    np.testing.assert_allclose(shown(at, "heads-canvas", 2), exp, rtol=1e-4, atol=1e-7)


def test_unavailable_model_says_why_and_falls_back():
    at = start()
    at.selectbox(key="model").set_value("vit-b16").run()
    assert not at.exception
    assert len(at.error) == 1
    msg = words(at.error[0].value)
    assert "vit_base_patch16_224" in msg and "Connect to the internet" in msg
    # words for a browser user (no command-line flags), and the picker shows the model in use
    assert "--weights" not in msg and "Weights file on this server" in msg
    assert at.sidebar.selectbox(key="model").value == "demo"
    assert len(at.get("progress")) == 5  # the demo model still answers


def test_downloads_contain_what_they_claim(demo_reference):
    at = start()
    ok(at)
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels == [
        "Attention arrays (.npz)",
        "Predictions (JSON)",
        "Figure with legend (PNG)",
        "Figure with legend (SVG)",
        "Patch values (CSV)",
        "Patch values (npz)",
    ]
    info = LocalBackend.from_name("demo", device="cpu").info()
    npz = np.load(io.BytesIO(downloads.attention_npz(demo_reference, info, "x.png")))
    np.testing.assert_array_equal(npz["attention"], demo_reference.attention)
    np.testing.assert_array_equal(npz["logits"], demo_reference.logits)
    assert json.loads(str(npz["layout"]))["grid"] == [14, 14]
    pred = json.loads(downloads.predictions_json(demo_reference, info, "x.png"))
    assert [p["label"] for p in pred["predictions"]] == [
        p.label for p in demo_reference.predictions
    ]
    assert pred["weights"]["source"] == "bundled"


def test_why_this_class_shows_rollout_and_the_class_map_side_by_side(demo_reference):
    backend = LocalBackend.from_name("demo", device="cpu")
    image = decode_image((ASSETS / "demo-scene-1.png").read_bytes(), "demo-scene-1.png").image
    at = start()
    at.toggle(key="why_class").set_value(True).run()
    ok(at)
    top = demo_reference.predictions[0].index
    assert at.selectbox(key="target_class").value == top
    options = at.selectbox(key="target_class").options
    assert len(options) == 8 and options[0].startswith(demo_reference.predictions[0].label)

    def expected(cls, method="chefer", **opts):
        grads = backend.explain_classes([image], [[cls]], full_gradients=True)[0].gradients[0]
        a, lay = demo_reference.attention, demo_reference.layout
        return methods.compute_map(method, a, lay, grads=grads, **opts).ravel()

    got = shown(at, "class-map").ravel()
    np.testing.assert_allclose(got, expected(top), rtol=1e-4, atol=1e-8)
    rollout = shown(at, "rollout").ravel()
    np.testing.assert_allclose(
        rollout,
        methods.compute_map("rollout", demo_reference.attention, demo_reference.layout).ravel(),
        rtol=1e-5,
    )
    # another class, another map; gradient rollout follows the rollout controls
    other = demo_reference.predictions[1].index
    at.selectbox(key="target_class").set_value(other).run()
    got_other = shown(at, "class-map").ravel()
    np.testing.assert_allclose(got_other, expected(other), rtol=1e-4, atol=1e-8)
    assert not np.allclose(got_other, got)
    at.slider(key="start_layer").set_value(2)
    at.segmented_control(key="class_method").set_value("grad-rollout").run()
    ok(at)
    got_gr = shown(at, "class-map").ravel()
    np.testing.assert_allclose(
        got_gr, expected(other, "grad-rollout", start_layer=2), rtol=1e-4, atol=1e-8
    )
    # the Heads view shows attention × gradient of every head for the same class
    at.segmented_control(key="view").set_value("Heads").run()
    at.toggle(key="heads_why").set_value(True).run()
    ok(at)
    assert canvas(at, "heads-class-canvas")["link"] == canvas(at, "heads-canvas")["link"]
    got_ag = shown(at, "heads-class-canvas", 4, 2).ravel()
    np.testing.assert_allclose(
        got_ag, expected(other, "attn-grad", layer=4, head=2), rtol=1e-4, atol=1e-8
    )
    got_fused = shown(at, "heads-class-canvas", 4, -1, "max").ravel()
    np.testing.assert_allclose(
        got_fused, expected(other, "attn-grad", layer=4, fusion="max"), rtol=1e-4, atol=1e-8
    )


def test_class_gradients_are_computed_once_per_class(monkeypatch, demo_reference):
    calls = []
    original = LocalBackend.explain_classes

    def counting(self, images, classes, **kw):
        calls.append([list(c) for c in classes])
        return original(self, images, classes, **kw)

    monkeypatch.setattr(LocalBackend, "explain_classes", counting)
    at = start()
    at.toggle(key="why_class").set_value(True).run()
    top = [p.index for p in demo_reference.predictions]
    # the top 5 come from one forward pass (one backward each)
    assert calls == [[top]]
    at.selectbox(key="target_class").set_value(top[3]).run()  # cached: no new pass
    outside = next(c for c in range(8) if c not in top)
    at.selectbox(key="target_class").set_value(outside).run()  # one pass for that class
    at.selectbox(key="target_class").set_value(top[0]).run()
    at.slider(key="discard").set_value(0.2).run()
    ok(at)
    assert calls == [[top], [[outside]]]


def test_gallery_buttons_switch_the_sample():
    at = start()
    at.button(key="use-coffee.png").click().run()
    ok(at)
    assert at.session_state["sample"] == "coffee.png"
    backend = LocalBackend.from_name("demo", device="cpu")
    coffee = decode_image((ASSETS / "coffee.png").read_bytes(), "coffee.png").image
    expected = backend.explain([coffee])[0]
    values = shown(at, "rollout").ravel()
    np.testing.assert_allclose(
        values,
        methods.compute_map("rollout", expected.attention, expected.layout).ravel(),
        rtol=1e-5,
    )
    assert at.query_params.get("sample") == "coffee.png"  # a link reproduces it


def test_backbone_without_classifier_explains_itself(tmp_path):
    from safetensors.torch import save_file

    loaded = tiny("vit_tiny_patch16_224", seed=5, model_kwargs={"depth": 2, "num_classes": 0})
    path = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in loaded.model.state_dict().items()}, str(path))
    at = start()
    at.selectbox(key="model").set_value("__file__").run()
    at.text_input[0].input("vit_tiny_patch16_224")
    at.text_input[1].input(str(path)).run()
    ok(at)
    assert not at.get("progress")  # no predictions
    assert any("no classifier" in i.value for i in at.info)
    assert shown(at, "rollout").shape == (14, 14)
    assert at.slider(key="end_layer").value == 1  # the last layer of this model, not the demo's
    # "why?" explains the class-free target: the norm of the readout feature, said so
    at.button(key="use-chelsea.png").click().run()
    at.toggle(key="why_class").set_value(True).run()
    ok(at)
    assert any("without a classifier" in c.value for c in at.caption)
    backend = LocalBackend(loaded)
    image = decode_image((ASSETS / "chelsea.png").read_bytes(), "chelsea.png").image
    res = backend.explain_classes([image], [[None]], full_gradients=True)[0]
    want = methods.compute_map(
        "chefer", res.explanation.attention, res.explanation.layout, grads=res.gradients[0]
    )
    np.testing.assert_allclose(shown(at, "class-map"), want, rtol=1e-4, atol=1e-8)
    assert "‖" in canvas(at, "class-map")["title"]


def test_a_failing_backend_after_the_page_loaded_shows_an_error_not_a_traceback(monkeypatch):
    from vitviz.errors import ServerError

    at = start()
    ok(at)

    def gone(*a, **k):
        raise ServerError("could not reach the vitviz server at http://x (ConnectionError)")

    monkeypatch.setattr(LocalBackend, "explain_classes", gone)
    at.toggle(key="why_class").set_value(True).run()
    assert not at.exception
    assert any("Could not compute the class map" in e.value for e in at.error)
    assert any("could not reach" in e.value for e in at.error)


@pytest.fixture
def toy_method():
    """A class-specific method registered for one test: the chefer row raised to a power."""
    from vitviz.methods import METHODS, Option, register

    @register(
        "toy",
        "Toy relevance",
        "Chefer's row to a power (a test of the registry)",
        (Option("power", "number", 1.0, "exponent of the toy map", 0.5, 3.0, 0.5, label="Power"),),
        needs_gradients=True,
    )
    def toy(attn, layout, *, grads, power=1.0):
        return methods.chefer(attn, layout, grads=grads) ** power

    yield toy
    METHODS.pop("toy")


def test_a_registered_method_appears_in_the_cli_and_the_page(toy_method, demo_reference, capsys):
    from vitviz.cli import main

    with pytest.raises(SystemExit):
        main(["explain", "--help"])
    help_text = capsys.readouterr().out
    assert "toy: Toy relevance" in help_text and "--power POWER" in help_text
    assert "exponent of the toy map (toy)" in help_text
    at = start()
    at.toggle(key="why_class").set_value(True).run()
    picker = at.segmented_control(key="class_method")
    assert "Toy relevance" in picker.options  # the title from the registry
    picker.set_value("toy").run()
    ok(at)
    assert at.slider(key="toy-power").label == "Power"
    at.slider(key="toy-power").set_value(2.0).run()
    ok(at)
    backend = LocalBackend.from_name("demo", device="cpu")
    image = decode_image((ASSETS / "demo-scene-1.png").read_bytes(), "demo-scene-1.png").image
    top = demo_reference.predictions[0].index
    rel = backend.explain_classes([image], [[top]])[0].relevance[0]
    want = methods.compute_map(
        "toy", demo_reference.attention, demo_reference.layout, grads=rel, power=2.0
    )
    got = shown(at, "class-map").ravel()
    np.testing.assert_allclose(got, want.ravel(), rtol=1e-4, atol=1e-9)
    assert "Toy relevance" in canvas(at, "class-map")["title"]


def test_options_drawn_from_the_registry_survive_a_view_change():
    at = start()
    at.toggle(key="why_class").set_value(True).run()
    at.segmented_control(key="class_method").set_value("attn-grad").run()
    ok(at)
    at.slider(key="attn-grad-layer").set_value(2).run()
    at.selectbox(key="attn-grad-head").set_value(1).run()
    at.segmented_control(key="view").set_value("Heads").run()
    at.segmented_control(key="view").set_value("Rollout").run()
    ok(at)
    assert at.slider(key="attn-grad-layer").value == 2
    assert at.selectbox(key="attn-grad-head").value == 1
