"""Attention on a video stream: the newest frame is explained, older ones are dropped.

A camera delivers frames at its own rate (~15–30 fps); a model may be slower. :class:`LiveExplainer`
keeps one slot for the newest frame: :meth:`~LiveExplainer.submit` puts a frame there (replacing,
and counting as dropped, one that was still waiting) and one worker thread explains whatever is
in the slot. Nothing queues, so the latency stays bounded by one model call plus the wait for
the call before it, whatever the camera's rate. :meth:`~LiveExplainer.compose` draws the latest
map over any frame, so the video itself keeps the camera's rate.

The map of a frame is exactly what the page computes for that image: the frame is reduced with
the model's own resize and crop (:attr:`Backend.geometry`), explained with ``seen=True``, and
the map comes from :func:`vitviz.methods.compute_map` (tests compare the two).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from PIL import Image

from vitviz import methods
from vitviz.backends import Backend
from vitviz.errors import OptionsError, VitvizError
from vitviz.output import render
from vitviz.results import Prediction

CLASS = "class"  # the live view's class map: Chefer et al.'s for the top class
CLASS_METHOD = "chefer"
REMOTE_METHOD = "attention"  # what a server's readout rows are: raw attention of a layer/head
MAX_FRAME_PIXELS = 8_294_400  # 3840×2160; a larger frame (or one over 4:1) passes unexplained
MAX_ASPECT = 4.0


def live_methods() -> tuple[str, ...]:
    """What the live view can show: the registry's class-agnostic maps (the default method
    first, then in display order) and ``class``, read at each call (later registrations
    included). A layer or head the settings give goes to a method with that option."""
    agnostic = sorted(methods.of_kind("attention"), key=lambda n: n != methods.DEFAULT_METHOD)
    return (*agnostic, CLASS)


@dataclass(frozen=True)
class LiveSettings:
    """What the stream shows: a method and its layer/head, and how it is drawn."""

    method: str = methods.DEFAULT_METHOD
    layer: int = -1
    head: int | None = None
    colormap: str = "inferno"
    alpha: float = 0.5

    def check(self) -> LiveSettings:
        """These settings, or :class:`OptionsError` saying what is wrong."""
        if self.method not in live_methods():
            raise OptionsError(f"live method must be one of {', '.join(live_methods())}")
        if self.colormap not in render.COLORMAPS:
            raise OptionsError(f"unknown colormap {self.colormap!r}")
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise OptionsError("opacity must be between 0 and 1")
        return self


@dataclass
class LiveResult:
    """One explained frame."""

    grid: np.ndarray  # [gh, gw] map, finite
    predictions: list[Prediction]
    captured: float  # time.monotonic() when the frame was submitted
    done: float  # when its map was ready
    box: tuple[float, float, float, float]  # where the model's input lies, as fractions
    frame: np.ndarray  # the frame explained (RGB), e.g. to open in the page's views

    @property
    def latency_ms(self) -> float:
        """From the frame's arrival to its map."""
        return (self.done - self.captured) * 1000


@dataclass
class LiveStats:
    """Counters of one stream (read by the page and the benchmark)."""

    submitted: int = 0
    dropped: int = 0
    explained: int = 0
    failed: int = 0
    last_error: str | None = None
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=512))
    done_times: deque = field(default_factory=lambda: deque(maxlen=64))

    def fps_out(self) -> float:
        """Maps per second over the last few seconds."""
        times = list(self.done_times)
        if len(times) < 2 or times[-1] <= times[0]:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])


def frame_to_rgb(frame: Any) -> np.ndarray:
    """An RGB ``uint8`` ``[H, W, 3]`` array from an ``av.VideoFrame`` or an array.

    Gray and RGBA arrays are converted; anything else raises :class:`OptionsError`.
    """
    if hasattr(frame, "to_ndarray"):  # av.VideoFrame, in whatever pixel format it came
        frame = frame.to_ndarray(format="rgb24")
    arr = np.asarray(frame)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or min(arr.shape[:2]) < 8:
        raise OptionsError(f"a video frame must be an H×W×3 image, got shape {arr.shape}")
    h, w = arr.shape[:2]
    if h * w > MAX_FRAME_PIXELS or max(h, w) > MAX_ASPECT * min(h, w):
        raise OptionsError(f"a {w}×{h} video frame is too large or too narrow to explain")
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr[..., :3])


class LiveExplainer:
    """Explain the newest frame of a stream on one worker thread; drop the ones in between."""

    def __init__(
        self, backend: Backend, settings: LiveSettings | None = None, idle_s: float = 30.0
    ) -> None:
        self.backend = backend
        self.settings = self._checked(settings or LiveSettings())
        self.stats = LiveStats()
        self.idle_s = idle_s  # the worker ends after this long without frames (a new one starts)
        self._slot: tuple[np.ndarray, float] | None = None
        self._latest: LiveResult | None = None
        self._cond = threading.Condition()
        self._stop = False
        self._paused = False
        self._thread: threading.Thread | None = None

    @property
    def remote(self) -> bool:
        """Whether frames get the readout rows only (a backend without per-frame live maps,
        such as a vitviz server), not the full attention."""
        return not self.backend.offers("live_maps")

    def _checked(self, settings: LiveSettings) -> LiveSettings:
        settings.check()
        if self.remote and settings.method != REMOTE_METHOD:
            raise OptionsError(
                "over a vitviz server the live view shows raw attention (the server sends the "
                "readout rows, not the full attention that rollout and class maps need); run "
                "the model in this process for those"
            )
        return settings

    # ------------------------------------------------------------------ the stream's side
    def submit(self, frame: Any, now: float | None = None) -> np.ndarray:
        """Offer a frame; a frame still waiting is dropped (never queued). Returns the frame
        as RGB (to :meth:`compose` without converting it twice)."""
        rgb = frame_to_rgb(frame)
        with self._cond:
            if self._stop or self._paused:
                return rgb
            self.stats.submitted += 1
            if self._slot is not None:
                self.stats.dropped += 1
            self._slot = (rgb, time.monotonic() if now is None else now)
            if self._thread is None:  # the first frame, or the first after an idle spell
                self._thread = threading.Thread(target=self._run, name="vitviz-live", daemon=True)
                self._thread.start()
            self._cond.notify()
        return rgb

    def latest(self) -> LiveResult | None:
        """The newest explained frame."""
        return self._latest

    def frozen(self) -> np.ndarray | None:
        """The frame of the newest map (RGB), to open in the page's other views."""
        result = self._latest
        return None if result is None else result.frame

    def compose(self, frame: Any) -> np.ndarray:
        """``frame`` with the latest map over the part the model sees (the rest dimmed)."""
        rgb = frame_to_rgb(frame)
        result = self._latest
        if result is None:
            return rgb
        s = self.settings
        fh, fw = rgb.shape[:2]
        # where the model would look in this frame (the camera may change its size midway)
        top, left, bh, bw = self.backend.geometry.source_box(fh, fw)
        t, c = round(top * fh), round(left * fw)
        h, w = max(1, round(bh * fh)), max(1, round(bw * fw))
        heat = render.colorize(
            render.upsample(render.normalize_map(result.grid), (h, w)), s.colormap
        )
        r0, r1, c0, c1 = max(0, t), min(fh, t + h), max(0, c), min(fw, c + w)
        out = cv2.convertScaleAbs(rgb, alpha=0.45)  # what the model does not see, dimmed
        if r1 > r0 and c1 > c0:
            out[r0:r1, c0:c1] = cv2.addWeighted(
                rgb[r0:r1, c0:c1], 1 - s.alpha, heat[r0 - t : r1 - t, c0 - c : c1 - c], s.alpha, 0
            )
        return out

    def update(self, settings: LiveSettings) -> None:
        """New method, layer/head or drawing settings (from the page's controls)."""
        self.settings = self._checked(settings)

    def pause(self, paused: bool = True) -> None:
        """Stop (or restart) explaining new frames; the last map stays."""
        with self._cond:
            self._paused = paused
            if self._slot is not None:
                self.stats.dropped += 1
            self._slot = None

    def close(self) -> None:
        """End the worker thread."""
        with self._cond:
            self._stop = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=5)

    # ------------------------------------------------------------------ the worker's side
    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    if self._slot is None and not self._stop:
                        self._cond.wait(timeout=self.idle_s)
                    if self._stop or self._slot is None:  # closed, or no frame for idle_s
                        return
                    rgb, captured = self._slot
                    self._slot = None
                try:
                    result = self.explain_frame(rgb, captured)
                except Exception as err:
                    # (a server gone, an odd answer, out of memory): say so, keep streaming
                    self.stats.failed += 1
                    self.stats.last_error = str(err) if isinstance(err, VitvizError) else repr(err)
                    continue
                self._latest = result
                self.stats.last_error = None
                self.stats.explained += 1
                self.stats.latencies_ms.append(result.latency_ms)
                self.stats.done_times.append(result.done)
        finally:  # however the worker ends, the next frame starts a new one
            with self._cond:
                if self._thread is threading.current_thread():
                    self._thread = None

    def explain_frame(self, rgb: np.ndarray, captured: float | None = None) -> LiveResult:
        """The map and predictions of one frame (what the worker does; tests call it too)."""
        captured = time.monotonic() if captured is None else captured
        s = self.settings
        frame = Image.fromarray(rgb)
        seen = self.backend.geometry(frame)
        if self.remote:  # the server's light answer: the readout rows [L, H, N]
            predictions, layout, rows = self.backend.readout(seen, top_k=3, seen=True)
            if rows.ndim != 3 or rows.shape[-1] != layout.num_tokens:
                raise VitvizError(f"the server sent readout rows of shape {rows.shape}")
            layer = rows[s.layer % rows.shape[0]]
            row = layer.mean(axis=0) if s.head is None else layer[s.head % rows.shape[1]]
            return self._result(methods.to_grid(row, layout), predictions, captured, rgb)
        if s.method == CLASS:
            res = self.backend.explain_classes([seen], [[None]], seen=True)[0]
            expl = res.explanation
            grid = methods.compute_map(
                CLASS_METHOD, expl.attention, expl.layout, grads=res.relevance[0]
            )
        else:
            expl = self.backend.explain([seen], top_k=3, seen=True)[0]
            grid = methods.compute_map(
                s.method, expl.attention, expl.layout, **layer_head(s.method, s.layer, s.head)
            )
        return self._result(grid, expl.predictions, captured, rgb)

    def _result(self, grid, predictions, captured: float, rgb: np.ndarray) -> LiveResult:
        grid = np.asarray(grid, np.float32)
        if not np.isfinite(grid).all():  # never draw (or keep) a map that cannot be drawn
            raise VitvizError("this frame's map has non-finite values")
        return LiveResult(
            grid=grid,
            predictions=list(predictions[:3]),
            captured=captured,
            done=time.monotonic(),
            box=self.backend.geometry.source_box(*rgb.shape[:2]),
            frame=rgb,
        )


def layer_head(method: str, layer: int, head: int | None) -> dict[str, Any]:
    """The live settings' layer and head, for those of the two options ``method`` has."""
    given = {"layer": layer, "head": head}
    return {k: v for k, v in given.items() if k in methods.METHODS[method].defaults}


def moving_clip(
    frames: int = 90,
    size: tuple[int, int] = (480, 640),
    seeds: tuple[int, ...] = (9_100_001, 9_100_010),
):
    """A test clip: the camera pans over a demo scene, then over another scene whose object has
    another texture (so the prediction should change half way). Yields RGB ``uint8`` frames."""
    from vitviz.demo.scenes import generate_scene

    h, w = size
    side = max(h, w) + 160
    canvases = []
    for seed in seeds:
        scene = generate_scene(seed, num_objects=1).image
        big = cv2.resize(scene, (side, side), interpolation=cv2.INTER_LINEAR)
        canvases.append(big)
    for i in range(frames):
        big = canvases[min(len(canvases) - 1, i * len(canvases) // frames)]
        angle = 2 * np.pi * i / max(frames, 1)
        top = int((side - h) / 2 + 60 * np.sin(angle))
        left = int((side - w) / 2 + 60 * np.cos(angle))
        yield np.ascontiguousarray(big[top : top + h, left : left + w])
