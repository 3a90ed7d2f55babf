"""Hugging Face transformers models (``hf:<hub id or folder>``): the timm-like adapter, its
attention, layouts and maps against timm's ViT, loading, refusals and preprocessing, on tiny
random configs saved with ``save_pretrained`` (the hub is never reached)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import ASSETS
from vitviz import methods
from vitviz.backends.local import LocalBackend
from vitviz.cli import main
from vitviz.engine.capture import capture_tensor
from vitviz.errors import ModelError, WeightsError
from vitviz.inputs.geometry import InputGeometry
from vitviz.models import LoadedModel, load_model, weights_plan
from vitviz.results import WeightsInfo

transformers = pytest.importorskip("transformers")
from vitviz.models import hf  # noqa: E402 - needs transformers
from vitviz.models.hf_preprocess import crop_pct  # noqa: E402

DIMS = {  # 2 layers × 3 heads, 32 px input, 8 px patches: a 4×4 grid
    "image_size": 32,
    "patch_size": 8,
    "hidden_size": 24,
    "num_hidden_layers": 2,
    "num_attention_heads": 3,
    "intermediate_size": 48,
}


def save(tmp_path: Path, model_cls: type, config, seed: int = 0, **kw) -> Path:
    """A seeded random transformers model saved as a folder (config.json, model.safetensors)."""
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    folder = tmp_path / f"{model_cls.__name__}-{seed}"
    model.save_pretrained(folder, **kw)
    return folder


def hf_model(loaded: LoadedModel):
    return loaded.model.hf


@pytest.fixture(scope="module")
def cat() -> Image.Image:
    return Image.open(ASSETS / "chelsea.png").convert("RGB")


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory) -> Path:
    """A tiny ViTForImageClassification with named classes and timm's LayerNorm eps."""
    config = transformers.ViTConfig(
        **DIMS,
        layer_norm_eps=1e-6,
        id2label={0: "cat", 1: "dog", 2: "teapot", 3: "rocket", 4: "coffee"},
        label2id={"cat": 0, "dog": 1, "teapot": 2, "rocket": 3, "coffee": 4},
    )
    return save(tmp_path_factory.mktemp("vit"), transformers.ViTForImageClassification, config)


@pytest.fixture(scope="module")
def vit(vit_folder) -> LoadedModel:
    return load_model(f"hf:{vit_folder}", device="cpu")


def timm_twin(loaded: LoadedModel) -> LoadedModel:
    """timm's VisionTransformer with the same dimensions and the HF model's weights copied
    (q, k, v concatenated into qkv), with the HF model's preprocessing."""
    from timm.models.vision_transformer import VisionTransformer

    model = hf_model(loaded)
    c = model.config
    twin = VisionTransformer(
        img_size=c.image_size,
        patch_size=c.patch_size,
        embed_dim=c.hidden_size,
        depth=c.num_hidden_layers,
        num_heads=c.num_attention_heads,
        mlp_ratio=c.intermediate_size / c.hidden_size,
        qkv_bias=c.qkv_bias,
        num_classes=c.num_labels,
    )
    vit, sd = model.vit, {}
    sd["cls_token"] = vit.embeddings.cls_token
    sd["pos_embed"] = vit.embeddings.position_embeddings
    proj = vit.embeddings.patch_embeddings.projection
    sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"] = proj.weight, proj.bias
    for i, layer in enumerate(vit.layers):
        b, a = f"blocks.{i}.", layer.attention
        pairs = {
            "norm1": layer.layernorm_before,
            "norm2": layer.layernorm_after,
            "attn.proj": a.o_proj,
            "mlp.fc1": layer.mlp.fc1,
            "mlp.fc2": layer.mlp.fc2,
        }
        for name, mod in pairs.items():
            sd[b + name + ".weight"], sd[b + name + ".bias"] = mod.weight, mod.bias
        sd[b + "attn.qkv.weight"] = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
        sd[b + "attn.qkv.bias"] = torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias])
    sd["norm.weight"], sd["norm.bias"] = vit.layernorm.weight, vit.layernorm.bias
    sd["head.weight"], sd["head.bias"] = model.classifier.weight, model.classifier.bias
    twin.load_state_dict({k: v.detach().clone() for k, v in sd.items()}, strict=True)
    return LoadedModel(
        name="timm-twin",
        title="timm twin",
        model=twin.eval(),
        data_config=dict(loaded.data_config),
        labels=loaded.labels,
        weights=WeightsInfo("random", ""),
        device=torch.device("cpu"),
        precision="fp32",
    )


# -- the adapter against timm ------------------------------------------------------------


def test_a_vit_equals_its_timm_twin_logits_attention_rollout_and_chefer(vit, cat):
    twin = timm_twin(vit)
    ours, theirs = LocalBackend(vit), LocalBackend(twin)
    a, b = ours.explain([cat])[0], theirs.explain([cat])[0]
    assert a.layout == b.layout
    assert a.layout.prefix == ("cls",) and a.layout.grid == (4, 4) and a.layout.readout == "cls"
    assert a.attention.shape == (2, 3, 17, 17)
    np.testing.assert_allclose(a.logits, b.logits, atol=1e-5)
    np.testing.assert_allclose(a.attention, b.attention, atol=1e-6)
    np.testing.assert_allclose(a.attention.sum(-1), 1.0, atol=1e-5)
    for options in ({}, {"discard": 0.3, "fusion": "max"}):
        np.testing.assert_allclose(
            methods.compute_map("rollout", a.attention, a.layout, **options),
            methods.compute_map("rollout", b.attention, b.layout, **options),
            rtol=1e-5,
            atol=1e-7,
        )
    assert [p.index for p in a.predictions] == [p.index for p in b.predictions]
    # class maps: the gradients reach the probabilities the forward used (timm's are checked
    # against finite differences in test_gradients), so gradients and Chefer maps agree
    ca = ours.explain_classes([cat], [[None, 3]], full_gradients=True)[0]
    cb = theirs.explain_classes([cat], [[None, 3]], full_gradients=True)[0]
    assert ca.classes == cb.classes
    assert float(np.abs(ca.gradients).max()) > 0
    np.testing.assert_allclose(ca.gradients, cb.gradients, rtol=1e-4, atol=1e-7)
    for k in range(2):
        for method in ("chefer", "grad-rollout", "attn-grad"):
            got = methods.compute_map(method, a.attention, a.layout, grads=ca.relevance[k])
            want = methods.compute_map(method, b.attention, b.layout, grads=cb.relevance[k])
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * np.abs(want).max())


def test_the_captured_attention_is_softmax_of_the_layers_own_queries_and_keys(vit, cat):
    seen = vit.seen_image(cat)
    x = vit.to_tensor(seen)[None]
    _, attention, _ = capture_tensor(vit, x)
    model = hf_model(vit)
    with torch.no_grad():
        out = model(pixel_values=x, output_hidden_states=True)
        assert len(out.hidden_states) == 3  # the embeddings, then each layer's output
        for i, layer in enumerate(model.vit.layers):
            h = layer.layernorm_before(out.hidden_states[i])
            att = layer.attention
            heads, d = att.num_attention_heads, att.head_dim
            q = att.q_proj(h).view(1, -1, heads, d).transpose(1, 2)
            k = att.k_proj(h).view(1, -1, heads, d).transpose(1, 2)
            want = torch.softmax(q @ k.transpose(-1, -2) / d**0.5, dim=-1)
            torch.testing.assert_close(attention[0, i], want[0], atol=1e-6, rtol=1e-5)


def test_the_adapter_reads_like_a_timm_vit(vit, cat):
    m = vit.model
    assert len(m.blocks) == 2 and m.blocks is hf_model(vit).vit.layers
    names = [n for n, _ in m.named_modules()]
    assert not any(n.startswith("blocks") for n in names)  # not registered twice
    assert m.vitviz_num_heads == 3 and vit.num_heads == 3 and vit.num_layers == 2
    assert m.num_prefix_tokens == 1 and m.cls_token is not None and m.dist_token is None
    assert m.patch_embed.img_size == (32, 32) and m.patch_embed.grid_size == (4, 4)
    assert m.patch_embed.patch_size == (8, 8) and isinstance(m.patch_embed.proj, torch.nn.Conv2d)
    assert m.global_pool == "token" and m.num_classes == 5 and m.embed_dim == 24
    assert m.pos_embed.shape == (1, 17, 24) and m.dynamic_img_size is False
    assert m.pretrained_cfg == {
        "architecture": f"hf:{vit.model.pretrained_cfg['architecture'][3:]}"
    }
    x = vit.to_tensor(vit.seen_image(cat))[None]
    with torch.no_grad():
        tokens = m.forward_features(x)
        assert tokens.shape == (1, 17, 24)
        torch.testing.assert_close(m(x), hf_model(vit)(pixel_values=x).logits)
    info = vit.describe()
    assert info.layers == 2 and info.heads == 3 and info.classes == 5
    assert info.patch_size == (8, 8) and info.timm_name.startswith("hf:")
    assert "eager" in vit.weights.note and vit.weights.source == "file"
    backend = LocalBackend(vit)
    emb = backend.embeddings(vit.seen_image(cat))
    assert emb.tokens.shape == (17, 24) and emb.patches.shape == (16, 24)
    assert emb.positions.shape == (16, 24) and emb.features.shape == (24,)
    feats = backend.features(vit.seen_image(cat))
    assert feats.tokens.shape == (17, 24) and feats.norm == "LayerNorm"
    anat = backend.anatomy()
    assert anat.width == 24 and anat.position_grid == (4, 4) and anat.filters is not None


def test_checkpoints_in_transformers_4_names_load(tmp_path, vit_folder, vit, cat):
    """Hub checkpoints such as google/vit-base-patch16-224 keep v4's tensor names."""
    import re

    from safetensors.torch import load_file, save_file

    renames = {
        "attention.q_proj": "attention.attention.query",
        "attention.k_proj": "attention.attention.key",
        "attention.v_proj": "attention.attention.value",
        "attention.o_proj": "attention.output.dense",
        "mlp.fc1": "intermediate.dense",
        "mlp.fc2": "output.dense",
    }
    old = {}
    for key, value in load_file(vit_folder / "model.safetensors").items():
        key = re.sub(r"^vit\.layers\.(\d+)\.", r"vit.encoder.layer.\1.", key)
        for new, was in renames.items():
            key = key.replace(new, was)
        old[key] = value
    assert "vit.encoder.layer.1.attention.attention.query.weight" in old
    folder = tmp_path / "v4"
    folder.mkdir()
    (folder / "config.json").write_bytes((vit_folder / "config.json").read_bytes())
    save_file(old, str(folder / "model.safetensors"), metadata={"format": "pt"})
    loaded = load_model(f"hf:{folder}", device="cpu")
    x = vit.to_tensor(vit.seen_image(cat))[None]
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), vit.model(x))


def test_labels_come_from_id2label(vit, cat):
    assert vit.labels == ["cat", "dog", "teapot", "rocket", "coffee"]
    preds = LocalBackend(vit).explain([cat])[0].predictions
    assert {p.label for p in preds} == set(vit.labels)


# -- layouts of other architectures --------------------------------------------------------


def test_distilled_deit_reads_class_and_distillation_tokens(tmp_path, cat):
    config = transformers.DeiTConfig(**DIMS, num_labels=4)
    folder = save(tmp_path, transformers.DeiTForImageClassificationWithTeacher, config)
    loaded = load_model(f"hf:{folder}", device="cpu")
    layout = loaded.layout((32, 32))
    assert layout.prefix == ("cls", "dist") and layout.readout == "cls+dist"
    assert "distillation" in loaded.weights.note
    x = loaded.to_tensor(loaded.seen_image(cat))[None]
    with torch.no_grad():
        out = hf_model(loaded)(pixel_values=x)
        torch.testing.assert_close(loaded.model(x), (out.cls_logits + out.distillation_logits) / 2)
    res = LocalBackend(loaded).explain_classes([cat], [[None]])[0]
    assert res.explanation.attention.shape == (2, 3, 18, 18)
    chefer = methods.compute_map(
        "chefer", res.explanation.attention, layout, grads=res.relevance[0]
    )
    assert chefer.shape == (4, 4) and np.isfinite(chefer).all()
    # a DeiT fine-tuned with AutoModelForImageClassification reads the class token only
    plain = save(tmp_path, transformers.DeiTForImageClassification, config)
    layout = load_model(f"hf:{plain}", device="cpu").layout((32, 32))
    assert layout.prefix == ("cls", "dist") and layout.readout == "cls"


def test_a_dinov2_backbone_with_registers_has_them_in_its_layout_and_no_classifier(tmp_path, cat):
    config = transformers.Dinov2WithRegistersConfig(
        **{**DIMS, "image_size": 64}, num_register_tokens=4
    )
    folder = save(tmp_path, transformers.Dinov2WithRegistersModel, config)
    processor = {  # DINOv2's: shortest side to 36 px, centre crop 32 px (the model is 64 px)
        "image_processor_type": "BitImageProcessor",
        "size": {"shortest_edge": 36},
        "crop_size": {"height": 32, "width": 32},
        "do_center_crop": True,
        "resample": 3,
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    loaded = load_model(f"hf:{folder}", device="cpu")
    assert not loaded.has_classifier and loaded.labels is None
    assert loaded.data_config["input_size"] == (3, 32, 32)  # DINOv2 runs at the crop size
    layout = loaded.layout((32, 32))
    assert layout.prefix == ("cls", "reg", "reg", "reg", "reg") and layout.readout == "cls"
    assert layout.grid == (4, 4)
    expl = LocalBackend(loaded).explain([cat])[0]
    assert expl.predictions == [] and expl.logits is None
    assert expl.attention.shape == (2, 3, 21, 21)
    x = loaded.to_tensor(loaded.seen_image(cat))[None]
    with torch.no_grad():
        feature = loaded.model(x)
        tokens = hf_model(loaded)(pixel_values=x).last_hidden_state
    torch.testing.assert_close(feature, tokens[:, 0])  # the backbone's readout: CLS
    # independent check: softmax(q kᵀ/√d) from each layer's own projections of its input
    inputs: list[torch.Tensor] = []
    handles = [
        layer.attention.register_forward_pre_hook(lambda _m, args: inputs.append(args[0]))
        for layer in loaded.model.blocks
    ]
    try:
        _, attention, _ = capture_tensor(loaded, x)
    finally:
        for h in handles:
            h.remove()
    with torch.inference_mode():
        for i, layer in enumerate(loaded.model.blocks):
            att, d = layer.attention, 8
            q = att.q_proj(inputs[i]).view(1, -1, 3, d).transpose(1, 2)
            k = att.k_proj(inputs[i]).view(1, -1, 3, d).transpose(1, 2)
            want = torch.softmax(q @ k.transpose(-1, -2) / d**0.5, dim=-1)
            torch.testing.assert_close(attention[0, i], want[0], atol=1e-6, rtol=1e-5)
    # its 8×8 stored positions are resampled to the 4×4 grid the model runs at
    assert loaded.model.pos_embed.shape == (1, 17, 24)
    res = LocalBackend(loaded).explain_classes([cat], [[None]])[0]  # ‖readout feature‖
    assert np.isfinite(
        methods.compute_map("chefer", expl.attention, layout, grads=res.relevance[0])
    ).all()


@pytest.mark.parametrize(
    "model_cls, config_cls, kwargs, prefix, readout",
    [
        ("BeitForImageClassification", "BeitConfig", {"use_mean_pooling": True}, ("cls",), "avg"),
        (
            "BeitForImageClassification",
            "BeitConfig",
            {"use_mean_pooling": False, "use_relative_position_bias": True},
            ("cls",),
            "cls",
        ),
        ("Data2VecVisionForImageClassification", "Data2VecVisionConfig", {}, ("cls",), "avg"),
        ("Dinov2ForImageClassification", "Dinov2Config", {}, ("cls",), "cls"),
        ("IJepaForImageClassification", "IJepaConfig", {}, (), "avg"),
        ("ViTMSNForImageClassification", "ViTMSNConfig", {}, ("cls",), "cls"),
    ],
)
def test_classifiers_give_transformers_logits_and_their_readout(
    tmp_path, cat, model_cls, config_cls, kwargs, prefix, readout
):
    config = getattr(transformers, config_cls)(**DIMS, num_labels=3, **kwargs)
    folder = save(tmp_path, getattr(transformers, model_cls), config)
    loaded = load_model(f"hf:{folder}", device="cpu")
    layout = loaded.layout((32, 32))
    assert layout.prefix == prefix and layout.readout == readout
    x = loaded.to_tensor(loaded.seen_image(cat))[None]
    with torch.no_grad():
        want = hf_model(loaded)(pixel_values=x).logits
    res = LocalBackend(loaded).explain_classes([cat], [[None]], full_gradients=True)[0]
    np.testing.assert_allclose(res.explanation.logits, want[0].numpy(), atol=1e-5)
    attn = res.explanation.attention
    assert attn.shape == (2, 3, 16 + len(prefix), 16 + len(prefix))
    np.testing.assert_allclose(attn.sum(-1), 1.0, atol=1e-5)
    assert float(np.abs(res.gradients).max()) > 0  # gradients reach the probabilities
    assert np.isfinite(methods.compute_map("chefer", attn, layout, grads=res.relevance[0])).all()
    if model_cls.startswith("Dinov2"):
        assert "CLS ‖ mean of the patch tokens" in loaded.weights.note


def test_dinov3_backbone_with_rotary_positions(tmp_path, cat):
    config = transformers.DINOv3ViTConfig(**DIMS, num_register_tokens=2)
    folder = save(tmp_path, transformers.DINOv3ViTModel, config)
    loaded = load_model(f"hf:{folder}", device="cpu")
    layout = loaded.layout((32, 32))
    assert layout.prefix == ("cls", "reg", "reg") and not loaded.has_classifier
    assert loaded.model.pos_embed is None  # rotary: no absolute position embeddings
    expl = LocalBackend(loaded).explain([cat])[0]
    assert expl.attention.shape == (2, 3, 19, 19)


# -- refusals and loading ------------------------------------------------------------------


def test_windowed_architectures_are_refused_with_the_reason(tmp_path):
    folder = tmp_path / "swin"
    transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=12).save_pretrained(folder)
    with pytest.raises(ModelError, match="windowed attention"):
        load_model(f"hf:{folder}", random_weights=True, device="cpu")
    for kind in ("swinv2", "pvt_v2", "segformer", "mobilevit"):
        assert kind in hf.REFUSED


def test_custom_code_and_unknown_types_are_refused(tmp_path):
    folder = tmp_path / "custom"
    transformers.ViTConfig(**DIMS).save_pretrained(folder)
    raw = json.loads((folder / "config.json").read_text())
    raw["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(raw))
    (folder / "modeling_evil.py").write_text("raise SystemExit('custom code ran')\n")
    with pytest.raises(ModelError, match=r"custom code.*trust_remote_code"):
        load_model(f"hf:{folder}", random_weights=True, device="cpu")
    raw.pop("auto_map")
    raw["model_type"] = "my_own_vit"
    (folder / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ModelError, match=r"my_own_vit.*not a global-attention ViT"):
        load_model(f"hf:{folder}", random_weights=True, device="cpu")


def test_a_missing_hub_model_fails_fast_offline(no_network):
    with pytest.raises(WeightsError, match=r"not in the local cache.*offline"):
        load_model("hf:vitviz-nobody/no-such-vit", device="cpu")
    assert no_network == []  # fast: it never waited on the network
    assert weights_plan("hf:vitviz-nobody/no-such-vit").startswith("download on first use")
    with pytest.raises(ModelError, match="no such folder"):
        load_model("hf:./no/such/folder", device="cpu")


def test_a_cached_hub_model_loads_offline(vit_folder, cat):
    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE) / "models--vitviz-test--tiny-vit"
    commit = "0" * 40
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for f in ("config.json", "model.safetensors"):
        (snapshot / f).write_bytes((vit_folder / f).read_bytes())
    assert weights_plan("hf:vitviz-test/tiny-vit").startswith("Hugging Face cache")
    loaded = load_model("hf:vitviz-test/tiny-vit", device="cpu")
    assert loaded.weights.source == "cache" and loaded.name == "hf:vitviz-test/tiny-vit"
    assert loaded.labels[0] == "cat"


def fake_hub(
    monkeypatch, tmp_path: Path, files: Path, claimed: dict[str, int] | None = None
) -> list[str]:
    """A reachable hub serving the files of a folder into a snapshot; returns what was
    fetched, in order."""
    import huggingface_hub
    from huggingface_hub.errors import RemoteEntryNotFoundError

    snapshot = tmp_path / "snapshots" / ("1" * 40)
    snapshot.mkdir(parents=True)
    fetched: list[str] = []

    def download(repo_id: str, filename: str, tqdm_class=None, **_kw) -> str:
        source = files / filename
        if not source.is_file():
            response = SimpleNamespace(headers={}, request=None)  # a 404 answer
            raise RemoteEntryNotFoundError(f"{filename} not in {repo_id}", response=response)
        fetched.append(filename)
        data = source.read_bytes()
        if tqdm_class is not None:
            bar = tqdm_class(total=len(data), disable=True)
            bar.update(len(data) // 2)
            bar.update(len(data) - len(data) // 2)
            bar.close()
        (snapshot / filename).write_bytes(data)
        return str(snapshot / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)

    def paths_info(self, repo_id: str, paths: list[str], **_kw) -> list[SimpleNamespace]:
        sizes = {p: (files / p).stat().st_size for p in paths if (files / p).is_file()}
        sizes |= {p: n for p, n in (claimed or {}).items() if p in paths}
        return [SimpleNamespace(path=p, size=n) for p, n in sizes.items()]

    monkeypatch.setattr(huggingface_hub.HfApi, "get_paths_info", paths_info)
    from vitviz.models import hub

    monkeypatch.setattr(hub, "hub_reachable", lambda url=None, timeout=3.0: True)
    return fetched


def test_a_hub_download_checks_the_config_before_the_weights(monkeypatch, tmp_path, vit_folder):
    fetched = fake_hub(monkeypatch, tmp_path, vit_folder)
    seen: list[tuple[int, int | None]] = []
    folder = hf.download_weights("vitviz-test/online-vit", lambda d, t: seen.append((d, t)))
    size = (vit_folder / "model.safetensors").stat().st_size
    assert fetched == ["config.json", "model.safetensors"]  # no preprocessor config there
    assert seen[-1] == (size, size) and (folder / "model.safetensors").is_file()
    loaded = hf.load("vitviz-test/online-vit", device="cpu")
    assert loaded.weights.source == "hub" and loaded.weights.location.endswith("online-vit")
    assert loaded.labels[0] == "cat"
    # custom code on the hub: refused after config.json, before any weights
    custom = tmp_path / "custom"
    custom.mkdir()
    raw = json.loads((vit_folder / "config.json").read_text())
    (custom / "config.json").write_text(json.dumps({**raw, "auto_map": {"AutoModel": "x.Y"}}))
    (custom / "model.safetensors").write_bytes(b"never fetched")
    fetched = fake_hub(monkeypatch, tmp_path / "second", custom)
    with pytest.raises(ModelError, match="custom code"):
        hf.load("vitviz-test/custom-vit", device="cpu")
    assert fetched == ["config.json"]


def test_a_weights_file_bigger_than_its_config_is_never_downloaded(monkeypatch, tmp_path):
    """A small config beside a huge file: the sizes are asked first, nothing is fetched."""
    folder = tmp_path / "small"
    transformers.ViTConfig(**DIMS).save_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"x")

    huge = {"model.safetensors": 50 * 2**30}  # the hub claims a 50 GiB file
    fetched = fake_hub(monkeypatch, tmp_path / "hub", folder, claimed=huge)
    with pytest.raises(WeightsError, match="more than its config's model can need"):
        hf.download_weights("vitviz-test/huge-vit")
    assert fetched == ["config.json"]


def test_weights_come_from_the_folder_only(tmp_path, vit_folder):
    with pytest.raises(ModelError, match="live in its folder"):
        load_model(f"hf:{vit_folder}", weights=str(vit_folder / "model.safetensors"))
    bare = tmp_path / "bare"
    transformers.ViTConfig(**DIMS).save_pretrained(bare)
    assert "has no model.safetensors" in weights_plan(f"hf:{bare}")
    with pytest.raises(WeightsError, match=r"no model.safetensors"):
        load_model(f"hf:{bare}", device="cpu")
    rand = load_model(f"hf:{bare}", random_weights=True, device="cpu")
    assert rand.weights.source == "random" and "RANDOM" in rand.weights.warning
    assert weights_plan(f"hf:{vit_folder}").startswith("local folder")
    # weights that do not fit the config: a clear error, never a half-random model
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_bytes((vit_folder / "config.json").read_bytes())
    sd = load_file(vit_folder / "model.safetensors")
    save_file(
        {k: v for k, v in sd.items() if k != "classifier.weight"}, broken / "model.safetensors"
    )
    with pytest.raises(WeightsError, match=r"1 tensors missing \(classifier\.weight"):
        load_model(f"hf:{broken}", device="cpu")
    sd["classifier.weight"], sd["classifier.bias"] = torch.zeros(7, 24), torch.zeros(7)
    save_file(sd, broken / "model.safetensors")
    with pytest.raises(WeightsError, match=r"another shape than config\.json"):
        load_model(f"hf:{broken}", device="cpu")


def test_size_is_counted_from_the_config_before_any_weights(tmp_path, vit):
    count = sum(t.numel() for t in (*vit.model.parameters(), *vit.model.buffers()))
    folder = Path(vit.weights.location).parent
    assert hf.parameter_count(str(folder)) == count
    bare = tmp_path / "big"
    transformers.ViTConfig().save_pretrained(bare)  # ViT-B/16, no weights
    with pytest.raises(ModelError, match="M parameters"):
        load_model(f"hf:{bare}", max_params=10_000_000, device="cpu")


def test_pickled_weights_load_only_as_plain_tensors(tmp_path, vit_folder):
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_bytes((vit_folder / "config.json").read_bytes())
    torch.save(load_file(vit_folder / "model.safetensors"), folder / "pytorch_model.bin")
    loaded = load_model(f"hf:{folder}", device="cpu")  # tensors only: torch.load(weights_only)
    assert loaded.weights.location.endswith("pytorch_model.bin") and loaded.labels[0] == "cat"
    marker = tmp_path / "pwned"
    torch.save({"weight": Evil(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(WeightsError, match=r"refused pytorch_model\.bin: the pickle holds more"):
        load_model(f"hf:{folder}", device="cpu")
    assert not marker.exists()


class Evil:
    """A pickle that would create a file when unpickled without ``weights_only``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


# -- preprocessing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "processor_cls, kwargs, mode",
    [
        ("ViTImageProcessor", {"size": {"height": 32, "width": 32}}, "squash"),
        (
            "DeiTImageProcessor",
            {
                "size": {"height": 36, "width": 36},
                "crop_size": {"height": 32, "width": 32},
                "do_center_crop": True,
                "resample": 3,
                "image_mean": [0.485, 0.456, 0.406],
                "image_std": [0.229, 0.224, 0.225],
            },
            "squash",
        ),
        (
            "BitImageProcessor",
            {
                "size": {"shortest_edge": 36},
                "crop_size": {"height": 32, "width": 32},
                "do_center_crop": True,
                "resample": 3,
                "image_mean": [0.485, 0.456, 0.406],
                "image_std": [0.229, 0.224, 0.225],
            },
            "center",
        ),
    ],
)
def test_the_data_config_reproduces_a_saved_image_processor(
    tmp_path, vit_folder, cat, processor_cls, kwargs, mode
):
    folder = tmp_path / "model"
    folder.mkdir()
    for f in ("config.json", "model.safetensors"):
        (folder / f).write_bytes((vit_folder / f).read_bytes())
    processor = getattr(transformers, processor_cls)(**kwargs)
    processor.save_pretrained(folder)
    loaded = load_model(f"hf:{folder}", device="cpu")
    cfg = loaded.data_config
    assert cfg["input_size"] == (3, 32, 32) and cfg["crop_mode"] == mode
    assert cfg["interpolation"] == ("bicubic" if "resample" in kwargs else "bilinear")
    assert cfg["mean"] == pytest.approx(kwargs.get("image_mean", [0.5] * 3))
    assert cfg["std"] == pytest.approx(kwargs.get("image_std", [0.5] * 3))
    assert cfg["crop_pct"] == pytest.approx(32 / 36 if "crop_size" in kwargs else 1.0)
    for image in (cat, cat.transpose(Image.Transpose.ROTATE_90)):
        ours = loaded.to_tensor(loaded.seen_image(image))
        theirs = processor(image, return_tensors="pt").pixel_values[0]
        # the same pixels, up to one grey level where the resizers round differently
        step = 1.5 / 255 / min(cfg["std"])
        assert float((ours - theirs).abs().max()) <= step
        assert float((ours - theirs).abs().mean()) < 1e-3


def test_data_config_defaults_and_rescaling():
    cfg, notes = hf.data_config(None, (224, 224), (16, 16), False)
    assert cfg["input_size"] == (3, 224, 224) and cfg["crop_mode"] == "squash"
    assert cfg["mean"] == (0.5, 0.5, 0.5) and "preprocessor_config.json" in notes[0]
    cfg, _ = hf.data_config(
        {"size": {"height": 224, "width": 224}, "do_rescale": False, "image_mean": [127.5] * 3,
         "image_std": [127.5] * 3}, (224, 224), (16, 16), False,
    )  # fmt: skip
    assert cfg["mean"] == pytest.approx((0.5,) * 3) and cfg["std"] == pytest.approx((0.5,) * 3)
    # transformers 4's feature extractors (google/vit-base-patch16-224, DeiT's): a number
    cfg, _ = hf.data_config(
        {"feature_extractor_type": "DeiTFeatureExtractor", "size": 256, "crop_size": 224,
         "do_center_crop": True, "resample": 3, "image_mean": 0.5, "image_std": 0.5},
        (224, 224), (16, 16), False,
    )  # fmt: skip
    assert cfg["crop_mode"] == "squash" and cfg["crop_pct"] == 0.875
    assert cfg["interpolation"] == "bicubic" and cfg["mean"] == (0.5, 0.5, 0.5)
    # floor(size / crop_pct) must give the processor's resize exactly
    for crop, resize in ((224, 256), (384, 438), (518, 592), (224, 248)):
        assert int(crop / crop_pct(crop, resize)) == resize
    geometry = InputGeometry(
        {"input_size": (3, 224, 224), "crop_pct": crop_pct(224, 248), "crop_mode": "center"},
        False,
        (16, 16),
    )
    assert geometry(Image.new("RGB", (500, 300))).size == (224, 224)


# -- the command line and the package ------------------------------------------------------


def test_the_cli_explains_with_a_hf_folder(tmp_path, vit_folder, capsys):
    out = tmp_path / "out"
    rc = main(
        ["explain", str(ASSETS / "chelsea.png"), "--model", f"hf:{vit_folder}", "--out",
         str(out), "--device", "cpu", "--method", "rollout"]
    )  # fmt: skip
    assert rc == 0
    rec = json.loads((out / "chelsea.json").read_text())
    assert rec["layout"]["prefix"] == ["cls"] and rec["input_size"] == [32, 32]
    assert rec["model"]["weights"]["source"] == "file"
    assert {p["label"] for p in rec["predictions"]} <= {"cat", "dog", "teapot", "rocket", "coffee"}
    assert np.load(out / "chelsea.npz")["attention"].shape == (2, 3, 17, 17)
    capsys.readouterr()
    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    assert "transformers: google/vit-base-patch16-224" in listing


def test_only_the_models_package_imports_transformers():
    from tests.test_imports import MODULES, imports_of

    users = {
        name
        for name, path in MODULES.items()
        if any(m.split(".")[0] == "transformers" for m in imports_of(path))
    }
    assert "vitviz.models.hf" in users
    assert all(name.startswith("vitviz.models.") for name in users), users
