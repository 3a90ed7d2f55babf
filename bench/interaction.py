"""How fast the page answers: first explanation, then view-only reruns, driven by AppTest.

    python bench/interaction.py --json [--model vit-b16] [--interactions 24]

Loads the app with ViT-B/16's architecture and random weights (timing does not depend on the
weights), opens a sample image, then makes the interactions that still reach the server in
turn: a layer and a head opened from elsewhere (as a statistics click does) in the Heads view,
a discard-ratio step in the Rollout view, a new query patch in the Patch explorer. (Layer, head,
fusion, opacity and colormap changes made on the canvas never reach the server: see
``bench/browser_latency.py`` for what a person feels.) Prints one JSON object:

* ``first_run_ms``: the first page run (model creation + first explanation);
* ``first_explain_ms``: a run that explains a new image with the model already loaded;
* ``rerun_ms``: median over the interactions (also ``rerun_ms_p90`` and the list);
* ``model_calls_during_reruns``: forward passes counted (by wrapping the engine's capture)
  while the interactions ran — should be 0;
* ``payload_bytes``: median bytes per rerun of canvas data and plotly JSON together
  (``payload_bytes_max`` too).

AppTest runs the script in this process, so times include Streamlit's own script execution
and element serialization but not the browser.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streamlit.testing.v1 import AppTest  # noqa: E402

import vitviz.backends.local as backend_module  # noqa: E402
from vitviz.engine.runtime import tune_allocator  # noqa: E402


def payload(at: AppTest) -> int:
    """Bytes of canvas data and plotly JSON the last run sent."""
    charts = sum(len(el.proto.spec) for el in at.get("plotly_chart"))
    return charts + sum(len(el.proto.json) for el in at.get("bidi_component"))


def layers_shown(at: AppTest) -> int:
    """The model's layer count, from the data sent to the heads canvas."""
    for el in at.get("bidi_component"):
        if el.proto.id.endswith("-heads-canvas"):
            return json.loads(el.proto.json)["layers"]
    raise SystemExit("the Heads view drew no canvas")


def main(argv: list[str] | None = None) -> int:
    """Run the interaction benchmark and print JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vit-b16")
    p.add_argument("--interactions", type=int, default=24)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    tune_allocator()

    calls = [0]
    original = backend_module.capture_seen

    def counting(*a, **kw):
        calls[0] += 1
        return original(*a, **kw)

    backend_module.capture_seen = counting

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    at.session_state["model"] = args.model
    at.session_state["random_weights"] = True
    at.session_state["sample"] = "coffee.png"
    t0 = time.perf_counter()
    at.run()
    first_run = time.perf_counter() - t0
    if at.exception or at.error:
        raise SystemExit(f"page failed: {at.exception or [e.value for e in at.error]}")
    at.session_state["sample"] = "chelsea.png"
    t0 = time.perf_counter()
    at.run()
    first_explain = time.perf_counter() - t0
    if calls[0] != 2:
        raise SystemExit(f"expected 2 explanations before the reruns, counted {calls[0]}")

    before = calls[0]
    times: list[float] = []
    sizes: list[int] = []
    steps: list[str] = []

    def timed(label: str, action) -> None:
        action()
        t = time.perf_counter()
        at.run()
        times.append(time.perf_counter() - t)
        sizes.append(payload(at))
        steps.append(label)
        if at.exception:
            raise SystemExit(f"{label}: {at.exception}")

    # enter each view once (not timed as view-only interactions of the same view)
    at.segmented_control(key="view").set_value("Heads").run()
    layers = layers_shown(at)
    state = at.session_state
    for i in range(args.interactions):
        kind = i % 4
        if kind == 0:
            at.segmented_control(key="view").set_value("Heads").run()
            timed("layer", lambda i=i: state.__setitem__("layer", (i * 5) % layers))
        elif kind == 1:
            timed("head", lambda i=i: state.__setitem__("head", i % 3))
        elif kind == 2:
            at.segmented_control(key="view").set_value("Rollout").run()
            timed("discard", lambda i=i: at.slider(key="discard").set_value(0.1 * (i % 9)))
        else:
            at.segmented_control(key="view").set_value("Patch explorer").run()
            timed("patch", lambda i=i: state.__setitem__("patch", (i * 37) % 196))
    result = {
        "model": args.model,
        "weights": "random",
        "first_run_ms": round(first_run * 1000, 1),
        "first_explain_ms": round(first_explain * 1000, 1),
        "rerun_ms": round(statistics.median(times) * 1000, 1),
        "rerun_ms_p90": round(sorted(times)[int(0.9 * (len(times) - 1))] * 1000, 1),
        "rerun_ms_by_kind": {
            k: round(
                statistics.median(t for s, t in zip(steps, times, strict=True) if s == k) * 1000, 1
            )
            for k in dict.fromkeys(steps)
        },
        "interactions": len(times),
        "model_calls_during_reruns": calls[0] - before,
        "payload_bytes": int(statistics.median(sizes)),
        "payload_bytes_max": max(sizes),
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
