"""Synthetic scenes with known object masks, for the bundled demo model and for measuring
how faithful each explanation method is.

A scene is a 224×224 RGB image on a cluttered background (a smooth colour gradient, noise
texture, thin strokes and small blobs) with one or two non-overlapping *textured objects*:
random blob outlines filled with one of eight textures in two colours. The generator returns
each object's pixel mask and class, so a map can be scored against where the object really is.
Everything is drawn from one seed: the same seed gives the same scene, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

SIZE = 224
CLASSES: tuple[str, ...] = (
    "horizontal stripes",
    "vertical stripes",
    "diagonal stripes",
    "anti-diagonal stripes",
    "checkerboard",
    "dots",
    "grid",
    "solid",
)


@dataclass(frozen=True)
class Scene:
    """One generated scene.

    Attributes:
        image: RGB uint8 ``224×224×3``.
        masks: one boolean ``224×224`` mask per object, in the order of ``classes``.
        classes: class index of each object (two objects always differ).
    """

    image: np.ndarray
    masks: tuple[np.ndarray, ...]
    classes: tuple[int, ...]

    @property
    def labels(self) -> tuple[str, ...]:
        """Class names of the objects."""
        return tuple(CLASSES[c] for c in self.classes)


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.0, 1.0, size=3)


def _contrasting(rng: np.random.Generator, other: np.ndarray, min_dist: float) -> np.ndarray:
    for _ in range(100):
        c = _colour(rng)
        if np.linalg.norm(c - other) >= min_dist:
            return c
    return 1.0 - other


def _background(rng: np.random.Generator) -> np.ndarray:
    """Gradient + blurred noise + thin clutter strokes + small blobs, float RGB in [0, 1]."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    angle = rng.uniform(0, 2 * np.pi)
    t = (np.cos(angle) * xx + np.sin(angle) * yy + 1.5) / 3.0
    c0, c1 = _colour(rng), _colour(rng)
    img = (1 - t)[..., None] * c0 + t[..., None] * c1
    noise = rng.normal(0, 1, size=(SIZE, SIZE, 3)).astype(np.float32)
    sigma = rng.uniform(1.0, 4.0)
    noise = cv2.GaussianBlur(noise, (0, 0), sigma)
    noise /= noise.std() + 1e-6
    img = img + rng.uniform(0.03, 0.12) * noise
    img = np.ascontiguousarray(img, dtype=np.float32)
    for _ in range(int(rng.integers(6, 20))):
        p0 = tuple(int(v) for v in rng.integers(0, SIZE, 2))
        p1 = tuple(int(v) for v in np.clip(np.array(p0) + rng.integers(-60, 61, 2), 0, SIZE - 1))
        cv2.line(img, p0, p1, _colour(rng).tolist(), int(rng.integers(1, 3)), cv2.LINE_AA)
    for _ in range(int(rng.integers(4, 12))):
        centre = tuple(int(v) for v in rng.integers(0, SIZE, 2))
        cv2.circle(img, centre, int(rng.integers(2, 7)), _colour(rng).tolist(), -1, cv2.LINE_AA)
    return img


def _outline(rng: np.random.Generator, centre: np.ndarray, radius: float) -> np.ndarray:
    """A random smooth blob: polygon of a radius that varies smoothly with the angle."""
    n = 48
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = np.ones(n)
    for k in (2, 3, 4):
        r += rng.uniform(0.0, 0.22 / (k - 1)) * np.cos(k * angles + rng.uniform(0, 2 * np.pi))
    pts = centre + radius * r[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    return mask.astype(bool)


def _texture(rng: np.random.Generator, cls: int) -> np.ndarray:
    """Full-size float RGB texture of class ``cls`` in two contrasting colours."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    period = float(rng.uniform(7.0, 16.0))
    phase = rng.uniform(0, period, size=2)
    x, y = xx + phase[0], yy + phase[1]
    name = CLASSES[cls]
    if name == "horizontal stripes":
        on = (y % period) < period / 2
    elif name == "vertical stripes":
        on = (x % period) < period / 2
    elif name == "diagonal stripes":
        on = ((x + y) % (period * 1.41)) < period * 0.705
    elif name == "anti-diagonal stripes":
        on = ((x - y) % (period * 1.41)) < period * 0.705
    elif name == "checkerboard":
        half = period / 2
        on = ((x // half) + (y // half)) % 2 == 0
    elif name == "dots":
        dx, dy = (x % period) - period / 2, (y % period) - period / 2
        on = dx * dx + dy * dy < (period * 0.3) ** 2
    elif name == "grid":
        width = max(2.0, period / 4)
        on = ((x % period) < width) | ((y % period) < width)
    else:  # solid
        on = np.zeros((SIZE, SIZE), bool)
    c0 = _colour(rng)
    c1 = _contrasting(rng, c0, 0.6)
    return np.where(on[..., None], c1, c0).astype(np.float32)


def generate_scene(seed: int, num_objects: int | None = None) -> Scene:
    """The scene of ``seed``: 1 or 2 textured objects (``num_objects`` forces the count)."""
    rng = np.random.default_rng(seed)
    count = int(rng.integers(1, 3)) if num_objects is None else num_objects
    if count not in (1, 2):
        raise ValueError(f"scenes hold 1 or 2 objects, not {count}")
    img = _background(rng)
    classes = [int(c) for c in rng.choice(len(CLASSES), size=count, replace=False)]
    masks: list[np.ndarray] = []
    taken = np.zeros((SIZE, SIZE), bool)
    for cls in classes:
        for _ in range(200):
            size = rng.uniform(50, 120) if count == 1 else rng.uniform(50, 95)
            radius = size / 2
            centre = rng.uniform(radius, SIZE - radius, size=2)
            mask = _outline(rng, centre, radius)
            grown = cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
            if mask.sum() > 0.5 * np.pi * radius**2 and not (grown & taken).any():
                break
        else:  # pragma: no cover - 200 misses on a 224 px canvas do not happen in practice
            raise RuntimeError(f"could not place {count} objects for seed {seed}")
        tex = _texture(rng, cls)
        img = np.where(mask[..., None], tex, img)
        masks.append(mask)
        taken |= mask
    image = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    return Scene(image=image, masks=tuple(masks), classes=tuple(classes))
