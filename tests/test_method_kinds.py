"""Method kinds and display order: every list of methods is the registry filtered by kind, so
one registration of a class-agnostic method puts it in the CLI, the page's pickers, Compare,
trust, the live view and the server's listing, each in its place."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ASSETS
from tests.test_app import canvas, ok, shown, start
from vitviz import methods
from vitviz.inputs.images import decode_image
from vitviz.methods import METHODS, Option, register
from vitviz.methods.registry import DEFAULT_ORDER, LAYER

pytestmark = pytest.mark.usefixtures("fresh_cache")  # tests/conftest.py

BUILT_IN = ["attention", "rollout", "query", "mask", "chefer", "grad-rollout", "attn-grad"]


@pytest.fixture
def toy():
    """A class-agnostic method registered for one test, placed between rollout and query:
    one layer's fused readout row, squared."""

    @register(
        "toy",
        "Toy attention",
        "one layer's readout attention, squared (a test of the registry)",
        (LAYER,),
        kind="attention",
        order=25,
    )
    def toy_row(attn, layout, *, grads=None, layer=-1):
        return methods.raw_attention(attn, layout, layer=layer) ** 2

    yield toy_row
    METHODS.pop("toy")


def test_built_in_methods_declare_their_kind_and_order():
    assert list(METHODS) == BUILT_IN
    kinds = {n: m.kind for n, m in METHODS.items()}
    assert kinds == {
        "attention": "attention",
        "rollout": "attention",
        "query": "query",
        "mask": "mask",
        "chefer": "class",
        "grad-rollout": "class",
        "attn-grad": "class",
    }
    assert [m.order for m in METHODS.values()] == sorted(m.order for m in METHODS.values())
    assert {n for n, m in METHODS.items() if m.needs_gradients} == set(methods.of_kind("class"))
    assert list(methods.of_kind()) == BUILT_IN
    assert methods.first_of_kind("query") == "query"
    assert set(methods.KINDS) == {"attention", "class", "query", "mask"}


def test_todays_lists_are_unchanged():
    from vitviz.cli.trust import compared_methods
    from vitviz.engine.stream import live_methods
    from vitviz.ui.live import live_choices
    from vitviz.ui.views.compare import method_choices
    from vitviz.ui.views.rollout import class_methods

    assert compared_methods() == ["attention", "rollout", "chefer", "grad-rollout", "attn-grad"]
    assert live_methods() == ("rollout", "attention", "class")
    assert live_choices(remote=False) == {
        "rollout": "rollout",
        "attention": "layer / head",
        "class": "why the top class",
    }
    assert list(live_choices(remote=True)) == ["attention"]
    assert list(method_choices()) == BUILT_IN
    assert list(class_methods()) == ["chefer", "grad-rollout", "attn-grad"]


def test_gradient_layers_come_from_the_declaration():
    assert METHODS["attn-grad"].gradients == "layer"
    assert METHODS["chefer"].gradients == "span" and METHODS["grad-rollout"].gradients == "span"
    assert METHODS["attn-grad"].gradient_layers({"layer": -2}, 4) == [2]
    assert METHODS["grad-rollout"].gradient_layers({"start_layer": 1, "end_layer": 2}, 4) == [1, 2]
    assert METHODS["rollout"].gradient_layers({}, 4) == []


def test_bad_declarations_are_refused():
    def row(attn, layout, *, grads=None):
        return attn

    with pytest.raises(ValueError, match="unknown kind"):
        register("bad", "Bad", "", kind="global")(row)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no layer option"):
        register("bad", "Bad", "", kind="class", gradients="layer")(row)
    with pytest.raises(ValueError, match="kind 'class'"):
        register("bad", "Bad", "", kind="attention", needs_gradients=True)(row)
    assert "bad" not in METHODS


def test_a_method_without_an_order_comes_last_and_the_old_spelling_is_class():
    @register("late", "Late", "registered without kind or order", needs_gradients=True)
    def late(attn, layout, *, grads):
        return attn

    try:
        assert list(METHODS)[-1] == "late" and METHODS["late"].kind == "class"
        assert METHODS["late"].order == DEFAULT_ORDER
    finally:
        METHODS.pop("late")
    assert list(METHODS) == BUILT_IN


def test_one_registration_puts_a_class_agnostic_method_everywhere(toy, demo, capsys):
    from vitviz.cli import build_parser, main
    from vitviz.cli.arguments import method_choices as cli_choices
    from vitviz.cli.trust import compared_methods
    from vitviz.engine.stream import LiveExplainer, LiveSettings, live_methods, moving_clip
    from vitviz.server.service import Engine, Settings, method_listing
    from vitviz.ui.live import live_choices
    from vitviz.ui.views.compare import method_choices

    order = ["attention", "rollout", "toy", "query", "mask", "chefer", "grad-rollout", "attn-grad"]
    assert list(METHODS) == order
    assert list(methods.of_kind("attention")) == ["attention", "rollout", "toy"]
    # the CLI: explain's --method choices and help, compare's --method-b
    assert cli_choices() == order
    with pytest.raises(SystemExit):
        main(["explain", "--help"])
    help_text = capsys.readouterr().out
    assert "toy: Toy attention" in help_text and "{" + ",".join(order) + "}" in help_text
    args = build_parser().parse_args(["explain", "x.png", "--method", "toy", "--layer", "1"])
    assert args.method == "toy"
    args = build_parser().parse_args(["compare", "x.png", "--method-b", "toy"])
    assert args.method_b == "toy"
    # Compare's pickers, trust's compared maps, live's methods
    assert list(method_choices()) == order and method_choices()["toy"] == "Toy attention"
    assert compared_methods() == [
        "attention",
        "rollout",
        "toy",
        "chefer",
        "grad-rollout",
        "attn-grad",
    ]
    assert live_methods() == ("rollout", "attention", "toy", "class")
    assert live_choices(remote=False)["toy"] == "Toy attention"
    frame = next(moving_clip(frames=2))
    live = LiveExplainer(demo, LiveSettings(method="toy", layer=1, head=0))  # toy has no head
    got = live.explain_frame(frame).grid
    e = demo.explain([demo.geometry(Image.fromarray(frame))], seen=True)[0]
    want = methods.compute_map("toy", e.attention, e.layout, layer=1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)
    # the server's listing (the /v1/model body), in display order
    assert list(method_listing()) == order
    info = Engine(Settings(model="demo"), demo).info()
    assert info["methods"]["toy"]["kind"] == "attention"
    assert info["methods"]["toy"]["needs_gradients"] is False
    assert list(info["methods"]["toy"]["options"]) == ["layer"]


def test_a_registered_method_is_drawn_by_the_compare_view(toy, demo):
    at = start()
    at.segmented_control(key="view").set_value("Compare").run()
    picker = at.selectbox(key="cmp_method")
    assert "Toy attention" in picker.options
    picker.set_value("toy").run()
    at.slider(key="cmp-layer").set_value(2).run()
    ok(at)
    image = decode_image((ASSETS / "demo-scene-1.png").read_bytes(), "demo-scene-1.png").image
    expl = demo.explain([image])[0]
    want = methods.compute_map("toy", expl.attention, expl.layout, layer=2)
    np.testing.assert_allclose(shown(at, "cmp-a"), want, rtol=1e-5, atol=1e-9)
    assert "Toy attention" in canvas(at, "cmp-a")["title"]
    assert at.query_params.get("cmp_method") == "toy"


def test_a_new_rollout_option_gets_a_widget_and_old_keys_stay(monkeypatch, demo):
    """A new option of the rollout is drawn with a key made from its name (no hand-kept
    table to update); the first options keep their keys."""
    spec = METHODS["rollout"]
    gamma = Option("gamma", "number", 1.0, "power of the map", 0.5, 3.0, 0.5, label="Gamma")

    def rollout_power(attn, layout, *, grads=None, gamma=1.0, **options):
        return methods.attention_rollout(attn, layout, **options) ** gamma

    grown = dataclasses.replace(spec, fn=rollout_power, options=(*spec.options, gamma))
    monkeypatch.setitem(METHODS, "rollout", grown)
    at = start()
    ok(at)
    assert at.segmented_control(key="roll_fusion").value == "mean"
    assert at.slider(key="discard").value == 0.0 and at.slider(key="start_layer").value == 0
    assert at.slider(key="rollout-gamma").label == "Gamma"
    at.slider(key="rollout-gamma").set_value(2.0).run()
    ok(at)
    image = decode_image((ASSETS / "demo-scene-1.png").read_bytes(), "demo-scene-1.png").image
    expl = demo.explain([image])[0]
    want = methods.to_grid(rollout_power(expl.attention, expl.layout, gamma=2.0), expl.layout)
    np.testing.assert_allclose(shown(at, "rollout"), want, rtol=1e-5, atol=1e-9)
    at.toggle(key="mask_on").set_value(True).run()  # the mask takes the options it has
    at.radio(key="mask_source").set_value("rollout").run()
    ok(at)
