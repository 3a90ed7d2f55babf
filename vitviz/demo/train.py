"""Train the bundled demo ViT on synthetic texture scenes: ``python -m vitviz.demo.train``.

A plain timm ``VisionTransformer`` (patch 16, 224 px, 6 layers, width 192, 3 heads — timm's
``vit_tiny_patch16_224`` with ``depth=6``) learns the eight texture classes of
:mod:`vitviz.demo.scenes` from scratch: AdamW, linear warm-up then cosine decay, cross entropy
on soft targets (a two-object scene is half one class, half the other). No auxiliary loss:
nothing pushes attention toward the objects except the classification itself.

The scenes are generated once from fixed seeds and cached; training resumes from its
checkpoint when run again with the same arguments. The result is written as safetensors with
the class names and training settings in its metadata.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vitviz.demo.scenes import CLASSES, generate_scene

TRAIN_SEED_BASE = 1_000_000  # training scenes use seeds TRAIN_SEED_BASE + i
HELDOUT_SEED_BASE = 9_000_000  # never used in training
DEMO_ARCH = "vit_tiny_patch16_224"
DEMO_KWARGS = {"depth": 6, "num_classes": len(CLASSES)}
MEAN = STD = (0.5, 0.5, 0.5)
DEFAULT_OUT = Path(__file__).resolve().parents[2] / "assets" / "demo" / "vitviz-demo.safetensors"
CACHE = Path(os.environ.get("VITVIZ_CACHE", Path.home() / ".cache" / "vitviz"))


def build_model() -> nn.Module:
    """The demo architecture with random weights."""
    import timm

    return timm.create_model(DEMO_ARCH, pretrained=False, **DEMO_KWARGS)


def scenes_to_arrays(
    seeds: range | list[int], single_share: float = 0.6
) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[n, 224, 224, 3]`` uint8 and soft targets ``[n, C]`` for the given seeds.

    A seed's scene holds one object when ``seed % 10 < single_share * 10``, else two.
    """
    n = len(seeds)
    images = np.empty((n, 224, 224, 3), np.uint8)
    targets = np.zeros((n, len(CLASSES)), np.float32)
    for i, seed in enumerate(seeds):
        objects = 1 if (seed % 10) < round(single_share * 10) else 2
        scene = generate_scene(int(seed), objects)
        images[i] = scene.image
        for c in scene.classes:
            targets[i, c] = 1.0 / len(scene.classes)
    return images, targets


def _scene_chunk(args: tuple[list[int], float]) -> tuple[np.ndarray, np.ndarray]:
    return scenes_to_arrays(args[0], args[1])


def scenes_to_arrays_parallel(
    seeds: range, single_share: float = 0.6, workers: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`scenes_to_arrays` over all cores (same result as the serial version)."""
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(seeds) < 256:
        return scenes_to_arrays(seeds, single_share)
    from multiprocessing import get_context

    chunks = [list(seeds[i : i + 256]) for i in range(0, len(seeds), 256)]
    with get_context("spawn").Pool(workers) as pool:
        parts = pool.map(_scene_chunk, [(c, single_share) for c in chunks])
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


# Class permutations under the symmetries of the square: a transpose swaps horizontal and
# vertical stripes; a single flip swaps the two diagonal directions.
_SWAP_HV = np.array([1, 0, 2, 3, 4, 5, 6, 7])
_SWAP_DIAG = np.array([0, 1, 3, 2, 4, 5, 6, 7])


def augment(
    images: np.ndarray, targets: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Random symmetry of the square per image, with the class targets permuted to match."""
    images, targets = images.copy(), targets.copy()
    for i in range(len(images)):
        img, tgt = images[i], targets[i]
        transpose, hflip, vflip = rng.integers(0, 2, 3)
        if transpose:
            img, tgt = img.transpose(1, 0, 2), tgt[_SWAP_HV]
        if hflip:
            img = img[:, ::-1]
        if vflip:
            img = img[::-1]
        if hflip != vflip:
            tgt = tgt[_SWAP_DIAG]
        images[i], targets[i] = img, tgt
    return images, targets


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC → normalized float NCHW (the demo model's preprocessing)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - MEAN[0]) / STD[0]


def cached_dataset(count: int, log=print) -> tuple[np.ndarray, np.ndarray]:
    """The training scenes, generated once and cached under ``$VITVIZ_CACHE``."""
    path = CACHE / f"demo-train-{count}.npz"
    if path.exists():
        data = np.load(path)
        return data["images"], data["targets"]
    log(f"generating {count} training scenes (cached in {path}) …")
    start = time.time()
    images, targets = scenes_to_arrays_parallel(range(TRAIN_SEED_BASE, TRAIN_SEED_BASE + count))
    log(f"  done in {time.time() - start:.0f} s")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=images, targets=targets)
    return images, targets


def single_object_set(seeds: range) -> tuple[np.ndarray, np.ndarray]:
    """Images and class indices of single-object scenes of the given seeds."""
    scenes = [generate_scene(s, 1) for s in seeds]
    return np.stack([s.image for s in scenes]), np.array([s.classes[0] for s in scenes])


@torch.no_grad()
def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray, batch: int = 64) -> float:
    """Top-1 accuracy of ``model`` on uint8 images with integer labels."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, len(images), batch):
        x = to_input(images[start : start + batch]).to(device)
        pred = model(x).argmax(-1).cpu().numpy()
        correct += int((pred == labels[start : start + batch]).sum())
    model.train(was_training)
    return correct / len(images)


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 2 % of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))


def save_weights(model: nn.Module, path: Path, meta: dict) -> None:
    """Write the weights (fp32) with class names and training facts in the metadata."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    metadata = {"vitviz_labels": json.dumps(list(CLASSES)), "vitviz_training": json.dumps(meta)}
    save_file(sd, str(path), metadata=metadata)


def main(argv: list[str] | None = None) -> int:
    """Train (or resume) and write the demo weights."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2400)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--warmup", type=int, default=150)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--train-scenes", type=int, default=16000)
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--eval-scenes", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--checkpoint", type=Path, default=CACHE / "demo-train-checkpoint.pt")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)

    from tqdm import tqdm

    from vitviz.models import pick_device

    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    images, targets = cached_dataset(args.train_scenes, log=lambda m: print(m, file=sys.stderr))
    model = build_model().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    order_rng = np.random.default_rng(args.seed)
    step, history = 0, []
    if args.checkpoint.exists():
        state = torch.load(args.checkpoint, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, history = int(state["step"]), json.loads(state["history"])
        order_rng = np.random.default_rng(args.seed + step)
        print(f"resumed from {args.checkpoint} at step {step}", file=sys.stderr)
    # validation scenes: seeds just below the held-out benchmark range, never trained on
    val_images, val_labels = single_object_set(
        range(HELDOUT_SEED_BASE - args.eval_scenes, HELDOUT_SEED_BASE)
    )
    model.train()
    bar = tqdm(total=args.steps, initial=step, desc="training", file=sys.stderr)
    started = time.time()
    while step < args.steps:
        idx = order_rng.integers(0, len(images), args.batch)
        batch_images, batch_targets = augment(images[idx], targets[idx], order_rng)
        x = to_input(batch_images).to(device)
        y = torch.from_numpy(batch_targets).to(device)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        loss = torch.sum(-y * torch.log_softmax(model(x), dim=-1), dim=-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % args.eval_every == 0 or step == args.steps:
            acc = accuracy(model, val_images, val_labels)
            history.append({"step": step, "loss": round(loss.item(), 4), "accuracy": acc})
            tqdm.write(f"step {step}: loss {loss.item():.3f}, accuracy {acc:.3f}", file=sys.stderr)
            args.checkpoint.parent.mkdir(parents=True, exist_ok=True)
            torch.save(
                {
                    "model": model.state_dict(),
                    "opt": opt.state_dict(),
                    "step": step,
                    "history": json.dumps(history),
                },
                args.checkpoint,
            )
    bar.close()
    meta = {
        "arch": DEMO_ARCH,
        "kwargs": DEMO_KWARGS,
        "steps": args.steps,
        "batch": args.batch,
        "lr": args.lr,
        "warmup": args.warmup,
        "weight_decay": args.weight_decay,
        "train_scenes": args.train_scenes,
        "seed": args.seed,
        "history": history,
        "train_seconds_this_run": round(time.time() - started),
    }
    save_weights(model.cpu(), args.out, meta)
    print(json.dumps({"out": str(args.out), **meta}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
