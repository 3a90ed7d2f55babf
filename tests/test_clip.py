"""CLIP (open_clip) image towers with typed labels: capture, logits, class maps, prompts,
weights, the CLI and the server's labels, on tiny random CLIP models (no hub)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from tests.conftest import ASSETS
from vitviz import methods
from vitviz.backends.local import LocalBackend
from vitviz.cli import main
from vitviz.engine.capture import capture, capture_tensor
from vitviz.errors import ModelError, OptionsError, WeightsError
from vitviz.inputs.prompts import (
    DEFAULT_LABELS,
    MAX_LABEL_FILE_BYTES,
    check_labels,
    check_template,
    read_labels,
)
from vitviz.models import load_model, weights_plan

open_clip = pytest.importorskip("open_clip")
from vitviz.models import clip as clip_models  # noqa: E402 - needs open_clip

TINY = "vitviz-tiny-clip"
TEXT = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}
VISION = {"image_size": 64, "layers": 3, "width": 64, "head_width": 32, "patch_size": 16}
VARIANTS = {  # the pooling and block options open_clip's ViT towers use
    TINY: {},
    f"{TINY}-avg": {"pool_type": "avg"},
    f"{TINY}-clipa": {"pool_type": "avg", "final_ln_after_pool": True, "no_ln_pre": True},
    f"{TINY}-ls": {"ls_init_value": 0.5},
}
LABELS = ["cat", "dog", "teapot"]


@pytest.fixture(scope="session", autouse=True)
def tiny_configs(tmp_path_factory) -> None:
    """Register the tiny architectures with open_clip (as a user's own config would be)."""
    folder = tmp_path_factory.mktemp("clip-configs")
    for name, extra in VARIANTS.items():
        cfg = {"embed_dim": 32, "vision_cfg": {**VISION, **extra}, "text_cfg": TEXT}
        (folder / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)


def tiny_clip(name: str = TINY, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return load_model(f"clip:{name}", random_weights=True, device="cpu", **kwargs)


@pytest.fixture(scope="session")
def tiny() -> object:
    return tiny_clip().with_labels(LABELS)


@pytest.fixture(scope="session")
def tiny_file(tmp_path_factory) -> tuple[Path, object]:
    """The tiny model's open_clip state dict as safetensors, and the model itself."""
    loaded = tiny_clip(seed=3)
    path = tmp_path_factory.mktemp("clip-weights") / "tiny-clip.safetensors"
    sd = loaded.model.tower.clip.state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path, loaded


def openclip_logits(loaded, x: torch.Tensor, labels, template="a photo of a {}."):
    """Logits from open_clip's own encoders and tokenizer (the reference)."""
    clip = loaded.model.tower.clip
    tokens = open_clip.get_tokenizer(TINY)([template.replace("{}", lb) for lb in labels])
    with torch.no_grad():
        image = F.normalize(clip.encode_image(x), dim=-1)
        text = F.normalize(clip.encode_text(tokens), dim=-1)
        return clip.logit_scale.exp() * image @ text.T


def test_captured_attention_equals_softmax_of_each_blocks_own_q_and_k(tiny, cat_image):
    inputs: list[torch.Tensor] = []  # each block's attention input: the output of its ln_1
    hooks = [
        blk.ln_1.register_forward_hook(lambda _m, _i, out: inputs.append(out.detach()))
        for blk in tiny.model.tower.clip.visual.transformer.resblocks
    ]
    try:
        cap = capture(tiny, [cat_image, cat_image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])
    finally:
        for h in hooks:
            h.remove()
    attn = cap.attention  # [B, L, H, N, N]
    blocks = tiny.model.tower.clip.visual.transformer.resblocks
    assert attn.shape == (2, 3, 2, 17, 17) and len(inputs) == 3
    for layer, (blk, y) in enumerate(zip(blocks, inputs, strict=True)):
        mha = blk.attn  # open_clip's nn.MultiheadAttention, read independently
        d, h = mha.embed_dim, mha.num_heads
        w, b = mha.in_proj_weight, mha.in_proj_bias
        q = (y @ w[:d].T + b[:d]).reshape(2, 17, h, d // h).transpose(1, 2)
        k = (y @ w[d : 2 * d].T + b[d : 2 * d]).reshape(2, 17, h, d // h).transpose(1, 2)
        want = torch.softmax(q @ k.transpose(-2, -1) / (d // h) ** 0.5, dim=-1)
        torch.testing.assert_close(attn[:, layer], want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 3, 2, 17))
    assert cap.layout.prefix == ("cls",) and cap.layout.grid == (4, 4)
    assert cap.layout.readout == "cls"


@pytest.mark.parametrize("name", list(VARIANTS))
def test_image_features_and_logits_equal_open_clips_own(name):
    loaded = tiny_clip(name).with_labels(LABELS, "a blurry photo of a {}")
    x = torch.randn(2, 3, 64, 64)
    clip = loaded.model.tower.clip
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.encode_image(x), clip.encode_image(x))
        logits = loaded.model(x)
    want = openclip_logits(loaded, x, LABELS, "a blurry photo of a {}")
    torch.testing.assert_close(logits, want, rtol=1e-5, atol=1e-5)
    captured, attention, layout = capture_tensor(loaded, x)  # the captured pass: same logits
    torch.testing.assert_close(captured, want, rtol=1e-5, atol=1e-5)
    assert layout.readout == ("cls" if name in (TINY, f"{TINY}-ls") else "avg")
    assert attention.shape == (2, 3, 2, 17, 17)


def test_top_k_probabilities_over_the_typed_labels(tiny, cat_image):
    backend = LocalBackend(tiny)
    expl = backend.explain([cat_image], top_k=2)[0]
    seen = tiny.to_tensor(tiny.seen_image(cat_image))[None]
    probs = openclip_logits(tiny, seen, LABELS).softmax(-1)[0]
    order = probs.argsort(descending=True)[:2].tolist()
    assert [p.label for p in expl.predictions] == [LABELS[i] for i in order]
    assert [p.index for p in expl.predictions] == order
    np.testing.assert_allclose(
        [p.probability for p in expl.predictions], probs[order].numpy(), rtol=1e-5
    )
    info = backend.info()
    assert info.classes == 3 and info.timm_name == f"clip:{TINY}"
    assert info.label_set and info.label_set != tiny_clip().describe().label_set


def test_a_typed_labels_class_map_is_chefers_of_the_image_text_similarity(tiny, cat_image):
    backend = LocalBackend(tiny)
    target = LABELS.index("teapot")
    res = backend.explain_classes([cat_image], [[target]], full_gradients=True)[0]
    assert res.labels == ["teapot"] and res.classes == [target]
    attention, layout = res.explanation.attention, res.explanation.layout
    grads = res.gradients[0]
    by_relevance = methods.compute_map("chefer", attention, layout, grads=res.relevance[0])
    by_gradients = methods.compute_map("chefer", attention, layout, grads=grads)
    np.testing.assert_allclose(by_relevance, by_gradients, rtol=1e-5, atol=1e-8)

    # independent: ∂(logit_scale · cos(image, text "a photo of a teapot."))/∂A by hand
    clip = tiny.model.tower.clip
    tokens = open_clip.get_tokenizer(TINY)(["a photo of a teapot."])
    with torch.no_grad():
        text = F.normalize(clip.encode_text(tokens), dim=-1)[0]
    x = tiny.to_tensor(tiny.seen_image(cat_image))[None].requires_grad_(True)
    attn: list[torch.Tensor] = []
    hooks = [
        blk.attn.attn_drop.register_forward_hook(lambda _m, _i, out: attn.append(out))
        for blk in tiny.model.blocks
    ]
    try:
        with torch.enable_grad():
            image = F.normalize(tiny.model.encode_image(x), dim=-1)[0]
            similarity = clip.logit_scale.exp() * image @ text
            want = torch.autograd.grad(similarity, attn)
    finally:
        for h in hooks:
            h.remove()
    want = torch.stack([g[0] for g in want]).numpy()
    np.testing.assert_allclose(grads, want, rtol=1e-4, atol=1e-7)

    # Chefer's rule by hand: R = I; R += mean_h((∂y/∂A ⊙ A)⁺) R; map = R[cls, 1:]
    r = np.eye(layout.num_tokens)
    for a, g in zip(attention, want, strict=True):
        r = r + np.clip(a * g, 0, None).mean(axis=0) @ r
    np.testing.assert_allclose(by_gradients, r[0, 1:].reshape(4, 4), rtol=1e-4, atol=1e-8)


def test_other_labels_change_the_logits_but_not_the_attention(tiny, cat_image, monkeypatch):
    clip = tiny.model.tower.clip
    encoded: list[int] = []
    real = clip.encode_text

    def counting(tokens, *args, **kwargs):
        encoded.append(len(tokens))
        return real(tokens, *args, **kwargs)

    monkeypatch.setattr(clip, "encode_text", counting)
    other = tiny.with_labels(["teapot", "lighthouse", "cat", "lighthouse "])
    assert other.labels == ["teapot", "lighthouse", "cat"]  # the duplicate dropped
    assert encoded == [1]  # teapot and cat were encoded before
    assert other.model.blocks is tiny.model.blocks  # one tower
    a = capture(tiny, [cat_image])
    b = capture(other, [cat_image])
    assert torch.equal(a.attention, b.attention)
    assert a.logits.shape == (1, 3) and b.logits.shape == (1, 3)
    torch.testing.assert_close(a.logits[0, [2, 0]], b.logits[0, [0, 2]])  # teapot, cat: same
    assert not torch.allclose(a.logits[0, 1], b.logits[0, 1])  # dog ≠ lighthouse
    again = tiny.with_labels(LABELS)
    assert encoded == [1] and again.describe().label_set == tiny.describe().label_set


def test_default_labels_and_template(tiny):
    plain = tiny_clip()
    assert plain.labels == list(DEFAULT_LABELS) and 8 <= len(DEFAULT_LABELS) <= 12
    assert plain.model.template == "a photo of a {}."
    templated = tiny.with_labels(None, "a drawing of a {}")
    assert templated.labels == LABELS and templated.model.template == "a drawing of a {}"


@pytest.mark.parametrize(
    ("labels", "template", "words"),
    [
        ([f"label {i}" for i in range(65)], None, "more than 64 labels"),
        (["x" * 81], None, "81 characters, over the limit of 80"),
        (["cat", "d\x07og"], None, "label 2 ('d\\x07og') contains a control character (U+0007)"),
        (["cat", "bad\u202eword"], None, "control character (U+202E)"),
        (["cat", "   "], None, "label 2 is empty"),
        ([], None, "no labels given"),
        (["cat"], "a photo of a cat", "exactly one {}"),
        (["cat"], "{} and {}", "exactly one {}"),
        (["cat"], "a {} " + "x" * 120, "over the limit of 120"),
        (["cat"], "a {}\n", "control character (U+000A)"),
    ],
)
def test_bad_prompts_are_clear_errors(tiny, labels, template, words):
    with pytest.raises(OptionsError) as err:
        tiny.with_labels(labels, template)
    assert words in str(err.value)


def test_labels_are_stripped_and_deduplicated_in_order():
    assert check_labels([" dog", "cat ", "dog", "cat", "Cat"]) == ["dog", "cat", "Cat"]
    assert check_labels(["x" * 80, "猫"]) == ["x" * 80, "猫"]  # 80 characters is allowed
    assert check_template(None) == "a photo of a {}."
    with pytest.raises(OptionsError, match="list of texts"):
        check_labels("cat,dog")


def test_label_arguments_and_files(tmp_path):
    assert read_labels("cat, dog ,teapot,,cat") == ["cat", "dog", "teapot"]
    listing = tmp_path / "labels.txt"
    listing.write_text("\ufeffa red car\n\n  a cat, sleeping \ndog\n", encoding="utf-8")
    assert read_labels(f"@{listing}") == ["a red car", "a cat, sleeping", "dog"]
    big = tmp_path / "big.txt"
    big.write_text("cat\n" * (MAX_LABEL_FILE_BYTES // 4 + 1))
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    for arg, words in [
        (f"@{big}", "over the limit"),
        (f"@{latin}", "not UTF-8"),
        (f"@{tmp_path / 'missing.txt'}", "is not a file"),
        (f"@{tmp_path}", "is not a file"),
    ]:
        with pytest.raises(OptionsError, match=words):
            read_labels(arg)


def test_fixed_class_models_refuse_typed_labels(vit_tiny):
    assert not vit_tiny.typed_labels
    with pytest.raises(OptionsError, match="fixed classes"):
        vit_tiny.with_labels(["cat"])


def test_safetensors_and_pickle_weights_round_trip(tiny_file, tmp_path, cat_image):
    path, original = tiny_file
    loaded = load_model(f"clip:{TINY}", weights=path, device="cpu").with_labels(LABELS)
    assert loaded.weights.source == "file" and loaded.weights.warning is None
    reference = original.with_labels(LABELS)
    a, b = capture(loaded, [cat_image]), capture(reference, [cat_image])
    torch.testing.assert_close(a.logits, b.logits)
    torch.testing.assert_close(a.attention, b.attention)
    pt = tmp_path / "tiny-clip.pt"
    torch.save({"state_dict": original.model.tower.clip.state_dict()}, pt)  # a training checkpoint
    from_pt = load_model(f"clip:{TINY}", weights=pt, device="cpu").with_labels(LABELS)
    torch.testing.assert_close(capture(from_pt, [cat_image]).logits, b.logits)
    with pytest.raises(WeightsError, match="do not fit clip:ViT-B-32"):
        load_model("clip:ViT-B-32", weights=path, device="cpu")
    with pytest.raises(ModelError, match="either a weights file or random weights"):
        load_model(f"clip:{TINY}", weights=path, random_weights=True)


def test_unavailable_hub_weights_fail_fast_and_clearly(no_network):
    for name, words in [
        ("clip-b32", "https://huggingface.co/timm/vit_base_patch32_clip_224.openai"),
        ("clip:ViT-B-16/laion2b_s34b_b88k", "laion/CLIP-ViT-B-16-laion2B-s34B-b88K"),
        ("clip:hf-hub:someone/some-clip", "someone/some-clip"),
    ]:
        with pytest.raises(WeightsError) as err:
            load_model(name, device="cpu")
        message = str(err.value)
        assert "offline mode is on" in message and "--weights FILE" in message, message
        assert words in message, message
    assert weights_plan("clip-b16").startswith("download on first use from https://")
    from vitviz.models import download_weights

    with pytest.raises(WeightsError, match="offline mode is on"):
        download_weights("clip-b16")
    assert no_network == []  # fast: nothing waited on the network
    with pytest.raises(WeightsError, match="names no pretrained weights: add a tag"):
        load_model("clip:ViT-B-32", device="cpu")


def test_a_hub_repository_loads_from_the_cache_with_its_preprocessing(tiny_file, cat_image):
    from huggingface_hub import constants

    path, original = tiny_file
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = Path(constants.HF_HUB_CACHE) / "models--someone--tiny-clip"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    preprocess = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
                  "interpolation": "bilinear", "resize_mode": "squash"}  # fmt: skip
    config = {"model_cfg": {"embed_dim": 32, "vision_cfg": VISION, "text_cfg": TEXT},
              "preprocess_cfg": preprocess}  # fmt: skip
    (snapshot / "open_clip_config.json").write_text(json.dumps(config))
    (snapshot / "open_clip_model.safetensors").write_bytes(path.read_bytes())
    name = "clip:hf-hub:someone/tiny-clip"
    assert weights_plan(name).startswith("Hugging Face cache")
    loaded = load_model(name, device="cpu").with_labels(LABELS)
    assert loaded.weights.source == "cache"
    cfg = loaded.data_config
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["interpolation"] == "bilinear"
    assert cfg["crop_mode"] == "squash" and cfg["input_size"] == (3, 64, 64)
    assert loaded.seen_image(cat_image).size == (64, 64)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), original.with_labels(LABELS).model(x))


def test_downloads_report_their_progress(monkeypatch, tmp_path):
    import huggingface_hub

    calls, seen = [], []

    def fake_download(repo, filename, tqdm_class=None, **_):
        calls.append((repo, filename))
        bar = tqdm_class(total=100, disable=True)
        bar.update(60)
        bar.update(40)
        (tmp_path / filename).write_bytes(b"weights")
        return str(tmp_path / filename)

    from vitviz.models import hub

    monkeypatch.setattr(clip_models, "hub_reachable", lambda *_: True)
    monkeypatch.setattr(hub, "hub_reachable", lambda *_: True)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    from vitviz.models import download_weights

    got = download_weights("clip-b16", lambda done, total: seen.append((done, total)))
    assert got == tmp_path / "open_clip_model.safetensors"
    assert calls == [("timm/vit_base_patch16_clip_224.openai", "open_clip_model.safetensors")]
    assert seen == [(60, 100), (100, 100)]


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("clip:RN50/openai", "ModifiedResNet"),
        ("clip:convnext_base", "timm model (convnext_base)"),
        ("clip:ViT-B-16-SigLIP", "timm model (vit_base_patch16_siglip_224)"),
        ("clip:coca_ViT-B-32", "attentional pooler (CoCa)"),
        ("clip:ViT-B-33", "did you mean ViT-B-32"),
        ("clip:ViT-B-32/no-such-tag", "its tags are: openai"),
    ],
)
def test_towers_that_are_not_plain_vits_are_refused_with_the_reason(name, words):
    with pytest.raises(ModelError, match=words.replace("(", r"\(").replace(")", r"\)")):
        load_model(name, random_weights=True, device="cpu")


def test_parameter_count_needs_no_weights_and_limits_apply():
    count = clip_models.parameter_count("ViT-B-32/openai")
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    assert count == sum(t.numel() for t in (*model.parameters(), *model.buffers()))
    with pytest.raises(ModelError, match="over the limit of 100 M"):
        load_model("clip-b32", random_weights=True, max_params=100_000_000)


def test_the_input_geometry_is_open_clips_transform():
    cfg = open_clip.get_pretrained_cfg("ViT-B-32", "openai")
    reference = open_clip.image_transform(
        224,
        is_train=False,
        mean=cfg["mean"],
        std=cfg["std"],
        interpolation=cfg["interpolation"],
        resize_mode=cfg["resize_mode"],
    )
    loaded = load_model("clip-b32", random_weights=True, device="cpu")
    assert loaded.data_config["crop_pct"] == 1.0 and loaded.data_config["crop_mode"] == "center"
    rng = np.random.default_rng(0)
    photos = [Image.open(ASSETS / "chelsea.png").convert("RGB"), Image.open(ASSETS / "coffee.png")]
    photos += [Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)) for h, w in
               [(300, 451), (224, 224), (31, 50), (999, 1000)]]  # fmt: skip
    for image in photos:
        want = reference(image)
        got = loaded.to_tensor(loaded.seen_image(image))
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_features_embeddings_and_anatomy_read_the_tower(tiny, cat_image):
    backend = LocalBackend(tiny)
    seen = tiny.seen_image(cat_image)
    x = tiny.to_tensor(seen)[None]
    visual = tiny.model.tower.clip.visual
    feats = backend.features(seen)
    with torch.no_grad():
        want = visual.ln_post(visual.transformer(visual._embeds(x)))[0]
    np.testing.assert_allclose(feats.tokens, want.numpy(), rtol=1e-5, atol=1e-5)
    emb = backend.embeddings(seen)
    np.testing.assert_array_equal(emb.positions, visual.positional_embedding[1:].numpy())
    assert emb.tokens.shape == (17, 64) and emb.norm_pre
    assert emb.features is not None and emb.features.shape == (64,)  # the readout, pre-projection
    anatomy = backend.anatomy()
    assert anatomy.width == 64 and anatomy.patch_size == (16, 16)
    assert anatomy.filters is not None and anatomy.position_grid == (4, 4)


def test_cli_explains_typed_labels_end_to_end(tiny_file, tmp_path, capsys):
    path, original = tiny_file
    listing = tmp_path / "labels.txt"
    listing.write_text("cat\ndog\nteapot\n")
    image = ASSETS / "chelsea.png"
    reference = original.with_labels(LABELS, "a photo of a {}.")
    seen = reference.seen_image(Image.open(image).convert("RGB"))
    probs = openclip_logits(reference, reference.to_tensor(seen)[None], LABELS).softmax(-1)[0]
    for i, (labels, extra) in enumerate([("cat,dog,teapot", []), (f"@{listing}", ["--method",
                                        "chefer", "--class", "teapot"])]):  # fmt: skip
        out = tmp_path / f"run{i}"
        rc = main(["explain", str(image), "--model", f"clip:{TINY}", "--weights", str(path),
                   "--labels", labels, "--out", str(out), "--top-k", "3", *extra])  # fmt: skip
        assert rc == 0, capsys.readouterr().err
        record = json.loads((out / "chelsea.json").read_text())
        got = {p["label"]: p["probability"] for p in record["predictions"]}
        assert set(got) == set(LABELS)
        np.testing.assert_allclose([got[lb] for lb in LABELS], probs.numpy(), rtol=1e-5)
        assert record["model"]["timm_name"] == f"clip:{TINY}"
        assert record["model"]["label_set"] == reference.describe().label_set
    assert record["explained_class"] == {"index": 2, "label": "teapot"}

    rc = main(["features", str(image), "--model", f"clip:{TINY}", "--weights", str(path),
               "--labels", "cat", "--template", "a {} photo",
               "--out", str(tmp_path / "f")])  # fmt: skip
    assert rc == 0 and (tmp_path / "f" / "chelsea-pca.png").is_file()


def test_trust_and_compare_take_typed_labels(tiny_file, tmp_path, capsys):
    path, _ = tiny_file
    image = str(ASSETS / "chelsea.png")
    model = ["--model", f"clip:{TINY}", "--weights", str(path), "--labels", "cat,dog,teapot"]
    rc = main(["trust", image, *model, "--class", "teapot", "--steps", "4", "--seeds", "1",
               "--method", "chefer", "--out", str(tmp_path / "t")])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "t" / "chelsea-trust-chefer.json").read_text())
    assert report["class_label"] == "teapot"
    # side B has fixed classes: the typed labels are side A's
    rc = main(["compare", image, *model, "--model-b", "demo", "--out", str(tmp_path / "c")])
    assert rc == 0, capsys.readouterr().err
    sides = json.loads((tmp_path / "c" / "chelsea-compare.json").read_text())
    assert sides["a"]["timm_name"] == f"clip:{TINY}" and sides["b"]["model"] == "demo"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--model", "vit_tiny_patch16_224", "--random-weights", "--labels", "cat"],
         "type the classes of a CLIP model"),
        (["--model", f"clip:{TINY}", "--random-weights", "--labels", "cat,d\x07g"],
         "control character"),
        (["--model", f"clip:{TINY}", "--random-weights", "--template", "a photo"],
         "exactly one {}"),
        (["--server", "http://127.0.0.1:9", "--labels", "cat"],
         "chosen when the server starts"),
    ],
)  # fmt: skip
def test_cli_label_errors_exit_2_before_any_model_work(
    args, words, tmp_path, capsys, monkeypatch, no_network
):
    import vitviz.backends.remote
    import vitviz.models

    work = []
    monkeypatch.setattr(vitviz.models, "load_model", lambda *a, **k: work.append(a) or 1 / 0)
    monkeypatch.setattr(
        vitviz.backends.remote, "RemoteBackend", lambda *a, **k: work.append(a) or 1 / 0
    )
    assert main(["explain", str(ASSETS / "chelsea.png"), "--out", str(tmp_path), *args]) == 2
    assert words in capsys.readouterr().err
    assert work == [] and no_network == []  # no model loaded, no server asked


def test_the_server_engine_serves_its_labels(tiny_file):
    from vitviz.server.service import Engine, Settings

    path, _ = tiny_file
    engine = Engine(
        Settings(model=f"clip:{TINY}", weights=str(path), device="cpu", labels="cat, teapot")
    )
    info = engine.info()
    assert info["labels"] == ["cat", "teapot"] and info["classes"] == 2
    assert info["label_set"] == engine.backend.loaded.describe().label_set
    with pytest.raises(OptionsError, match="exactly one"):
        Engine(Settings(model=f"clip:{TINY}", weights=str(path), device="cpu", template="x"))


def test_serve_takes_labels_and_checks_them_before_ray(monkeypatch, tmp_path, capsys):
    pytest.importorskip("ray")
    import vitviz.server.serve as serve_module

    starts: list[dict] = []
    monkeypatch.setattr(serve_module, "run_server", lambda settings, **_: starts.append(settings))
    listing = tmp_path / "labels.txt"
    listing.write_text("a cat\na teapot\n")
    assert main(["serve", "--model", "clip-b32", "--labels", f"@{listing}"]) == 0
    assert starts[0]["labels"] == ["a cat", "a teapot"] and starts[0]["template"] is None
    assert main(["serve", "--model", "vit-b16", "--labels", "cat"]) == 2
    assert "fixed classes" in capsys.readouterr().err
    assert main(["serve", "--model", "clip-b32", "--labels", ",".join(map(str, range(70)))]) == 2
    assert "more than 64 labels" in capsys.readouterr().err
    assert main(["serve", "--model", "clip:RN50/openai"]) == 2
    assert "ModifiedResNet" in capsys.readouterr().err
    assert len(starts) == 1  # the refused ones never started


def test_text_relevance_over_the_api_equals_the_local_one(tiny_file, cat_image, monkeypatch):
    """A CLIP server offers text relevance; its answer through RemoteBackend is the local one."""
    from tests.test_service import engine_client
    from vitviz.server.service import Engine, Settings

    path, _ = tiny_file
    engine = Engine(
        Settings(model=f"clip:{TINY}", weights=str(path), device="cpu", labels="cat, teapot")
    )
    local = engine.backend
    assert local.offers("text_relevance") and local.offers("typed_labels")
    assert "text_relevance" in engine.info()["capabilities"]
    client = engine_client(engine, monkeypatch)
    assert client.offers("text_relevance") and not client.offers("typed_labels")
    want = local.text_relevance(cat_image, "teapot")
    assert client.text_relevance(cat_image, "teapot") == want
    assert sum(v for _, v in want) == pytest.approx(1.0)
    with pytest.raises(OptionsError):  # the server's refusal of a bad label, said as such
        client.text_relevance(cat_image, "a" * 500)
