"""The page's live camera: the attention overlay follows the webcam (WebRTC, streamlit-webrtc).

The browser sends its camera over WebRTC to this process; each frame goes through the session's
:class:`vitviz.engine.stream.LiveExplainer` (the newest frame is explained, older ones are dropped)
and comes back with the latest map drawn over it, at the camera's rate. The predictions, frames per
second and latency beside the video are re-read twice a second (an ``st.fragment``); while the
overlay is paused that line says so (no maps are made, so there is no rate to show). The camera
is asked for 640×480 (:data:`CAMERA`): a smaller stream would be stretched and blurry
in the video's column. The video comes right under the controls, above the fold at 1280×800
with the sidebar open; the introduction sits beside it. *Freeze*
opens the frame of the current map in the normal views. ICE servers: none by default (loopback
or a LAN); the operator may set ``VITVIZ_ICE_SERVERS`` to a JSON list such as
``[{"urls": ["stun:stun.example.org:3478"]}]``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import streamlit as st

from vitviz.backends import Backend
from vitviz.engine.stream import CLASS, REMOTE_METHOD, LiveExplainer, LiveSettings, live_methods
from vitviz.errors import OptionsError, VitvizError
from vitviz.memory.cost import WorkCost
from vitviz.methods import METHODS
from vitviz.output import render
from vitviz.results import ModelInfo
from vitviz.ui import i18n, resources
from vitviz.ui.i18n import error_text, t
from vitviz.ui.session import KEEP
from vitviz.ui.text import plain
from vitviz.ui.widgets import method_title

# what the stream asks of the camera: 640×480 (ideal: a camera that cannot gives its nearest)
CAMERA = {"width": {"ideal": 640}, "height": {"ideal": 480}}


def ice_servers(environ: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The operator's ICE servers (``VITVIZ_ICE_SERVERS``, JSON), or none.

    Raises:
        OptionsError: a value that is not a JSON list of objects with ``urls``.
    """
    text = (os.environ if environ is None else environ).get("VITVIZ_ICE_SERVERS", "").strip()
    if not text:
        return []
    try:
        servers = json.loads(text)
    except json.JSONDecodeError:
        raise OptionsError("VITVIZ_ICE_SERVERS is not JSON") from None

    def valid(server: Any) -> bool:
        urls = server.get("urls") if isinstance(server, dict) else None
        urls = [urls] if isinstance(urls, str) else urls
        return isinstance(urls, list) and bool(urls) and all(isinstance(u, str) for u in urls)

    if not isinstance(servers, list) or not all(valid(s) for s in servers):
        raise OptionsError('VITVIZ_ICE_SERVERS must be a JSON list like [{"urls": ["stun:…"]}]')
    return servers


def _explainer(backend: Backend, model_id: str, settings: LiveSettings) -> LiveExplainer:
    """This session's explainer for this model (a new model closes the old one)."""
    state = st.session_state
    old = state.get("live_explainer")
    if old is not None and state.get("live_model") == model_id and old.backend is backend:
        old.update(settings)
        return old
    if old is not None:
        old.close()
        del old
        state.pop("live_explainer", None)
    # one frame at a time, for as long as the stream's explainer lives: counted at the most a
    # frame can cost (a class map where the model runs here)
    full = backend.offers("live_maps")  # else the readout rows alone
    frame = resources.work_cost(backend, backend.geometry.size, classes=1 if full else 0)
    cost = WorkCost("live", frame.peak, frame.peak, frame.parts)
    with resources.admitted(cost, alongside=resources.model_bytes(backend)) as admission:
        live = LiveExplainer(backend, settings)
        admission.keep(live, cost.peak)
    state["live_explainer"] = live
    state["live_model"] = model_id
    return state["live_explainer"]


def _freeze(live: LiveExplainer) -> None:
    """Button callback: the frame of the map on screen when it was pressed becomes the image
    of the normal views (kept as the session's upload, bounded like one). The frame is read
    at the click, so the button need not be redrawn with every map."""
    result = live.latest()
    if result is None:
        st.session_state["live_freeze_failed"] = "live.freeze_none"
    elif resources.remember_upload("live-frame.png", render.to_png(result.frame)):
        st.session_state["source"] = "Upload"
    else:
        st.session_state["live_freeze_failed"] = "live.freeze_failed"


def live_choices(remote: bool) -> dict[str, str]:
    """The live view's methods in its picker's order, each with its words: the registry's
    class-agnostic maps and the top class's map (raw attention alone over a server)."""
    names = (REMOTE_METHOD,) if remote else live_methods()
    words = {}
    for name in names:
        key = f"live.method_{name}"
        if i18n.has(key) or name == CLASS:
            words[name] = t(key)
        else:  # a method registered elsewhere: its own title
            words[name] = method_title(name, METHODS[name].title)
    return words


def _controls(info: ModelInfo, remote: bool) -> LiveSettings:
    names = live_choices(remote)
    methods = list(names)
    if st.session_state.get("live_method") not in methods:
        st.session_state["live_method"] = methods[0]
    c1, c2, c3, c4 = st.columns([2.2, 1.4, 1, 1])
    method = c1.segmented_control(
        t("live.method"),
        methods,
        format_func=names.get,
        key="live_method",
        required=True,
        persist_state=KEEP,
    )
    layer, head = -1, None
    takes = set(METHODS[method].defaults) if method in METHODS else set()  # class: none
    if "layer" in takes:
        layer = c2.slider(t("lesson.layer"), 0, info.layers - 1, info.layers - 1, key="live_layer")
    if "head" in takes:
        heads = [None, *range(info.heads)]
        labels = {
            h: t("widgets.all_heads") if h is None else t("widgets.head_n", head=h) for h in heads
        }
        head = c2.selectbox(t("option.head.title"), heads, format_func=labels.get, key="live_head")
    alpha = c3.slider(t("canvas.opacity"), 0.0, 1.0, 0.5, 0.05, key="live_alpha")
    colormap = c4.selectbox(t("canvas.colormap"), list(render.COLORMAPS), key="live_colormap")
    return LiveSettings(method, layer, head, colormap, alpha)


def render_live(backend: Backend, info: ModelInfo, model_id: str) -> None:
    """The live view: controls, the stream with its overlay, predictions and speed."""
    try:
        from streamlit_webrtc import WebRtcMode, webrtc_streamer
    except ImportError:  # an install without the live extra
        st.error(t("live.missing"))
        return
    try:
        servers = ice_servers()
    except OptionsError as err:  # the operator's setting: say so, show nothing broken
        st.error(t("error.misconfigured", detail=plain(err)))
        return
    remote = not backend.offers("live_maps")  # a server: the readout rows of each frame
    try:
        live = _explainer(backend, model_id, _controls(info, remote))
    except VitvizError as err:
        st.error(error_text(err))
        return

    def frame_callback(frame):
        """Runs on the stream's thread: no Streamlit calls here, only the explainer."""
        import av

        try:
            out = live.compose(live.submit(frame))
        except Exception:
            return frame  # through as it came; the next one is explained
        return av.VideoFrame.from_ndarray(out, format="rgb24")

    video, side = st.columns([1.6, 1])
    with video:
        stream = webrtc_streamer(
            key="live",
            mode=WebRtcMode.SENDRECV,
            video_frame_callback=frame_callback,
            media_stream_constraints={"video": CAMERA, "audio": False},
            rtc_configuration={"iceServers": servers},
            async_processing=True,
            translations={
                "start": t("live.start"),
                "stop": t("live.stop"),
                "select_device": t("live.select_device"),
            },
        )
    with side:
        paused = st.toggle(t("live.pause"), key="live_paused")
        live.pause(paused)
        # outside the twice-a-second fragment: a click never meets a redraw of its button
        st.button(t("live.freeze"), on_click=_freeze, args=(live,), help=t("live.freeze_help"))
        failed = st.session_state.pop("live_freeze_failed", None)
        if failed:
            st.error(t(failed))
        _status(live, bool(stream.state.playing), i18n.current())
        st.caption(t("live.intro"))
        if remote:
            st.caption(t("live.remote"))


@st.fragment(run_every=0.5)
def _status(live: LiveExplainer, playing: bool, lang: str) -> None:
    """Predictions and speed, re-read twice a second from the explainer."""
    result = live.latest()
    stats = live.stats
    if result is None:
        st.info(t("live.waiting" if playing else "live.press_start"))
        return
    st.markdown(f"**{t('page.prediction')}**")
    for p in result.predictions:
        name = plain(i18n.class_label(p.label, p.index, lang=lang))
        st.progress(min(1.0, p.probability), text=f"{name} — {p.probability:.1%}")
    if st.session_state.get("live_paused"):  # no maps are made: no rate to show
        st.caption(t("live.speed_paused", dropped=stats.dropped, frames=stats.submitted))
        return
    latencies = list(stats.latencies_ms)[-30:]
    typical = sorted(latencies)[len(latencies) // 2] if latencies else 0.0
    st.caption(
        t(
            "live.speed",
            fps=f"{stats.fps_out():.1f}",
            latency=f"{typical:.0f}",
            dropped=stats.dropped,
            frames=stats.submitted,
        )
    )
    if stats.last_error:
        st.caption(t("live.last_error", detail=plain(stats.last_error)))
