"""The Compare view: two models, two images or two methods side by side, layers mapped by
relative depth, and the whole comparison in the URL."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import ASSETS
from tests.test_app import canvas, ok, shown, start
from tests.test_page_state import from_url
from vitviz import methods
from vitviz.backends.local import LocalBackend
from vitviz.inputs.images import decode_image

pytestmark = pytest.mark.usefixtures("fresh_cache")  # tests/conftest.py


@pytest.mark.parametrize(
    ("layer", "layers", "other", "want"),
    [(11, 12, 6, 5), (0, 12, 6, 0), (6, 12, 6, 3), (5, 6, 12, 11), (2, 6, 12, 4), (3, 6, 12, 7)],
)
def test_relative_depth_by_hand(layer, layers, other, want):
    # l·(L'−1)/(L−1), halves up: 6·5/11 = 2.73 → 3, 2·11/5 = 4.4 → 4, 3·11/5 = 6.6 → 7
    assert methods.relative_layer(layer, layers, other) == want
    assert methods.relative_layer(-1, layers, other) == other - 1


def _explain(name: str):
    backend = LocalBackend.from_name("demo", device="cpu")
    return backend, backend.explain([decode_image((ASSETS / name).read_bytes(), name).image])[0]


def test_two_images_on_one_model_share_the_method_and_its_options():
    at = start()
    at.segmented_control(key="view").set_value("Compare").run()  # two images: the default
    at.selectbox(key="cmp_sample").set_value("coffee.png").run()
    at.slider(key="cmp-start_layer").set_value(2).run()
    ok(at)
    _, left = _explain("demo-scene-1.png")
    _, right = _explain("coffee.png")
    for key, expl in (("cmp-a", left), ("cmp-b", right)):
        want = methods.compute_map("rollout", expl.attention, expl.layout, start_layer=2)
        np.testing.assert_allclose(shown(at, key), want, rtol=1e-5)
    assert at.query_params.get("cmp_mode") is None  # the default mode stays out of links
    assert at.query_params.get("cmp_sample") == "coffee.png"
    assert at.query_params.get("cmp.start_layer") == "2"


def test_two_methods_on_one_explanation():
    at = start()
    at.segmented_control(key="view").set_value("Compare").run()
    at.segmented_control(key="cmp_mode").set_value("methods").run()
    at.selectbox(key="cmp_method").set_value("attention").run()
    at.slider(key="cmp-layer").set_value(3).run()
    ok(at)
    backend, expl = _explain("demo-scene-1.png")
    want = methods.compute_map("attention", expl.attention, expl.layout, layer=3)
    np.testing.assert_allclose(shown(at, "cmp-a"), want, rtol=1e-5)
    top = expl.predictions[0].index
    image = decode_image((ASSETS / "demo-scene-1.png").read_bytes(), "x.png").image
    grads = backend.explain_classes([image], [[top]], full_gradients=True)[0].gradients[0]
    chefer = methods.compute_map("chefer", expl.attention, expl.layout, grads=grads)
    np.testing.assert_allclose(shown(at, "cmp-b"), chefer, rtol=1e-4, atol=1e-8)
    assert "Chefer" in canvas(at, "cmp-b")["title"]


def test_two_models_map_the_layer_by_relative_depth():
    """The demo (6 layers) against a random ViT-S/16 DINO backbone (12 layers): layer 2 on
    the left is layer 4 on the right (2·11/5 = 4.4)."""
    from vitviz.ui import resources

    at = start()
    at.segmented_control(key="view").set_value("Compare").run()
    at.segmented_control(key="cmp_mode").set_value("models").run()
    at.toggle(key="cmp_random").set_value(True).run()  # no trained weights on this machine
    at.selectbox(key="cmp_method").set_value("attention").run()
    at.slider(key="cmp-layer").set_value(2).run()
    ok(at)
    assert at.selectbox(key="cmp_model").value == "dino-s16"
    assert "layer 4 of 12" in canvas(at, "cmp-b")["title"]
    assert "layer 2 of 6" in canvas(at, "cmp-a")["title"]
    other = resources.page_caches().models.get(("dino-s16", None, True))
    image = decode_image((ASSETS / "demo-scene-1.png").read_bytes(), "x.png").image
    expl = other.explain([image])[0]  # the engine, on the page's own random model
    want = methods.compute_map("attention", expl.attention, expl.layout, layer=4)
    np.testing.assert_allclose(shown(at, "cmp-b"), want, rtol=1e-4, atol=1e-7)
    assert any("differ in depth" in c.value for c in at.caption)
    # a head the right model has is kept; the URL holds the comparison
    at.selectbox(key="cmp-head").set_value(2).run()
    want = methods.compute_map("attention", expl.attention, expl.layout, layer=4, head=2)
    np.testing.assert_allclose(shown(at, "cmp-b"), want, rtol=1e-4, atol=1e-7)
    assert at.query_params.get("cmp.head") == "2" and at.query_params.get("cmp_random") == "1"


def test_a_model_that_cannot_load_says_why_and_the_page_keeps_working():
    at = start()
    at.segmented_control(key="view").set_value("Compare").run()
    at.segmented_control(key="cmp_mode").set_value("models").run()  # dino-s16: no weights here
    assert not at.exception
    assert any("could not be loaded" in e.value for e in at.error)
    at.segmented_control(key="cmp_mode").set_value("methods").run()  # another mode still works
    ok(at)
    assert canvas(at, "cmp-a")["grid"] == [14, 14]


def test_a_link_reopens_the_comparison_and_ignores_bad_values():
    at = from_url(
        view="Compare",
        cmp_mode="images",
        cmp_sample="coffee.png",
        cmp_method="attention",
        **{"cmp.layer": "1", "cmp.head": "99", "cmp.fusion": "max"},
    )
    ok(at)
    assert at.selectbox(key="cmp_sample").value == "coffee.png"
    assert at.slider(key="cmp-layer").value == 1
    assert at.selectbox(key="cmp-head").value is None  # head 99 does not exist: ignored
    _, expl = _explain("coffee.png")
    want = methods.compute_map("attention", expl.attention, expl.layout, layer=1, fusion="max")
    np.testing.assert_allclose(shown(at, "cmp-b"), want, rtol=1e-5)
    bad = from_url(view="Compare", cmp_mode="nonsense", cmp_sample="../../etc/passwd")
    ok(bad)
    assert bad.segmented_control(key="cmp_mode").value == "images"  # the default mode
    assert bad.selectbox(key="cmp_sample").value != "../../etc/passwd"
    linked = from_url(view="Compare", cmp_mode="models", cmp_random="1")
    ok(linked)  # a link's random weights load the second model at once
    assert linked.toggle(key="cmp_random").value is True


def test_two_methods_titles_name_each_method_once_and_the_shared_things_once():
    at = start()
    at.segmented_control(key="view").set_value("Compare").run()
    at.segmented_control(key="cmp_mode").set_value("methods").run()
    at.selectbox(key="cmp_method").set_value("rollout").run()
    at.selectbox(key="cmp_method_b").set_value("rollout").run()
    ok(at)
    for key in ("cmp-a", "cmp-b"):
        title = canvas(at, key)["title"]
        assert title.count("Attention rollout") == 1, title  # was "rollout · rollout"
        assert "demo" not in title.lower()  # the shared model is said once, above
    shared = [c.value for c in at.caption if c.value.startswith("Both panels:")]
    assert len(shared) == 1 and "demo" in shared[0].lower(), shared
    # two images: each panel names its image and the method (each canvas stands alone)
    at.segmented_control(key="cmp_mode").set_value("images").run()
    ok(at)
    titles = [canvas(at, k)["title"] for k in ("cmp-a", "cmp-b")]
    assert all(x.count("Attention rollout") == 1 for x in titles), titles
    assert titles[0] != titles[1]


def test_a_shared_colour_scale_is_the_joint_min_and_max_and_in_the_url():
    at = start()
    at.segmented_control(key="view").set_value("Compare").run()
    ok(at)
    assert at.toggle(key="cmp_shared_scale").value is False  # the stated default: each its own
    assert canvas(at, "cmp-a")["scale"] is None and canvas(at, "cmp-b")["scale"] is None
    at.toggle(key="cmp_shared_scale").set_value(True).run()
    ok(at)
    left, right = shown(at, "cmp-a"), shown(at, "cmp-b")
    joint = [float(min(left.min(), right.min())), float(max(left.max(), right.max()))]
    assert canvas(at, "cmp-a")["scale"] == pytest.approx(joint)
    assert canvas(at, "cmp-b")["scale"] == pytest.approx(joint)
    assert left.max() != right.max()  # two different maps: the scale is not either one's own
    assert at.query_params["cmp_shared_scale"] == "1"
    again = from_url(view="Compare", cmp_shared_scale="1")
    ok(again)
    assert again.toggle(key="cmp_shared_scale").value is True
    assert (
        from_url(view="Compare", cmp_shared_scale="x").toggle(key="cmp_shared_scale").value is False
    )
