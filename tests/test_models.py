"""Model resolution, weights sources (safe loading, offline failure), layouts, preprocessing."""

from __future__ import annotations

import os
import pickle
import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from tests.conftest import tiny
from vitviz import methods, models
from vitviz.engine.capture import capture
from vitviz.errors import ModelError, WeightsError
from vitviz.layout import TokenLayout


def test_safetensors_file_gives_identical_outputs(tmp_path, cat_image):
    a = tiny("vit_tiny_patch16_224", seed=3, model_kwargs={"depth": 3})
    path = tmp_path / "mine.safetensors"
    save_file({k: v.contiguous() for k, v in a.model.state_dict().items()}, str(path))
    b = models.load_model("vit_tiny_patch16_224", weights=path, model_kwargs={"depth": 3})
    assert b.weights.source == "file" and b.weights.warning is None
    ca, cb = capture(a, [cat_image]), capture(b, [cat_image])
    assert torch.equal(ca.logits, cb.logits)
    assert torch.equal(ca.attention, cb.attention)
    assert b.labels is not None and b.labels[285] == a.labels[285]  # ImageNet names


def test_plain_pth_state_dict_loads(tmp_path, cat_image):
    a = tiny("vit_tiny_patch16_224", seed=4, model_kwargs={"depth": 2})
    path = tmp_path / "mine.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in a.model.state_dict().items()}}, path)
    b = models.load_model("vit_tiny_patch16_224", weights=path, model_kwargs={"depth": 2})
    assert torch.equal(capture(a, [cat_image]).logits, capture(b, [cat_image]).logits)


class _Exploit:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickle_with_executable_content_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"head.weight": _Exploit(str(marker))}, f, protocol=2)
    with pytest.raises(WeightsError, match="refused to load"):
        models.load_model("vit_tiny_patch16_224", weights=path)
    assert not marker.exists()


def test_mismatched_weights_file_says_so(tmp_path):
    a = tiny("vit_tiny_patch16_224", model_kwargs={"depth": 2})
    path = tmp_path / "small.safetensors"
    save_file({k: v.contiguous() for k, v in a.model.state_dict().items()}, str(path))
    with pytest.raises(WeightsError, match="do not fit vit_small_patch16_224"):
        models.load_model("vit_small_patch16_224", weights=path)


def test_missing_and_unknown_weights_files(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        models.load_model("vit_tiny_patch16_224", weights=tmp_path / "nope.safetensors")
    bad = tmp_path / "w.onnx"
    bad.write_bytes(b"x")
    with pytest.raises(WeightsError, match="unknown weights format"):
        models.load_model("vit_tiny_patch16_224", weights=bad)


def test_safetensors_metadata_labels(tmp_path, cat_image):
    a = tiny("vit_tiny_patch16_224", model_kwargs={"depth": 2, "num_classes": 3})
    path = tmp_path / "three.safetensors"
    sd = {k: v.contiguous() for k, v in a.model.state_dict().items()}
    save_file(sd, str(path), metadata={"vitviz_labels": '["stripes", "dots", "checks"]'})
    b = models.load_model("vit_tiny_patch16_224", weights=path, model_kwargs={"depth": 2})
    assert b.labels == ["stripes", "dots", "checks"]
    assert capture(b, [cat_image]).logits.shape == (1, 3)


def test_offline_hub_failure_is_fast_and_says_what_to_do(no_network):
    with pytest.raises(WeightsError) as info:
        models.load_model("vit-b16")
    assert no_network == []  # fast: it never waited on the network
    msg = str(info.value)
    assert "vit-b16" in msg and "vit_base_patch16_224.augreg2_in21k_ft_in1k" in msg
    assert "Connect to the internet" in msg and "--weights" in msg
    assert "\n" not in msg


def test_unreachable_hub_without_offline_flag_fails_fast(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # loopback, nothing listens
    monkeypatch.setattr(models.hub, "_PROBES", {})  # no answer remembered from another test
    probes = []
    real_probe = models.hub._probe
    monkeypatch.setattr(
        models.hub,
        "_probe",
        lambda url, timeout: probes.append((url, timeout)) or real_probe(url, timeout),
    )
    with pytest.raises(WeightsError, match="cannot be reached"):
        models.load_model("deit-s16")
    # fast: one probe of the hub, bounded by its short timeout, then the error (no download)
    assert len(probes) == 1 and probes[0][0].startswith("http://127.0.0.1:9")
    assert probes[0][1] <= models.hub.HUB_PROBE_SECONDS


def test_cached_weights_load_without_network(tmp_path, monkeypatch, cat_image):
    a = tiny("vit_tiny_patch16_224", seed=5)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in a.model.state_dict().items()}, str(path))
    from vitviz.models.families import timm as timm_family

    monkeypatch.setattr(timm_family, "cached_weights", lambda name: path)
    b = models.load_model("vit_tiny_patch16_224")
    assert b.weights.source == "cache"
    assert torch.equal(capture(a, [cat_image]).logits, capture(b, [cat_image]).logits)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("swin_tiny_patch4_window7_224", "windowed attention"),
        ("xcit_tiny_12_p16_224", "feature channels"),
        ("pvt_v2_b0", "pooled"),
        ("convnext_tiny", "not a global-attention ViT"),
    ],
)
def test_refused_families(name, why):
    with pytest.raises(ModelError, match=why):
        models.load_model(name, random_weights=True)


def test_unknown_names_suggest_close_matches():
    with pytest.raises(ModelError, match=r"did you mean.*vit_base_patch16_224"):
        models.resolve_name("vit_base_patch16_22")
    with pytest.raises(ModelError, match="no weights tagged 'nope'"):
        models.resolve_name("vit_base_patch16_224.nope")


def test_curated_names_resolve():
    for spec in models.CURATED.values():
        for name in (spec.key, spec.title, spec.timm_name):
            assert models.resolve_name(name)[1] == spec.timm_name


def test_preprocessing_comes_from_each_models_config():
    vit = tiny("vit_tiny_patch16_224", model_kwargs={"depth": 1})
    deit = tiny("deit_tiny_patch16_224", model_kwargs={"depth": 1})
    assert vit.data_config["mean"] == (0.5, 0.5, 0.5)
    assert deit.data_config["mean"] == pytest.approx((0.485, 0.456, 0.406))
    gray = Image.new("RGB", (224, 224), (128, 128, 128))
    tv, td = vit.to_tensor(vit.seen_image(gray)), deit.to_tensor(deit.seen_image(gray))
    assert abs(float(tv[0, 0, 0]) - (128 / 255 - 0.5) / 0.5) < 1e-6
    assert abs(float(td[0, 0, 0]) - (128 / 255 - 0.485) / 0.229) < 1e-6


def test_layout_distilled_deit(cat_image):
    m = tiny("deit_tiny_distilled_patch16_224", model_kwargs={"depth": 2})
    cap = capture(m, [cat_image])
    assert cap.layout == TokenLayout(("cls", "dist"), (14, 14), (16, 16), "cls+dist")
    assert cap.attention.shape == (1, 2, 3, 198, 198)
    a = cap.attention[0].numpy()
    expected = (a[-1].mean(0)[0, 2:] + a[-1].mean(0)[1, 2:]) / 2
    np.testing.assert_allclose(
        methods.compute_map("attention", a, cap.layout).ravel(), expected, rtol=1e-6
    )


def test_layout_dinov2_registers_at_224(cat_image):
    m = tiny("vit_small_patch14_reg4_dinov2", model_kwargs={"img_size": 224, "depth": 2})
    assert not m.has_classifier and m.labels is None
    cap = capture(m, [cat_image])
    assert cap.logits is None
    assert cap.layout.prefix == ("cls", "reg", "reg", "reg", "reg")
    assert cap.layout.grid == (16, 16) and cap.layout.patch_size == (14, 14)
    assert cap.attention.shape[-1] == 5 + 256 and cap.images[0].shape == (224, 224, 3)


def test_layout_registers_without_class_token_avg_pool(cat_image):
    m = tiny("vit_little_patch16_reg4_gap_256", model_kwargs={"depth": 2})
    cap = capture(m, [cat_image])
    assert cap.layout.prefix == ("reg",) * 4 and cap.layout.readout == "avg"
    assert cap.layout.grid == (16, 16) and cap.attention.shape[-1] == 260
    w = cap.layout.readout_weights()
    assert w[:4].sum() == 0 and np.allclose(w[4:], 1 / 256)


def test_non_square_input_with_dynamic_img_size(cat_image):
    m = tiny("vit_tiny_patch16_224", keep_aspect=True, model_kwargs={"depth": 2})
    cap = capture(m, [cat_image])  # 451×300 → short side 224 → 337×224 → crop to 336×224
    assert cap.images[0].shape == (224, 336, 3)
    assert cap.layout.grid == (14, 21)
    assert cap.attention.shape[-1] == 1 + 14 * 21
    rolled = methods.compute_map("rollout", cap.attention[0], cap.layout)
    assert rolled.shape == (14, 21)


def test_fixed_size_model_refuses_wrong_input_size(vit_tiny):
    with pytest.raises(ModelError, match="takes 224×224"):
        vit_tiny.layout((224, 336))


def test_layout_hybrid_resnet_stem(cat_image):
    m = tiny("vit_base_r26_s32_224", model_kwargs={"depth": 1})
    cap = capture(m, [cat_image])
    assert cap.layout.grid == (7, 7) and cap.layout.patch_size == (32, 32)
    assert cap.layout.image_size == (224, 224)


def test_layout_eva_registers_and_beit_avg_pool(cat_image):
    eva_model = tiny("vit_base_patch16_rope_reg1_gap_256", model_kwargs={"depth": 1})
    eva = capture(eva_model, [cat_image])
    assert eva.layout.prefix == ("reg",) and eva.layout.readout == "avg"
    assert eva.attention.shape[-1] == 1 + 256
    beit = capture(tiny("beit_base_patch16_224", model_kwargs={"depth": 1}), [cat_image])
    assert beit.layout.prefix == ("cls",) and beit.layout.readout == "avg"


def test_differential_attention_is_refused():
    with pytest.raises(ModelError, match="cannot capture"):
        tiny("vit_dlittle_patch16_reg1_gap_256", model_kwargs={"depth": 1})


def test_file_weights_are_not_kept_twice(tmp_path):
    a = tiny("vit_tiny_patch16_224", model_kwargs={"depth": 1})
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in a.model.state_dict().items()}, str(path))
    b = models.load_model("vit_tiny_patch16_224", weights=path, model_kwargs={"depth": 1})
    assert "state_dict" not in b.model.pretrained_cfg


def test_devices_and_precision_are_checked():
    assert models.pick_precision(torch.device("cpu"), "bf16") == "fp32"
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="no CUDA GPU"):
            models.pick_device("cuda:1")
    with pytest.raises(ModelError, match="unknown device"):
        models.pick_device("tpu9")


def test_hub_probe_answer_is_remembered_briefly(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(models.hub, "_PROBES", {})
    calls = []
    monkeypatch.setattr(models.hub, "_probe", lambda url, timeout: calls.append(url) or False)
    assert not models.hub_reachable("http://127.0.0.1:9/x")
    assert not models.hub_reachable("http://127.0.0.1:9/x")
    assert calls == ["http://127.0.0.1:9/x"]  # the second answer came from memory
    clock = [time.monotonic() + models.PROBE_MEMORY_SECONDS + 1]
    monkeypatch.setattr(models.hub.time, "monotonic", lambda: clock[0])
    models.hub_reachable("http://127.0.0.1:9/x")
    assert len(calls) == 2  # forgotten after 30 s


def test_parameter_count_on_the_meta_device_matches_the_built_model():
    built = tiny("vit_tiny_patch16_224", model_kwargs={"depth": 3})
    real = sum(t.numel() for t in (*built.model.parameters(), *built.model.buffers()))
    assert models.parameter_count("vit_tiny_patch16_224", {"depth": 3}) == real
    assert models.parameter_count("demo") == models.parameter_count(
        "vit_tiny_patch16_224", {"depth": 6, "num_classes": 8}
    )


def test_models_over_the_size_limit_are_refused_without_allocating():
    import psutil

    rss = psutil.Process().memory_info().rss
    with pytest.raises(ModelError, match=r"1,844 M parameters .* over the limit of 350 M"):
        models.load_model("vit_gigantic_patch14_224", random_weights=True, max_params=350_000_000)
    assert psutil.Process().memory_info().rss - rss < 200 * 2**20  # not its 6.9 GiB
    assert models.load_model("demo", max_params=350_000_000).name == "demo"


def test_weights_files_over_the_limit_are_refused_before_reading(tmp_path, monkeypatch):
    m = tiny("vit_small_patch16_224", model_kwargs={"depth": 6})  # 11 M parameters: 44 MB
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in m.model.state_dict().items()}, str(path))
    import safetensors

    def no_reading(*a, **k):
        raise AssertionError("the file was read")

    monkeypatch.setattr(safetensors, "safe_open", no_reading)
    with pytest.raises(WeightsError, match="over the limit"):
        # the name passes (vit_tiny: 5.7 M), the file's size does not
        models.load_model("vit_tiny_patch16_224", weights=path, max_params=6_000_000)


def test_a_weights_file_without_tensors_is_refused_not_replaced_by_the_hub(tmp_path):
    empty = tmp_path / "empty.safetensors"
    save_file({}, str(empty))
    with pytest.raises(WeightsError, match="holds no tensors"):
        models.load_model("vit_tiny_patch16_224", weights=empty)
    pth = tmp_path / "empty.pth"
    torch.save({}, pth)
    with pytest.raises(WeightsError, match="holds no tensors"):
        models.read_state_dict(pth)
