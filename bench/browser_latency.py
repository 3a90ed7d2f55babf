"""What a person feels: from a key press or click to the map showing the new state, in Chromium.

    python bench/browser_latency.py --json [--model demo|vit_base_patch16_224] [--repeats 8]

Starts ``streamlit run app.py`` on a free loopback port (offline, the demo model, or a timm
architecture with random weights) and a *floor* page the benchmark writes: the smallest
Streamlit page whose slider redraws one 448 px image with ``st.image``. It drives the system
Chromium (Playwright) at 1280×800 and times each action from the input event to the moment the
map shows the new state: it waits on the map's own state (the canvas element's ``data-state``
attribute, or, on a page drawn with plotly, the ``href`` of the chart's picture), never on a
fixed sleep. Then it waits for the page to settle before the next action.

Actions (``--repeats`` of each): a layer step and a head change in Heads, a click in the
layers × heads mosaic, a layer step and a patch click in the Patch explorer, a discard-ratio
step in Rollout, a start-layer step in Compare (two images: both panels redrawn), a view
switch, the switch into Token norms and a layer step there; in lesson mode, a step by the
→ / ← keys (to the new step drawn and the page settled) and a patch click on the step-2 grid.
Prints medians per action, ``floor_ms`` and ``ratio_to_floor``; on the canvas page also
``view_switch_mixed_frames``: over every view switch, the animation frames in which the old
view's maps or controls were on screen together with the new view's (the target is 0).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLOOR_PAGE = """
import numpy as np
import streamlit as st

st.set_page_config(layout="wide")
v = st.slider("Value", 0, 255, 0, key="floor")
img = np.zeros((448, 448, 3), np.uint8)
img[..., 0] = v
img[::16, :, 1] = 255 - v
st.image(img, width=448)
"""

# How a map's current state is read: the canvas's data-state, else plotly's picture.
STATE_JS = """(sel) => {
  const root = document.querySelector(sel);
  if (!root) return null;
  const canvas = root.querySelector('[data-state]');
  if (canvas) return canvas.getAttribute('data-state');
  const deep = root.querySelector('*') && [...root.querySelectorAll('*')].find(
      e => e.shadowRoot && e.shadowRoot.querySelector('[data-state]'));
  if (deep) return deep.shadowRoot.querySelector('[data-state]').getAttribute('data-state');
  const img = root.querySelector('image');
  return img ? img.getAttribute('href') : null;
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(script: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(port)]
    cmd += ["--server.address", "127.0.0.1", "--server.headless", "true"]
    cmd += ["--browser.gatherUsageStats", "false"]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"streamlit did not start for {script}")


class Page:
    """A Playwright page with helpers to time actions against map state."""

    def __init__(self, page) -> None:
        self.page = page
        self.retries = 0  # clicks the page lost and that had to be repeated

    def state(self, key: str) -> str | None:
        return self.page.evaluate(STATE_JS, f".st-key-{key}")

    def settle(self, timeout: float = 120) -> None:
        """Until no script run is in flight (Streamlit's own script state)."""
        self.page.wait_for_function(
            "() => { const a = document.querySelector('[data-testid=\"stApp\"]');"
            " return a && a.getAttribute('data-test-script-state') === 'notRunning'; }",
            timeout=timeout * 1000,
        )

    def timed(
        self,
        key: str,
        act: Callable[[], None],
        timeout: float = 120,
        retry_after: float | None = None,
    ) -> float:
        """Milliseconds from ``act`` to map ``key`` showing a state other than before.

        ``retry_after``: repeat ``act`` when nothing happened after that many seconds (a
        click the page lost, as a person would click again); the time counts from the first.
        """
        self.settle()
        before = self.state(key)
        sel = f".st-key-{key}"
        condition = f"(b) => {{ const s = ({STATE_JS})('{sel}'); return s !== b && s !== null; }}"
        start = time.perf_counter()
        deadline = start + timeout
        while True:
            act()
            wait = retry_after if retry_after else timeout
            try:
                self.page.wait_for_function(
                    condition, arg=before, timeout=wait * 1000, polling="raf"
                )
                break
            except Exception:
                if not retry_after or time.perf_counter() > deadline:
                    raise
                self.retries += 1
        ms = (time.perf_counter() - start) * 1000
        self.settle()
        return ms


def slider_steps(p: Page, key: str, slider, repeats: int) -> list[float]:
    """Times of ``repeats`` one-step moves of ``slider`` (right, left, …) to map ``key``."""
    return [
        p.timed(key, lambda k=k: (slider.focus(), slider.press(k)))
        for k in ("ArrowRight" if i % 2 == 0 else "ArrowLeft" for i in range(repeats))
    ]


def layer_keys(repeats: int, at_first_layer: bool = False) -> list[str]:
    """Arrow keys for ``repeats`` layer steps back and forth, first toward a layer that exists
    (right when the map shows layer 0, else left)."""
    first, back = ("ArrowRight", "ArrowLeft") if at_first_layer else ("ArrowLeft", "ArrowRight")
    return [first if i % 2 == 0 else back for i in range(repeats)]


def legacy_actions(p: Page, repeats: int) -> dict[str, list[float]]:
    """The page drawn with plotly figures and Streamlit widgets (before the canvas)."""
    page = p.page
    out: dict[str, list[float]] = {}
    main = page.locator('[data-testid="stMain"]')

    def view(name: str) -> None:
        page.locator('[data-testid="stButtonGroup"] button', has_text=name).first.click()

    # a view switch: Rollout → Heads (timed on the Heads map appearing)
    out["view_switch"] = []
    for _ in range(repeats):
        p.settle()
        view("Rollout")
        page.wait_for_selector(".st-key-rollout image")
        p.settle()
        out["view_switch"].append(p.timed("head-map", lambda: view("Heads")))
    slider = main.locator('input[type="range"][aria-label="Layer"]').first
    out["heads_layer_step"] = [
        p.timed("head-map", lambda k=key: (slider.focus(), slider.press(k)))
        for key in layer_keys(repeats)
    ]
    out["heads_head_change"] = []
    for i in range(repeats):

        def pick(i=i) -> None:
            main.locator('[data-testid="stSelectbox"]').first.click()
            page.get_by_role("option", name="head 1" if i % 2 == 0 else "head 0").click()

        out["heads_head_change"].append(p.timed("head-map", pick))
    out["mosaic_click"] = []
    for i in range(repeats):

        def click(i=i) -> None:
            point = page.locator(".st-key-model-view path.point").nth(1 + 4 * (i % 4))
            box = point.bounding_box()
            x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            page.mouse.move(x, y)  # plotly's drag layer sits above the points
            page.mouse.click(x, y)

        out["mosaic_click"].append(p.timed("head-map", click, retry_after=1.5))
    view("Patch explorer")
    page.wait_for_selector(".st-key-patch-map image")
    p.settle()
    slider = main.locator('input[type="range"][aria-label="Layer"]').first
    out["patch_layer_step"] = [  # the plotly page opens the last layer
        p.timed("patch-map", lambda k=key: (slider.focus(), slider.press(k)))
        for key in layer_keys(repeats)
    ]
    out["patch_click"] = []
    for i in range(repeats):
        picker = page.locator(".st-key-patch-picker image").first
        box = picker.bounding_box()

        def click(i=i, box=box) -> None:
            page.mouse.click(box["x"] + box["width"] * (0.3 + 0.1 * (i % 3)), box["y"] + 40)

        out["patch_click"].append(p.timed("patch-map", click, retry_after=1.5))
    view("Rollout")
    page.wait_for_selector(".st-key-rollout image")
    p.settle()
    slider = main.locator('input[type="range"][aria-label="Discard ratio"]').first
    out["rollout_discard_step"] = slider_steps(p, "rollout", slider, repeats)
    return out


# Counts the animation frames, over 1.5 s from a view switch, in which an element of the old
# view (by key) is on screen together with one of the new view: the frames where new controls
# sit over stale maps.
MIXED_FRAMES_JS = """([old, neu]) => {
  window.__mixed = null;
  const sel = (keys) => keys.map(k => '.st-key-' + k).join(',');
  const shown = (s) => [...document.querySelectorAll(s)].some(
    e => e.getBoundingClientRect().height > 0);
  let mixed = 0; const t0 = performance.now();
  const tick = () => {
    if (shown(sel(old)) && shown(sel(neu))) mixed++;
    if (performance.now() - t0 < 1500) requestAnimationFrame(tick); else window.__mixed = mixed;
  };
  requestAnimationFrame(tick);
}"""


def canvas_actions(p: Page, repeats: int) -> dict[str, list[float]]:
    """The page whose maps are drawn by the attention canvas (vitviz.ui.canvas)."""
    page = p.page

    def view(name: str) -> None:
        page.locator('[data-testid="stButtonGroup"] button', has_text=name).first.click()

    def control(key: str, selector: str):
        return page.locator(f".st-key-{key} {selector}").first

    out: dict[str, list[float]] = {"view_switch": [], "view_switch_mixed_frames": []}
    rollout_keys, heads_keys = ["rollout", "discard", "mask_on"], ["heads-canvas", "heads_why"]
    for _ in range(repeats):
        view("Rollout")
        page.wait_for_selector(".st-key-rollout [data-state]")
        p.settle()

        def switch() -> None:
            page.evaluate(MIXED_FRAMES_JS, [rollout_keys, heads_keys])
            view("Heads")

        out["view_switch"].append(p.timed("heads-canvas", switch))
        page.wait_for_function("() => window.__mixed !== null")
        out["view_switch_mixed_frames"].append(page.evaluate("window.__mixed"))
    layer = control("heads-canvas", 'input[data-role="layer"]')
    out["heads_layer_step"] = [
        p.timed("heads-canvas", lambda k=key: (layer.focus(), layer.press(k)))
        for key in layer_keys(repeats, p.state("heads-canvas").split("|")[1] == "0")
    ]

    def click(target) -> Callable[[], None]:
        """A mouse click at the element's centre, located before the clock starts."""
        target.scroll_into_view_if_needed()
        box = target.bounding_box()
        return lambda: page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)

    out["heads_head_change"] = []
    for i in range(repeats):
        button = control("heads-canvas", f'button[data-head="{1 if i % 2 == 0 else 0}"]')
        out["heads_head_change"].append(p.timed("heads-canvas", click(button)))
    out["mosaic_click"] = []
    for i in range(repeats):
        cell = control("heads-canvas", f'canvas[data-cell="{1 + i % 2}"]')
        out["mosaic_click"].append(p.timed("heads-canvas", click(cell)))
    view("Patch explorer")
    page.wait_for_selector(".st-key-patch-canvas [data-state]")
    p.settle()
    layer = control("patch-canvas", 'input[data-role="layer"]')
    out["patch_layer_step"] = [
        p.timed("patch-canvas", lambda k=key: (layer.focus(), layer.press(k)))
        for key in layer_keys(repeats, p.state("patch-canvas").split("|")[1] == "0")
    ]
    out["patch_click"] = []
    for i in range(repeats):
        target = control("patch-canvas", 'canvas[data-role="map"]')
        box = target.bounding_box()

        def click(i=i, box=box) -> None:
            page.mouse.click(box["x"] + box["width"] * (0.3 + 0.1 * (i % 3)), box["y"] + 40)

        out["patch_click"].append(p.timed("patch-canvas", click))
    view("Rollout")
    page.wait_for_selector(".st-key-rollout [data-state]")
    p.settle()
    slider = page.locator(
        '[data-testid="stMain"] input[type="range"][aria-label="Discard ratio"]'
    ).first
    out["rollout_discard_step"] = slider_steps(p, "rollout", slider, repeats)
    # Compare (two images, rollout): a start-layer step redraws both panels on the server
    view("Compare")
    page.wait_for_selector(".st-key-cmp-b [data-state]")
    p.settle()
    start = page.locator(
        '[data-testid="stMain"] input[type="range"][aria-label="Start layer"]'
    ).first
    out["compare_option_step"] = slider_steps(p, "cmp-b", start, repeats)
    # Token norms (issue 24): the switch into the view (the norms computed by the first, then
    # cached with the explanation) and a layer step on its two linked canvases
    out["norms_view_switch"] = []
    for _ in range(repeats):
        view("Heads")
        page.wait_for_selector(".st-key-heads-canvas [data-state]")
        p.settle()
        out["norms_view_switch"].append(p.timed("norms-canvas", lambda: view("Token norms")))
    layer = control("norms-canvas", 'input[data-role="layer"]')
    out["norms_layer_step"] = [
        p.timed("norms-canvas", lambda k=key: (layer.focus(), layer.press(k)))
        for key in layer_keys(repeats, p.state("norms-canvas").split("|")[1] == "0")
    ]
    return out


def lesson_actions(p: Page, url: str, repeats: int) -> dict[str, list[float]]:
    """Lesson mode: from → (or ←) to the next step drawn and the page settled, over all nine
    steps and back; and a click on the patch picker until the page shows the new patch."""
    page = p.page
    page.goto(url + ("&" if "?" in url else "?") + "lesson=1&step=1")
    page.wait_for_selector(".st-key-lesson-step-1", timeout=180_000)
    p.settle(180)
    out: dict[str, list[float]] = {"lesson_step_key": [], "lesson_patch_click": []}
    step = 1
    for i in range(repeats * 2):
        forward = (i // 8) % 2 == 0  # 1 → 9, then back
        step += 1 if forward else -1
        start = time.perf_counter()
        page.keyboard.press("ArrowRight" if forward else "ArrowLeft")
        page.wait_for_selector(f".st-key-lesson-step-{step}", timeout=120_000)
        p.settle()
        out["lesson_step_key"].append((time.perf_counter() - start) * 1000)
    page.goto(url + ("&" if "?" in url else "?") + "lesson=1&step=2")
    picker = page.locator(".st-key-lesson-picker-2 .vv-picker")
    picker.wait_for(timeout=120_000)
    p.settle()
    for i in range(repeats):
        box = page.locator(".st-key-lesson-picker-2 canvas").bounding_box()
        col, row = 2 + i % 5, 3
        want = str(row * 14 + col)
        start = time.perf_counter()
        page.mouse.click(
            box["x"] + (col + 0.5) * box["width"] / 14, box["y"] + 3.5 * box["height"] / 14
        )
        page.wait_for_function(
            "(w) => [...document.querySelectorAll('[data-testid=stCaptionContainer]')]"
            ".some(c => c.innerText.includes('patch: ' + w + ' '))",
            arg=want,
            timeout=120_000,
        )
        p.settle()
        out["lesson_patch_click"].append((time.perf_counter() - start) * 1000)
    return out


def floor(pw, url: str, repeats: int) -> list[float]:
    browser = launch(pw)
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(url)
    page.wait_for_selector('[data-testid="stImage"] img')
    p = Page(page)
    slider = page.locator('input[type="range"]').first
    times = []
    for i in range(repeats + 2):
        p.settle()
        before = page.locator('[data-testid="stImage"] img').first.get_attribute("src")
        start = time.perf_counter()
        slider.focus()
        slider.press("ArrowRight" if i % 2 == 0 else "ArrowLeft")
        page.wait_for_function(
            "(b) => { const i = document.querySelector('[data-testid=\"stImage\"] img');"
            " return i && i.getAttribute('src') !== b && i.complete; }",
            arg=before,
            polling="raf",
        )
        times.append((time.perf_counter() - start) * 1000)
    browser.close()
    return times[2:]  # the first steps warm the page up


def model_query(name: str) -> str:
    """The page's URL parameters for a curated model or a timm name, with random weights."""
    sys.path.insert(0, str(ROOT))
    from vitviz.models import CURATED

    pick = {"model": name} if name in CURATED else {"model": "__timm__", "timm_name": name}
    return urllib.parse.urlencode({**pick, "random_weights": "true"})


def launch(pw):
    return pw.chromium.launch(
        executable_path=CHROMIUM,
        args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-dev-shm-usage"],
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-lesson", action="store_true", help="skip the lesson-mode actions")
    args = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        floor_script = Path(tmp) / "floor.py"
        floor_script.write_text(FLOOR_PAGE)
        floor_proc, floor_url = start(floor_script, env)
        app_proc, app_url = start(ROOT / "app.py", env)
        try:
            with sync_playwright() as pw:
                floor_ms = floor(pw, floor_url, args.repeats)
                browser = launch(pw)
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                query = "" if args.model == "demo" else f"?{model_query(args.model)}"
                page.goto(app_url + query)
                p = Page(page)
                # the canvas's state (or, on the plotly page, the chart's picture): the map
                # is drawn, whichever page this is
                page.wait_for_selector(
                    ".st-key-rollout [data-state], .st-key-rollout image", timeout=180_000
                )
                p.settle(180)
                canvas = page.locator(".st-key-rollout [data-state]").count() > 0
                if not canvas and args.model != "demo":  # the old page: pick the model by hand
                    raise SystemExit("the plotly page is measured with the demo model only")
                actions = (
                    canvas_actions(p, args.repeats) if canvas else legacy_actions(p, args.repeats)
                )
                if canvas and not args.no_lesson:
                    actions |= lesson_actions(p, app_url + query, args.repeats)
                browser.close()
        finally:
            for proc in (floor_proc, app_proc):
                proc.terminate()
                proc.wait(10)
    floor_med = statistics.median(floor_ms)
    result = {
        "model": args.model,
        "page": "canvas" if canvas else "plotly",
        "repeats": args.repeats,
        "floor_ms": round(floor_med, 1),
        "view_switch_mixed_frames": sum(actions.pop("view_switch_mixed_frames", [])),
        "actions_ms": {k: round(statistics.median(v), 1) for k, v in actions.items()},
        "ratio_to_floor": {
            k: round(statistics.median(v) / floor_med, 2) for k, v in actions.items()
        },
        "lost_clicks_repeated": p.retries,
        "samples_ms": {k: [round(x, 1) for x in v] for k, v in actions.items()},
    }
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
