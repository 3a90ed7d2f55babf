"""Lesson mode and the language switch in a real browser at 1280×800 (sidebar collapsed).

Step navigation by buttons and ← → keys, the chosen patch carried through steps 2–6, nothing
below the fold and type ≥ 20 px on every step, the language switch and its URL round trip; in
中文 a walk of every step the navigation lists (however many there are) with the step's content
above the fold and every text in the lesson ≥ 18 px (the picker's canvas numbers by the size its
code draws them at); the camera path (the lesson stays while no photo is taken, its switch on,
step 6's caption on the slider's layer).
A zh-Hant screenshot of the lesson goes to ``$VITVIZ_SCREENSHOT_ZH`` (the README's, with
``VITVIZ_SCREENSHOT_ZH=docs/screenshot-zh.png python -m pytest tests/test_browser_lesson.py``).
Needs what ``tests/test_browser.py`` needs; its fixtures start the page.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tests.test_browser import engine, page, server, settle  # noqa: F401 - fixtures
from vitviz.ui.lesson.steps import STEPS

try:
    from playwright.sync_api import expect
except ImportError:  # pragma: no cover - the fixtures skip or fail first
    expect = None

STEP_BOTTOM_JS = """() => {
  const m = document.querySelector('.st-key-lesson-main');
  const r = m.getBoundingClientRect();
  const p = m.querySelector('[data-testid=stMarkdownContainer] li,'
    + ' [data-testid=stMarkdownContainer] p');
  return [r.bottom, window.innerHeight, p ? parseFloat(getComputedStyle(p).fontSize) : 0];
}"""


# Every visible text inside the lesson (shadow roots and same-origin frames included) whose
# computed font size is under `least` px: [text, size, tag] each.
SMALL_TEXT_JS = """(least) => {
  const small = [];
  const visit = (root) => {
    const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
    for (let n = walker.nextNode(); n; n = walker.nextNode()) {
      const text = n.textContent.replace(/[\\u200b-\\u200d\\ufeff]/g, '').trim();
      const el = n.parentElement;
      if (!text || !el) continue;
      const style = getComputedStyle(el), box = el.getBoundingClientRect();
      if (style.visibility === 'hidden' || style.display === 'none' || box.width === 0
          || box.height === 0 || el.closest('style,script')) continue;
      const size = parseFloat(style.fontSize);
      if (size < least) small.push([text.slice(0, 40), size, el.tagName]);
    }
    root.querySelectorAll('*').forEach((e) => { if (e.shadowRoot) visit(e.shadowRoot); });
  };
  visit(document.querySelector('.st-key-lesson-main'));
  return small;
}"""

# Where the step's content starts and the lesson ends, against the viewport.
STEP_PLACE_JS = """(step) => {
  const s = document.querySelector('.st-key-lesson-step-' + step).getBoundingClientRect();
  const m = document.querySelector('.st-key-lesson-main').getBoundingClientRect();
  return {top: s.top, bottom: m.bottom, height: window.innerHeight};
}"""


def step_count(tab) -> int:
    return int(nav(tab).get_attribute("data-count"))


def nav(tab):
    root = tab.locator(".st-key-lesson-nav nav.vv-nav")
    expect(root).to_have_attribute("data-ready", "1")
    return root


def at_step(tab, step: int) -> None:
    """Until step ``step`` (1-based) is drawn and the page has settled."""
    expect(tab.locator(f".st-key-lesson-step-{step}")).to_be_visible()
    expect(nav(tab)).to_have_attribute("data-step", str(step - 1))
    settle(tab)


def main_text(tab) -> str:
    return tab.locator(".st-key-lesson-main").inner_text()


def test_lesson_steps_by_buttons_and_keys_carry_the_chosen_patch(page, server):  # noqa: F811
    page.goto(f"{server}/?lesson=1&lang=en")
    at_step(page, 1)
    sidebar = page.locator('[data-testid="stSidebar"]')
    assert sidebar.get_attribute("data-collapsed") == "true"  # the projector gets the width
    bottoms = {}
    bottom, _, font = page.evaluate(STEP_BOTTOM_JS)
    bottoms[1] = bottom
    assert font >= 20
    # → opens step 2; a click on the numbered grid chooses a patch
    page.keyboard.press("ArrowRight")
    at_step(page, 2)
    assert re.search(r"[?&]step=2", page.url)
    picker = page.locator(".st-key-lesson-picker-2 canvas[data-role=picker]")
    box = picker.bounding_box()
    page.mouse.click(box["x"] + 3.5 * box["width"] / 14, box["y"] + 2.5 * box["height"] / 14)
    expect(page.locator(".st-key-lesson-picker-2 .vv-picker")).to_have_attribute("data-patch", "31")
    settle(page)
    assert "Chosen patch: 31 (row 2, column 3)" in main_text(page)
    assert re.search(r"[?&]patch=31", page.url)
    bottoms[2] = page.evaluate(STEP_BOTTOM_JS)[0]
    # the Next button, then keys; the patch stays chosen in every step
    page.locator(".st-key-lesson-nav button[data-role=next]").click()
    at_step(page, 3)
    bottoms[3] = page.evaluate(STEP_BOTTOM_JS)[0]
    page.keyboard.press("ArrowRight")
    at_step(page, 4)
    assert "e: the embedding of patch 31" in main_text(page)
    bottoms[4] = page.evaluate(STEP_BOTTOM_JS)[0]
    page.keyboard.press("ArrowRight")
    at_step(page, 5)
    assert "the cyan row is the chosen patch 31, token 32" in main_text(page)
    bottoms[5] = page.evaluate(STEP_BOTTOM_JS)[0]
    page.locator(".st-key-lesson-nav button[data-go='5']").click()
    at_step(page, 6)
    assert "Where patch 31 looks in layer" in main_text(page)
    bottoms[6] = page.evaluate(STEP_BOTTOM_JS)[0]
    # arrows on the layer slider move the slider, not the lesson
    slider = page.locator(".st-key-lesson_layer input[type=range]")
    before = slider.get_attribute("aria-valuetext")
    slider.focus()
    page.keyboard.press("ArrowRight")
    expect(slider).not_to_have_attribute("aria-valuetext", before)
    settle(page)
    expect(nav(page)).to_have_attribute("data-step", "5")
    page.locator("h2").first.click()  # focus back on the page: the keys move the lesson again
    page.keyboard.press("ArrowLeft")
    at_step(page, 5)
    last = len(STEPS)
    for step in (7, 8, 9, last - 1, last):
        page.locator(f".st-key-lesson-nav button[data-go='{step - 1}']").click()
        at_step(page, step)
        bottoms[step] = page.evaluate(STEP_BOTTOM_JS)[0]
    assert all(b <= 800 for b in bottoms.values()), bottoms  # nothing below the fold
    expect(page.locator(".st-key-lesson-nav button[data-role=next]")).to_be_disabled()
    # a reload opens the same step with the same patch
    page.reload()
    at_step(page, last)
    page.locator(".st-key-lesson-nav button[data-go='3']").click()
    at_step(page, 4)
    assert "patch 31" in main_text(page)


def test_language_switch_and_its_link(page, server, tmp_path):  # noqa: F811
    page.goto(server)
    settle(page)
    expect(page.get_by_text("what does the Vision Transformer look at?")).to_be_visible()
    page.locator('[data-testid="stSidebar"] button', has_text="中文").click()
    expect(page.get_by_text("視覺 Transformer 在看哪裡？")).to_be_visible()
    settle(page)
    assert "lang=zh-Hant" in page.url
    # the canvas speaks the language too
    legend = page.locator(".st-key-rollout .legend")
    expect(legend).to_contain_text("展開值")
    link = page.url + "&lesson=1&step=6"
    # back to English: the choice stays in the link
    page.locator('[data-testid="stSidebar"] button', has_text="English").click()
    expect(page.get_by_text("what does the Vision Transformer look at?")).to_be_visible()
    settle(page)
    assert "lang=en" in page.url
    # the Chinese link opens in Chinese, lesson included
    page.goto(link)
    at_step(page, 6)
    text = main_text(page)
    assert "多頭自注意力" in text and "注意力頭" in text
    assert page.locator(".st-key-lesson-nav button[data-role=next]").inner_text() == "下一步 →"
    page.wait_for_function(
        "() => [...document.querySelectorAll('.st-key-lesson-main img')]"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )
    shot = Path(os.environ.get("VITVIZ_SCREENSHOT_ZH", tmp_path / "screenshot-zh.png"))
    page.screenshot(path=str(shot))
    # every step fits the projector in Chinese too
    bottoms = {}
    for step in range(1, step_count(page) + 1):
        page.locator(f".st-key-lesson-nav button[data-go='{step - 1}']").click()
        at_step(page, step)
        bottoms[step], _, font = page.evaluate(STEP_BOTTOM_JS)
        assert font >= 20
    assert all(b <= 800 for b in bottoms.values()), bottoms


def test_every_step_in_chinese_fits_the_projector_in_type_of_18_px_or_more(page, server):  # noqa: F811
    """中文 at 1280×800, sidebar collapsed: every step the navigation lists (other steps may
    join the lesson) starts above the fold, and no text in the lesson is under 18 px; the
    picker's numbers are drawn at the size its canvas reports (``data-font-px``)."""
    page.goto(f"{server}/?lesson=1&lang=zh-Hant")
    at_step(page, 1)
    count = step_count(page)
    assert count >= 9
    places, small, canvases = {}, {}, {}
    for step in range(1, count + 1):
        if step > 1:
            page.locator(f".st-key-lesson-nav button[data-go='{step - 1}']").click()
        at_step(page, step)
        page.wait_for_function(
            "() => [...document.querySelectorAll('.st-key-lesson-main img')]"
            ".every(i => i.complete && i.naturalWidth > 0)"
        )
        if step == 2:  # the picker has drawn its numbers
            expect(page.locator(".st-key-lesson-picker-2 .vv-picker")).to_have_attribute(
                "data-ready", "1"
            )
        places[step] = page.evaluate(STEP_PLACE_JS, step)
        drawn = page.locator(".st-key-lesson-main canvas[data-font-px]")  # shadow roots too
        canvases[step] = [
            int(drawn.nth(i).get_attribute("data-font-px")) for i in range(drawn.count())
        ]
        small[step] = page.evaluate(SMALL_TEXT_JS, 18)
    assert all(p["top"] < p["height"] - 100 for p in places.values()), places
    assert all(p["bottom"] <= p["height"] for p in places.values()), places
    assert small == {step: [] for step in places}, small
    assert canvases[2] and all(f >= 18 for f in canvases[2]), canvases


def test_the_camera_keeps_the_lesson_its_switch_and_its_layer(server):  # noqa: F811
    """Lesson on, then 相機: the lesson stays (on a sample, with a note to take a photo), its
    switch stays on, step 6's caption names the slider's layer; after the photo the same."""
    from playwright.sync_api import sync_playwright

    from tests.test_browser import ARGS, CHROMIUM, new_page

    fake = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[*ARGS, *fake])
        try:
            tab = new_page(browser, permissions=["camera"])
            errors: list[str] = []
            tab.on("pageerror", lambda e: errors.append(str(e)))
            tab.goto(f"{server}/?lang=zh-Hant&lesson=1&step=6")
            at_step(tab, 6)
            slider = tab.locator(".st-key-lesson_layer input[type=range]")
            slider.focus()
            tab.keyboard.press("ArrowRight")  # a layer of the teacher's own
            settle(tab)
            agree(tab)
            tab.locator('[data-testid="stExpandSidebarButton"]').click()
            sidebar = tab.locator('[data-testid="stSidebar"]')
            sidebar.get_by_text("相機", exact=True).click()
            take = sidebar.locator('[data-testid="stCameraInputButton"]')
            expect(take).to_be_visible()
            settle(tab)
            at_step(tab, 6)  # still the lesson, on a sample, saying why
            expect(tab.locator(".st-key-lesson-main")).to_contain_text("照片不會放進連結")
            expect(tab.locator(".st-key-lesson input[type=checkbox]")).to_be_checked()
            agree(tab)
            expect(take).to_be_enabled()
            tab.wait_for_function(
                "() => { const v = document.querySelector('[data-testid=stSidebar] video');"
                " return v && v.readyState >= 2 && v.videoWidth > 0"
                " && v.videoWidth === v.clientWidth; }"
            )
            take.click()
            settle(tab)
            at_step(tab, 6)  # the photo's lesson: the same step, and the link's caveat
            expect(tab.locator(".st-key-lesson-main")).to_contain_text("用這一課的連結打開時")
            expect(tab.locator(".st-key-lesson input[type=checkbox]")).to_be_checked()
            agree(tab)
            assert tab.locator('[data-testid="stException"]').count() == 0
            assert not errors, errors
        finally:
            browser.close()


def agree(tab) -> None:
    """Step 6's caption names the layer its slider shows."""
    value = tab.locator(".st-key-lesson_layer input[type=range]").input_value()
    expect(tab.locator(".st-key-lesson-main")).to_contain_text(f"在層 {value} 看哪裡")


def test_a_class_walks_the_lesson_on_a_camera_photo(server, tmp_path):  # noqa: F811
    """The teacher's path: 中文, a photo from the (fake) camera, lesson mode, all nine steps."""
    from playwright.sync_api import sync_playwright

    from tests.test_browser import ARGS, CHROMIUM

    fake = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[*ARGS, *fake])
        try:
            walk_on_camera_photo(browser, server)
        finally:
            browser.close()


def walk_on_camera_photo(browser, server) -> None:  # noqa: F811
    """Take a photo with the fake camera in 中文, open the lesson, step through all of it."""
    from tests.test_browser import new_page

    tab = new_page(browser, permissions=["camera"])
    errors: list[str] = []
    tab.on("pageerror", lambda e: errors.append(str(e)))
    tab.goto(f"{server}/?lang=zh-Hant&source=Camera")
    settle(tab)
    sidebar = tab.locator('[data-testid="stSidebar"]')
    take = sidebar.locator('[data-testid="stCameraInputButton"]')
    expect(take).to_be_enabled()
    # the fake camera's stream plays, at the size the widget asks for: the widget restarts the
    # stream once it knows its width, so a photo taken before that has another size
    frame_size = tab.wait_for_function(
        "() => { const v = document.querySelector('[data-testid=stSidebar] video');"
        " return v && v.readyState >= 2 && v.videoWidth > 0 && v.videoWidth === v.clientWidth"
        " ? [v.videoWidth, v.videoHeight] : null; }"
    ).json_value()
    take.click()
    settle(tab)
    # the photo is the image now: the page names it and explains it
    expect(tab.get_by_text("模型看到的影像")).to_be_visible()
    tab.locator(".st-key-lesson input[type=checkbox]").check(force=True)
    at_step(tab, 1)
    size = re.search(r"你的圖片是 (\d+)×(\d+) 像素", main_text(tab))
    assert size, main_text(tab)
    shown = [int(size.group(1)), int(size.group(2))]
    assert shown == frame_size and shown != [224, 224]  # the camera's frame, not the model's input
    for step in range(2, step_count(tab) + 1):
        tab.keyboard.press("ArrowRight")
        at_step(tab, step)
        assert tab.locator('[data-testid="stException"]').count() == 0
    assert not errors, errors
