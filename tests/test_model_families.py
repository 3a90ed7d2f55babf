"""Model families are registrations: a toy family registered here (``toy:…``, a tiny
random-weight timm ViT) is found by the loader, the parameter count, the weights plan, the
command line and the page, with no edit elsewhere; the built-in families' flags give
today's behaviour; the loader's "pass --weights FILE" errors carry a code the page words."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from timm.data import resolve_model_data_config

from tests.conftest import ASSETS
from tests.test_app import ok
from vitviz import models
from vitviz.errors import ModelError, OptionsError, WeightsError
from vitviz.models import families
from vitviz.models.families import Built, Family, Request
from vitviz.results import WeightsInfo

pytestmark = pytest.mark.usefixtures("fresh_cache")  # each test starts without page caches

TOY_LABELS = ["red", "green", "blue"]
TOY_REFUSAL = "toy models make their own weights; no --weights FILE"


def _toy_model() -> torch.nn.Module:
    return timm.create_model("vit_tiny_patch16_224", depth=2, num_classes=len(TOY_LABELS))


def _toy_check(ref: str) -> None:
    if ref != "tiny":
        raise ModelError(f"toy:{ref}: the toy family has one model, toy:tiny")


def _toy_count(ref: str, model_kwargs: dict[str, Any] | None = None) -> int:
    _toy_check(ref)
    with torch.device("meta"):
        model = _toy_model()
    return sum(t.numel() for t in (*model.parameters(), *model.buffers()))


def _toy_build(req: Request) -> Built:
    _toy_check(req.ref)
    torch.manual_seed(0)
    model = _toy_model()
    given = req.weights
    return Built(
        name=f"toy:{req.ref}",
        title="Toy ViT (2 layers)",
        model=model,
        data_config=resolve_model_data_config(model),
        labels=list(TOY_LABELS),
        weights=given.info if given is not None else WeightsInfo("bundled", "toy", note="toy"),
    )


DOWNLOADS: list[str] = []


def _toy_download(ref: str, progress=None) -> Path | None:
    DOWNLOADS.append(ref)
    if progress is not None:
        progress(1, 1)
    return None


TOY = Family(
    name="toy",
    prefix="toy",
    build=_toy_build,
    count=_toy_count,
    plan=lambda ref: f"made on the spot for toy:{ref}",
    download=_toy_download,
    check=_toy_check,
    no_weights_file=TOY_REFUSAL,
)


@pytest.fixture
def toy():
    families.register(TOY)
    DOWNLOADS.clear()
    try:
        yield TOY
    finally:
        families.unregister(TOY)


# ----------------------------------------------------------------------------- a toy family


def test_the_loader_finds_a_registered_family(toy, cat_image):
    from vitviz.engine.capture import capture

    assert families.lookup("toy:tiny") == (TOY, "tiny")
    assert models.model_family("toy:tiny") == ("toy", "tiny")
    loaded = models.load_model("toy:tiny", device="cpu")
    assert loaded.name == "toy:tiny" and loaded.title == "Toy ViT (2 layers)"
    assert loaded.num_layers == 2 and loaded.labels == TOY_LABELS
    assert loaded.weights.source == "bundled" and not loaded.typed_labels
    assert capture(loaded, [cat_image]).logits.shape == (1, 3)
    # what every family shares comes from the loader: random weights, the refusals
    assert models.load_model("toy:tiny", random_weights=True).weights.source == "random"
    with pytest.raises(ModelError, match="one model"):
        models.load_model("toy:huge")
    with pytest.raises(ModelError, match="no --weights FILE"):
        models.load_model("toy:tiny", weights="model.safetensors")
    with pytest.raises(ModelError, match="apply to timm models only; toy models"):
        models.load_model("toy:tiny", keep_aspect=True)


def test_count_plan_and_download_find_it(toy):
    real = sum(t.numel() for t in (*_toy_model().parameters(), *_toy_model().buffers()))
    assert models.model_parameters("toy:tiny") == real
    with pytest.raises(ModelError, match="over the limit of 0 M"):
        models.load_model("toy:tiny", max_params=1000)
    models.check_model_size("toy:tiny", real)  # at the limit: fine
    assert models.weights_plan("toy:tiny") == "made on the spot for toy:tiny"
    seen = []
    assert models.download_weights("toy:tiny", lambda d, t: seen.append((d, t))) is None
    assert DOWNLOADS == ["tiny"] and seen == [(1, 1)]


def test_the_command_line_finds_it(toy, tmp_path, capsys):
    from vitviz.cli import main

    image = ASSETS / "chelsea.png"
    rc = main(["explain", str(image), "--model", "toy:tiny", "--out", str(tmp_path)])
    assert rc == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "chelsea.json").read_text())
    assert record["model"]["name"] == "toy:tiny"
    assert {p["label"] for p in record["predictions"]} <= set(TOY_LABELS)
    # its flags: no typed classes (a toy model has fixed classes)
    rc = main(["explain", str(image), "--model", "toy:tiny", "--labels", "cat,dog"])
    assert rc == 2 and "has fixed classes" in capsys.readouterr().err


def test_serve_checks_it_before_ray(toy):
    from vitviz.cli.serve import check_before_ray

    args = argparse.Namespace(
        model="toy:huge", weights=None, labels=None, template=None, max_batch_size=1,
        queue_limit=1, max_uploads=1, timeout=1.0, upload_timeout=1.0, max_upload_mb=1.0,
        max_answer_mb=1.0,
    )  # fmt: skip
    with pytest.raises(ModelError, match="one model"):
        check_before_ray(args)
    args.model = "toy:tiny"
    check_before_ray(args)


def test_the_page_finds_it(toy):
    from tests.test_page_state import from_url
    from vitviz.ui import resources

    at = from_url(model="__timm__", timm_name="toy:tiny")
    ok(at)  # typed on the page: it reads no folder and needs no typed classes
    assert resources.page_caches().models.get(("toy:tiny", None, False)) is not None


def test_the_page_refuses_a_family_whose_names_may_name_a_folder():
    from tests.test_page_state import from_url

    folder = Family(**{**TOY.__dict__, "name": "toydir", "prefix": "toydir", "local_folder": True})
    families.register(folder)
    try:
        at = from_url(model="__timm__", timm_name="toydir:/etc")
        assert not at.exception
        assert any("not a timm name" in e.value for e in at.sidebar.error)
    finally:
        families.unregister(folder)


def test_registering_twice_or_a_taken_prefix_is_an_error(toy):
    with pytest.raises(ValueError, match="registered already"):
        families.register(TOY)
    with pytest.raises(ValueError, match="prefix 'hf' is taken"):
        families.register(Family(**{**TOY.__dict__, "name": "other", "prefix": "hf"}))
    with pytest.raises(ValueError, match="default family"):
        families.register(Family(**{**TOY.__dict__, "name": "other", "prefix": None}))


def test_an_unregistered_prefix_is_a_timm_name_again():
    assert "toy" not in families.registered()
    assert models.model_family("toy:tiny") == ("timm", "toy:tiny")
    with pytest.raises(ModelError, match="unknown model"):
        models.load_model("toy:tiny")
    with pytest.raises(ModelError, match="unknown model"):  # no count kept from the toy
        models.model_parameters("toy:tiny")


# ----------------------------------------------------------------------------- built-in flags


def test_the_built_in_families_and_their_names():
    built_in = families.registered()
    assert {"timm", "hf", "clip"} <= set(built_in)
    assert families.lookup("vit-b16")[0].name == "timm"
    assert families.lookup("demo") == (built_in["timm"], "demo")  # timm resolves the key
    assert families.lookup("hf-vit-b16") == (built_in["hf"], "google/vit-base-patch16-224")
    assert families.lookup("hf:./folder") == (built_in["hf"], "./folder")
    assert families.lookup("clip-b32") == (built_in["clip"], "ViT-B-32/openai")
    assert families.lookup("clip:hf-hub:org/name") == (built_in["clip"], "hf-hub:org/name")
    assert families.lookup("vit_small_patch16_224.dino")[0].name == "timm"
    # model_family parses as before: a curated key's timm name, prefixes, timm by default
    assert models.model_family("demo") == ("timm", "vit_tiny_patch16_224")
    assert models.model_family("hf:x/y") == ("hf", "x/y")
    assert models.model_family("other:x") == ("timm", "other:x")


def test_the_built_in_flags_give_todays_behaviour():
    flags = {
        name: (f.typed_labels, f.weights_file, f.page_weights_file, f.local_folder)
        for name, f in families.registered().items()
        if name in ("timm", "hf", "clip")
    }
    # typed classes: CLIP only; a weights file on the page: timm only (the command line
    # reads CLIP weights from a file too); a folder of the machine: hf only
    assert flags == {
        "timm": (False, True, True, False),
        "hf": (False, False, False, True),
        "clip": (True, True, False, False),
    }
    typed = {name: f.typed_on_page for name, f in families.registered().items()}
    assert typed["timm"] and not typed["hf"] and not typed["clip"]
    assert [n for n, f in families.registered().items() if f.creation_args] == ["timm"]


def test_typed_labels_only_for_clip_names():
    from vitviz.cli.common import typed_labels

    args = argparse.Namespace(labels="cat,dog", template=None)
    for name in ("vit-b16", "demo", "hf-vit-b16", "hf:google/vit-base-patch16-224"):
        with pytest.raises(OptionsError, match="fixed classes"):
            typed_labels(args, name)
    pytest.importorskip("open_clip")
    assert typed_labels(args, "clip-b32") == (["cat", "dog"], None)
    assert typed_labels(args, "clip:ViT-B-32/openai") == (["cat", "dog"], None)


def test_a_hugging_face_model_refuses_a_weights_file_as_before():
    with pytest.raises(ModelError, match="--weights takes a timm weights file"):
        models.load_model("hf:google/vit-base-patch16-224", weights="model.safetensors")


# ----------------------------------------------------------------------------- page words


def test_the_loaders_way_out_has_a_code_the_page_words():
    from vitviz.ui import i18n
    from vitviz.ui.resources import for_the_page

    with pytest.raises(WeightsError) as caught:
        models.load_model("deit-s16")  # offline here: not cached, the hub not reached
    err = caught.value
    assert err.code == "weights_unreachable"
    assert "--weights FILE" in str(err)  # the command line's words stay
    reason = err.fields["reason"]
    assert reason.startswith("model deit-s16: the weights deit_small_patch16_224")
    assert str(err).startswith(reason)
    page = for_the_page(str(err), err.code, err.fields)
    assert "--weights" not in page and "Weights file on this server" in page
    zh = i18n.t("error_code.weights_unreachable", "zh-Hant", **err.fields)
    assert "這臺伺服器上的權重檔" in zh and "--weights" not in zh
    # other errors read as the loader said them
    assert for_the_page("unknown model 'x'", "model", {}) == "unknown model 'x'"


def test_no_pretrained_weights_has_a_code_the_page_words():
    from vitviz.ui import i18n
    from vitviz.ui.resources import for_the_page

    with pytest.raises(WeightsError) as caught:
        models.load_model("vit_base_patch16_18x2_224")  # timm has no weights for it
    err = caught.value
    assert err.code == "weights_none"
    assert str(err) == (
        "timm has no pretrained weights for vit_base_patch16_18x2_224: pass --weights FILE "
        "(or --random-weights for an architecture test)"
    )
    page = for_the_page(str(err), err.code, err.fields)
    assert "--" not in page and "Weights file on this server" in page
    assert "Random weights" in page
    zh = i18n.t("error_code.weights_none", "zh-Hant", **err.fields)
    assert "隨機權重" in zh and "--" not in zh
