"""What a person runs into on the page (issue 12's defect list), driven by AppTest.

Each test is one defect: a view or control that showed nothing, settings lost on a view change,
state that did not live in the URL, a mask hidden by the class map, and what the page must say
about random weights, failed models, TIFF uploads and cropped wide images.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from tests.conftest import ASSETS, words
from tests.test_app import APP, TIMEOUT, canvas, ok, shown, start
from vitviz import methods
from vitviz.backends.local import LocalBackend
from vitviz.inputs.images import decode_image
from vitviz.ui import sidebar

pytestmark = pytest.mark.usefixtures("fresh_cache")  # tests/conftest.py


def from_url(**params: str) -> AppTest:
    """The page opened from a link with these query parameters."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for k, v in params.items():
        at.query_params[k] = v
    return at.run()


def segmented_values(at: AppTest) -> dict[str, object]:
    return {s.key: s.value for s in at.segmented_control}


def png_bytes(width: int, height: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_a_view_and_every_choice_always_show_a_value():
    at = start()
    ok(at)
    assert at.segmented_control(key="view").value == "Rollout"
    # a new photo keeps the view highlighted
    at.segmented_control(key="view").set_value("Heads").run()
    at.button(key="use-coffee.png").click().run()
    ok(at)
    assert at.segmented_control(key="view").value == "Heads"
    # clicking the active view again keeps it (it used to jump to Rollout)
    at.segmented_control(key="view").set_value("Heads").run()
    assert at.segmented_control(key="view").value == "Heads"
    # Heads → Rollout → Heads: the map still shows a layer and head, every button group a value
    at.segmented_control(key="view").set_value("Rollout").run()
    at.toggle(key="why_class").set_value(True).run()
    at.segmented_control(key="view").set_value("Heads").run()
    ok(at)
    data = canvas(at, "heads-canvas")
    assert 0 <= data["layer"] < data["layers"] and -1 <= data["head"] < data["heads"]
    assert data["fusion"] in methods.FUSIONS
    at.segmented_control(key="view").set_value("Rollout").run()
    values = segmented_values(at)
    assert values["view"] == "Rollout" and values["class_method"] == "chefer"
    assert None not in values.values(), values
    # an empty choice cannot stick: the picker falls back to a view
    at.session_state["view"] = None
    at.run()
    assert at.segmented_control(key="view").value == "Rollout"


def test_mask_settings_survive_a_view_change():
    at = start()
    at.toggle(key="mask_on").set_value(True).run()
    at.slider(key="mask_threshold").set_value(0.8).run()
    at.radio(key="mask_source").set_value("rollout").run()
    ok(at)
    before = canvas(at, "mask")["maps"]
    at.segmented_control(key="view").set_value("Heads").run()
    at.segmented_control(key="view").set_value("Rollout").run()
    ok(at)
    assert at.toggle(key="mask_on").value is True
    assert at.slider(key="mask_threshold").value == 0.8
    assert at.radio(key="mask_source").value == "rollout"
    assert canvas(at, "mask")["maps"] == before


def test_the_upload_is_remembered_when_samples_are_visited():
    at = start()
    at.radio(key="source").set_value("Upload").run()
    data = (ASSETS / "coffee.png").read_bytes()
    at.file_uploader(key="upload").set_value(("coffee.png", data, "image/png")).run()
    ok(at)
    uploaded = canvas(at, "rollout")["maps"]
    at.radio(key="source").set_value("Samples").run()
    ok(at)
    assert canvas(at, "rollout")["maps"] != uploaded
    at.radio(key="source").set_value("Upload").run()
    ok(at)
    assert canvas(at, "rollout")["maps"] == uploaded  # the photo is back, not a blank page
    # said once, beside the uploader (it was also under the picture: two of the same sentence)
    assert sum("coffee.png" in words(c.value) for c in at.caption) == 1
    assert any("coffee.png" in words(c.value) for c in at.sidebar.caption)


def test_a_link_opens_the_view_layer_head_and_sample_it_names():
    at = from_url(view="Heads", layer="2", head="1", sample="coffee.png")
    ok(at)
    assert at.segmented_control(key="view").value == "Heads"
    data = canvas(at, "heads-canvas")
    assert (data["layer"], data["head"]) == (2, 1)
    backend = LocalBackend.from_name("demo", device="cpu")
    coffee = decode_image((ASSETS / "coffee.png").read_bytes(), "coffee.png").image
    ref = backend.explain([coffee])[0]
    expected = methods.compute_map("rollout", ref.attention, ref.layout)
    at.segmented_control(key="view").set_value("Rollout").run()
    np.testing.assert_allclose(
        shown(at, "rollout").ravel(),
        expected.ravel(),
        rtol=1e-5,
        atol=1e-7,
    )
    # what the person does goes back into the URL; defaults stay out of it
    assert "view" not in at.query_params
    at.segmented_control(key="view").set_value("Patch explorer").run()
    assert at.query_params["view"] == "Patch explorer"
    assert at.query_params["sample"] == "coffee.png"
    assert (at.query_params["layer"], at.query_params["head"]) == ("2", "1")
    at.segmented_control(key="view").set_value("Rollout").run()
    at.toggle(key="why_class").set_value(True).run()
    at.segmented_control(key="class_method").set_value("attn-grad").run()
    assert at.query_params["class_method"] == "attn-grad"


def test_a_link_names_a_model_by_its_id_but_never_a_file():
    at = from_url(model="__timm__", timm_name="vit_tiny_patch16_224", random_weights="true")
    ok(at)
    assert at.sidebar.selectbox(key="model").value == sidebar.OTHER_TIMM
    at.segmented_control(key="view").set_value("Heads").run()
    assert canvas(at, "heads-canvas")["layers"] == 12  # vit_tiny: 12 layers (the demo has 6)
    assert at.query_params["model"] == "__timm__"
    # a link cannot make the page open a file on the server
    at = from_url(model="__file__")
    ok(at)
    assert at.sidebar.selectbox(key="model").value == "demo"
    assert "model" not in at.query_params
    at = from_url(model="no-such-model", view="<script>", layer="x", head="99")
    ok(at)
    assert at.sidebar.selectbox(key="model").value == "demo"
    assert at.segmented_control(key="view").value == "Rollout"


def test_mask_and_class_map_are_shown_together():
    at = start()
    at.toggle(key="mask_on").set_value(True)
    at.toggle(key="why_class").set_value(True).run()
    ok(at)
    titles = [canvas(at, k)["title"] for k in ("rollout", "mask", "class-map")]
    assert "DINO-style mask" in titles[1] and titles[2].startswith("Why")


def test_random_weights_are_announced_above_the_maps_not_as_the_demo():
    at = start()
    at.sidebar.toggle(key="random_weights").set_value(True).run()
    ok(at)
    warnings = [w.value for w in at.warning]
    assert any("RANDOM WEIGHTS" in w for w in warnings), warnings
    assert not any("demo model" in i.value for i in at.info)  # no banner naming the demo
    # the position-embedding panel is not described as a learned grid
    at.segmented_control(key="view").set_value("How ViT sees this image").run()
    ok(at)
    words = " ".join(c.value for c in at.caption) + " ".join(m.value for m in at.markdown)
    assert "random" in words.lower() and "noise" in words.lower()


def test_tiff_uploads_are_accepted_and_wide_images_say_they_are_cropped():
    assert {"tif", "tiff"} <= set(sidebar.UPLOAD_TYPES)
    at = start()
    at.radio(key="source").set_value("Upload").run()
    buf = io.BytesIO()
    Image.open(io.BytesIO(png_bytes(96, 80))).save(buf, "TIFF")
    at.file_uploader(key="upload").set_value(("scan.tif", buf.getvalue(), "image/tiff")).run()
    ok(at)
    backend = LocalBackend.from_name("demo", device="cpu")
    ref = backend.explain([decode_image(buf.getvalue(), "scan.tif").image])[0]
    np.testing.assert_allclose(
        shown(at, "rollout").ravel(),
        methods.compute_map("rollout", ref.attention, ref.layout).ravel(),
        rtol=1e-5,
        atol=1e-7,
    )
    at.file_uploader(key="upload").set_value(("wide.png", png_bytes(600, 200), "image/png")).run()
    ok(at)
    notes = " ".join(c.value for c in at.caption) + " ".join(m.value for m in at.markdown)
    assert "600×200" in notes and "centre" in notes


def test_a_linked_model_name_is_shown_as_text_not_as_markdown():
    evil = "[Sign in again](https://evil.example) ![](https://evil.example/p.png) :red[x]"
    at = from_url(model="__timm__", timm_name=evil)
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1
    shown_text = errors[0]
    # every bracket and parenthesis is escaped: Markdown renders them literally, no link
    assert "\\[Sign in again\\]\\(h\u2060ttps\\:\\/\\/evil\\.example\\)" in shown_text
    assert "[Sign in again](https://evil.example)" in words(shown_text)
    assert "](" not in shown_text.replace("\\]\\(", "")
    assert ":red[" not in shown_text
    assert len(at.get("progress")) == 5  # and the demo model still answers


def test_fusion_from_a_link_and_the_model_stays_in_the_url_once_chosen():
    at = from_url(view="Heads", layer="1", fusion="max")
    ok(at)
    data = canvas(at, "heads-canvas")
    assert (data["layer"], data["head"], data["fusion"]) == (1, -1, "max")
    assert "model" not in at.query_params  # nobody chose one: the machine's default
    at.sidebar.selectbox(key="model").set_value(sidebar.OTHER_TIMM).run()
    at.sidebar.selectbox(key="model").set_value("demo").run()  # chosen, even the default
    assert at.query_params["model"] == "demo"
