"""End to end in a real browser at 1280×800: ``streamlit run app.py`` driven by the system Chromium.

The attention canvas is checked through the state it shows on its element (``data-layer``,
``data-head``, ``data-patch``, ``data-checksum`` = the sum of the drawn values, ``data-hover``)
against the engine's own numbers; then the URL round trip, clipped controls, the busy
indicator, and the head-statistics click. The full-page screenshot is written to
``$VITVIZ_SCREENSHOT`` (the README's image is made with
``VITVIZ_SCREENSHOT=docs/screenshot.png python -m pytest tests/test_browser.py``).

It needs Debian's ``chromium`` and the ``playwright`` package (never ``playwright install``).
Outside CI it skips, with a message, when they are missing; with ``VITVIZ_REQUIRE_BROWSER=1``
(set by ``.ci/run``) a missing browser fails the test.
"""

from __future__ import annotations

import os
import re
import shutil
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import STATE_TIMEOUT_S, page_process
from vitviz import methods
from vitviz.inputs.assets import ASSETS
from vitviz.inputs.images import decode_image

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REQUIRED = os.environ.get("VITVIZ_REQUIRE_BROWSER") == "1"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-dev-shm-usage"]
# Every wait on the page (expect, clicks, wait_for_*, navigation) is a wait on state with this
# generous limit: the page's server may share a loaded 2-core machine. Nothing here is a sleep
# or a speed check (speeds are measured in bench/).
WAIT_MS = int(STATE_TIMEOUT_S * 1000)

try:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)
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
    with page_process() as (url, _):
        yield url


@pytest.fixture(scope="module")
def engine():
    """The demo model's explanations of two samples, computed in this process."""
    from vitviz.backends.local import LocalBackend

    backend = LocalBackend.from_name("demo", device="cpu")
    out = {}
    for name in ("demo-scene-1.png", "coffee.png", "chelsea.png"):
        image = decode_image((ASSETS / name).read_bytes(), name).image
        out[name] = backend.explain([image])[0]
    return out


def new_page(browser, **context):
    """A page at 1280×800 in a new context whose waits default to ``WAIT_MS``."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 800}, **context)
    ctx.set_default_timeout(WAIT_MS)
    ctx.set_default_navigation_timeout(WAIT_MS)
    return ctx.new_page()


@pytest.fixture
def page(server):
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = new_page(browser)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.errors = errors
        yield page
        assert page.locator('[data-testid="stException"]').count() == 0
        assert not errors, errors
        browser.close()


def settle(page) -> None:
    """Until no script run is in flight (Streamlit's own script state)."""
    page.wait_for_function(
        "() => { const a = document.querySelector('[data-testid=\"stApp\"]');"
        " return a && a.getAttribute('data-test-script-state') === 'notRunning'; }"
    )


def canvas(page, key: str):
    """The canvas's root (its state attributes) inside the element with this key."""
    root = page.locator(f".st-key-{key} .vv")
    expect(root).to_have_attribute("data-ready", "1")
    return root


def view(page, name: str) -> None:
    page.locator('[data-testid="stButtonGroup"] button', has_text=name).first.click()


def checksum(values: np.ndarray) -> float:
    return float(np.asarray(values, np.float32).astype(np.float64).sum())


# Pixels of a map canvas at the middle height of each row of patches: on the first patch border
# (x = one cell) and in the middle of a cell (x = 1.5 cells), where no grid line passes.
GRID_COLUMNS_JS = """(m) => {
  const ctx = m.getContext('2d'), cw = m.width / 14, ch = m.height / 14;
  const at = (x) => Array.from({length: 14}, (_, r) =>
    Array.from(ctx.getImageData(x, Math.round((r + 0.5) * ch), 1, 1).data)).flat();
  return [at(Math.round(cw)), at(Math.round(1.5 * cw))];
}"""


def test_canvas_follows_layer_head_patch_and_the_engine(page, server, engine, tmp_path):
    shot = Path(os.environ.get("VITVIZ_SCREENSHOT", tmp_path / "screenshot.png"))
    page.goto(server, wait_until="domcontentloaded")
    expect(page).to_have_title(re.compile("vitviz"))
    rollout = canvas(page, "rollout")
    ref = engine["demo-scene-1.png"]
    want = methods.compute_map("rollout", ref.attention, ref.layout)
    assert float(rollout.get_attribute("data-checksum")) == pytest.approx(checksum(want), rel=1e-5)
    # a colour legend with the map's range
    legend = page.locator(".st-key-rollout .legend")
    expect(legend).to_contain_text("rollout")
    assert float(rollout.get_attribute("data-max")) == pytest.approx(want.max(), rel=1e-5)
    # hovering a patch shows its value, the engine's
    settle(page)
    box = page.locator(".st-key-rollout canvas[data-role=map]").bounding_box()
    r, c = 4, 9
    page.mouse.move(
        box["x"] + (c + 0.5) * box["width"] / 14, box["y"] + (r + 0.5) * box["height"] / 14
    )
    expect(rollout).to_have_attribute("data-hover", re.compile(f"^{r * 14 + c}:"))
    value = float(rollout.get_attribute("data-hover").split(":")[1])
    assert value == pytest.approx(want[r, c], rel=1e-5)
    expect(page.locator(".st-key-rollout .tip")).to_contain_text(f"patch {r * 14 + c}")

    # upload a photo: the map follows (and the screenshot shows it)
    page.locator('[data-testid="stSidebar"]').get_by_text("Upload", exact=True).click()
    page.locator('[data-testid="stSidebar"] input[type="file"]').set_input_files(
        str(ASSETS / "chelsea.png")
    )
    cat = engine["chelsea.png"]
    want = methods.compute_map("rollout", cat.attention, cat.layout)
    page.wait_for_function(
        "(w) => { const e = [...document.querySelectorAll('.st-key-rollout *')]"
        "  .find(x => x.shadowRoot); const r = e && e.shadowRoot.querySelector('.vv');"
        "  const v = r && Number(r.getAttribute('data-checksum'));"
        "  return r && Math.abs(v - w) < 1e-4 * Math.abs(w); }",
        arg=checksum(want),
    )
    settle(page)
    # after a new upload the view is still selected
    active = page.locator('.st-key-view button[aria-checked="true"]')
    expect(active).to_have_text("Rollout")
    page.screenshot(path=str(shot), full_page=True)

    # Heads: layer and head change in the browser; the numbers are the engine's
    view(page, "Heads")
    heads = canvas(page, "heads-canvas")
    settle(page)
    layer_input = page.locator(".st-key-heads-canvas input[data-role=layer]")
    layer_input.focus()
    layer_input.press("ArrowLeft")
    layer_input.press("ArrowLeft")
    expect(heads).to_have_attribute("data-layer", "3")
    page.locator('.st-key-heads-canvas button[data-head="1"]').click()
    expect(heads).to_have_attribute("data-head", "1")
    want = methods.compute_map("attention", cat.attention, cat.layout, layer=3, head=1)
    assert float(heads.get_attribute("data-checksum")) == pytest.approx(checksum(want), rel=1e-5)
    expect(page.locator(".st-key-heads-canvas .title")).to_have_text(
        "Layer 3, head 1: what the readout attends to"
    )
    # the mosaic: labelled, the open cell marked, a click opens its head
    mosaic = page.locator(".st-key-heads-canvas .mosaic")
    expect(mosaic).to_contain_text("L0")
    expect(mosaic).to_contain_text("h2")
    expect(page.locator('.st-key-heads-canvas canvas[data-cell="10"]')).to_have_class("open")
    page.locator('.st-key-heads-canvas canvas[data-cell="5"]').click()  # layer 1, head 2
    expect(heads).to_have_attribute("data-layer", "1")
    expect(heads).to_have_attribute("data-head", "2")
    # the selection reaches the URL once the person pauses
    page.wait_for_url(re.compile(r"layer=1.*head=2|head=2.*layer=1"))
    # display settings in the browser: colormap and opacity, shared by all canvases
    page.locator(".st-key-heads-canvas select[data-role=colormap]").select_option("viridis")
    expect(heads).to_have_attribute("data-colormap", "viridis")
    # a map can be enlarged; its grid is drawn at the screen's resolution, 14 cells across
    big = page.locator(".st-key-heads-canvas canvas[data-role=map]")
    small_width = big.bounding_box()["width"]
    page.locator('.st-key-heads-canvas button[data-role="enlarge"]').click()
    page.wait_for_function(
        "(w) => { const e = [...document.querySelectorAll('.st-key-heads-canvas *')]"
        "  .find(x => x.shadowRoot); const m = e.shadowRoot.querySelector('[data-role=map]');"
        "  return m.getBoundingClientRect().width > 1.3 * w; }",
        arg=small_width,
    )
    assert big.evaluate("(m) => m.width") >= big.bounding_box()["width"]  # no CSS upscaling
    page.locator('.st-key-heads-canvas button[data-role="enlarge"]').click()
    # the patch grid: one-pixel lines on the patch borders, cells untouched between them
    before = big.evaluate(GRID_COLUMNS_JS)
    page.locator('.st-key-heads-canvas input[data-role="grid"]').check()
    page.wait_for_function(
        "([b, js]) => { const e = [...document.querySelectorAll('.st-key-heads-canvas *')]"
        "  .find(x => x.shadowRoot); const m = e.shadowRoot.querySelector('[data-role=map]');"
        "  return JSON.stringify(eval(js)(m)) !== JSON.stringify(b); }",
        arg=[before, GRID_COLUMNS_JS],
    )
    after = big.evaluate(GRID_COLUMNS_JS)
    assert after[0] != before[0] and after[1] == before[1]
    page.locator('.st-key-heads-canvas input[data-role="grid"]').uncheck()

    # Patch explorer: a click on the map asks the server for that patch's rows
    view(page, "Patch explorer")
    patch = canvas(page, "patch-canvas")
    settle(page)
    box = page.locator(".st-key-patch-canvas canvas[data-role=map]").bounding_box()
    r, c = 3, 10
    page.mouse.click(
        box["x"] + (c + 0.5) * box["width"] / 14, box["y"] + (r + 0.5) * box["height"] / 14
    )
    expect(patch).to_have_attribute("data-patch", str(r * 14 + c))
    expect(page.get_by_text(f"selected: patch {r * 14 + c} (row {r}, column {c})")).to_be_visible()
    settle(page)
    want = methods.compute_map(
        "query", cat.attention, cat.layout, patch=r * 14 + c, layer=1, head=2
    )
    assert float(patch.get_attribute("data-checksum")) == pytest.approx(checksum(want), rel=1e-5)
    # rolled out (one map) and back: the layer and head come back, not a trimmed layer 0
    rolled = page.get_by_text("Rolled out (follow")
    rolled.click()
    expect(patch).to_have_attribute("data-layer", "0")
    expect(patch).not_to_have_attribute("data-checksum", f"{checksum(want):.8g}")
    rolled.click()
    expect(patch).to_have_attribute("data-layer", "1")
    expect(patch).to_have_attribute("data-head", "2")

    # Head statistics: clicking a head's point opens its map in the Heads view
    view(page, "Head statistics")
    points = page.locator(".st-key-distance .scatterlayer .trace").first.locator("path.point")
    expect(points.first).to_be_visible()
    settle(page)
    box = points.nth(7).bounding_box()  # layer 2, head 1 (points run head-fastest, 3 heads)
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx, cy)  # plotly's drag layer sits above the points: use the mouse
    expect(page.locator(".hovertext").first).to_contain_text("layer 2, head 1")
    page.mouse.click(cx, cy)
    heads = canvas(page, "heads-canvas")
    expect(heads).to_have_attribute("data-layer", "2")
    expect(heads).to_have_attribute("data-head", "1")
    assert shot.stat().st_size > 20_000


def test_a_link_reproduces_the_view(page, server, engine):
    page.goto(f"{server}/?view=Heads&layer=2&head=1&sample=coffee.png")
    heads = canvas(page, "heads-canvas")
    expect(heads).to_have_attribute("data-layer", "2")
    expect(heads).to_have_attribute("data-head", "1")
    ref = engine["coffee.png"]
    want = methods.compute_map("attention", ref.attention, ref.layout, layer=2, head=1)
    assert float(heads.get_attribute("data-checksum")) == pytest.approx(checksum(want), rel=1e-5)
    # and the page writes what the person does back to the URL: a reload keeps it
    view(page, "Patch explorer")
    patch = canvas(page, "patch-canvas")
    settle(page)
    box = patch.locator("canvas[data-role=map]").bounding_box()
    page.mouse.click(box["x"] + 2.5 * box["width"] / 14, box["y"] + 3.5 * box["height"] / 14)
    expect(patch).to_have_attribute("data-patch", str(3 * 14 + 2))
    settle(page)
    expect(page).to_have_url(re.compile("view=Patch"))
    expect(page).to_have_url(re.compile("patch=44"))
    page.reload()
    patch = canvas(page, "patch-canvas")
    expect(patch).to_have_attribute("data-patch", "44")
    assert "sample=coffee.png" in page.url
    # a head picked just before a view switch is not lost (it was not reported yet)
    view(page, "Heads")
    heads = canvas(page, "heads-canvas")
    settle(page)
    page.locator('.st-key-heads-canvas button[data-head="0"]').click()
    view(page, "Patch explorer")
    patch = canvas(page, "patch-canvas")
    expect(patch).to_have_attribute("data-head", "0")
    page.wait_for_url(re.compile(r"head=0"))
    view(page, "Rollout")  # the default view leaves the URL
    canvas(page, "rollout")
    settle(page)
    assert "view=" not in page.url


CLIPPED_JS = """() => {
  const bad = [];
  const seen = (el) => {
    const r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0;
  };
  const check = (el, what) => {
    const text = (el.tagName === 'INPUT' ? el.value : el.textContent).trim();
    if (!seen(el) || !text) return;
    if (el.scrollWidth > el.clientWidth + 1) bad.push(what + ': ' + text);
  };
  const page = ['[data-testid="stWidgetLabel"] p', '[data-testid="stButtonGroup"] button p',
    '[data-testid="stMarkdownContainer"] p', '[data-baseweb="select"] div[value]',
    '[data-baseweb="select"] > div > div:first-child', '[data-baseweb="select"] input',
    '[role="option"]', '[role="option"] *', '[data-testid="stCheckbox"] label p',
    '[data-testid="stDownloadButton"] button p', '[data-testid="stButton"] button p',
    '[data-testid="stMarkdownContainer"]'];
  document.querySelectorAll(page.join(', ')).forEach(e => check(e, 'page'));
  // a button group wider than its column is cut off by the column, not by itself
  document.querySelectorAll('[data-testid="stButtonGroup"]').forEach(g => {
    const col = g.closest('[data-testid="stColumn"]');
    if (!seen(g) || !col) return;
    const right = col.getBoundingClientRect().right;
    g.querySelectorAll('button').forEach(b => {
      if (seen(b) && b.getBoundingClientRect().right > right + 1)
        bad.push('cut by its column: ' + b.textContent.trim());
    });
  });
  document.querySelectorAll('*').forEach(h => {
    if (!h.shadowRoot) return;
    const parts = 'button, .name, .title, label, .legend span';
    h.shadowRoot.querySelectorAll(parts).forEach(e => check(e, 'canvas'));
  });
  return bad;
}"""


def test_no_control_is_clipped_at_1280(page, server):
    page.goto(f"{server}/?view=Rollout")
    canvas(page, "rollout")
    settle(page)
    page.get_by_text("Why this class?").click()
    canvas(page, "class-map")
    settle(page)
    page.get_by_text("DINO-style mask").click()
    canvas(page, "mask")
    settle(page)
    for name, key in (
        ("Rollout", "rollout"),
        ("Heads", "heads-canvas"),
        ("Patch explorer", "patch-canvas"),
        ("Features", "features-canvas"),
        ("Compare", "cmp-b"),
    ):
        view(page, name)
        canvas(page, key)
        settle(page)
        clipped = page.evaluate(CLIPPED_JS)
        assert clipped == [], (name, clipped)
    for name in ("How ViT sees this image", "Head statistics"):
        view(page, name)
        settle(page)
        assert page.evaluate(CLIPPED_JS) == [], name
    page.get_by_role("combobox", name="Model").click()  # every model's name fits its menu
    expect(page.get_by_role("option").first).to_be_visible()
    assert page.get_by_role("option").count() >= 9
    assert page.evaluate(CLIPPED_JS) == []
    page.keyboard.press("Escape")


SPINNER_LOG_JS = """
window.__spinners = [];
new MutationObserver(() => {
  for (const el of document.querySelectorAll('[data-testid="stSpinner"]')) {
    const text = el.innerText.trim();
    if (text && !window.__spinners.includes(text)) window.__spinners.push(text);
  }
}).observe(document, {childList: true, subtree: true, characterData: true});
"""


def test_a_slow_step_shows_that_the_page_is_busy(page, server):
    # every spinner text shown while the page works is logged (a spinner can be brief)
    page.add_init_script(SPINNER_LOG_JS)
    page.goto(f"{server}/?model=__timm__&timm_name=vit_base_patch16_224&random_weights=true")
    canvas(page, "rollout")  # ViT-B/16 is built (over a second here) and explained
    settle(page)
    shown = page.evaluate("window.__spinners")
    assert any(t.startswith("Loading vit_base_patch16_224") for t in shown), shown
    warning = page.locator('[data-testid="stMain"]').get_by_text("RANDOM WEIGHTS").first
    expect(warning).to_be_visible()  # said above the maps, not below the fold in the sidebar
    maps = canvas(page, "rollout").locator("canvas[data-role=map]")
    assert warning.bounding_box()["y"] < maps.bounding_box()["y"]
    expect(page.get_by_role("combobox", name="Model")).to_have_value("Any timm ViT, by name…")


def test_a_link_cannot_put_a_link_or_picture_into_the_page(page, server):
    evil = "[Sign in again](https://evil.example) ![](https://evil.example/p.png)"
    page.goto(f"{server}/?model=__timm__&timm_name={urllib.parse.quote(evil)}")
    alert = page.locator('[data-testid="stAlert"]').filter(has_text="Sign in again").first
    expect(alert).to_be_visible()
    shown = alert.inner_text().replace("\u2060", "")  # invisible joiners keep it from linking
    assert "[Sign in again](https://evil.example)" in shown
    assert alert.locator("a, img").count() == 0
    canvas(page, "rollout")  # the demo model answers meanwhile


def test_no_control_is_clipped_at_1280_in_chinese(page, server):
    """The zh-Hant page: the same check, every view, with the class map and the mask on."""
    page.goto(f"{server}/?view=Rollout&lang=zh-Hant")
    canvas(page, "rollout")
    settle(page)
    page.get_by_text("為什麼是這個類別？").first.click()
    canvas(page, "class-map")
    settle(page)
    page.get_by_text("DINO 式遮罩").first.click()
    canvas(page, "mask")
    settle(page)
    assert page.evaluate(CLIPPED_JS) == [], "注意力展開"
    for name, key in (
        ("注意力頭", "heads-canvas"),
        ("圖塊探索", "patch-canvas"),
        ("特徵", "features-canvas"),
        ("比較", "cmp-b"),
    ):
        view(page, name)
        canvas(page, key)
        settle(page)
        assert page.evaluate(CLIPPED_JS) == [], name
    for name in ("ViT 如何看這張圖", "注意力頭統計"):
        view(page, name)
        settle(page)
        assert page.evaluate(CLIPPED_JS) == [], name
