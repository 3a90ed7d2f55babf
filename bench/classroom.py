"""A measured classroom: N students on one page at once, each walking the lesson.

    python bench/classroom.py --students 16 --model demo --json
    python bench/classroom.py --students 8 --browsers 2 --model vit-b16 --start-server --json

Starts ``streamlit run app.py`` on a free loopback port (offline; the demo model, or a curated
model or timm name with random weights, chosen by the page's own URL parameters), optionally
with a vitviz server behind it (``--server URL`` for a running one, ``--start-server`` to start
``python -m vitviz serve`` with the same model and stop it, Ray's processes included, at the
end), and lets N students start at the same moment (a barrier), each on its own sample image
(``--same-image``: the whole class on one photo). Every student does the same walk:

    open the page → lesson mode on → → to step 2 → click a patch → → steps 3 … 9
    → lesson mode off → the Heads view → the Rollout view

Two kinds of student:

* **browser** (``--browsers K``, default ``min(N, 4)``): one Chromium (Debian's, through the
  ``playwright`` package's async API), one context per student (its own Streamlit session),
  all driven concurrently. Each action is timed from the input (a click, a key) to the page
  showing the new state (a step's container, the nav's ``data-step``, the picker's
  ``data-patch``, a view's canvas ``data-state``) and Streamlit's script state back to
  ``notRunning``.
* **protocol** (the other N − K): speaks Streamlit's own websocket protocol
  (``/_stcore/stream``, ``BackMsg``/``ForwardMsg`` from ``streamlit.proto``) as the browser
  does: a ``rerun_script`` carrying the page's current query string, its page hash and the
  widget state a click or key produces (the lesson switch's bool, the view buttons' string
  array, the nav's and picker's component trigger ``[{"event", "value"}]``), within the
  fragment that holds the widget. Each action is timed from sending to the run chain's
  ``script_finished`` (fragment or full run; ``st.rerun`` continues the chain) and the
  pictures it drew (``/media/…``) fetched, each once per student as a browser's cache would.
  The server is measured without N browsers; nothing is rendered.

Errors: an action that timed out (``--action-timeout``, 300 s; the student then stops), an
exception or ``st.error`` on the page after it (browser: on screen; protocol: in the run's
deltas), a script that failed, a state that did not follow (wrong step or patch). Waits: an
action during which the page showed text matching ``--wait-text`` (a case-insensitive regular
expression; by default the start of the page's own "Waiting for memory: …" notice, read from
the English catalog).

Measured on the page process (and its children): RSS sampled every 100 ms (peak over its whole
life and over the class), ``VmHWM`` from ``/proc``, CPU seconds during the class; the same for
a started server's process tree and for the clients (this process, Playwright, Chromium).
``--memory-mb`` sets the page's ``VITVIZ_PAGE_MEMORY_MB`` budget. Before the class a teacher
opens the page once (the model loads; ``--cold`` skips it) on an image no student uses.

Prints one JSON object (``--json``: on one line): per action kind ``count``, ``errors``,
``waits``, ``p50_ms``, ``p95_ms``, ``max_ms`` (overall and per student kind), the page's memory
and CPU, and the issue's target (p95 ≤ 2 s per action, 0 errors, RSS ≤ budget + 300 MB).
Everything stays on 127.0.0.1; the whole run stops by itself (``--deadline``).
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.Element_pb2 import Element
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.proto.WidgetStates_pb2 import WidgetState

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from vitviz.inputs.assets import ASSETS  # noqa: E402  (a light module: no page, no model)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-dev-shm-usage"]
MB = 2**20
CORES = os.cpu_count() or 1
KINDS = ("open", "lesson_on", "lesson_step", "patch_click", "lesson_off", "view_switch")
TARGET_P95_MS = 2000.0
WARMUP_TIMEOUT = 600.0  # the teacher's visit loads the model
CONTROL_WAIT = 60.0  # for a control to be on a settled page (a browser component mounting)
TARGET_RSS_SLACK_MB = 300
# Streamlit's prefix of component trigger widgets (``_make_trigger_id`` in
# streamlit/components/v2/bidi_component/main.py and the frontend's twin)
TRIGGER_PREFIX = "$$STREAMLIT_INTERNAL_KEY_"
# ScriptFinishedStatus that end a run chain (FINISHED_EARLY_FOR_RERUN = 2 does not: another
# run of the same chain follows, e.g. after st.rerun())
CHAIN_DONE = {
    ForwardMsg.FINISHED_SUCCESSFULLY,
    ForwardMsg.FINISHED_WITH_COMPILE_ERROR,
    ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY,
}
TEXT_FIELDS = ("body", "text", "label")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


# --------------------------------------------------------------------------------------------
# The walk


@dataclass(frozen=True)
class Action:
    """One thing a student does: its kind and what it targets (a step, a view)."""

    kind: str
    arg: int | str | None = None

    @property
    def name(self) -> str:
        """``lesson_step:3``, ``view_switch:Heads``, ``open``."""
        return self.kind if self.arg is None else f"{self.kind}:{self.arg}"


def walk() -> list[Action]:
    """Open, lesson on, → to step 2, a patch click, → to step 9, lesson off, Heads, Rollout."""
    steps = [Action("lesson_step", k) for k in range(3, 10)]
    return [
        Action("open"),
        Action("lesson_on"),
        Action("lesson_step", 2),
        Action("patch_click"),
        *steps,
        Action("lesson_off"),
        Action("view_switch", "Heads"),
        Action("view_switch", "Rollout"),
    ]


VIEW_CANVAS = {"Heads": "heads-canvas", "Rollout": "rollout"}  # the view's canvas key


@dataclass
class Record:
    """One action's outcome."""

    student: int
    student_kind: str
    action: str
    kind: str
    ms: float
    errors: list[str] = field(default_factory=list)
    waited: str = ""  # the wait notice seen during the action ("" when none)
    timed: bool = True  # False: the walk could not go on (no control to use), nothing timed


@dataclass
class Student:
    """What one student did (``aborted``: why it stopped before the end of the walk)."""

    index: int
    kind: str
    sample: str | None
    records: list[Record] = field(default_factory=list)
    aborted: str | None = None
    skipped: int = 0


def patch_target(index: int, grid: tuple[int, int], current: int) -> int:
    """The patch student ``index`` clicks on a ``grid`` (rows, columns): spread over the image,
    never the one already chosen."""
    rows, cols = grid
    row = (1 + 3 * index) % rows
    col = (2 + 5 * index) % cols
    patch = row * cols + col
    return patch if patch != current else (patch + 1) % (rows * cols)


def click_fraction(index: int) -> tuple[float, float]:
    """Where student ``index``'s browser clicks the picker, as fractions of its size (never
    the middle row: the page's default patch is the centre one)."""
    return 0.1 + 0.2 * (index % 5), (0.15, 0.3, 0.7, 0.85)[(index // 5) % 4]


# --------------------------------------------------------------------------------------------
# Streamlit's protocol (the protocol student), kept small: what the page draws, by user key


def user_key(element_id: str) -> str | None:
    """The ``key=`` an element was given, from its id ``$$ID-<hash>-<key>``."""
    if not element_id.startswith("$$ID-"):
        return None
    parts = element_id.split("-", 2)
    return parts[2] if len(parts) == 3 and parts[2] != "None" else None


def element_text(element: Element) -> str:
    """The text an element shows (markdown, alert, text, caption, spinner, toast, progress …)."""
    kind = element.WhichOneof("type")
    if kind is None or kind in ("bidi_component", "imgs", "html"):
        return ""
    sub = getattr(element, kind)
    names = sub.DESCRIPTOR.fields_by_name
    return " ".join(
        getattr(sub, f) for f in TEXT_FIELDS if f in names and isinstance(getattr(sub, f), str)
    )


def component_data(element: Element) -> dict[str, Any]:
    """A browser component's ``data`` (its JSON), or {}."""
    if element.WhichOneof("type") != "bidi_component":
        return {}
    comp = element.bidi_component
    kind = comp.WhichOneof("data")
    text = comp.json if kind == "json" else comp.mixed.json if kind == "mixed" else ""
    try:
        data = json.loads(text) if text else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


@dataclass
class Drawn:
    """An element the page drew: its id, proto kind, fragment and the element itself."""

    id: str
    kind: str
    fragment: str
    element: Element


class StreamState:
    """What a session's ForwardMsgs said: the elements by key, the URL's query string, the page
    hash, and for the run chain in flight the keys drawn, the errors and any wait notice."""

    def __init__(self, wait_text: re.Pattern[str]) -> None:
        self.wait_text = wait_text
        self.elements: dict[str, Drawn] = {}
        self.query_string = ""
        self.page_script_hash = ""
        self.drawn: set[str] = set()
        self.errors: list[str] = []
        self.waited = ""
        self.finished: int | None = None
        self.media: list[str] = []  # the pictures this chain drew (the browser fetches them)

    def start(self) -> None:
        """Forget the last run chain's findings (before sending the next action)."""
        self.drawn = set()
        self.errors = []
        self.waited = ""
        self.finished = None
        self.media = []

    def feed(self, msg: ForwardMsg) -> bool:
        """Take one ForwardMsg; True when it ends the run chain in flight."""
        kind = msg.WhichOneof("type")
        if kind == "delta":
            self._delta(msg)
        elif kind == "new_session":
            self.page_script_hash = msg.new_session.page_script_hash or self.page_script_hash
        elif kind == "page_info_changed":
            self.query_string = msg.page_info_changed.query_string
        elif kind == "session_event":
            event = msg.session_event
            if event.WhichOneof("type") == "script_compilation_exception":
                exc = event.script_compilation_exception
                self.errors.append(f"compile error: {exc.type}: {exc.message}"[:200])
        elif kind == "script_finished":
            if msg.script_finished == ForwardMsg.FINISHED_WITH_COMPILE_ERROR:
                self.errors.append("the script failed to compile")
            if msg.script_finished in CHAIN_DONE:
                self.finished = msg.script_finished
                return True
        return False

    def _delta(self, msg: ForwardMsg) -> None:
        delta = msg.delta
        which = delta.WhichOneof("type")
        if which == "new_element":
            self._element(delta.new_element, delta.fragment_id)
        elif which == "new_transient":
            for element in delta.new_transient.elements:
                self._element(element, delta.fragment_id)
        elif which == "add_block":
            block_id = getattr(delta.add_block, "id", "")
            key = user_key(block_id) if block_id else None
            if key:
                self.drawn.add(key)

    def _element(self, element: Element, fragment: str) -> None:
        kind = element.WhichOneof("type")
        if kind is None:
            return
        if kind == "imgs":
            self.media += [
                i.url for i in element.imgs.imgs if i.url and not i.url.startswith("data:")
            ]
        if kind == "exception":
            exc = element.exception
            self.errors.append(f"exception: {exc.type}: {exc.message}"[:200])
        elif kind == "alert" and element.alert.format == element.alert.ERROR:
            self.errors.append(f"st.error: {element.alert.body}"[:200])
        text = element_text(element)
        if text and self.wait_text.search(text):
            self.waited = text[:200]
        sub = getattr(element, kind)
        element_id = getattr(sub, "id", "") if "id" in sub.DESCRIPTOR.fields_by_name else ""
        key = user_key(element_id) if element_id else None
        if key:
            self.elements[key] = Drawn(element_id, kind, fragment, element)
            self.drawn.add(key)

    def find(self, key: str, kind: str | None = None) -> Drawn:
        """The element drawn with ``key=key`` (of proto kind ``kind``); LookupError if none."""
        drawn = self.elements.get(key)
        if drawn is None:
            raise LookupError(f"no element with key {key!r} on the page")
        if kind is not None and drawn.kind != kind:
            raise LookupError(f"{key!r} is a {drawn.kind}, not a {kind}")
        return drawn


def rerun(
    state: StreamState,
    url: str,
    widget: WidgetState | None = None,
    fragment: str = "",
    query_string: str | None = None,
) -> BackMsg:
    """The ``rerun_script`` BackMsg a browser sends: the page's current query string and page
    hash, the changed widget's state, and the fragment that holds it ("" for a full run)."""
    msg = BackMsg()
    client = msg.rerun_script
    qs = state.query_string if query_string is None else query_string
    client.query_string = qs
    client.page_script_hash = state.page_script_hash
    client.fragment_id = fragment
    client.context_info.locale = "en-US"
    client.context_info.timezone = "UTC"
    client.context_info.timezone_offset = 0
    client.context_info.url = f"{url}/" + (f"?{qs}" if qs else "")
    client.context_info.is_embedded = False
    client.context_info.color_scheme = "light"
    if widget is not None:
        client.widget_states.widgets.append(widget)
    return msg


def bool_state(element_id: str, value: bool) -> WidgetState:
    """A checkbox or toggle's new value."""
    return WidgetState(id=element_id, bool_value=value)


def choice_state(drawn: Drawn, option: str) -> WidgetState:
    """A button group's (``st.segmented_control``) choice: its option's label on the wire."""
    options = [o.content for o in drawn.element.button_group.options]
    if option not in options:
        raise LookupError(f"no option {option!r} in {options}")
    state = WidgetState(id=drawn.id)
    state.string_array_value.data.append(option)
    return state


def trigger_state(component_id: str, event: str, value: Any) -> WidgetState:
    """A browser component's ``setTriggerValue(event, value)``: its aggregator widget."""
    return WidgetState(
        id=f"{TRIGGER_PREFIX}{component_id}__events",
        json_trigger_value=json.dumps([{"event": event, "value": value}]),
    )


class ProtocolStudent:
    """A student that speaks Streamlit's websocket protocol (no browser, nothing rendered)."""

    def __init__(
        self,
        record: Student,
        url: str,
        query: str,
        wait_text: re.Pattern[str],
        timeout: float,
    ) -> None:
        self.student = record
        self.url = url
        self.query = query
        self.timeout = timeout
        self.state = StreamState(wait_text)
        self.ws: Any = None
        self._done = asyncio.Event()
        self._reader: asyncio.Task | None = None
        self._closed: str | None = None
        self._fetched: set[str] = set()

    async def _read(self) -> None:
        try:
            async for data in self.ws:
                if isinstance(data, str):
                    continue
                msg = ForwardMsg()
                msg.ParseFromString(data)
                if self.state.feed(msg):
                    self._done.set()
        except Exception as err:  # the connection went away: the waiting action fails
            self._closed = f"websocket: {type(err).__name__}: {err}"[:200]
        else:
            self._closed = "websocket closed by the page"
        self._done.set()

    async def send_and_wait(self, msg: BackMsg) -> None:
        """Send ``msg``, wait for the run chain it starts to finish, and fetch the pictures it
        drew that this student has not fetched yet (as a browser with a cache would); then
        ``state`` holds what that chain drew, its errors and any wait notice."""
        self.state.start()
        self._done.clear()
        await self.ws.send(msg.SerializeToString())
        await asyncio.wait_for(self._done.wait(), self.timeout)
        if self.state.finished is None:
            raise ConnectionError(self._closed or "no answer")
        urls = [u for u in dict.fromkeys(self.state.media) if u not in self._fetched]
        self._fetched.update(urls)
        for problem in await asyncio.gather(*(self._fetch(u) for u in urls)):
            if problem:
                self.state.errors.append(problem)

    async def _fetch(self, url: str) -> str | None:
        """GET a picture the page drew (``/media/…``); what went wrong, or None."""
        full = urllib.parse.urljoin(self.url + "/", url)
        if urllib.parse.urlsplit(full).hostname not in LOOPBACK:
            return None  # never off this machine

        def get() -> str | None:
            try:
                with urllib.request.urlopen(full, timeout=self.timeout) as r:
                    r.read()
                    return None if r.status == 200 else f"media {r.status}: {url}"[:200]
            except OSError as err:
                return f"media: {err}: {url}"[:200]

        return await asyncio.to_thread(get)

    async def open(self) -> None:
        """Connect (a new session) and run the page with the link's query string."""
        import websockets

        host = self.url.split("://", 1)[1]
        self.ws = await websockets.connect(
            f"ws://{host}/_stcore/stream",
            subprotocols=["streamlit"],
            max_size=None,
            ping_interval=None,
            open_timeout=self.timeout,
        )
        self._reader = asyncio.create_task(self._read())
        await self.send_and_wait(rerun(self.state, self.url, query_string=self.query))
        if self.state.query_string == "":
            self.state.query_string = self.query

    async def act(self, action: Action) -> list[str]:
        """Do ``action``; the ways the page did not follow (empty when it did)."""
        s = self.state
        if action.kind == "open":
            await self.open()
            return [] if {"view", "lesson-nav"} & s.drawn else ["the page drew no view"]
        if action.kind in ("lesson_on", "lesson_off"):
            toggle = s.find("lesson", "checkbox")
            on = action.kind == "lesson_on"
            await self.send_and_wait(rerun(s, self.url, bool_state(toggle.id, on), toggle.fragment))
            if on:
                return self._check_nav(0)
            return [] if "view" in s.drawn else ["lesson off: the views did not come back"]
        if action.kind == "lesson_step":
            nav = s.find("lesson-nav", "bidi_component")
            step = int(action.arg or 1) - 1
            await self.send_and_wait(
                rerun(s, self.url, trigger_state(nav.id, "go", step), nav.fragment)
            )
            return self._check_nav(step)
        if action.kind == "patch_click":
            picker = s.find("lesson-picker-2", "bidi_component")
            data = component_data(picker.element)
            grid = tuple(data.get("grid") or (14, 14))
            want = patch_target(
                self.student.index, (int(grid[0]), int(grid[1])), int(data.get("patch", -1))
            )
            await self.send_and_wait(
                rerun(s, self.url, trigger_state(picker.id, "patch", want), picker.fragment)
            )
            got = component_data(s.elements["lesson-picker-2"].element).get("patch")
            if "lesson-picker-2" not in s.drawn or got != want:
                return [f"patch click: the picker shows {got}, not {want}"]
            return []
        if action.kind == "view_switch":
            picker = s.find("view", "button_group")
            name = str(action.arg)
            await self.send_and_wait(
                rerun(s, self.url, choice_state(picker, name), picker.fragment)
            )
            canvas = VIEW_CANVAS[name]
            return [] if canvas in s.drawn else [f"view {name}: its canvas was not drawn"]
        raise ValueError(action.kind)

    def _check_nav(self, step: int) -> list[str]:
        if "lesson-nav" not in self.state.drawn:
            return [f"step {step + 1}: the lesson's navigation was not drawn"]
        shown = component_data(self.state.elements["lesson-nav"].element).get("step")
        return [] if shown == step else [f"step {step + 1}: the page shows step {shown}"]

    async def findings(self) -> tuple[list[str], str]:
        """The errors and the wait notice seen in the last action's run chain."""
        return list(self.state.errors), self.state.waited

    async def close(self) -> None:
        """Leave the page (the session ends)."""
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 10)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader


# --------------------------------------------------------------------------------------------
# The browser student


SETTLED_JS = (
    "() => { const a = document.querySelector('[data-testid=\"stApp\"]');"
    " return !!a && a.getAttribute('data-test-script-state') === 'notRunning'; }"
)
# what a click at (x, y) landed on, for a click the picker did not take
HIT_JS = """([x, y]) => {
  let e = document.elementFromPoint(x, y);
  for (let inner = e && e.shadowRoot && e.shadowRoot.elementFromPoint(x, y);
       inner && inner !== e; inner = e.shadowRoot && e.shadowRoot.elementFromPoint(x, y)) e = inner;
  if (!e) return `nothing (viewport ${innerWidth}x${innerHeight}, scroll ${scrollY})`;
  let key = null;  // the nearest keyed block, across shadow roots
  for (let n = e; n && !key; n = n.parentElement || (n.getRootNode().host ?? null))
    key = [...(n.classList || [])].find(k => k.startsWith('st-key-')) ?? null;
  const role = e.getAttribute('data-role');
  const what = e.tagName.toLowerCase() + (role ? `[${role}]` : '');
  return `${what} in ${key ?? 'no keyed block'} (scroll ${scrollY})`;
}"""
PROBLEMS = ("stException", "stAlertContentError")  # an exception, an st.error
ERRORS_JS = """() => [...document.querySelectorAll(
    '[data-testid="stException"], [data-testid="stAlertContentError"]')]
  .filter(e => e.getBoundingClientRect().height > 0)
  .map(e => e.innerText.slice(0, 200))"""
# counts the nodes added (or texts changed) that match the wait notice, for the whole visit
WAIT_WATCH_JS = """(() => {
  window.__vvWaited = 0; window.__vvWaitText = "";
  const re = new RegExp(%s, "i");
  const seen = (t) => typeof t === "string" && re.test(t);
  new MutationObserver((records) => {
    for (const r of records) {
      const texts = [r.type === "characterData" ? r.target.data : null,
                     ...[...r.addedNodes].map((n) => n.textContent)];
      const hit = texts.find(seen);
      if (hit) {
        const at = re.exec(hit).index;
        window.__vvWaited++;
        window.__vvWaitText = hit.slice(Math.max(0, at - 20), at + 180);
        return;
      }
    }
  }).observe(document, {childList: true, subtree: true, characterData: true});
})();"""


def nav_at(step: int) -> str:
    """The lesson's navigation showing ``step`` (from 1), ready for keys."""
    return f'.st-key-lesson-nav nav.vv-nav[data-ready="1"][data-step="{step - 1}"]'


class BrowserStudent:
    """A student in a Chromium context of its own (its own Streamlit session)."""

    def __init__(self, record: Student, context: Any, url: str, timeout: float) -> None:
        self.student = record
        self.context = context
        self.url = url
        self.timeout = timeout
        self.page: Any = None
        self.js_errors: list[str] = []
        self._waited_before = 0

    async def prepare(self, wait_text: str) -> None:
        """A blank tab, watching for the wait notice and script errors."""
        await self.context.add_init_script(WAIT_WATCH_JS % json.dumps(wait_text))
        self.page = await self.context.new_page()
        self.page.set_default_timeout(self.timeout * 1000)
        self.page.on("pageerror", lambda e: self.js_errors.append(str(e)[:200]))

    async def settle(self) -> None:
        """Until no script run is in flight (Streamlit's own script state)."""
        await self.page.wait_for_function(SETTLED_JS, timeout=self.timeout * 1000)

    async def _until(self, *selectors: str) -> None:
        """Until each of ``selectors`` is on screen in turn, or a new exception or ``st.error``
        is (the page may never get there: :meth:`findings` reports it), then until the page has
        settled."""
        fresh = ", ".join(f'[data-testid="{p}"]:not([data-vv-seen])' for p in PROBLEMS)
        for selector in selectors:
            shown = await self.page.wait_for_selector(
                f"{selector}, {fresh}", state="visible", timeout=self.timeout * 1000
            )
            if shown is not None and await shown.evaluate(
                "(e, ids) => ids.includes(e.getAttribute('data-testid'))", list(PROBLEMS)
            ):
                break
        await self.settle()

    async def _before(self) -> None:
        """Before an input: the exceptions and errors on screen now are old (not this
        action's)."""
        await self.page.evaluate(
            "(ids) => ids.forEach(id => document.querySelectorAll(`[data-testid=${id}]`)"
            ".forEach(e => e.setAttribute('data-vv-seen', '1')))",
            list(PROBLEMS),
        )

    async def _control(self, selector: str, what: str, **kwargs: Any) -> Any:
        """The control to use, on the settled page; LookupError (the student stops) when it
        does not come within :data:`CONTROL_WAIT` s: the page is not what the walk needs."""
        control = self.page.locator(selector, **kwargs).first
        try:
            await control.wait_for(state="attached", timeout=min(self.timeout, CONTROL_WAIT) * 1000)
        except Exception:
            raise LookupError(f"no {what} on the page") from None
        return control

    async def act(self, action: Action, clock: Callable[[], None]) -> list[str]:
        """Do ``action``; ``clock()`` is called at the input (the time counts from there)."""
        page = self.page
        if action.kind == "open":
            clock()
            await page.goto(self.url, timeout=self.timeout * 1000)
            await self._until("[class*='st-key-view-'] [data-state], .st-key-lesson-nav nav")
        elif action.kind == "lesson_on":
            toggle = await self._control(".st-key-lesson input[type=checkbox]", "lesson switch")
            await self._before()
            clock()
            await toggle.check(force=True)
            await self._until(".st-key-lesson-step-1", nav_at(1))
        elif action.kind == "lesson_off":
            toggle = await self._control(".st-key-lesson input[type=checkbox]", "lesson switch")
            await self._before()
            clock()
            await toggle.uncheck(force=True)
            await self._until("[class*='st-key-view-'] [data-state]")
        elif action.kind == "lesson_step":
            step = int(action.arg or 1)
            await self._control(nav_at(step - 1), f"lesson navigation at step {step - 1}")
            # the keys move the lesson only when no field has the focus (nav.js)
            await page.evaluate("() => document.activeElement && document.activeElement.blur()")
            await self._before()
            clock()
            await page.keyboard.press("ArrowRight")
            await self._until(f".st-key-lesson-step-{step}", nav_at(step))
        elif action.kind == "patch_click":
            picker = await self._control(
                ".st-key-lesson-picker-2 canvas[data-role=picker]", "patch picker"
            )
            root = page.locator(".st-key-lesson-picker-2 .vv-picker")
            box = await picker.bounding_box()
            if box is None:
                return ["patch click: no picker on screen"]
            before = await root.get_attribute("data-patch")
            fx, fy = click_fraction(self.student.index)
            await self._before()
            clock()
            x, y = box["x"] + fx * box["width"], box["y"] + fy * box["height"]
            await page.mouse.click(x, y)
            taken = page.locator(".st-key-lesson-picker-2 .vv-picker[data-pending]")
            with contextlib.suppress(Exception):  # the picker marks a click at once
                await taken.wait_for(state="attached", timeout=10_000)
            want = await root.get_attribute("data-pending")
            if want is None or want == before:
                hit = await page.evaluate(HIT_JS, [x, y])
                return [f"patch click: the picker took no click ({before} → {want}; hit {hit})"]
            await self._until(f'.st-key-lesson-picker-2 .vv-picker[data-patch="{want}"]')
        elif action.kind == "view_switch":
            name = str(action.arg)
            button = await self._control(
                '[data-testid="stButtonGroup"] button', f"{name} button", has_text=name
            )
            await button.scroll_into_view_if_needed()
            await self._before()
            clock()
            await button.click()
            await self._until(f".st-key-{VIEW_CANVAS[name]} [data-state]")
        else:
            raise ValueError(action.kind)
        return []

    async def findings(self) -> tuple[list[str], str]:
        """Errors on screen after the action, and the wait notice if one appeared during it."""
        shown = dict.fromkeys(await self.page.evaluate(ERRORS_JS))  # nested ones once
        errors = [f"on screen: {e}" for e in shown]
        waited_now = int(await self.page.evaluate("() => window.__vvWaited || 0"))
        waited = waited_now > self._waited_before
        self._waited_before = waited_now
        text = await self.page.evaluate("() => window.__vvWaitText") if waited else ""
        return errors, text or ""

    async def close(self) -> None:
        """Close the tab and its context (the session ends)."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.context.close(), 30)


async def perform(
    student: ProtocolStudent | BrowserStudent,
    actions: list[Action],
    start: asyncio.Event,
    timeout: float,
) -> None:
    """Wait for the class to start, then do the walk, timing each action; stop at the first
    action that times out or loses the page."""
    record = student.student
    await start.wait()
    for i, action in enumerate(actions):
        t0 = [time.perf_counter()]

        def clock(t0: list[float] = t0) -> None:
            t0[0] = time.perf_counter()

        try:
            if isinstance(student, BrowserStudent):
                problems = await asyncio.wait_for(student.act(action, clock), timeout + 5)
            else:
                problems = await asyncio.wait_for(student.act(action), timeout + 5)
            ms = (time.perf_counter() - t0[0]) * 1000
            errors, waited = await asyncio.wait_for(student.findings(), timeout)
        except Exception as err:  # timed out or lost: the rest of the walk cannot follow
            ms = (time.perf_counter() - t0[0]) * 1000
            why = str(err).splitlines()[0] if str(err) else f"no answer within {timeout:g} s"
            text = f"{type(err).__name__}: {why}"[:200]
            # a timeout took its time; a missing control (LookupError) means nothing was done
            timed = not isinstance(err, LookupError)
            record.records.append(
                Record(record.index, record.kind, action.name, action.kind, ms, [text], "", timed)
            )
            record.aborted = f"{action.name}: {text}"
            record.skipped = len(actions) - i - 1
            return
        record.records.append(
            Record(
                record.index,
                record.kind,
                action.name,
                action.kind,
                ms,
                [*problems, *errors],
                waited,
            )
        )


# --------------------------------------------------------------------------------------------
# Processes: the page, the server, their memory and CPU


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float) -> bool:
    """Until ``url`` answers 200 (False when ``proc`` died or ``timeout`` passed)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(0.3)
    return False


PINNED: list[str] = []  # ["taskset", "-c", "0"] with --page-cores 1: the page on fewer cores


def _launch(
    cmd: list[str], env: dict[str, str], log: Path, health: str, wait_s: float, what: str
) -> tuple[subprocess.Popen, str]:
    """Start ``cmd`` (its port is the last ``--port``/``--server.port`` value) in a process
    group of its own and wait for ``health`` to answer; stopped and RuntimeError if not."""
    port = cmd[max(i for i, c in enumerate(cmd) if c in ("--port", "--server.port")) + 1]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*PINNED, *cmd], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    if not wait_http(f"{url}{health}", proc, wait_s):
        stop_tree(proc, {}, signal.SIGINT, 30)
        raise RuntimeError(f"{what} did not start (log: {log})")
    return proc, url


def start_page(env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    """``streamlit run app.py`` on a free loopback port (no file watcher: others edit the
    code meanwhile), in a process group of its own."""
    cmd = [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py")]
    cmd += ["--server.address", "127.0.0.1", "--server.port", str(free_port())]
    cmd += ["--server.headless", "true", "--browser.gatherUsageStats", "false"]
    cmd += ["--server.fileWatcherType", "none"]
    return _launch(cmd, env, log, "/_stcore/health", 180, "the page")


def start_server(model: str, env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    """``python -m vitviz serve`` with ``model`` (random weights unless the demo model) on a
    free loopback port, in a process group of its own."""
    cmd = [sys.executable, "-m", "vitviz", "serve", "--model", model, "--port", str(free_port())]
    cmd += ["--host", "127.0.0.1", "--device", "cpu"]
    if model != "demo":
        cmd.append("--random-weights")
    return _launch(cmd, env, log, "/v1/health", 300, "the vitviz server")


def descendants(pid: int) -> dict[int, float]:
    """A process's descendants now: pid → create time (to never kill a reused pid)."""
    import psutil

    try:
        return {c.pid: c.create_time() for c in psutil.Process(pid).children(recursive=True)}
    except psutil.Error:
        return {}


def stop_tree(proc: subprocess.Popen, known: dict[int, float], sig: int, grace: float) -> list[int]:
    """Stop ``proc`` (``sig``, then SIGKILL after ``grace`` s), its process group, and every
    descendant ever seen (``known``, pid → create time) that is still there; the pids that
    had to be killed."""
    import psutil

    known = {**known, **descendants(proc.pid)}
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(10)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)  # the group: start_new_session made pgid = pid
    killed = []
    deadline = time.time() + 5
    for pid, created in known.items():
        try:
            p = psutil.Process(pid)
            if abs(p.create_time() - created) > 0.01:
                continue  # another process got this pid
            p.terminate()
            try:
                p.wait(max(0.1, deadline - time.time()))
            except psutil.TimeoutExpired:
                p.kill()
            killed.append(pid)
        except psutil.Error:
            continue
    return killed


def vm_hwm_mb(pid: int) -> float | None:
    """The process's peak resident set (``VmHWM``), MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


class TreeWatch:
    """A process and its descendants: RSS (summed) every ``period`` s, peak overall and since
    :meth:`mark`, CPU seconds, and every descendant seen (for the cleanup)."""

    def __init__(self, pid: int, period: float = 0.1) -> None:
        self.pid = pid
        self.period = period
        self.seen: dict[int, float] = {}
        self.peak = 0
        self.peak_marked = 0
        self.last = 0
        self.samples = 0
        self.alive = True
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._cpu_done: dict[int, float] = {}  # cpu seconds of processes that have gone
        self._cpu_now: dict[int, float] = {}
        self._thread = threading.Thread(target=self._run, name=f"watch-{pid}", daemon=True)
        self._thread.start()

    def _procs(self) -> list[Any]:
        import psutil

        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def sample(self) -> None:
        """One sample now."""
        import psutil

        procs = self._procs()
        rss, cpu = 0, {}
        for p in procs:
            try:
                with p.oneshot():
                    rss += p.memory_info().rss
                    t = p.cpu_times()
                    cpu[p.pid] = t.user + t.system + t.children_user + t.children_system
                    if p.pid != self.pid:
                        self.seen.setdefault(p.pid, p.create_time())
            except psutil.Error:
                continue
        with self._lock:
            for pid, value in self._cpu_now.items():
                if pid not in cpu:
                    self._cpu_done[pid] = value
            self._cpu_now = cpu
            self.alive = bool(procs) and procs[0].is_running()
            self.last = rss
            self.peak = max(self.peak, rss)
            self.peak_marked = max(self.peak_marked, rss)
            self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.sample()

    def mark(self) -> None:
        """Start the peak "since" here."""
        with self._lock:
            self.peak_marked = self.last

    def cpu_seconds(self) -> float:
        """CPU seconds used by the tree so far (processes that ended included)."""
        with self._lock:
            return sum(self._cpu_done.values()) + sum(self._cpu_now.values())

    def stop(self) -> None:
        """Stop sampling (after a last sample)."""
        self.sample()
        self._stop.set()
        self._thread.join(5)


def client_cpu_seconds() -> float:
    """CPU seconds of this process and of the children it has reaped (Playwright's driver,
    which reaps Chromium): the clients' share, once the browser is closed. The page and the
    server are still running, so they are not in it."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


# --------------------------------------------------------------------------------------------
# Report


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0…1) by linear interpolation between the sorted values."""
    if not values:
        return float("nan")
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(records: list[Record]) -> dict[str, Any]:
    """count, errors, waits, p50/p95/max ms of a set of actions (of those that were done: an
    action the walk could not do, for want of its control, counts as an error only)."""
    ms = [r.ms for r in records if r.timed]
    out: dict[str, Any] = {
        "count": len(records),
        "errors": sum(1 for r in records if r.errors),
        "waits": sum(1 for r in records if r.waited),
    }
    if ms:
        out |= {
            "p50_ms": round(percentile(ms, 0.5), 1),
            "p95_ms": round(percentile(ms, 0.95), 1),
            "max_ms": round(max(ms), 1),
        }
    return out


def by_kind(records: list[Record]) -> dict[str, Any]:
    """:func:`summarize` per action kind, in the walk's order."""
    return {
        k: summarize([r for r in records if r.kind == k])
        for k in KINDS
        if any(r.kind == k for r in records)
    }


# --------------------------------------------------------------------------------------------
# The class


def sample_names() -> list[str]:
    """The page's sample images (``SAMPLES`` in vitviz/ui/resources.py, read without importing
    the page) that are on disk."""
    names: list[str] = []
    try:
        tree = ast.parse((ROOT / "vitviz" / "ui" / "resources.py").read_text())
        for node in tree.body:
            if (
                isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "SAMPLES" for t in node.targets)
                and isinstance(node.value, ast.Dict)
            ):
                names = [k.value for k in node.value.keys if isinstance(k, ast.Constant)]
                break
    except (OSError, SyntaxError):
        names = []
    names = [n for n in names if isinstance(n, str) and (ASSETS / n).is_file()]
    return names or sorted(p.name for p in ASSETS.glob("*.png"))


def default_wait_text() -> str:
    """What the page says while a visitor waits for memory: the English catalog's
    ``memory_wait`` message up to its first placeholder ("Waiting for memory")."""
    try:
        with open(ROOT / "vitviz" / "ui" / "locales" / "en.toml", "rb") as f:
            catalog = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        catalog = {}
    for table in catalog.values():
        text = table.get("memory_wait") if isinstance(table, dict) else None
        if isinstance(text, str) and text.split("{", 1)[0].strip(" :"):
            return re.escape(text.split("{", 1)[0].strip(" :")).replace("\\ ", " ")
    return "waiting for memory"


def page_budget_mb(env: dict[str, str]) -> float | None:
    """The memory budget the page runs under with ``env`` (its own default when
    ``VITVIZ_PAGE_MEMORY_MB`` is not set), as the page computes it; None if it cannot say."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    try:
        from vitviz.ui.state import PageLimits

        return round(PageLimits.from_env(env).memory_bytes / MB, 1)
    except Exception:  # an older or newer page: the report says "unknown"
        return None


def model_params(model: str) -> dict[str, str]:
    """The page's URL parameters for the model: the demo model, else random weights."""
    if model == "demo":
        return {"model": "demo"}
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from vitviz.models import CURATED

    pick = {"model": model} if model in CURATED else {"model": "__timm__", "timm_name": model}
    return {**pick, "random_weights": "true"}


def assign_samples(n: int, names: list[str], same: bool) -> tuple[str | None, list[str | None]]:
    """The teacher's warm-up image and each student's: the teacher takes the last sample, the
    students the others in turn (all the first one with ``same``)."""
    if not names:
        return None, [None] * n
    teacher = names[-1] if len(names) > 1 else None
    pool = names[:-1] if len(names) > 1 else names
    return teacher, [pool[0] if same else pool[i % len(pool)] for i in range(n)]


def query_for(params: dict[str, str], sample: str | None) -> str:
    """The link a student opens: English, the model, the sample."""
    q = {"lang": "en", **params}
    if sample:
        q["sample"] = sample
    return urllib.parse.urlencode(q)


def default_browsers(students: int, cores: int = CORES) -> int:
    """Chromium students by default: one per two cores, at most 4. A Chromium tab opening this
    page costs ~1.5 s of CPU on this 2-vCPU VM (a hello-world Streamlit page 1.0-1.3 s); four of
    them beside the page made the browsers' own work most of what a 16-student class measured
    (their opens 12-14 s while the page used under half the machine), and a real class's
    browsers run on the students' own computers."""
    return min(students, 4, max(1, cores // 2))


async def warm_browser(browser: Any, url: str, timeout: float) -> float:
    """The teacher's tab in the students' Chromium, closed before the class: a fresh
    Chromium's first page costs ~5 s more than its next ones on this VM (its first renderer,
    fonts, caches), which a student's browser that is already running has paid. Each student
    still opens the page in a context of its own (no shared cache or cookies)."""
    context = await browser.new_context(viewport={"width": 1280, "height": 800}, locale="en-US")
    t0 = time.perf_counter()
    try:
        page = await context.new_page()
        await page.goto(url, timeout=timeout * 1000)
        await page.wait_for_selector(
            "[class*='st-key-view-'] [data-state]", state="visible", timeout=timeout * 1000
        )
        await page.wait_for_function(SETTLED_JS, timeout=timeout * 1000)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(context.close(), 30)
    return round((time.perf_counter() - t0) * 1000, 1)


async def run_class(args: argparse.Namespace, url: str, on_start: Callable[[], None]) -> dict:
    """The teacher's visit (unless ``--cold``), then the class: every student's walk.

    ``on_start`` is called just before the students are released (after the warm-up and after
    the browsers' tabs are ready), so the class's CPU and peak are counted from there.
    """
    pattern = re.compile(args.wait_text, re.IGNORECASE)
    params = model_params(args.model)
    teacher_sample, samples = assign_samples(args.students, sample_names(), args.same_image)
    out: dict[str, Any] = {"warmup_ms": None, "teacher_sample": teacher_sample}
    if not args.cold:  # the model loads here: a timeout of its own, and a failure is reported
        teacher = ProtocolStudent(
            Student(-1, "protocol", teacher_sample),
            url,
            query_for(params, teacher_sample),
            pattern,
            max(args.action_timeout, WARMUP_TIMEOUT),
        )
        t0 = time.perf_counter()
        try:
            await teacher.open()
            if teacher.state.errors:
                out["warmup_error"] = teacher.state.errors[0]
        except Exception as err:
            out["warmup_error"] = f"{type(err).__name__}: {err}"[:200]
        finally:
            await teacher.close()
        out["warmup_ms"] = round((time.perf_counter() - t0) * 1000, 1)
    browsers = min(args.browsers, args.students)
    students = [
        Student(i, "browser" if i < browsers else "protocol", samples[i])
        for i in range(args.students)
    ]
    actions = walk()
    start = asyncio.Event()
    runners: list[ProtocolStudent | BrowserStudent] = []
    pw_manager: Any = None
    browser: Any = None
    try:
        if browsers:
            from playwright.async_api import async_playwright

            if CHROMIUM is None:
                raise RuntimeError("no system Chromium (apt-get install chromium)")
            pw_manager = async_playwright()
            pw = await pw_manager.__aenter__()
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            if not args.cold:
                out["browser_warmup_ms"] = await warm_browser(
                    browser, f"{url}/?{query_for(params, teacher_sample)}", args.action_timeout
                )
        for s in students:
            query = query_for(params, s.sample)
            if s.kind == "browser":
                context = await browser.new_context(
                    viewport={"width": 1280, "height": 800}, locale="en-US"
                )
                b = BrowserStudent(s, context, f"{url}/?{query}", args.action_timeout)
                await b.prepare(args.wait_text)
                runners.append(b)
            else:
                runners.append(ProtocolStudent(s, url, query, pattern, args.action_timeout))
        tasks = [
            asyncio.create_task(perform(r, actions, start, args.action_timeout)) for r in runners
        ]
        on_start()
        start.set()  # the barrier: everyone starts now
        _, pending = await asyncio.wait(tasks, timeout=args.deadline)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for r, task in zip(runners, tasks, strict=True):
            s = r.student
            if task in pending:
                s.aborted = s.aborted or f"still going at the deadline ({args.deadline:g} s)"
            elif task.exception() is not None:
                err = task.exception()
                s.aborted = f"{type(err).__name__}: {err}"[:200]
            if s.aborted:
                s.skipped = len(actions) - len(s.records)
        out["js_errors"] = sum(len(r.js_errors) for r in runners if isinstance(r, BrowserStudent))
    finally:
        await asyncio.gather(*(r.close() for r in runners), return_exceptions=True)
        if browser is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(browser.close(), 30)
        if pw_manager is not None:
            with contextlib.suppress(Exception):
                await pw_manager.__aexit__(None, None, None)
    out["students"] = students
    out["samples"] = samples
    return out


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM ends the run like Ctrl-C: the ``finally`` blocks stop the page and server."""
    raise KeyboardInterrupt


@dataclass
class Processes:
    """The page and the server this run started, with their watchers."""

    page: subprocess.Popen | None = None
    page_watch: TreeWatch | None = None
    server: subprocess.Popen | None = None
    server_watch: TreeWatch | None = None

    def stop(self) -> int:
        """Stop the page, then the server; the server's leftover processes that were killed."""
        for watch in (self.page_watch, self.server_watch):
            if watch is not None:
                with contextlib.suppress(Exception):
                    watch.stop()
        if self.page is not None:
            stop_tree(
                self.page, self.page_watch.seen if self.page_watch else {}, signal.SIGTERM, 15
            )
        if self.server is not None:
            seen = self.server_watch.seen if self.server_watch else {}
            return len(stop_tree(self.server, seen, signal.SIGINT, 60))
        return 0


def measure(args: argparse.Namespace, procs: Processes, logs: Path) -> dict[str, Any]:
    """Start what is needed, run the class, and collect the numbers (the caller stops all)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("VITVIZ_SERVER", None)
    env.pop("VITVIZ_PAGE_MEMORY_MB", None)
    server_url = args.server
    if args.start_server:
        procs.server, server_url = start_server(args.model, env, logs / "server.log")
        procs.server_watch = TreeWatch(procs.server.pid, 0.5)
    page_env = dict(env)
    if server_url:
        page_env["VITVIZ_SERVER"] = server_url
    if args.memory_mb is not None:
        page_env["VITVIZ_PAGE_MEMORY_MB"] = f"{args.memory_mb:g}"
    budget = page_budget_mb(page_env)
    t0 = time.perf_counter()
    procs.page, url = start_page(page_env, logs / "page.log")
    page_watch = procs.page_watch = TreeWatch(procs.page.pid)
    page_start_s = time.perf_counter() - t0
    marks: dict[str, float] = {}

    def on_start() -> None:
        page_watch.sample()
        page_watch.mark()
        marks["cpu"] = page_watch.cpu_seconds()
        if procs.server_watch:
            procs.server_watch.sample()
            procs.server_watch.mark()
            marks["server_cpu"] = procs.server_watch.cpu_seconds()
        marks["clients"] = client_cpu_seconds()
        marks["t"] = time.perf_counter()
        marks["load"] = os.getloadavg()[0]

    result = asyncio.run(run_class(args, url, on_start))
    wall = time.perf_counter() - marks["t"]
    result["clients_cpu_s"] = round(client_cpu_seconds() - marks["clients"], 2)  # before poll()
    page_watch.sample()
    result["wall_s"] = wall
    result["load_before"] = marks["load"]
    result["page"] = {
        "alive": procs.page.poll() is None,
        "start_s": round(page_start_s, 1),
        "rss_peak_mb": round(page_watch.peak / MB, 1),
        "rss_peak_class_mb": round(page_watch.peak_marked / MB, 1),
        "rss_end_mb": round(page_watch.last / MB, 1),
        "vm_hwm_mb": vm_hwm_mb(procs.page.pid),
        "cpu_s": round(page_watch.cpu_seconds() - marks["cpu"], 2),
        "cpu_util": round((page_watch.cpu_seconds() - marks["cpu"]) / wall / CORES, 3),
        "rss_samples": page_watch.samples,
    }
    if procs.server_watch:
        sw = procs.server_watch
        sw.sample()
        result["server_process"] = {
            "pid": procs.server.pid if procs.server else None,
            "alive": procs.server.poll() is None if procs.server else None,
            "rss_peak_mb": round(sw.peak / MB, 1),
            "rss_peak_class_mb": round(sw.peak_marked / MB, 1),
            "cpu_s": round(sw.cpu_seconds() - marks["server_cpu"], 2),
        }
    result["server_url"] = server_url
    result["budget_mb"] = budget
    return result


def report(args: argparse.Namespace, result: dict[str, Any], page_log: str) -> dict[str, Any]:
    """The JSON object: per action kind, per student kind, the page, the target."""
    students: list[Student] = result["students"]
    records = [r for s in students for r in s.records]
    kinds = by_kind(records)
    every = summarize(records)
    page = {**result["page"], "log_tracebacks": page_log.count("Traceback (most recent call")}
    budget = result["budget_mb"]
    peak = max(page["rss_peak_mb"], page["vm_hwm_mb"] or 0.0)
    worst_p95 = max((v.get("p95_ms", 0.0) for v in kinds.values()), default=0.0)
    aborted = [
        {"student": s.index, "kind": s.kind, "why": s.aborted, "skipped": s.skipped}
        for s in students
        if s.aborted
    ]
    samples = result["samples"]
    return {
        "students": len(students),
        "browsers": sum(1 for s in students if s.kind == "browser"),
        "protocol": sum(1 for s in students if s.kind == "protocol"),
        "model": args.model,
        "server": result["server_url"],
        "started_server": bool(args.start_server),
        "same_image": bool(args.same_image),
        "samples": {n: samples.count(n) for n in dict.fromkeys(samples)},
        "teacher_sample": result["teacher_sample"],
        "memory_budget_mb": budget,  # the page's, as it computes it
        "memory_mb_set": args.memory_mb,  # --memory-mb (None: the page's default)
        "page_cores": args.page_cores,  # --page-cores (None: all)
        "warmup_ms": result["warmup_ms"],
        "warmup_error": result.get("warmup_error"),
        "browser_warmup_ms": result.get("browser_warmup_ms"),
        "walk": [a.name for a in walk()],
        "actions": kinds,
        "actions_by_student_kind": {
            k: by_kind([r for r in records if r.student_kind == k])
            for k in ("browser", "protocol")
            if any(r.student_kind == k for r in records)
        },
        "all_actions": every,
        "errors": every["errors"],
        "skipped_actions": sum(s.skipped for s in students),
        "aborted_students": aborted,
        "wait_samples": list(dict.fromkeys(r.waited for r in records if r.waited))[:3],
        "error_samples": [
            {"student": r.student, "action": r.action, "errors": r.errors}
            for r in records
            if r.errors
        ][:12],
        "browser_js_errors": result.get("js_errors", 0),
        "page": page,
        "server_process": result.get("server_process"),
        "clients_cpu_s": result["clients_cpu_s"],
        "class_wall_s": round(result["wall_s"], 1),
        "cores": CORES,
        "loadavg_1min_before": round(result["load_before"], 2),
        "loadavg_1min_after": round(os.getloadavg()[0], 2),
        "target": {
            "p95_le_2s": bool(records) and worst_p95 <= TARGET_P95_MS,
            "zero_errors": every["errors"] == 0 and not aborted,
            "rss_within_budget_plus_300": None
            if budget is None
            else peak <= budget + TARGET_RSS_SLACK_MB,
            "page_alive": page["alive"],
        },
        "rss_peak_over_budget_mb": None if budget is None else round(peak - budget, 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the class and print JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--students", type=int, default=8, help="students (N)")
    ap.add_argument("--model", default="demo", help="demo, a curated key (vit-b16), a timm name")
    ap.add_argument(
        "--browsers",
        type=int,
        default=None,
        help="students in Chromium contexts (default: one per two cores, at most 4 and N); "
        "the rest speak the protocol",
    )
    ap.add_argument("--server", help="a running vitviz server for the page (VITVIZ_SERVER)")
    ap.add_argument(
        "--start-server", action="store_true", help="start `python -m vitviz serve` for the page"
    )
    ap.add_argument("--memory-mb", type=float, help="the page's VITVIZ_PAGE_MEMORY_MB")
    ap.add_argument(
        "--page-cores",
        type=int,
        help="run the page on its first K cores only (taskset): what each core adds",
    )
    ap.add_argument("--same-image", action="store_true", help="the whole class on one photo")
    ap.add_argument("--cold", action="store_true", help="no teacher's visit before the class")
    ap.add_argument("--action-timeout", type=float, default=300.0, help="seconds per action")
    ap.add_argument("--deadline", type=float, default=1800.0, help="seconds for the class")
    ap.add_argument(
        "--wait-text",
        default=default_wait_text(),
        help="the page's wait notice, a case-insensitive regular expression (default: the "
        "start of the English catalog's busy.memory_wait)",
    )
    ap.add_argument("--detail", action="store_true", help="every student's timings too")
    ap.add_argument("--json", action="store_true", help="one line of JSON")
    args = ap.parse_args(argv)
    if args.students < 1:
        ap.error("--students must be at least 1")
    if args.server and args.start_server:
        ap.error("--server and --start-server exclude each other")
    if args.server and urllib.parse.urlsplit(args.server).hostname not in LOOPBACK:
        ap.error("--server must be on the loopback interface (this bench stays on 127.0.0.1)")
    args.browsers = (
        default_browsers(args.students) if args.browsers is None else max(0, args.browsers)
    )
    if args.page_cores:
        cores = sorted(os.sched_getaffinity(0))[: max(1, args.page_cores)]
        PINNED[:] = ["taskset", "-c", ",".join(map(str, cores))]

    signal.signal(signal.SIGTERM, _interrupt)
    procs = Processes()
    with tempfile.TemporaryDirectory(prefix="vitviz-classroom-") as tmp:
        logs = Path(tmp)
        try:
            result = measure(args, procs, logs)
        except KeyboardInterrupt:
            print("interrupted: the page and the server are stopped", file=sys.stderr)
            return 130
        finally:
            leftovers = procs.stop()
        page_log = (logs / "page.log").read_text(errors="replace")
    out = report(args, result, page_log)
    out["server_leftovers_killed"] = leftovers
    if args.detail:
        out["detail"] = [
            {
                "student": s.index,
                "kind": s.kind,
                "sample": s.sample,
                "ms": {r.action: round(r.ms, 1) for r in s.records},
            }
            for s in result["students"]
        ]
    print(json.dumps(out, indent=None if args.json else 2, ensure_ascii=False))
    return 0 if out["target"]["page_alive"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
