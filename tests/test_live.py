"""The live stream's frame processor: the same maps as the engine, frames dropped, never queued."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from PIL import Image

from vitviz import methods
from vitviz.backends.local import LocalBackend
from vitviz.errors import OptionsError
from vitviz.live import LiveExplainer, LiveSettings, frame_to_rgb, moving_clip


@pytest.fixture(scope="module")
def demo():
    return LocalBackend.from_name("demo", device="cpu")


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
    # the model saw the frame's centre square: 480×480 of 640×480
    assert got.crop == (0, 80, 480, 480)


def test_the_clip_changes_what_the_demo_model_sees(demo):
    frames = list(moving_clip(frames=20))
    live = LiveExplainer(demo)
    first = live.explain_frame(frames[2]).predictions[0].label
    last = live.explain_frame(frames[-2]).predictions[0].label
    assert first == "checkerboard" and last == "horizontal stripes"


class SlowBackend:
    """A backend whose explain takes ``delay`` seconds (and counts how many run at once)."""

    def __init__(self, real, delay: float) -> None:
        self.real, self.delay, self.running, self.most = real, delay, 0, 0
        self.geometry = real.geometry
        self.lock = threading.Lock()

    def explain(self, images, **kw):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(self.delay)
        try:
            return self.real.explain(images, **kw)
        finally:
            with self.lock:
                self.running -= 1


def test_a_slow_model_drops_frames_and_never_builds_a_queue(vit_tiny, cat_image):
    backend = SlowBackend(LocalBackend(vit_tiny), delay=0.15)
    live = LiveExplainer(backend)
    frame = np.asarray(cat_image)
    start = time.monotonic()
    for i in range(60):  # 60 frames at 100 fps: 0.6 s, while one call takes > 0.15 s
        live.submit(frame, now=time.monotonic())
        time.sleep(max(0.0, start + (i + 1) / 100 - time.monotonic()))
    time.sleep(0.6)
    live.close()
    s = live.stats
    assert s.submitted == 60 and s.explained + s.dropped == 60
    assert 2 <= s.explained <= 8 and s.dropped >= 52  # ~0.6 s / 0.15 s calls, not 60
    assert backend.most == 1  # one call at a time
    # bounded latency: one call plus the wait for the one before it, never a queue's worth
    assert max(s.latencies_ms) < 2 * 150 + 250


def test_the_worker_ends_when_the_stream_stops_and_starts_again(vit_tiny, cat_image):
    live = LiveExplainer(LocalBackend(vit_tiny), idle_s=0.2)
    live.submit(np.asarray(cat_image))
    deadline = time.monotonic() + 10
    while live.latest() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert live.latest() is not None
    time.sleep(0.6)
    assert live._thread is None  # no thread waits forever for a stream that has ended
    before = live.stats.explained
    live.submit(np.asarray(cat_image))
    while live.stats.explained == before and time.monotonic() < deadline + 10:
        time.sleep(0.01)
    assert live.stats.explained == before + 1
    live.close()


def test_pause_keeps_the_last_map_and_takes_no_frames(vit_tiny, cat_image):
    live = LiveExplainer(LocalBackend(vit_tiny))
    live.pause()
    live.submit(np.asarray(cat_image))
    assert live.stats.submitted == 0 and live.latest() is None
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


def test_av_frames_in_other_pixel_formats_are_read_as_rgb():
    av = pytest.importorskip("av")
    rgb = next(moving_clip(frames=2, size=(96, 128)))
    for fmt in ("yuv420p", "nv12", "bgr24", "gray"):
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=fmt)
        out = frame_to_rgb(frame)
        assert out.shape == (96, 128, 3) and out.dtype == np.uint8
        if fmt != "gray":  # colour survives the round trip (chroma subsampling aside)
            assert np.abs(out.astype(int) - rgb.astype(int)).mean() < 12


def test_compose_draws_the_map_where_the_model_looked(demo):
    frame = next(moving_clip(frames=2))
    live = LiveExplainer(demo)
    assert (live.compose(frame) == frame).all()  # no map yet: the frame as it came
    live._latest = live.explain_frame(frame)
    out = live.compose(frame)
    outside = out[:, :80].astype(int)
    assert (outside <= frame[:, :80].astype(int)).all() and outside.mean() < frame[:, :80].mean()
    assert not (out[:, 80:560] == frame[:, 80:560]).all()  # the overlay inside the crop
    small = next(moving_clip(frames=2, size=(240, 320)))
    assert (live.compose(small) == small).all()  # a new frame size: no stale map


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
    """Two sessions' streams on one backend at once: each gets its own frames' maps."""
    frames = list(moving_clip(frames=20))
    a, b = LiveExplainer(demo), LiveExplainer(demo)
    results = {}

    def run(name, live, frame):
        results[name] = [live.explain_frame(frame).grid for _ in range(3)]

    threads = [
        threading.Thread(target=run, args=("a", a, frames[2])),
        threading.Thread(target=run, args=("b", b, frames[-2])),
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for name, frame in (("a", frames[2]), ("b", frames[-2])):
        want = engine_map(demo, frame, "rollout")
        for grid in results[name]:
            np.testing.assert_allclose(grid, want, rtol=1e-5)
