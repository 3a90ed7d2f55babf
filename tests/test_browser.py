"""End to end in a real browser: ``streamlit run app.py`` driven by the system Chromium.

Uploads a photo, waits for the overlay, changes the layer in the Heads view, clicks a patch in
the Patch explorer, clicks a head in Head statistics and checks that the page followed each
step without an exception. The
full-page screenshot is written to ``$VITVIZ_SCREENSHOT`` (the README's image is made with
``VITVIZ_SCREENSHOT=docs/screenshot.png python -m pytest tests/test_browser.py``).

It needs Debian's ``chromium`` and the ``playwright`` package (never ``playwright install``).
Outside CI it skips, with a message, when they are missing; with ``VITVIZ_REQUIRE_BROWSER=1``
(set by ``.ci/run``) a missing browser fails the test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REQUIRED = os.environ.get("VITVIZ_REQUIRE_BROWSER") == "1"

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None


def _missing() -> str | None:
    if sync_playwright is None:
        return "the playwright package is not installed (pip install -r requirements-dev.txt)"
    if CHROMIUM is None:
        return "no system Chromium (apt-get install chromium)"
    return None


@pytest.fixture(scope="module")
def server():
    why = _missing()
    if why:
        if REQUIRED:
            pytest.fail(f"browser test required but {why}")
        pytest.skip(f"browser test skipped: {why}")
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py")]
    cmd += ["--server.port", str(port), "--server.address", "127.0.0.1"]
    cmd += ["--server.headless", "true", "--browser.gatherUsageStats", "false"]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 90
        while time.time() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.3)
        else:
            proc.kill()
            log.seek(0)
            pytest.fail(f"streamlit did not start:\n{log.read().decode(errors='replace')[-3000:]}")
        yield url
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.seek(0)
        output = log.read().decode(errors="replace")
    assert "Traceback" not in output, output[-3000:]


def picture_of(image) -> str:
    """The picture a map shows, once plotly has set it (the element exists before its href)."""
    expect(image).to_have_attribute("href", re.compile("^data:image/"), timeout=120_000)
    return image.get_attribute("href")


def test_upload_layer_and_patch_click(server, tmp_path):
    shot = Path(os.environ.get("VITVIZ_SCREENSHOT", tmp_path / "screenshot.png"))
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-dev-shm-usage"],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server, wait_until="domcontentloaded")
        charts = page.locator('[data-testid="stPlotlyChart"]')
        expect(charts.first).to_be_visible(timeout=120_000)
        expect(page).to_have_title(re.compile("vitviz"))
        idle = page.locator(
            '[data-testid="stStatusWidget"]'
        )  # shown while a script run is in flight
        first = picture_of(page.locator(".st-key-rollout image").first)

        # upload a photo
        page.locator('[data-testid="stSidebar"]').get_by_text("Upload", exact=True).click()
        page.locator('[data-testid="stSidebar"] input[type="file"]').set_input_files(
            str(ROOT / "assets" / "chelsea.png")
        )
        expect(page.get_by_text("What the model sees (224×224 px)")).to_be_visible()
        image = page.locator(".st-key-rollout image").first
        expect(image).not_to_have_attribute("href", first, timeout=60_000)
        overlay = picture_of(image)
        assert overlay.startswith("data:image/jpeg;base64,")
        # the first screen holds the image, the prediction and the overlay
        for loc in (
            page.locator('[data-testid="stImage"]').first,
            page.locator('[data-testid="stProgress"]').first,
            charts.first,
        ):
            box = loc.bounding_box()
            assert box is not None and box["y"] + min(box["height"], 120) <= 800, box
        page.screenshot(path=str(shot), full_page=True)

        # Heads view: change the layer with the keyboard on the slider
        page.locator('[data-testid="stButtonGroup"] button', has_text="Heads").click()
        caption = page.get_by_text(re.compile(r"^Layer 5, all heads \(fused\)"))
        expect(caption).to_be_visible(timeout=60_000)
        expect(idle).to_have_count(0, timeout=60_000)
        before = picture_of(page.locator(".st-key-head-map image").first)
        slider = page.locator('[data-testid="stMain"] input[type="range"][aria-label="Layer"]')
        slider.focus()
        slider.press("ArrowLeft")
        slider.press("ArrowLeft")
        expect(page.get_by_text(re.compile(r"^Layer 3, all heads \(fused\)"))).to_be_visible(
            timeout=60_000
        )
        expect(page.locator(".st-key-head-map image").first).not_to_have_attribute(
            "href", before, timeout=60_000
        )

        # Patch explorer: click patch (row 3, column 10) of the picker
        page.locator('[data-testid="stButtonGroup"] button', has_text="Patch explorer").click()
        expect(page.get_by_text(re.compile(r"^Click a patch"))).to_be_visible(timeout=60_000)
        picker = page.locator(".st-key-patch-picker")
        img = picker.locator("image").first
        expect(img).to_be_visible()
        box = img.bounding_box()
        row, col = 3, 10
        x = box["x"] + (col + 0.5) * box["width"] / 14
        y = box["y"] + (row + 0.5) * box["height"] / 14
        # the page must be idle (no script run in flight) or the chart may be redrawn under us
        expect(idle).to_have_count(0, timeout=60_000)
        page.mouse.move(x, y)  # hovering shows the patch index
        expect(page.locator(".hovertext").first).to_contain_text(f"patch {row * 14 + col}")
        page.mouse.click(x, y)
        patch = row * 14 + col
        expect(
            page.get_by_text(f"selected: patch {patch} (row {row}, column {col})")
        ).to_be_visible(timeout=60_000)
        expect(page.get_by_text(f"What patch {patch} attends to")).to_be_visible()

        # Head statistics: clicking a head's point opens its map in the Heads view
        page.locator('[data-testid="stButtonGroup"] button', has_text="Head statistics").click()
        points = page.locator(".st-key-distance .scatterlayer .trace").first.locator("path.point")
        expect(points.first).to_be_visible(timeout=60_000)
        expect(idle).to_have_count(0, timeout=60_000)
        box = points.nth(7).bounding_box()  # layer 2, head 1 (points run head-fastest, 3 heads)
        cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(cx, cy)  # plotly's drag layer sits above the points: use the mouse
        expect(page.locator(".hovertext").first).to_contain_text("layer 2, head 1")
        page.mouse.click(cx, cy)
        expect(page.get_by_text(re.compile(r"^Layer 2, head 1: what the readout"))).to_be_visible(
            timeout=60_000
        )

        assert page.locator('[data-testid="stException"]').count() == 0
        assert not errors, errors
        browser.close()
    assert shot.stat().st_size > 20_000
