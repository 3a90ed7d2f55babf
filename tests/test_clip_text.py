"""The CLIP text tower's token relevance for a typed label's caption: the captured text
attention, Chefer's rule on the text side against autograd, the caption's tokens, the CLI's
record and the page's table, on tiny random CLIP models (no hub)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.conftest import ASSETS
from tests.test_app import ok
from vitviz.backends.local import LocalBackend
from vitviz.cli import main
from vitviz.engine.capture import forward_with_attention
from vitviz.errors import OptionsError
from vitviz.models import load_model

pytestmark = pytest.mark.usefixtures("fresh_cache")  # tests/conftest.py

open_clip = pytest.importorskip("open_clip")
from tests.test_clip import (  # noqa: E402, F401 - needs open_clip; fixtures
    LABELS,
    TEXT,
    TINY,
    VISION,
    tiny,
    tiny_configs,
    tiny_file,
)
from vitviz.models import clip_text  # noqa: E402
from vitviz.models.clip_text import text_encoder, text_relevance  # noqa: E402

CAPTION = "a photo of a {}."


def test_captured_text_attention_equals_masked_softmax_of_each_blocks_own_q_and_k(tiny):  # noqa: F811
    clip = tiny.model.tower.clip
    blocks = clip.transformer.resblocks  # open_clip's text blocks, read independently
    encoder = text_encoder(tiny)
    assert text_encoder(tiny.with_labels(["cow"])) is encoder  # one per tower
    tokens = open_clip.get_tokenizer(TINY)(["a photo of a teapot.", "a blurry photo of a red car"])
    inputs: list[torch.Tensor] = []  # each block's attention input: the output of its ln_1
    hooks = [
        blk.ln_1.register_forward_hook(lambda _m, _i, out: inputs.append(out.detach()))
        for blk in blocks
    ]
    try:
        with torch.no_grad():
            features, attention = forward_with_attention(encoder, tokens)
    finally:
        for h in hooks:
            h.remove()
    n, heads = TEXT["context_length"], TEXT["heads"]
    assert len(attention) == len(inputs) == TEXT["layers"]
    causal = torch.full((n, n), float("-inf")).triu(1)  # what open_clip builds, built here
    torch.testing.assert_close(clip.attn_mask, causal)
    for blk, y, got in zip(blocks, inputs, attention, strict=True):
        mha = blk.attn
        d = mha.embed_dim
        w, b = mha.in_proj_weight, mha.in_proj_bias
        q = (y @ w[:d].T + b[:d]).reshape(2, n, heads, d // heads).transpose(1, 2)
        k = (y @ w[d : 2 * d].T + b[d : 2 * d]).reshape(2, n, heads, d // heads).transpose(1, 2)
        want = torch.softmax(q @ k.transpose(-2, -1) / (d // heads) ** 0.5 + causal, dim=-1)
        assert got.shape == (2, heads, n, n)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        assert torch.all(got.triu(1) == 0)  # no token sees a later one
    with torch.no_grad():  # the rest of the tower is open_clip's: the same text features
        torch.testing.assert_close(features, clip.encode_text(tokens), rtol=1e-5, atol=1e-5)
    assert encoder.readout(tokens).tolist() == tokens.argmax(-1).tolist()  # the EOT tokens


def _by_hand(
    loaded, image: Image.Image, caption: str, start_layer: int = 0
) -> tuple[np.ndarray, list[int], float]:
    """Chefer's text relevance row of the EOT token, from autograd's ∂y/∂A and numpy, over the
    text layers from ``start_layer`` on (-1: the last alone, ``R = I + mean_h((∂y/∂A ⊙ A)⁺)``
    of that layer, as Chefer et al.'s CLIP notebook's ``start_layer_text=-1``)."""
    clip = loaded.model.tower.clip
    encoder = text_encoder(loaded)
    x = loaded.to_tensor(loaded.seen_image(image))[None]
    with torch.no_grad():
        picture = F.normalize(clip.encode_image(x), dim=-1)[0]  # open_clip's own image tower
    tokenizer = open_clip.get_tokenizer(TINY)
    tokens = tokenizer([caption])
    attn: list[torch.Tensor] = []
    hooks = [
        blk.attn.attn_drop.register_forward_hook(lambda _m, _i, out: attn.append(out))
        for blk in encoder.blocks
    ]
    try:
        with torch.enable_grad():
            text = F.normalize(encoder(tokens), dim=-1)[0]
            logit = clip.logit_scale.exp() * picture @ text
            grads = torch.autograd.grad(logit, attn)
    finally:
        for h in hooks:
            h.remove()
    r = np.eye(tokens.shape[1])  # R = I; R += mean_h((∂y/∂A ⊙ A)⁺) R, layer by layer
    for a, g in zip(attn[start_layer:], grads[start_layer:], strict=True):
        r = r + np.clip(a[0].detach().numpy() * g[0].numpy(), 0, None).mean(axis=0) @ r
    ids = tokens[0].tolist()
    return r[ids.index(tokenizer.eot_token_id)], ids, float(logit.detach())


def test_relevance_is_chefers_rule_on_autograd_gradients_of_the_image_text_logit(
    tiny,  # noqa: F811
    cat_image,
):
    got = text_relevance(tiny, cat_image, "teapot")
    row, ids, logit = _by_hand(tiny, cat_image, "a photo of a teapot.")
    with torch.no_grad():  # the logit explained is the one the class maps explain
        logits = tiny.model(tiny.to_tensor(tiny.seen_image(cat_image))[None])[0]
    assert logit == pytest.approx(float(logits[LABELS.index("teapot")]), rel=1e-5)
    eot = ids.index(max(ids))
    assert [w for w, _ in got] == ["a", "photo", "of", "a", "teapot", "."]
    assert eot == len(got) + 1  # SOT and EOT left out
    want = row[1:eot] / row[1:eot].sum()
    np.testing.assert_allclose([v for _, v in got], want, rtol=1e-5, atol=1e-9)
    assert sum(v for _, v in got) == pytest.approx(1.0, abs=1e-12)
    assert np.all(row[eot + 1 :] == 0) and eot + 1 < len(row)  # the padding gets none
    assert min(v for _, v in got) >= 0


TEXT_VARIANTS = {  # the text towers open_clip builds besides CLIP's own
    "custom": {"custom_text": True, "text_cfg": TEXT},
    "bidirectional": {"custom_text": True, "text_cfg": {**TEXT, "no_causal_mask": True}},
    "eos": {"text_cfg": {**TEXT, "pool_type": "eos", "eos_id": 49407}},
}


@pytest.fixture(scope="module")
def text_variants(tmp_path_factory, tiny_configs) -> None:  # noqa: F811
    folder = tmp_path_factory.mktemp("clip-text-configs")
    for name, cfg in TEXT_VARIANTS.items():
        cfg = {"embed_dim": 32, "vision_cfg": VISION, **cfg}
        (folder / f"{TINY}-text-{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)


@pytest.mark.parametrize("variant", list(TEXT_VARIANTS))
def test_other_text_towers_read_the_same_way(text_variants, variant, cat_image):
    torch.manual_seed(1)
    loaded = load_model(f"clip:{TINY}-text-{variant}", random_weights=True, device="cpu")
    clip = loaded.model.tower.clip
    assert (variant == "eos") != hasattr(clip, "text")  # CustomTextCLIP keeps its tower whole
    encoder = text_encoder(loaded)
    tokens = open_clip.get_tokenizer(TINY)(["a photo of a teapot.", "a photo of a red car"])
    with torch.no_grad():
        torch.testing.assert_close(encoder(tokens), clip.encode_text(tokens), rtol=1e-5, atol=1e-5)
    got = text_relevance(loaded, cat_image, "teapot")
    row, ids, _ = _by_hand(loaded, cat_image, "a photo of a teapot.")
    eot = ids.index(max(ids))
    assert [w for w, _ in got] == ["a", "photo", "of", "a", "teapot", "."]
    want = row[1:eot] / row[1:eot].sum()
    np.testing.assert_allclose([v for _, v in got], want, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize(
    ("label", "template"),
    [
        ("Teapot", None),
        ("Red   CAR, parked", "A Photo of a {} !"),
        ("熊貓 café", None),
    ],
)
def test_tokens_reassemble_the_caption_as_the_tokenizer_cleans_it(
    tiny,  # noqa: F811
    cat_image,
    label,
    template,
):
    got = text_relevance(tiny, cat_image, label, template=template)
    caption = (template or CAPTION).replace("{}", label)
    words = [w for w, _ in got]
    assert "".join(words) == "".join(caption.lower().split())  # lower-cased, no spaces
    tokenizer = open_clip.get_tokenizer(TINY)
    ids = tokenizer([caption])[0].tolist()
    eot = ids.index(tokenizer.eot_token_id)
    assert "".join(words) == tokenizer.decode(ids[1:eot]).replace(" ", "")  # open_clip's own
    assert all("\ufffd" not in w and w for w in words)
    assert sum(v for _, v in got) == pytest.approx(1.0, abs=1e-12)
    if "熊" in label:  # a character of three byte tokens is one piece, with their relevance
        row, ids, _ = _by_hand(tiny, cat_image, caption)
        start = 5  # SOT, a, photo, of, a
        assert words[4:6] == ["熊", "貓"] and eot - 1 == len(words) + 4
        np.testing.assert_allclose(
            got[4][1], row[start : start + 3].sum() / row[1:eot].sum(), rtol=1e-5
        )


def test_another_label_changes_its_words_share_and_any_typed_label_works(
    tiny,  # noqa: F811
    cat_image,
):
    teapot = text_relevance(tiny, cat_image, "teapot")
    cat = text_relevance(tiny, cat_image, "cat")
    lighthouse = text_relevance(tiny, cat_image, " lighthouse ")  # not one of the model's
    assert [w for w, _ in cat] == ["a", "photo", "of", "a", "cat", "."]
    assert lighthouse[4][0] == "lighthouse"
    assert abs(teapot[4][1] - cat[4][1]) > 1e-3
    assert abs(teapot[4][1] - lighthouse[4][1]) > 1e-3
    drawing = tiny.with_labels(LABELS, "a drawing of a {}")  # the model's template is used
    assert [w for w, _ in text_relevance(drawing, cat_image, "cat")] == ["a", "drawing", "of",
                                                                         "a", "cat"]  # fmt: skip
    backend = LocalBackend(tiny)  # the backend takes the original image, or the seen one
    assert backend.text_relevance(cat_image, "cat") == cat
    assert backend.text_relevance(tiny.seen_image(cat_image), "cat", seen=True) == cat


def test_concurrent_calls_keep_their_own_attention(tiny, cat_image):  # noqa: F811
    labels = ["cat", "teapot", "red car", "dog"]
    want = {lb: text_relevance(tiny, cat_image, lb) for lb in labels}
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda lb: text_relevance(tiny, cat_image, lb), labels * 3))
    for lb, res in zip(labels * 3, got, strict=True):
        assert [w for w, _ in res] == [w for w, _ in want[lb]]
        np.testing.assert_allclose([v for _, v in res], [v for _, v in want[lb]], rtol=1e-6)


def test_other_models_and_bad_labels_are_clear_errors(tiny, cat_image):  # noqa: F811
    demo = load_model("demo", device="cpu")
    with pytest.raises(OptionsError, match="demo is not a CLIP model"):
        text_relevance(demo, cat_image, "cat")
    with pytest.raises(OptionsError, match="not a CLIP model"):
        LocalBackend(demo).text_relevance(cat_image, "cat")
    with pytest.raises(OptionsError, match="control character"):
        text_relevance(tiny, cat_image, "ca\x07t")
    with pytest.raises(OptionsError, match="exactly one"):
        text_relevance(tiny, cat_image, "cat", template="a photo")


def test_cli_writes_the_explained_labels_token_relevance(tiny_file, tmp_path, capsys):  # noqa: F811
    path, original = tiny_file
    image = ASSETS / "chelsea.png"
    model = ["--model", f"clip:{TINY}", "--weights", str(path), "--labels", ",".join(LABELS)]
    for method, extra in [("chefer", ["--class", "teapot"]), ("rollout", [])]:
        out = ["--method", method, "--out", str(tmp_path / method), *extra]
        rc = main(["explain", str(image), *model, *out])
        assert rc == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "chefer" / "chelsea.json").read_text())
    assert record["explained_class"] == {"index": 2, "label": "teapot"}
    reference = original.with_labels(LABELS)
    want = text_relevance(reference, Image.open(image).convert("RGB"), "teapot")
    got = record["text_relevance"]
    assert [w for w, _ in got] == [w for w, _ in want] == ["a", "photo", "of", "a", "teapot", "."]
    np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=1e-5, atol=1e-9)
    rollout = json.loads((tmp_path / "rollout" / "chelsea.json").read_text())
    assert "text_relevance" not in rollout  # no class map, no caption


def test_cli_text_start_layer(tiny_file, tmp_path, capsys):  # noqa: F811
    path, original = tiny_file
    image = ASSETS / "chelsea.png"
    model = ["--model", f"clip:{TINY}", "--weights", str(path), "--labels", ",".join(LABELS)]
    common = ["--method", "chefer", "--class", "teapot", *model]
    reference = original.with_labels(LABELS)
    seen = Image.open(image).convert("RGB")
    got = {}
    for first in (0, -1):
        out = tmp_path / f"from{first}"
        rc = main(
            ["explain", str(image), *common, "--out", str(out), "--text-start-layer", str(first)]
        )
        assert rc == 0, capsys.readouterr().err
        got[first] = json.loads((out / "chelsea.json").read_text())["text_relevance"]
        want = text_relevance(reference, seen, "teapot", start_layer=first)
        np.testing.assert_allclose(
            [v for _, v in got[first]], [v for _, v in want], rtol=1e-5, atol=1e-9
        )
    assert not np.allclose([v for _, v in got[0]], [v for _, v in got[-1]])
    rc = main(
        ["explain", str(image), *common, "--out", str(tmp_path / "bad"), "--text-start-layer", "99"]
    )
    err = capsys.readouterr().err
    assert rc != 0 and "--text-start-layer" in err and "Traceback" not in err


def test_the_page_shows_the_captions_words_under_a_typed_labels_class_map(monkeypatch):
    """CLIP ViT-B/32 (random weights) with three typed classes: under "why this class?" the
    table of the caption's tokens equals the engine's, and a rerun reads it from the cache."""
    from tests.test_page_families import _clip_page
    from vitviz.inputs.images import decode_image
    from vitviz.ui import resources
    from vitviz.ui.i18n import t

    typed = ["cat", "dog", "teapot"]
    at = _clip_page("\n".join(typed))
    ok(at)
    assert not at.dataframe  # nothing before a class map is asked for
    at.toggle(key="why_class").set_value(True).run()
    ok(at)
    cls = at.selectbox(key="target_class").value
    label = typed[cls]
    base = resources.page_caches().models.get(("clip-b32", None, True))
    engine = LocalBackend(base.loaded.with_labels(typed, None))
    name = at.session_state["sample"] if "sample" in at.session_state else "chelsea.png"  # noqa: SIM401
    image = decode_image((ASSETS / name).read_bytes(), name, reduce=engine.geometry).image
    want = engine.text_relevance(image, label, seen=True)
    word, share = t("text_relevance.word", "en"), t("text_relevance.share", "en")

    def shown() -> tuple[list[str], list[float]]:
        (table,) = at.dataframe
        return list(table.value[word]), list(table.value[share])

    words, values = shown()
    assert words == [w for w, _ in want] and words[:4] == ["a", "photo", "of", "a"]
    np.testing.assert_allclose(values, [v for _, v in want], rtol=1e-5, atol=1e-9)
    title = t("text_relevance.title", "en", label=label)
    assert any(m.value == title for m in at.markdown)

    def not_again(*_args, **_kwargs):
        raise AssertionError("computed again")

    monkeypatch.setattr(clip_text, "text_relevance", not_again)
    at.run()  # a rerun: the explanation entry has it
    ok(at)
    assert shown() == (words, values)


def test_the_start_layer_last_is_the_last_layers_relevance_alone(tiny, cat_image):  # noqa: F811
    layers = TEXT["layers"]
    row, ids, _ = _by_hand(tiny, cat_image, "a photo of a teapot.", start_layer=-1)
    eot = ids.index(max(ids))
    want = row[1:eot] / row[1:eot].sum()
    for last in (-1, layers - 1):
        got = text_relevance(tiny, cat_image, "teapot", start_layer=last)
        assert [w for w, _ in got] == ["a", "photo", "of", "a", "teapot", "."]
        np.testing.assert_allclose([v for _, v in got], want, rtol=1e-5, atol=1e-9)
    # the stated default, 0, is every layer (the hand computation of the test above)
    assert clip_text.DEFAULT_START_LAYER == 0
    every = text_relevance(tiny, cat_image, "teapot")
    assert every == text_relevance(tiny, cat_image, "teapot", start_layer=0)
    full, _, _ = _by_hand(tiny, cat_image, "a photo of a teapot.")
    np.testing.assert_allclose([v for _, v in every], full[1:eot] / full[1:eot].sum(), rtol=1e-5)
    assert not np.allclose([v for _, v in every], want, rtol=1e-3)  # the two differ
    backend = LocalBackend(tiny)
    assert backend.text_relevance(cat_image, "teapot", start_layer=-1) == got
    for bad in (layers, -layers - 1, 1.5, True):
        with pytest.raises(OptionsError, match="start_layer"):
            text_relevance(tiny, cat_image, "teapot", start_layer=bad)


def test_the_start_layer_travels_to_a_server(tiny_file, cat_image, monkeypatch):  # noqa: F811
    from tests.test_service import engine_client
    from vitviz.server.options import TextRelevanceOptions
    from vitviz.server.service import Engine, Settings

    path, _ = tiny_file
    engine = Engine(
        Settings(model=f"clip:{TINY}", weights=str(path), device="cpu", labels="cat, teapot")
    )
    assert TextRelevanceOptions(label="cat").start_layer == 0  # the stated default
    client = engine_client(engine, monkeypatch)
    for first in (0, -1, 1):
        want = engine.backend.text_relevance(cat_image, "teapot", start_layer=first)
        assert client.text_relevance(cat_image, "teapot", start_layer=first) == want
    assert client.text_relevance(cat_image, "teapot", start_layer=-1) != client.text_relevance(
        cat_image, "teapot"
    )
    with pytest.raises(OptionsError, match="start_layer"):  # the server's 400, said as such
        client.text_relevance(cat_image, "teapot", start_layer=99)
    # a server that ignores the option (older than it) is caught, not believed
    monkeypatch.setattr(
        Engine,
        "text_relevance_answer",
        lambda self, body, options: {"label": options.label, "tokens": [["a", 1.0]]},
    )
    from vitviz.errors import ServerError

    with pytest.raises(ServerError, match="text layer"):
        client.text_relevance(cat_image, "teapot", start_layer=-1)


def test_the_page_offers_the_text_start_layer_and_keeps_it_in_the_url():
    """The choice starts at the stated default (0, every text layer, the engine's); the last
    layer alone gives the engine's start_layer=-1 table, and the choice is in the URL."""
    from tests.test_page_families import _clip_page
    from vitviz.inputs.images import decode_image
    from vitviz.ui import resources
    from vitviz.ui.i18n import t
    from vitviz.ui.views import rollout

    assert rollout.TEXT_STARTS[0] == clip_text.DEFAULT_START_LAYER == 0
    typed = ["cat", "dog", "teapot"]
    at = _clip_page("\n".join(typed))
    at.toggle(key="why_class").set_value(True).run()
    ok(at)
    choice = at.segmented_control(key="text_start_layer")
    assert choice.value == 0 and "Default: every layer" in choice.help
    assert "text_start_layer" not in at.query_params
    choice.set_value(-1).run()  # the last text layer alone, as Chefer et al.'s notebook
    ok(at)
    assert at.query_params["text_start_layer"] == "-1"
    label = typed[at.selectbox(key="target_class").value]
    base = resources.page_caches().models.get(("clip-b32", None, True))
    engine = LocalBackend(base.loaded.with_labels(typed, None))
    name = at.session_state["sample"] if "sample" in at.session_state else "chelsea.png"  # noqa: SIM401
    image = decode_image((ASSETS / name).read_bytes(), name, reduce=engine.geometry).image
    want = engine.text_relevance(image, label, seen=True, start_layer=-1)
    (table,) = at.dataframe
    np.testing.assert_allclose(
        list(table.value[t("text_relevance.share", "en")]), [v for _, v in want], rtol=1e-5
    )
