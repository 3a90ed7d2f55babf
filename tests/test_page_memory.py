"""The attacks of issue 21 on a real page (``streamlit run app.py``, driven by Chromium):
links that ask for a model whose explanation is huge, several visitors at once, and a visitor
cycling Compare's second model. The page must stay alive, say what happens (waiting, refused)
and keep its resident memory — the kernel's peak mark ``VmHWM`` of the page process — under
its budget (``VITVIZ_PAGE_MEMORY_MB``).

Bounded in time (every wait has a limit), no speed asserted. Needs Debian's chromium and the
playwright package, like tests/test_browser.py (skips outside CI when they are missing).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import page_process

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REQUIRED = os.environ.get("VITVIZ_REQUIRE_BROWSER") == "1"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-dev-shm-usage"]
BIG = "model=__timm__&timm_name=vit_large_patch14_dinov2&random_weights=true"
MB = 2**20

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None


def _need_browser() -> None:
    why = None
    if sync_playwright is None:
        why = "the playwright package is not installed"
    elif CHROMIUM is None:
        why = "no system Chromium (apt-get install chromium)"
    if why and REQUIRED:
        pytest.fail(f"browser test required but {why}")
    if why:
        pytest.skip(why)


def status(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (peak) of a process, in bytes."""
    text = Path(f"/proc/{pid}/status").read_text()
    return {k: int(re.search(k + r":\s+(\d+)", text).group(1)) * 1024 for k in ("VmRSS", "VmHWM")}


@contextlib.contextmanager
def page_server(memory_mb: int) -> Iterator[tuple[str, subprocess.Popen]]:
    """``streamlit run app.py`` on a free loopback port with this memory budget."""
    env = {
        "VITVIZ_PAGE_MEMORY_MB": str(memory_mb),
        "VITVIZ_MEMORY_WAIT_S": "900",  # on a loaded machine the queue may be long
    }
    with page_process(env, name="page-memory") as (url, proc):
        yield url, proc
        assert proc.poll() is None, "the page process died"
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=30) as r:
            assert r.status == 200


def text_of(page) -> str:
    return page.evaluate("() => document.body ? document.body.innerText : ''")


def settled(page) -> bool:
    """No script run in flight and the page has drawn something of its own."""
    return bool(
        page.evaluate(
            "() => { const a = document.querySelector('[data-testid=\"stApp\"]');"
            " return !!a && a.getAttribute('data-test-script-state') === 'notRunning'"
            " && !!document.querySelector('[data-testid=\"stSidebar\"]'); }"
        )
    )


def watch(pages, pid: int, done, limit: float = 900.0) -> dict[str, object]:
    """Poll every page until ``done(text)`` holds for each (settled), sampling the page
    process's memory; what each page ever said is kept."""
    seen = ["" for _ in pages]
    finished = [False for _ in pages]
    peak = 0
    deadline = time.time() + limit
    while time.time() < deadline and not all(finished):
        peak = max(peak, status(pid)["VmRSS"])
        for i, page in enumerate(pages):
            if finished[i]:
                continue
            txt = text_of(page)
            if "Waiting for memory" in txt and "Waiting for memory" not in seen[i]:
                seen[i] += "\n" + txt
            if settled(page) and done(txt):
                finished[i] = True
                seen[i] += "\n" + txt
        time.sleep(0.5)
    assert all(finished), f"pages not done in {limit:.0f} s: {[s[-400:] for s in seen]}"
    return {"seen": seen, "rss_peak": peak, "hwm": status(pid)["VmHWM"]}


def test_one_visitor_opening_the_vit_l_link_is_refused_before_any_work():
    """A 3 GB page: the model (1.2 GB) fits, its 518 px explanation (≈ 3.6 GB) never can."""
    _need_browser()
    budget = 3000
    with page_server(budget) as (url, proc), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(f"{url}/?{BIG}&sample=coffee.png", wait_until="commit")
        out = watch([page], proc.pid, lambda t: "would need" in t or "could not" in t.lower())
        text = out["seen"][0]
        assert "This explanation would need" in text
        assert re.search(r"would need \d+(\.\d)? GB", text), text[-600:]
        assert "224 px" in text and "command line" in text and "vitviz server" in text
        assert page.locator('[data-testid="stException"]').count() == 0
        browser.close()
        assert out["hwm"] < budget * MB, out["hwm"] / MB


def test_three_visitors_opening_the_vit_l_link_wait_their_turn_within_the_budget():
    """Three visitors, three samples, at once: one explanation fits the budget beside the
    model, so they are explained one after another; the others see the queue."""
    _need_browser()
    budget = 6500
    samples = ("coffee.png", "chelsea.png", "astronaut.png")
    with page_server(budget) as (url, proc), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pages = []
        for sample in samples:
            page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
            page.goto(f"{url}/?{BIG}&sample={sample}", wait_until="commit")
            pages.append(page)

        def done(text: str) -> bool:
            return "What the model sees" in text or "would need" in text

        out = watch(pages, proc.pid, done)
        for page, text in zip(pages, out["seen"], strict=True):
            assert "What the model sees (518×518 px)" in text, text[-600:]
            assert page.locator('[data-testid="stException"]').count() == 0
        assert any("Waiting for memory" in s for s in out["seen"])  # the queue was shown
        browser.close()
        assert out["hwm"] < budget * MB, out["hwm"] / MB


def test_cycling_compares_second_model_stays_under_the_budget():
    """Seven second models in Compare by link, one after another (random weights)."""
    _need_browser()
    budget = 2500
    keys = ("vit-b16", "deit-b16-distilled", "vit-s16", "deit-s16", "dino-s16", "clip-b32")
    keys += ("dinov2-s14-reg",)
    with page_server(budget) as (url, proc), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        shown = []
        for key in keys:
            link = f"{url}/?view=Compare&cmp_mode=models&cmp_model={key}&cmp_random=1"
            page.goto(link, wait_until="commit")
            out = watch(
                [page], proc.pid, lambda t: "has random weights" in t or "could not be loaded" in t
            )
            shown.append(out["seen"][0])
            assert out["hwm"] < budget * MB, (key, out["hwm"] / MB)
        assert page.locator('[data-testid="stException"]').count() == 0
        browser.close()
    assert sum("could not be loaded" not in s for s in shown) >= 6, [s[-300:] for s in shown]
