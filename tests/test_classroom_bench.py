"""The classroom bench's protocol student (``bench/classroom.py``): how it reads Streamlit's
ForwardMsgs and writes the BackMsgs a browser would, checked on made-up messages and once
against a real ``streamlit run`` of a tiny page (a toggle, a button group, a browser component
trigger inside a fragment, an error). No timing is asserted: speeds belong to the bench."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

from tests.conftest import STATE_TIMEOUT_S, free_port

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("classroom", ROOT / "bench" / "classroom.py")
classroom = importlib.util.module_from_spec(_spec)
sys.modules["classroom"] = classroom  # dataclasses look their module up
_spec.loader.exec_module(classroom)

WAIT = re.compile(classroom.default_wait_text(), re.IGNORECASE)


def element(kind: str, key: str | None, fragment: str = "", **fields) -> ForwardMsg:
    """A delta drawing one element of proto kind ``kind`` with ``key=key``."""
    msg = ForwardMsg()
    msg.delta.fragment_id = fragment
    sub = getattr(msg.delta.new_element, kind)
    if key is not None:
        sub.id = f"$$ID-0123abcd-{key}"
    for name, value in fields.items():
        setattr(sub, name, value)
    return msg


def finished(status: int) -> ForwardMsg:
    msg = ForwardMsg()
    msg.script_finished = status
    return msg


def test_the_wait_notice_is_the_catalogs():
    """The default pattern is the English catalog's ``memory_wait`` up to its first value, and
    the page's memory line ("… 0 waiting") does not match it."""
    assert WAIT.search("Waiting for memory: 2 before you in the queue, 1.2 GB of 2 GB in use")
    assert not WAIT.search("**Memory:** 0 B of 1.5 GB in use (page budget 2 GB), 3 waiting")


def test_user_key_from_element_ids():
    assert classroom.user_key("$$ID-9aa75cd54d3a-lesson-nav") == "lesson-nav"
    assert classroom.user_key("$$ID-9aa75cd54d3a-use-demo-scene-1.png") == "use-demo-scene-1.png"
    assert classroom.user_key("$$ID-9aa75cd54d3a-None") is None
    assert classroom.user_key("plain") is None


def test_stream_state_tracks_elements_url_errors_waits_and_the_end_of_a_chain():
    state = classroom.StreamState(WAIT)
    session = ForwardMsg()
    session.new_session.page_script_hash = "abc123"
    info = ForwardMsg()
    info.page_info_changed.query_string = "lang=en&lesson=1&step=3"
    for msg in (session, info):
        assert not state.feed(msg)
    assert state.page_script_hash == "abc123"
    assert state.query_string == "lang=en&lesson=1&step=3"

    state.start()
    toggle = element("checkbox", "lesson", fragment="frag1")
    nav = element("bidi_component", "lesson-nav", fragment="frag1")
    nav.delta.new_element.bidi_component.mixed.json = json.dumps({"step": 2, "count": 9})
    picker = element("bidi_component", "lesson-picker-2")
    picker.delta.new_element.bidi_component.json = json.dumps({"patch": 31, "grid": [14, 14]})
    note = element("markdown", None, body="Waiting for memory: 2 visitors ahead of you")
    pictures = ForwardMsg()
    pictures.delta.new_element.imgs.imgs.add().url = "/media/abc.png"
    pictures.delta.new_element.imgs.imgs.add().url = "data:image/png;base64,AAAA"
    for msg in (toggle, nav, picker, note, pictures):
        assert not state.feed(msg)
    assert state.find("lesson", "checkbox").fragment == "frag1"
    assert state.find("lesson", "checkbox").id == "$$ID-0123abcd-lesson"
    with pytest.raises(LookupError):
        state.find("lesson", "button_group")
    with pytest.raises(LookupError):
        state.find("nothing")
    assert classroom.component_data(state.elements["lesson-nav"].element)["step"] == 2
    assert classroom.component_data(state.elements["lesson-picker-2"].element)["patch"] == 31
    assert classroom.component_data(toggle.delta.new_element) == {}
    assert state.waited and not state.errors
    assert state.media == ["/media/abc.png"]  # inline pictures need no request
    assert {"lesson", "lesson-nav", "lesson-picker-2"} <= state.drawn

    exc = ForwardMsg()
    exc.delta.new_element.exception.type = "RuntimeError"
    exc.delta.new_element.exception.message = "boom"
    alert = element("alert", None, body="the model could not load")
    alert.delta.new_element.alert.format = alert.delta.new_element.alert.ERROR
    info_alert = element("alert", None, body="random weights")
    info_alert.delta.new_element.alert.format = info_alert.delta.new_element.alert.INFO
    for msg in (exc, alert, info_alert):
        state.feed(msg)
    assert state.errors == ["exception: RuntimeError: boom", "st.error: the model could not load"]

    # st.rerun() ends one run of the chain early: the chain goes on
    assert not state.feed(finished(ForwardMsg.FINISHED_EARLY_FOR_RERUN))
    assert state.finished is None
    assert state.feed(finished(ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY))
    assert state.finished == ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY
    state.start()
    assert state.finished is None and not state.errors and not state.waited and not state.drawn
    assert not state.media
    assert "lesson" in state.elements  # what the page shows stays known
    assert state.feed(finished(ForwardMsg.FINISHED_WITH_COMPILE_ERROR))
    assert state.errors == ["the script failed to compile"]


def test_backmsgs_carry_url_page_fragment_and_the_widget_a_browser_sends():
    state = classroom.StreamState(WAIT)
    state.query_string, state.page_script_hash = "lang=en&sample=coffee.png", "h1"
    trig = classroom.trigger_state("$$ID-ff-lesson-nav", "go", 3)
    msg = classroom.rerun(state, "http://127.0.0.1:8501", trig, "frag1")
    client = msg.rerun_script
    assert client.query_string == "lang=en&sample=coffee.png"
    assert client.page_script_hash == "h1"
    assert client.fragment_id == "frag1"
    assert client.context_info.url == "http://127.0.0.1:8501/?lang=en&sample=coffee.png"
    (widget,) = client.widget_states.widgets
    assert widget.id == "$$STREAMLIT_INTERNAL_KEY_$$ID-ff-lesson-nav__events"
    assert json.loads(widget.json_trigger_value) == [{"event": "go", "value": 3}]
    first = classroom.rerun(state, "http://127.0.0.1:8501", query_string="lang=en")
    assert first.rerun_script.query_string == "lang=en"
    assert not first.rerun_script.widget_states.widgets

    view = element("button_group", "view")
    for label in ("Heads", "Rollout"):
        view.delta.new_element.button_group.options.add().content = label
    state.feed(view)
    choice = classroom.choice_state(state.find("view"), "Heads")
    assert list(choice.string_array_value.data) == ["Heads"]
    with pytest.raises(LookupError):
        classroom.choice_state(state.find("view"), "Compare")
    assert classroom.bool_state("$$ID-1-lesson", True).bool_value


def test_walk_samples_patches_and_percentiles():
    walk = classroom.walk()
    steps = [a.arg for a in walk if a.kind == "lesson_step"]
    assert steps == list(range(2, 10))  # the lesson opens at step 1: → eight times
    assert [a.kind for a in walk][:2] == ["open", "lesson_on"]
    assert [a.name for a in walk][-2:] == ["view_switch:Heads", "view_switch:Rollout"]
    assert (
        walk.index(classroom.Action("patch_click"))
        == walk.index(classroom.Action("lesson_step", 2)) + 1
    )  # the picker is on step 2
    names = classroom.sample_names()
    assert names and all((ROOT / "assets" / n).is_file() for n in names)
    teacher, samples = classroom.assign_samples(9, names, same=False)
    assert teacher not in samples and len(set(samples)) == min(9, len(names) - 1)
    _, same = classroom.assign_samples(5, names, same=True)
    assert len(set(same)) == 1
    for i in range(40):
        for grid, current in (((14, 14), 105), ((7, 7), 24), ((2, 2), 0)):
            p = classroom.patch_target(i, grid, current)
            assert 0 <= p < grid[0] * grid[1] and p != current
        fx, fy = classroom.click_fraction(i)
        assert 0 < fx < 1 and 0 < fy < 1 and abs(fy - 0.5) > 0.1
    assert classroom.percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert classroom.percentile([5.0], 0.95) == 5.0
    rec = [classroom.Record(0, "protocol", "open", "open", float(ms)) for ms in range(1, 101)]
    rec[3].errors.append("x")
    rec[4].waited = "Waiting for memory: 1 before you"
    out = classroom.summarize(rec)
    assert (out["count"], out["errors"], out["waits"], out["max_ms"]) == (100, 1, 1, 100.0)
    assert out["p50_ms"] == 50.5 and out["p95_ms"] == 95.0
    missing = classroom.Record(0, "protocol", "open", "open", 1e6, ["LookupError"], "", False)
    assert classroom.summarize([*rec, missing]) == {**out, "count": 101, "errors": 2}


TINY_PAGE = """
import numpy as np
import streamlit as st

nav = st.components.v2.component("bench_nav", js="export default function () {}")

def _go():
    st.session_state["step"] = st.session_state["nav"]["go"]

if st.toggle("Lesson", key="lesson"):
    @st.fragment
    def lesson():
        st.session_state.setdefault("step", 0)
        nav(key="nav", data={"step": st.session_state["step"]}, on_go_change=_go)
        st.query_params["step"] = str(st.session_state["step"] + 1)
        if st.session_state["step"] == 4:
            st.error("step 5 is broken")
        st.markdown("Waiting for memory" if st.session_state["step"] == 3 else "ready")

    lesson()
else:
    st.segmented_control("View", ["Heads", "Rollout"], key="view", default="Rollout")
    st.checkbox("shown", key=f"is-{st.session_state.get('view')}")
    st.image(np.full((8, 8, 3), 200, np.uint8))
"""


def test_the_protocol_student_drives_a_real_streamlit_page(tmp_path):
    """Toggle, component trigger in a fragment, button group, errors and waits, over the
    real websocket of ``streamlit run``: the widget ids and payloads a browser would send."""
    script = tmp_path / "tiny.py"
    script.write_text(TINY_PAGE)
    port = free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(port)]
    cmd += ["--server.address", "127.0.0.1", "--server.headless", "true"]
    cmd += ["--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        assert classroom.wait_http(f"{url}/_stcore/health", proc, STATE_TIMEOUT_S)
        asyncio.run(asyncio.wait_for(_drive(url), STATE_TIMEOUT_S))
    finally:
        proc.terminate()
        proc.wait(30)


async def _drive(url: str) -> None:
    record = classroom.Student(0, "protocol", None)
    student = classroom.ProtocolStudent(record, url, "lang=en", WAIT, STATE_TIMEOUT_S)
    try:
        await student.open()
        state = student.state
        assert state.page_script_hash and "view" in state.drawn and not state.errors
        assert state.media and student._fetched == set(state.media)  # the picture, fetched
        toggle = state.find("lesson", "checkbox")
        assert toggle.fragment == ""
        await student.send_and_wait(
            classroom.rerun(state, url, classroom.bool_state(toggle.id, True))
        )
        nav = state.find("nav", "bidi_component")
        assert nav.fragment  # drawn inside the fragment: its triggers rerun only the fragment
        assert classroom.component_data(nav.element) == {"step": 0}
        for step in range(1, 5):
            nav = state.find("nav", "bidi_component")
            trig = classroom.trigger_state(nav.id, "go", step)
            await student.send_and_wait(classroom.rerun(state, url, trig, nav.fragment))
            assert state.finished == ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY
            assert classroom.component_data(state.elements["nav"].element) == {"step": step}
            assert f"step={step + 1}" in state.query_string  # the URL the browser would keep
            assert bool(state.waited) == (step == 3)
            assert state.errors == (["st.error: step 5 is broken"] if step == 4 else [])
        toggle = state.find("lesson", "checkbox")
        await student.send_and_wait(
            classroom.rerun(state, url, classroom.bool_state(toggle.id, False), toggle.fragment)
        )
        view = state.find("view", "button_group")
        await student.send_and_wait(
            classroom.rerun(state, url, classroom.choice_state(view, "Heads"), view.fragment)
        )
        assert state.finished == ForwardMsg.FINISHED_SUCCESSFULLY and "is-Heads" in state.drawn
    finally:
        await student.close()


def test_chromium_students_by_default_are_one_per_two_cores_at_most_four():
    assert [classroom.default_browsers(16, cores) for cores in (1, 2, 3, 4, 8, 64)] == [
        1,
        1,
        1,
        2,
        4,
        4,
    ]
    assert classroom.default_browsers(1, 8) == 1  # never more than the class
