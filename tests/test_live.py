"""The live stream's frame processor: the same maps as the engine, frames dropped, never queued."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from PIL import Image

from tests.conftest import STATE_TIMEOUT_S, wait_until
from vitviz import methods
from vitviz.backends.local import LocalBackend
from vitviz.engine.stream import LiveExplainer, LiveSettings, frame_to_rgb, moving_clip
from vitviz.errors import OptionsError


def engine_map(backend, rgb: np.ndarray, method: str, **options) -> np.ndarray:
    """What the page shows for this frame as an image: reduce, explain, compute the map."""
    seen = backend.geometry(Image.fromarray(rgb))
    if method == "chefer":
        res = backend.explain_classes([seen], [[None]], seen=True)[0]
        e = res.explanation
        return methods.compute_map("chefer", e.attention, e.layout, grads=res.relevance[0])
    e = backend.explain([seen], seen=True)[0]
    return methods.compute_map(method, e.attention, e.layout, **options)


def test_a_frame_gives_the_engines_map_for_each_method(demo):
    frame = next(moving_clip(frames=4))
    live = LiveExplainer(demo)
    got = live.explain_frame(frame)
    np.testing.assert_allclose(got.grid, engine_map(demo, frame, "rollout"), rtol=1e-5)
    assert [p.index for p in got.predictions] == [
        p.index
        for p in demo.explain([demo.geometry(Image.fromarray(frame))], seen=True)[0].predictions[:3]
    ]
    live.update(LiveSettings(method="attention", layer=2, head=1))
    got = live.explain_frame(frame)
    want = engine_map(demo, frame, "attention", layer=2, head=1)
    np.testing.assert_allclose(got.grid, want, rtol=1e-5)
    live.update(LiveSettings(method="class"))
    np.testing.assert_allclose(
        live.explain_frame(frame).grid, engine_map(demo, frame, "chefer"), rtol=1e-4, atol=1e-7
    )
    # the model saw the frame's centre square: 480×480 of 640×480 (the demo's crop_pct is 1)
    assert got.box == pytest.approx((0, 80 / 640, 1, 480 / 640), abs=3e-3)  # timm rounds down


def test_the_clip_changes_what_the_demo_model_sees(demo):
    frames = list(moving_clip(frames=20))
    live = LiveExplainer(demo)
    first = live.explain_frame(frames[2]).predictions[0].label
    last = live.explain_frame(frames[-2]).predictions[0].label
    assert first == "checkerboard" and last == "horizontal stripes"


class GatedBackend:
    """A backend whose explain waits until the test opens ``gate`` (and counts how many run at
    once), so that what arrives during one model call is decided by the test, not the clock."""

    def __init__(self, real) -> None:
        self.real, self.running, self.most = real, 0, 0
        self.geometry = real.geometry
        self.lock = threading.Lock()
        self.gate = threading.Event()
        self.entered = threading.Semaphore(0)

    def offers(self, capability: str) -> bool:
        return self.real.offers(capability)

    def explain(self, images, **kw):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        self.entered.release()
        self.gate.wait(STATE_TIMEOUT_S)
        try:
            return self.real.explain(images, **kw)
        finally:
            with self.lock:
                self.running -= 1


def test_a_slow_model_drops_frames_and_never_builds_a_queue(vit_tiny, cat_image):
    backend = GatedBackend(LocalBackend(vit_tiny))
    live = LiveExplainer(backend)
    frame = np.asarray(cat_image)
    try:
        live.submit(frame, now=0.0)
        assert backend.entered.acquire(timeout=STATE_TIMEOUT_S)  # the model is busy with it
        for i in range(1, 60):  # 59 more frames arrive during that one model call
            live.submit(frame, now=float(i))
        backend.gate.set()
        wait_until(lambda: live.stats.explained == 2, what="the second map")
    finally:
        backend.gate.set()
        live.close()
    s = live.stats
    assert s.submitted == 60 and s.explained + s.dropped == 60
    assert s.explained == 2 and s.dropped == 58  # the first frame, then the newest: not 60
    assert live.latest().captured == 59.0  # the newest frame was next, not a queue's head
    assert backend.most == 1  # one call at a time


def test_the_worker_ends_when_the_stream_stops_and_starts_again(vit_tiny, cat_image):
    live = LiveExplainer(LocalBackend(vit_tiny), idle_s=0.2)
    live.submit(np.asarray(cat_image))
    wait_until(lambda: live.latest() is not None, what="the first map")
    # no thread waits forever for a stream that has ended: it ends 0.2 s after the last frame
    wait_until(lambda: live._thread is None, what="the idle worker to end")
    before = live.stats.explained
    live.submit(np.asarray(cat_image))
    wait_until(lambda: live.stats.explained == before + 1, what="a map from a new worker")
    assert live.stats.explained == before + 1
    live.close()


def test_pause_keeps_the_last_map_and_takes_no_frames(vit_tiny, cat_image):
    live = LiveExplainer(LocalBackend(vit_tiny))
    frame = np.asarray(cat_image)
    live.submit(frame)
    wait_until(lambda: live.latest() is not None)
    first = live.latest()
    live.pause()
    live.submit(frame)
    time.sleep(0.3)
    assert live.stats.submitted == 1 and live.latest() is first  # the map stays, no new work
    live.pause(False)
    live.submit(frame)
    wait_until(lambda: live.stats.explained == 2)
    assert live.latest() is not first
    live.close()


class FlakyBackend:
    """Raises an unexpected error on its first call, then returns NaN attention once, then
    works (a worker must outlive both)."""

    def __init__(self, real) -> None:
        self.real, self.calls, self.geometry = real, 0, real.geometry

    def offers(self, capability: str) -> bool:
        return self.real.offers(capability)

    def explain(self, images, **kw):
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("CUDA out of memory (pretend)")
        out = self.real.explain(images, **kw)
        if self.calls == 2:
            out[0].attention[:] = np.nan
        return out


def test_the_worker_outlives_errors_and_never_keeps_a_map_it_cannot_draw(vit_tiny, cat_image):
    live = LiveExplainer(FlakyBackend(LocalBackend(vit_tiny)))
    frame = np.asarray(cat_image)
    live.submit(frame)
    wait_until(lambda: live.stats.failed == 1)
    assert "out of memory" in live.stats.last_error and live.latest() is None
    live.submit(frame)
    wait_until(lambda: live.stats.failed == 2)
    assert "non-finite" in live.stats.last_error and live.latest() is None
    live.submit(frame)
    wait_until(lambda: live.stats.explained == 1)
    assert live.stats.last_error is None and np.isfinite(live.latest().grid).all()
    live.compose(frame)  # draws
    live.close()


def test_odd_frames_are_converted_or_refused():
    gray = np.full((48, 64), 100, np.uint8)
    assert frame_to_rgb(gray).shape == (48, 64, 3)
    rgba = np.zeros((48, 64, 4), np.uint8)
    assert frame_to_rgb(rgba).shape == (48, 64, 3)
    floats = np.full((48, 64, 3), 300.0)
    assert frame_to_rgb(floats).dtype == np.uint8 and frame_to_rgb(floats).max() == 255
    for bad in (np.zeros((48, 64, 2), np.uint8), np.zeros((4, 4, 3), np.uint8), np.zeros(10)):
        with pytest.raises(OptionsError, match="H×W×3"):
            frame_to_rgb(bad)
    # a browser may send any size: bounded in pixels and aspect before anything is resized
    for bad in (np.zeros((8, 4000, 3), np.uint8), np.zeros((2200, 4000, 3), np.uint8)):
        with pytest.raises(OptionsError, match="too large or too narrow"):
            frame_to_rgb(bad)


def test_av_frames_in_other_pixel_formats_are_read_as_rgb():
    av = pytest.importorskip("av")
    rgb = next(moving_clip(frames=2, size=(96, 128)))
    for fmt in ("yuv420p", "nv12", "bgr24", "gray"):
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=fmt)
        out = frame_to_rgb(frame)
        assert out.shape == (96, 128, 3) and out.dtype == np.uint8
        if fmt != "gray":  # colour survives the round trip (chroma subsampling aside)
            assert np.abs(out.astype(int) - rgb.astype(int)).mean() < 12


@pytest.mark.parametrize("size", [(480, 640), (240, 320), (720, 1280)])
def test_compose_draws_the_map_where_the_model_looked(vit_tiny, size):
    """vit_tiny crops 90 % (crop_pct 0.9): the overlay covers exactly the box the model's
    pixels came from, on a frame of the explained size or any other."""
    backend = LocalBackend(vit_tiny)
    live = LiveExplainer(backend)
    explained = next(moving_clip(frames=2))
    assert (live.compose(explained) == explained).all()  # no map yet: the frame as it came
    live._latest = live.explain_frame(explained)
    frame = next(moving_clip(frames=2, size=size))
    out = live.compose(frame).astype(int)
    h, w = size
    top, left, bh, bw = backend.geometry.source_box(h, w)
    assert top > 0 and left > 0 and bh < 1 and bw < 1  # a real crop, inside the frame
    t, c, b, r = round(top * h), round(left * w), round((top + bh) * h), round((left + bw) * w)
    dimmed = np.rint(frame.astype(float) * 0.45)
    outside = np.ones((h, w), bool)
    outside[max(0, t - 1) : b + 1, max(0, c - 1) : r + 1] = False  # edges: rounding
    assert np.abs(out[outside] - dimmed[outside]).max() <= 1
    inside = out[t + 1 : b - 1, c + 1 : r - 1]
    assert np.abs(inside - dimmed[t + 1 : b - 1, c + 1 : r - 1]).mean() > 5  # not dimmed: drawn


def test_settings_are_checked():
    with pytest.raises(OptionsError, match="live method"):
        LiveSettings(method="nope").check()
    with pytest.raises(OptionsError, match="opacity"):
        LiveSettings(alpha=2).check()
    with pytest.raises(OptionsError, match="colormap"):
        LiveSettings(colormap="rainbow").check()


def test_over_a_server_only_the_light_readout_answer_is_used(vit_tiny, cat_image):
    """A remote backend gives the readout rows; the map equals the engine's raw attention."""
    local = LocalBackend(vit_tiny)

    class Remote:
        geometry = local.geometry

        def __init__(self) -> None:
            self.calls: list[str] = []

        def offers(self, capability: str) -> bool:  # a server: no per-frame live maps
            return capability != "live_maps"

        def readout(self, image, *, top_k=5, seen=False):
            self.calls.append("readout")
            e = local.explain([image], seen=seen, top_k=top_k)[0]
            rows = np.einsum("n,lhnm->lhm", e.layout.readout_weights(), e.attention)
            return e.predictions, e.layout, rows.astype(np.float16)

        def explain(self, *a, **k):
            raise AssertionError("the full attention must not be asked for")

    remote = Remote()
    with pytest.raises(OptionsError, match="raw attention"):
        LiveExplainer(remote)  # rollout needs the full attention
    live = LiveExplainer(remote, LiveSettings(method="attention", layer=-1, head=None))
    frame = np.asarray(cat_image)
    got = live.explain_frame(frame)
    want = engine_map(local, frame, "attention", layer=-1, head=None)
    np.testing.assert_allclose(got.grid, want, rtol=2e-3, atol=1e-4)  # float16 on the wire
    assert remote.calls == ["readout"]


def test_two_viewers_share_one_model(demo):
    """Two sessions' streams on one backend at once, each through its own worker: each gets
    its own frames' maps."""
    frames = list(moving_clip(frames=20))
    a, b = LiveExplainer(demo), LiveExplainer(demo)
    for _ in range(5):
        a.submit(frames[2])
        b.submit(frames[-2])
        time.sleep(0.01)
    wait_until(lambda: a.stats.explained + a.stats.dropped == 5)
    wait_until(lambda: b.stats.explained + b.stats.dropped == 5)
    assert a.stats.failed == b.stats.failed == 0
    np.testing.assert_allclose(a.latest().grid, engine_map(demo, frames[2], "rollout"), rtol=1e-5)
    np.testing.assert_allclose(b.latest().grid, engine_map(demo, frames[-2], "rollout"), rtol=1e-5)
    assert a.latest().predictions[0].label != b.latest().predictions[0].label
    a.close()
    b.close()


def test_ice_servers_come_from_the_operator_only():
    from vitviz.ui.live import ice_servers

    assert ice_servers({}) == []
    servers = ice_servers({"VITVIZ_ICE_SERVERS": '[{"urls": ["stun:lan.example:3478"]}]'})
    assert servers == [{"urls": ["stun:lan.example:3478"]}]
    assert ice_servers({"VITVIZ_ICE_SERVERS": '[{"urls": "stun:x:1"}]'})[0]["urls"] == "stun:x:1"
    for bad in ("{", '{"urls": "x"}', '[{"urls": 5}]', '[{"url": "x"}]', '[{"urls": []}]'):
        with pytest.raises(OptionsError, match="VITVIZ_ICE_SERVERS"):
            ice_servers({"VITVIZ_ICE_SERVERS": bad})


def test_the_page_asks_the_camera_for_at_least_640_by_480():
    """A 320×240 stream stretched over the video column is blurry on a projector."""
    from vitviz.ui.live import CAMERA

    assert CAMERA["width"]["ideal"] >= 640 and CAMERA["height"]["ideal"] >= 480
    assert "min" not in CAMERA["width"]  # a camera that cannot still works
