"""The Rollout view's end layer, layer strip and "why not this class", driven by AppTest and
checked against the engine."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import ASSETS
from tests.test_app import canvas, ok, shown, start
from vitviz import methods
from vitviz.backends.local import LocalBackend
from vitviz.inputs.images import decode_image

pytestmark = pytest.mark.usefixtures("fresh_cache")  # tests/conftest.py


def _engine():
    backend = LocalBackend.from_name("demo", device="cpu")
    image = decode_image((ASSETS / "demo-scene-1.png").read_bytes(), "demo-scene-1.png").image
    return backend, image, backend.explain([image])[0]


def test_the_end_layer_and_the_layer_strip_show_the_flow_up_to_each_layer():
    _, _, expl = _engine()
    at = start()
    at.slider(key="start_layer").set_value(1)
    at.slider(key="end_layer").set_value(3).run()
    ok(at)
    want = methods.compute_map("rollout", expl.attention, expl.layout, start_layer=1, end_layer=3)
    np.testing.assert_allclose(shown(at, "rollout"), want, rtol=1e-5)
    assert not np.allclose(want, methods.compute_map("rollout", expl.attention, expl.layout))
    at.toggle(key="strip_on").set_value(True).run()
    ok(at)
    layers = expl.attention.shape[0]
    captions = [c for im in at.main.get("image") for c in im.captions if "layer" in c]
    assert captions == [f"up to layer {e}" for e in range(1, layers)]


def test_why_not_explains_the_negative_part_for_the_same_class():
    backend, image, expl = _engine()
    at = start()
    at.toggle(key="why_class").set_value(True).run()
    top = expl.predictions[0].index
    at.toggle(key="chefer-negative").set_value(True).run()
    ok(at)
    res = backend.explain_classes([image], [[top]], full_gradients=True)[0]
    want = methods.compute_map(
        "chefer", expl.attention, expl.layout, grads=res.gradients[0], negative=True
    )
    np.testing.assert_allclose(shown(at, "class-map"), want, rtol=1e-4, atol=1e-8)
    positive = methods.compute_map("chefer", expl.attention, expl.layout, grads=res.gradients[0])
    assert not np.allclose(want, positive)
    assert canvas(at, "class-map")["title"].startswith("Why not")
    # back to "why": the positive map again, from the cache of the other sign
    at.toggle(key="chefer-negative").set_value(False).run()
    np.testing.assert_allclose(shown(at, "class-map"), positive, rtol=1e-4, atol=1e-8)


def test_an_end_layer_before_the_start_layer_says_what_to_do():
    at = start()
    at.slider(key="start_layer").set_value(4)
    at.slider(key="end_layer").set_value(1).run()
    assert not at.exception
    assert any("comes before the start layer" in e.value for e in at.error)
    at.slider(key="end_layer").set_value(5).run()
    ok(at)  # moved back: the map again
