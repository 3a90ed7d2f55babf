"""The live camera in a real browser: Chromium's fake camera plays a clip the test writes, the
stream goes over WebRTC (loopback, no ICE servers) through the page's frame callback, and the
processed frames come back with the overlay; the shown prediction follows the clip's object.
At 1280×800 with the sidebar open the whole video is above the fold, and pausing the overlay
turns the speed line into a "paused" line (no maps, no rate), and back.

Needs what ``tests/test_browser.py`` needs plus streamlit-webrtc (in requirements.txt).
"""

from __future__ import annotations

import os
import re
import time

import cv2
import pytest

from tests.conftest import STATE_TIMEOUT_S
from tests.test_browser import (  # noqa: F401 - server is a fixture
    ARGS,
    CHROMIUM,
    REQUIRED,
    new_page,
    server,
    settle,
)
from vitviz.engine.stream import moving_clip

try:
    import streamlit_webrtc  # noqa: F401 - the live view's WebRTC component
except ImportError:  # pragma: no cover - depends on the install
    if REQUIRED:
        raise
    pytest.skip("streamlit-webrtc is not installed", allow_module_level=True)

OUTPUT_PIXELS_JS = """(video) => {
  if (!video || video.readyState < 2 || !video.videoWidth) return null;
  const c = document.createElement('canvas');
  c.width = video.videoWidth; c.height = video.videoHeight;
  const ctx = c.getContext('2d');
  ctx.drawImage(video, 0, 0);
  const d = ctx.getImageData(0, 0, c.width, c.height).data;
  const w = c.width, h = c.height, strip = Math.floor(w * 0.1);
  let edgeMax = 0, centreMax = 0, centreSum = 0, n = 0;
  for (let y = 0; y < h; y += 4) for (let x = 0; x < w; x += 4) {
    const i = 4 * (y * w + x), v = Math.max(d[i], d[i + 1], d[i + 2]);
    if (x < strip) edgeMax = Math.max(edgeMax, v);
    else if (x > w * 0.3 && x < w * 0.7) {
      centreMax = Math.max(centreMax, v); centreSum += v; n++;
    }
  }
  return [w, h, edgeMax, centreMax, centreSum / n];
}"""

# The processed frames are back: the part the model does not see is dimmed (the fake camera's
# frames are bright there), the centre keeps its colours. Returns the stats when so.
OVERLAID_JS = (
    "(video) => { const s = (" + OUTPUT_PIXELS_JS + ")(video);"
    " return s && s[2] < 130 && s[3] > 150 ? s : null; }"
)
# The overlay's centre differs from ``before`` (the map follows the camera).
CHANGED_JS = (
    "([video, before]) => { const s = (" + OUTPUT_PIXELS_JS + ")(video);"
    " return s && Math.abs(s[4] - before) > 0.5; }"
)
# The page's speed line, once at least ``n`` frames were taken and not skipped: their maps
# arrived, give or take the one being explained and the one waiting. Returns its numbers.
SPEED = r"([\d.]+) maps per second · latency (\d+) ms · (\d+) of (\d+) frames skipped"
EXPLAINED_JS = (
    "(n) => { const m = document.body.innerText.match(/" + SPEED + "/);"
    " return m && Number(m[4]) - Number(m[3]) >= n + 2 ? m.slice(1).map(Number) : null; }"
)


def write_y4m(path, frames, fps: int = 30) -> None:
    """A YUV4MPEG2 clip (what Chromium's fake camera plays, in a loop)."""
    h, w = frames[0].shape[:2]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for rgb in frames:
            f.write(b"FRAME\n")
            f.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420).tobytes())


def start_stream(page):
    """Press the player's START until its video plays; the video element. A rerun just after
    the page's first run can re-mount the player's iframe, and a click on the old one is lost
    (seen on a loaded machine): START is pressed again whenever the player shows it."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    player = page.frame_locator("iframe[title*='webrtc']").first
    start, video = player.get_by_role("button", name="START"), player.locator("video").first
    deadline = time.monotonic() + STATE_TIMEOUT_S
    while True:
        try:
            if start.is_visible():
                start.click(timeout=5_000)
            video.wait_for(state="attached", timeout=5_000)
            return video.element_handle()
        except PlaywrightTimeout:
            assert time.monotonic() < deadline, "the live player never played"


def test_the_overlay_follows_the_camera_and_the_prediction_changes(server, tmp_path):  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    clip = tmp_path / "clip.y4m"
    write_y4m(clip, list(moving_clip(frames=120)))
    fake = [
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-video-capture={clip}",
    ]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[*ARGS, *fake])
        try:
            page = new_page(browser, permissions=["camera"])
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{server}/?source=Live")
            settle(page)
            video = start_stream(page)
            # processed frames arrive: the part the model does not see comes back dimmed
            # (the fake camera's frames are bright there), the centre keeps its colours
            frame = video.owner_frame()
            stats = frame.wait_for_function(OVERLAID_JS, arg=video, polling=100).json_value()
            # the camera's 640×480, or a 4:3 step down: WebRTC lowers the resolution it sends
            # when encoding falls behind (CPU adaptation; seen at 480×360 on a loaded machine)
            assert stats and stats[0] * 3 == stats[1] * 4 and 320 <= stats[0] <= 640, stats
            assert stats[2] < 130 and stats[3] > 150, stats  # edges dimmed ×0.45, centre not
            # the prediction follows the clip: checkerboard, then horizontal stripes
            status = page.locator("[data-testid='stProgress']").first
            expect(status).to_contain_text(re.compile("checkerboard"))
            expect(status).to_contain_text(re.compile("horizontal stripes"))
            # and the overlay changes with it
            first = video.evaluate(OUTPUT_PIXELS_JS)[4]
            frame.wait_for_function(CHANGED_JS, arg=[video, first], polling=100)
            # the page counts the maps: at least ten arrived, and it reports a rate (a number,
            # whatever the machine's speed: speeds are measured in bench/, not asserted here)
            numbers = page.wait_for_function(EXPLAINED_JS, arg=10, polling=250).json_value()
            fps, _, skipped, frames = numbers
            assert fps > 0 and frames - skipped >= 12, numbers
            speed = page.get_by_text(re.compile(r"maps per second"))
            expect(speed).to_be_visible()
            print("live page:", speed.inner_text())  # pytest -s shows what the page measured
            # the whole video and its overlay above the fold, the sidebar open
            assert page.locator('[data-testid="stSidebar"]').get_attribute("data-collapsed") in (
                None,
                "false",
            )
            box = video.bounding_box()
            assert box and box["y"] >= 0 and box["y"] + box["height"] <= 800, box
            # pausing the overlay says so where the speed was (no maps are made: no rate)
            pause = page.locator(".st-key-live_paused input[type=checkbox]")
            pause.check(force=True)
            expect(page.get_by_text(re.compile("Overlay paused: no new maps"))).to_be_visible()
            expect(speed).to_have_count(0)
            pause.uncheck(force=True)
            expect(page.get_by_text(re.compile(r"maps per second"))).to_be_visible()
            if os.environ.get("VITVIZ_SCREENSHOT_LIVE"):
                page.screenshot(path=os.environ["VITVIZ_SCREENSHOT_LIVE"])
            # freeze: the frame of the current map opens in the normal views
            page.get_by_role("button", name=re.compile("Freeze")).click()
            expect(page.get_by_text(re.compile("last upload, live-frame.png"))).to_be_visible()
            expect(page.locator(".st-key-rollout .vv")).to_have_attribute("data-ready", "1")
            assert not errors, errors
        finally:
            browser.close()
