"""The page's model picker for other libraries: Hugging Face hub ids (never a path on the
machine running the page) and CLIP with the classes a person types."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_app import ok
from tests.test_page_state import from_url

pytestmark = pytest.mark.usefixtures("fresh_cache")  # tests/conftest.py


@pytest.mark.parametrize(
    "typed", ["../../etc/passwd", "/srv/models/vit", "owner/name/extra", "a b/c", "x" * 300]
)
def test_a_hub_id_field_takes_only_owner_slash_name(typed):
    at = from_url(model="__hf__", hf_id=typed)
    assert not at.exception
    assert any("not a hub id" in e.value for e in at.sidebar.error)
    assert len(at.get("progress")) == 5  # the demo model answers meanwhile


def test_a_typed_timm_name_cannot_reach_another_library():
    at = from_url(model="__timm__", timm_name="hf:/etc")
    assert not at.exception
    assert any("not a timm name" in e.value for e in at.sidebar.error)


def test_a_hub_id_offline_fails_fast_and_says_why():
    at = from_url(model="__hf__", hf_id="google/vit-base-patch16-224")
    assert not at.exception
    assert at.error  # the reason, in words; the demo model stands in
    assert len(at.get("progress")) == 5


def _clip_page(labels: str):
    pytest.importorskip("open_clip")
    return from_url(model="clip-b32", random_weights="true", clip_labels=labels)


def test_clip_scores_the_classes_a_person_types_and_explains_each():
    """CLIP ViT-B/32 (random weights: no hub here) over three typed classes: the top-k are
    those classes, and "why this class?" explains a typed label with Chefer's map of the
    image–text similarity, equal to the engine's on the page's own model."""
    import numpy as np

    from tests.conftest import ASSETS
    from tests.test_app import shown
    from vitviz import methods
    from vitviz.backends.local import LocalBackend
    from vitviz.inputs.images import decode_image
    from vitviz.ui import resources

    at = _clip_page("cat\ndog\nteapot")
    ok(at)
    bars = [p.proto.text for p in at.get("progress")]
    assert len(bars) == 3 and {b.split(" — ")[0] for b in bars} == {"cat", "dog", "teapot"}
    total = sum(float(b.rsplit("— ", 1)[1].rstrip("%")) for b in bars)
    assert abs(total - 100) < 0.5  # a softmax over the typed classes only
    at.toggle(key="why_class").set_value(True).run()
    ok(at)
    labels = at.selectbox(key="target_class").options
    assert len(labels) == 3
    base = resources.page_caches().models.get(("clip-b32", None, True))
    typed = LocalBackend(base.loaded.with_labels(["cat", "dog", "teapot"], None))
    name = at.session_state["sample"] if "sample" in at.session_state else "chelsea.png"  # noqa: SIM401
    image = decode_image((ASSETS / name).read_bytes(), name).image
    cls = at.selectbox(key="target_class").value
    res = typed.explain_classes([image], [[cls]], full_gradients=True)[0]
    want = methods.compute_map(
        "chefer", res.explanation.attention, res.explanation.layout, grads=res.gradients[0]
    )
    np.testing.assert_allclose(shown(at, "class-map"), want, rtol=1e-3, atol=1e-9)


def test_bad_typed_classes_say_why_and_the_everyday_classes_stand_in():
    at = _clip_page("cat")  # one class is no choice
    assert not at.exception
    assert any("at least two classes" in e.value for e in at.sidebar.error)
    assert len(at.get("progress")) == 5  # the top 5 of the ten everyday classes
    at = _clip_page("cat\n" + "x" * 81)
    assert any("characters" in e.value for e in at.sidebar.error)


@pytest.mark.parametrize("typed", ["vitviz/models", "tests/__pycache__", "a--b/c", "a/b."])
def test_a_hub_id_is_never_a_folder_and_a_bad_one_is_no_traceback(typed):
    """``vitviz/models`` exists next to the page, but a hub id never reads a folder; ids the
    hub's own rule refuses are said in words."""
    at = from_url(model="__hf__", hf_id=typed)
    assert not at.exception
    text = " ".join(e.value for e in [*at.error, *at.sidebar.error])
    assert "config.json" not in text and "folder" not in text.replace("local folder", "")
    assert len(at.get("progress")) == 5


def test_the_weights_file_field_takes_timm_architectures_only():
    at = from_url(model="demo")
    at.sidebar.selectbox(key="model").set_value("__file__").run()
    at.sidebar.text_input(key="file_arch").input("hf:/etc").run()
    assert not at.exception
    assert any("not a timm name" in e.value for e in at.sidebar.error)


def test_one_wrapper_per_label_set_and_invisible_characters_refused():
    pytest.importorskip("open_clip")
    from vitviz.errors import OptionsError
    from vitviz.inputs.prompts import check_labels
    from vitviz.ui import resources

    with pytest.raises(OptionsError, match="U\\+200B"):
        check_labels(["ca\u200bt", "cat"])  # would look like "cat" twice
    at = _clip_page("cat\ndog")
    ok(at)
    base = resources.page_caches().models.get(("clip-b32", None, True))
    first = resources.typed_classes(base, ["cat", "dog"], None)
    assert resources.typed_classes(base, ["cat", "dog"], None) is first  # reused
    assert resources.typed_classes(base, ["cat", "cow"], None) is not first
    assert first.labels == ["cat", "dog"]


def test_a_hugging_face_vit_from_the_cache_works_on_the_page(tmp_path):
    """A tiny transformers ViT placed in the (test's own) Hugging Face cache, opened by its
    hub id: predictions come from its id2label, and the rollout is the engine's."""
    transformers = pytest.importorskip("transformers")
    import numpy as np
    import torch
    from huggingface_hub import constants

    from tests.conftest import ASSETS
    from tests.test_app import shown
    from vitviz import methods
    from vitviz.inputs.images import decode_image
    from vitviz.models import load_model

    names = ["cat", "dog", "teapot", "rocket", "coffee", "tree"]
    config = transformers.ViTConfig(
        image_size=64, patch_size=16, hidden_size=48, num_hidden_layers=3,
        num_attention_heads=4, intermediate_size=96,
        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(config).eval()
    repo = Path(constants.HF_HUB_CACHE) / "models--vitviz-test--page-vit"
    snapshot = repo / "snapshots" / ("1" * 40)
    model.save_pretrained(snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text("1" * 40)
    at = from_url(model="__hf__", hf_id="vitviz-test/page-vit")
    ok(at)
    bars = [p.proto.text.split(" — ")[0] for p in at.get("progress")]
    assert len(bars) == 5 and set(bars) <= set(names)
    loaded = load_model("hf:vitviz-test/page-vit", device="cpu")
    from vitviz.backends.local import LocalBackend

    image = decode_image((ASSETS / "chelsea.png").read_bytes(), "chelsea.png").image
    expl = LocalBackend(loaded).explain([image])[0]
    want = methods.compute_map("rollout", expl.attention, expl.layout)
    np.testing.assert_allclose(shown(at, "rollout"), want, rtol=1e-5)
