"""Deletion/insertion curves and occlusion against cases whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from vitviz.analysis.trust import Curve, curves, occlusion, ranking, spearman, trust
from vitviz.errors import OptionsError

GRID, PATCH = (4, 4), (8, 8)


class Toy(nn.Module):
    """Class 0's logit is a weighted sum of each patch's texture (its variance): the patches
    with the largest weights matter most, so the right order is known."""

    def __init__(self, weights: np.ndarray) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(weights, dtype=torch.float32), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        cells = x[:, 0].reshape(b, GRID[0], PATCH[0], GRID[1], PATCH[1])
        texture = cells.var(dim=(2, 4))  # [b, gh, gw]
        score = (texture * self.w).sum(dim=(1, 2)) - self.w.sum() * 0.5
        return torch.stack([score, torch.zeros_like(score)], dim=1)


@pytest.fixture(scope="module")
def toy():
    rng = np.random.default_rng(1)
    weights = rng.permutation(np.linspace(0.05, 1.0, 16)).reshape(GRID)
    torch.manual_seed(0)
    x = torch.randn(3, 32, 32)
    return Toy(weights), x, weights


def test_the_true_order_beats_random_and_the_reversed_order_loses(toy):
    model, x, weights = toy
    true = ranking(weights)
    d_true, i_true = curves(model, x, 0, true, GRID, PATCH, steps=8, batch=5)
    d_rev, i_rev = curves(model, x, 0, true[::-1].copy(), GRID, PATCH, steps=8)
    rng = np.random.default_rng(3)
    rand = [curves(model, x, 0, rng.permutation(16), GRID, PATCH, steps=8) for _ in range(5)]
    d_rand = np.mean([d.auc for d, _ in rand])
    i_rand = np.mean([i.auc for _, i in rand])
    assert d_true.auc < d_rand < d_rev.auc  # deletion: the probability falls fastest
    assert i_true.auc > i_rand > i_rev.auc  # insertion: it rises fastest
    # both curves start and end where they must
    assert d_true.probabilities[0] == pytest.approx(i_true.probabilities[-1], abs=1e-6)
    assert d_true.probabilities[-1] < 0.5 < d_true.probabilities[0]
    assert list(d_true.fractions) == [k / 8 for k in range(9)]


def test_a_curve_is_each_step_run_alone(toy):
    """The batched curve equals removing the patches one step at a time, by hand."""
    model, x, weights = toy
    order = ranking(weights)
    deletion, _ = curves(model, x, 0, order, GRID, PATCH, steps=4, batch=3)
    for k, count in enumerate([0, 4, 8, 12, 16]):
        y = x.clone()
        for i in order[:count]:
            r, c = divmod(int(i), GRID[1])
            y[:, r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8] = 0
        with torch.no_grad():
            p = model(y[None]).softmax(-1)[0, 0].item()
        assert deletion.probabilities[k] == pytest.approx(p, abs=1e-6)


def test_occlusion_equals_a_loop_of_single_forwards(toy):
    model, x, _ = toy
    got = occlusion(model, x, 0, GRID, PATCH, batch=7)
    with torch.no_grad():
        base = model(x[None]).softmax(-1)[0, 0].item()
        for i in range(16):
            y = x.clone()
            r, c = divmod(i, 4)
            y[:, r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8] = 0
            assert got[r, c] == pytest.approx(
                base - model(y[None]).softmax(-1)[0, 0].item(), abs=1e-6
            )


def test_spearman_by_hand():
    # ranks of a: 0, 1.5, 1.5, 3 (ties averaged); of b: 3, 2, 1, 0 → ρ = corr of the ranks
    a, b = np.array([1.0, 2.0, 2.0, 5.0]), np.array([9.0, 7.0, 3.0, 1.0])
    ra, rb = np.array([0, 1.5, 1.5, 3]), np.array([3, 2, 1, 0])
    want = ((ra - ra.mean()) * (rb - rb.mean())).sum() / (
        np.sqrt(((ra - ra.mean()) ** 2).sum() * ((rb - rb.mean()) ** 2).sum())
    )
    assert spearman(a, b) == pytest.approx(want) == pytest.approx(-0.9486833)
    assert spearman(a, a * 3 + 1) == pytest.approx(1.0)
    assert spearman(a, np.ones(4)) == 0.0


def test_the_report_ranks_the_maps_against_occlusion(toy):
    model, x, weights = toy
    noise = np.random.default_rng(5).random(GRID)
    report = trust(model, x, 0, {"true": weights, "noise": noise}, "true", GRID, PATCH, steps=8)
    assert report.deletion.auc < report.random_deletion.auc
    assert report.insertion.auc > report.random_insertion.auc
    assert report.correlations["true"] > 0.8 > report.correlations["noise"]
    data = report.to_dict()
    assert data["deletion"]["auc"] == pytest.approx(report.deletion.auc)
    assert len(data["occlusion"]["map"]) == 4 and set(data["occlusion"]["spearman"]) == {
        "true",
        "noise",
    }


def test_bad_orders_and_maps_are_refused(toy):
    model, x, _ = toy
    with pytest.raises(OptionsError, match="each of the 16 patches"):
        curves(model, x, 0, np.arange(15), GRID, PATCH)
    with pytest.raises(OptionsError, match="non-finite"):
        ranking(np.array([1.0, np.nan]))
    assert Curve(np.array([0, 0.5, 1.0]), np.array([1.0, 0.5, 0.0])).auc == pytest.approx(0.5)


def test_the_trust_command_writes_the_curves_of_a_map(tmp_path, capsys):
    """``python -m vitviz trust`` on a demo scene: the JSON holds both curves, the baseline and
    every map's correlation with occlusion; rollout finds the object better than chance."""
    import json

    from tests.conftest import ASSETS
    from vitviz.cli import main

    args = ["trust", str(ASSETS / "demo-scene-1.png"), "--model", "demo", "--steps", "8"]
    assert main([*args, "--seeds", "2", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "demo-scene-1-trust-rollout.json").read_text())
    assert data["method"] == "rollout" and data["class_label"] == "checkerboard"
    assert len(data["deletion"]["probabilities"]) == 9
    assert data["deletion"]["auc"] < data["random_baseline"]["deletion"]["auc"]
    assert data["insertion"]["auc"] > data["random_baseline"]["insertion"]["auc"]
    assert set(data["occlusion"]["spearman"]) == {
        "attention", "rollout", "chefer", "grad-rollout", "attn-grad",
    }  # fmt: skip
    assert "deletion AUC" in capsys.readouterr().err
    assert main([*args[:4], "--steps", "0", "--out", str(tmp_path)]) == 2  # a clear error


def test_the_page_shows_the_curves_of_the_map_it_shows():
    """Rollout view, "How far can I trust this map?": the chart's curves and the caption's
    AUCs are :func:`vitviz.analysis.trust.trust` of the rollout shown, for the top class."""
    import json

    from PIL import Image
    from streamlit.testing.v1 import AppTest

    from tests.conftest import ASSETS, plotly_array, words
    from vitviz import methods
    from vitviz.backends.local import LocalBackend
    from vitviz.inputs.images import decode_image

    at = AppTest.from_file(str(ASSETS.parent / "app.py"), default_timeout=120).run()
    at.toggle(key="trust_on").set_value(True).run()
    assert not at.exception and not at.error
    backend = LocalBackend.from_name("demo", device="cpu")
    image = decode_image((ASSETS / "demo-scene-1.png").read_bytes(), "scene").image
    seen = backend.loaded.seen_image(image)
    expl = backend.explain([seen], seen=True)[0]
    grid = methods.compute_map("rollout", expl.attention, expl.layout)
    x = backend.loaded.to_tensor(Image.fromarray(expl.image))
    want = trust(
        backend.loaded.model, x, expl.predictions[0].index, {"rollout": grid}, "rollout",
        expl.layout.grid, expl.layout.patch_size, steps=16, seeds=2, batch=16,
    )  # fmt: skip
    chart = next(c for c in at.get("plotly_chart") if "trust" in c.proto.id)
    traces = json.loads(chart.proto.spec)["data"]
    assert len(traces) == 4
    np.testing.assert_allclose(plotly_array(traces[0]["y"]), want.deletion.probabilities, atol=1e-5)
    np.testing.assert_allclose(
        plotly_array(traces[1]["y"]), want.insertion.probabilities, atol=1e-5
    )
    caption = words(" ".join(c.value for c in at.caption))
    assert f"deletion AUC of {want.deletion.auc:.3f}" in caption
    assert f"insertion AUC of {want.insertion.auc:.3f}" in caption


def test_one_trust_check_at_a_time_and_a_long_wait_is_said(monkeypatch):
    """The page's checks share one slot: while another visitor's holds it (longer than the
    wait), the page says so instead of starting a second ~200-forward job."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from tests.conftest import ASSETS
    from vitviz.ui import trust_panel

    st.cache_resource.clear()  # no report cached by an earlier test: the check must run
    monkeypatch.setattr(trust_panel, "WAIT_S", 0.2)
    assert trust_panel.CHECKS.acquire(timeout=5)  # another visitor's check is running
    try:
        at = AppTest.from_file(str(ASSETS.parent / "app.py"), default_timeout=120).run()
        at.toggle(key="trust_on").set_value(True).run()
        assert not at.exception
        assert any("one at a time" in i.value for i in at.info)
        assert not [c for c in at.get("plotly_chart") if "trust" in c.proto.id]
    finally:
        trust_panel.CHECKS.release()
    at.toggle(key="trust_on").set_value(False).run()
    at.toggle(key="trust_on").set_value(True).run()  # the slot is free: the check runs
    assert [c for c in at.get("plotly_chart") if "trust" in c.proto.id]


def test_a_backend_that_does_not_offer_trust_gets_the_message_not_a_crash(monkeypatch):
    """The page asks ``offers("trust")``: a backend without it shows the panel's "not offered"
    message, and the trust call is never made."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from tests.conftest import ASSETS
    from vitviz.backends.local import LocalBackend

    st.cache_resource.clear()
    offers = LocalBackend.offers
    monkeypatch.setattr(LocalBackend, "offers", lambda self, c: c != "trust" and offers(self, c))

    def never(*a, **k):
        raise AssertionError("trust is not offered: it must not be called")

    monkeypatch.setattr(LocalBackend, "trust", never)
    at = AppTest.from_file(str(ASSETS.parent / "app.py"), default_timeout=120).run()
    at.toggle(key="trust_on").set_value(True).run()
    assert not at.exception and not at.error
    assert any("not offered" in i.value for i in at.info)
    assert not [c for c in at.get("plotly_chart") if "trust" in c.proto.id]
    st.cache_resource.clear()
