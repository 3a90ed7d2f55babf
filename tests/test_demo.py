"""The synthetic scenes, the faithfulness metrics and the bundled demo model."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from vitviz.demo import metrics
from vitviz.demo.scenes import CLASSES, SIZE, generate_scene


def test_same_seed_same_scene_and_masks():
    a, b = generate_scene(123), generate_scene(123)
    assert np.array_equal(a.image, b.image)
    assert a.classes == b.classes
    assert all(np.array_equal(x, y) for x, y in zip(a.masks, b.masks, strict=True))
    c = generate_scene(124)
    assert not np.array_equal(a.image, c.image)


def test_scene_structure():
    counts = set()
    for seed in range(40):
        s = generate_scene(seed)
        assert s.image.shape == (SIZE, SIZE, 3) and s.image.dtype == np.uint8
        assert len(s.masks) == len(s.classes) in (1, 2)
        counts.add(len(s.classes))
        assert len(set(s.classes)) == len(s.classes)
        for m in s.masks:
            side = np.sqrt(m.sum() / np.pi) * 2  # equivalent diameter
            assert 40 <= side <= 135
        if len(s.masks) == 2:
            assert not (s.masks[0] & s.masks[1]).any()
    assert counts == {1, 2}
    assert generate_scene(5, 1).classes.__len__() == 1
    with pytest.raises(ValueError):
        generate_scene(5, 3)


def test_masks_match_the_drawn_pixels():
    for seed in range(30):
        s = generate_scene(seed)
        for cls, mask in zip(s.classes, s.masks, strict=True):
            inside = s.image[mask]
            colours = np.unique(inside, axis=0)
            # a texture is drawn in exactly two colours (solid: one), nothing else inside
            assert len(colours) == (1 if CLASSES[cls] == "solid" else 2), (seed, CLASSES[cls])
            ring = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
            ring &= ~mask
            outside = s.image[ring]
            same = (outside[:, None, :] == colours[None]).all(-1).any(-1)
            assert same.mean() < 0.5  # the pixels right outside are background


def test_metrics_on_hand_made_maps():
    mask = np.zeros((224, 224), bool)
    mask[32:96, 48:112] = True  # exactly patches rows 2-5, cols 3-6 (16 of 196)
    cov = metrics.patch_coverage(mask, (14, 14))
    assert cov.sum() == 16 and cov.max() == 1.0
    perfect = cov.copy()
    assert metrics.pointing_hit(perfect, mask)
    assert metrics.mass_in_mask(perfect, mask) == 1.0
    uniform = np.ones((14, 14))
    assert metrics.mass_in_mask(uniform, mask) == pytest.approx(16 / 196)
    assert metrics.mask_baseline(mask, (14, 14)) == pytest.approx(16 / 196)
    far = np.zeros((14, 14))
    far[13, 13] = 1.0
    assert not metrics.pointing_hit(far, mask)
    assert metrics.mass_in_mask(far, mask) == 0.0
    near = np.zeros((14, 14))
    near[6, 7] = 1.0  # one patch below-right of the object: inside the one-patch dilation
    assert metrics.pointing_hit(near, mask)
    other = np.zeros((224, 224), bool)
    other[160:208, 160:208] = True
    assert metrics.right_object_wins(perfect, mask, other) == 1.0
    assert metrics.right_object_wins(perfect, other, mask) == 0.0
    assert metrics.right_object_wins(uniform, mask, mask) == 0.5


def _orientation(img: np.ndarray) -> str:
    """Which direction a stripe texture is constant along, by counting equal neighbours."""
    a = img.astype(int).sum(-1)
    scores = {
        "horizontal stripes": (a[:, 1:] == a[:, :-1]).mean(),  # constant along x
        "vertical stripes": (a[1:, :] == a[:-1, :]).mean(),  # constant along y
        "diagonal stripes": (a[:-1, 1:] == a[1:, :-1]).mean(),  # x + y constant
        "anti-diagonal stripes": (a[1:, 1:] == a[:-1, :-1]).mean(),  # x - y constant
    }
    return max(scores, key=scores.get)


def test_augmentation_permutes_stripe_classes_correctly():
    from vitviz.demo.scenes import _texture
    from vitviz.demo.train import augment

    rng = np.random.default_rng(0)
    stripes = [CLASSES.index(n) for n in CLASSES if "stripes" in n]
    images, targets = [], []
    for cls in stripes:
        tex = (_texture(np.random.default_rng(cls), cls) * 255).astype(np.uint8)
        assert _orientation(tex) == CLASSES[cls]
        for _ in range(8):
            images.append(tex)
            targets.append(np.eye(len(CLASSES), dtype=np.float32)[cls])
    out, tgt = augment(np.stack(images), np.stack(targets), rng)
    seen_ops = set()
    for img, t, orig in zip(out, tgt, np.stack(images), strict=True):
        assert _orientation(img) == CLASSES[int(t.argmax())]
        seen_ops.add(img.tobytes() == orig.tobytes())
    assert seen_ops == {True, False}  # some were changed, some (by chance) kept


def test_shipped_demo_weights_classify_held_out_scenes():
    from vitviz.demo.train import HELDOUT_SEED_BASE, accuracy, single_object_set
    from vitviz.models import DEMO_WEIGHTS, load_model

    if not DEMO_WEIGHTS.exists():
        pytest.skip(f"no bundled demo weights yet at {DEMO_WEIGHTS}")
    loaded = load_model("demo", device="cpu")
    assert loaded.weights.source == "bundled"
    assert loaded.labels == list(CLASSES)
    assert loaded.data_config["crop_pct"] == 1.0  # a 224 px scene is fed as it is
    images, labels = single_object_set(
        range(HELDOUT_SEED_BASE + 50_000, HELDOUT_SEED_BASE + 50_200)
    )
    assert accuracy(loaded.model, images, labels) >= 0.9
    # the engine's preprocessing gives the same input as training did
    from PIL import Image

    from vitviz.demo.train import to_input

    seen = loaded.seen_image(Image.fromarray(images[0]))
    np.testing.assert_array_equal(np.asarray(seen), images[0])
    np.testing.assert_allclose(loaded.to_tensor(seen), to_input(images[:1])[0], atol=1e-6)


def test_patch_targets_follow_the_masks_and_the_augmentation():
    from vitviz.demo.train import BACKGROUND, augment, patch_targets

    scene = generate_scene(123, 2)
    pt = patch_targets(scene.masks, scene.classes)
    assert pt.shape == (14, 14, len(CLASSES) + 1)
    np.testing.assert_allclose(pt.sum(-1), 1.0, atol=1e-6)
    for mask, c in zip(scene.masks, scene.classes, strict=True):
        # each object's slot holds the share of each patch's pixels it covers
        cover = mask.reshape(14, 16, 14, 16).mean(axis=(1, 3))
        np.testing.assert_allclose(pt[..., c], cover, atol=1e-6)
    # the same symmetry moves images and per-patch targets together
    rng = np.random.default_rng(5)
    targets = np.zeros((1, len(CLASSES)), np.float32)
    targets[0, list(scene.classes)] = 0.5
    for _ in range(6):
        _, tgt, pts = augment(scene.image[None], targets, rng, pt[None])
        # background patches stay background under every symmetry
        bg = pts[0][..., BACKGROUND]
        moved = [
            np.array_equal(bg, f(pt[..., BACKGROUND]))
            for f in (
                lambda a: a,
                lambda a: a.T,
                lambda a: a[:, ::-1],
                lambda a: a[::-1],
                lambda a: a[::-1, ::-1],
                lambda a: a.T[:, ::-1],
                lambda a: a.T[::-1],
                lambda a: a.T[::-1, ::-1],
            )
        ]
        assert any(moved)
        # a class present in the scene-level target is present in the patch targets
        present = set(np.flatnonzero(tgt[0]))
        assert present == set(np.flatnonzero(pts[0][..., :BACKGROUND].sum(axis=(0, 1))))


def test_class_losses_by_hand():
    import math

    import torch

    from vitviz.demo.train import class_loss

    logits = torch.tensor([[2.0, 0.0, -1.0]])
    targets = torch.tensor([[0.5, 0.5, 0.0]])
    z = math.log(math.exp(2) + 1 + math.exp(-1))
    soft = -(0.5 * (2 - z) + 0.5 * (0 - z))
    assert float(class_loss(logits, targets)) == pytest.approx(soft, rel=1e-6)

    def sig(v):
        return 1 / (1 + math.exp(-v))

    bce = -(math.log(sig(2.0)) + math.log(sig(0.0)) + math.log(1 - sig(-1.0))) / 3
    assert float(class_loss(logits, targets, "bce")) == pytest.approx(bce, rel=1e-6)
