"""The live camera in a real browser: Chromium's fake camera plays a clip the test writes, the
stream goes over WebRTC (loopback, no ICE servers) through the page's frame callback, and the
processed frames come back with the overlay; the shown prediction follows the clip's object.

Needs what ``tests/test_browser.py`` needs plus streamlit-webrtc (in requirements.txt).
"""

from __future__ import annotations

import os
import re

import cv2
import pytest

from tests.test_browser import ARGS, CHROMIUM, REQUIRED, server, settle  # noqa: F401 - fixtures
from vitviz.live import moving_clip

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


def write_y4m(path, frames, fps: int = 30) -> None:
    """A YUV4MPEG2 clip (what Chromium's fake camera plays, in a loop)."""
    h, w = frames[0].shape[:2]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for rgb in frames:
            f.write(b"FRAME\n")
            f.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420).tobytes())


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
            context = browser.new_context(
                viewport={"width": 1280, "height": 800}, permissions=["camera"]
            )
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{server}/?source=Live")
            settle(page)
            player = page.frame_locator("iframe[title*='webrtc']").first
            player.get_by_role("button", name="START").click()
            video = player.locator("video").first
            # processed frames arrive: the part the model does not see comes back dimmed
            # (the fake camera's frames are bright there), the centre keeps its colours
            stats = None
            for _ in range(200):
                stats = video.evaluate(OUTPUT_PIXELS_JS)
                if stats and stats[2] < 130 and stats[3] > 150:
                    break
                page.wait_for_timeout(100)
            assert stats and stats[0] == 640 and stats[1] == 480, stats
            assert stats[2] < 130 and stats[3] > 150, stats  # edges dimmed ×0.45, centre not
            # the prediction follows the clip: checkerboard, then horizontal stripes
            status = page.locator("[data-testid='stProgress']").first
            expect(status).to_contain_text(re.compile("checkerboard"), timeout=60_000)
            expect(status).to_contain_text(re.compile("horizontal stripes"), timeout=60_000)
            # and the overlay changes with it
            first = video.evaluate(OUTPUT_PIXELS_JS)[4]
            page.wait_for_timeout(1500)
            assert abs(video.evaluate(OUTPUT_PIXELS_JS)[4] - first) > 0.5
            speed = page.get_by_text(re.compile(r"maps per second"))
            expect(speed).to_be_visible()
            fps = float(re.search(r"([\d.]+) maps per second", speed.inner_text()).group(1))
            assert fps > 2, speed.inner_text()
            print("live page:", speed.inner_text())  # pytest -s shows what the page measured
            if os.environ.get("VITVIZ_SCREENSHOT_LIVE"):
                page.screenshot(path=os.environ["VITVIZ_SCREENSHOT_LIVE"])
            # freeze: the frame of the current map opens in the normal views
            page.get_by_role("button", name=re.compile("Freeze")).click()
            expect(page.get_by_text(re.compile("last upload, live-frame.png"))).to_be_visible(
                timeout=60_000
            )
            expect(page.locator(".st-key-rollout .vv")).to_have_attribute(
                "data-ready", "1", timeout=60_000
            )
            assert not errors, errors
        finally:
            browser.close()
