"""Train the bundled demo ViT on synthetic texture scenes: ``python -m vitviz.demo.train``.

A plain timm ``VisionTransformer`` (patch 16, 224 px, 6 layers, width 192, 3 heads — timm's
``vit_tiny_patch16_224`` with ``depth=6``) learns the eight texture classes of
:mod:`vitviz.demo.scenes` from scratch: AdamW, linear warm-up then cosine decay, cross entropy
on soft targets (a two-object scene is half one class, half the other).

``--patch-loss W`` adds an auxiliary per-patch loss ("token labeling"): a linear head on every
patch token's output predicts which object class (or background) covers that patch, with soft
targets from the generator's masks. It is never shipped (only the classifier is saved), but it
shapes what the patch tokens carry, so the model card says whether it was used.

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


GRID = 14  # 224 px / patch 16
BACKGROUND = len(CLASSES)  # index of the background in per-patch targets


def patch_targets(masks: tuple[np.ndarray, ...], classes: tuple[int, ...]) -> np.ndarray:
    """Soft per-patch targets ``[14, 14, C + 1]``: each object's share of the patch's pixels
    in its class's slot, the rest in the background slot (the last)."""
    from vitviz.demo.metrics import patch_coverage

    out = np.zeros((GRID, GRID, len(CLASSES) + 1), np.float32)
    for mask, c in zip(masks, classes, strict=True):
        out[..., c] += patch_coverage(mask, (GRID, GRID))
    out[..., BACKGROUND] = np.clip(1.0 - out[..., :BACKGROUND].sum(-1), 0.0, 1.0)
    return out


def scenes_to_patch_targets(seeds: range | list[int], single_share: float = 0.6) -> np.ndarray:
    """:func:`patch_targets` of the scenes :func:`scenes_to_arrays` makes for these seeds."""
    out = np.empty((len(seeds), GRID, GRID, len(CLASSES) + 1), np.float16)
    for i, seed in enumerate(seeds):
        objects = 1 if (seed % 10) < round(single_share * 10) else 2
        scene = generate_scene(int(seed), objects)
        out[i] = patch_targets(scene.masks, scene.classes)
    return out


def _patch_chunk(args: tuple[list[int], float]) -> np.ndarray:
    return scenes_to_patch_targets(args[0], args[1])


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
    images: np.ndarray,
    targets: np.ndarray,
    rng: np.random.Generator,
    patches: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random symmetry of the square per image, with the class targets permuted to match.

    With ``patches`` (per-patch targets ``[n, gh, gw, C + 1]``) the same symmetry and class
    permutation is applied to them too and they are returned third.
    """
    images, targets = images.copy(), targets.copy()
    if patches is not None:
        patches = patches.copy()
    swap_hv = np.append(_SWAP_HV, BACKGROUND)
    swap_diag = np.append(_SWAP_DIAG, BACKGROUND)
    for i in range(len(images)):
        img, tgt = images[i], targets[i]
        pt = patches[i] if patches is not None else None
        transpose, hflip, vflip = rng.integers(0, 2, 3)
        if transpose:
            img, tgt = img.transpose(1, 0, 2), tgt[_SWAP_HV]
            if pt is not None:
                pt = pt.transpose(1, 0, 2)[..., swap_hv]
        if hflip:
            img = img[:, ::-1]
            pt = pt[:, ::-1] if pt is not None else None
        if vflip:
            img = img[::-1]
            pt = pt[::-1] if pt is not None else None
        if hflip != vflip:
            tgt = tgt[_SWAP_DIAG]
            pt = pt[..., swap_diag] if pt is not None else None
        images[i], targets[i] = img, tgt
        if patches is not None:
            patches[i] = pt
    if patches is not None:
        return images, targets, patches
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


def cached_patch_targets(count: int, log=print) -> np.ndarray:
    """Per-patch targets of the training scenes, generated once and cached."""
    path = CACHE / f"demo-train-{count}-patches.npy"
    if path.exists():
        return np.load(path)
    log(f"computing per-patch targets of {count} training scenes (cached in {path}) …")
    seeds = range(TRAIN_SEED_BASE, TRAIN_SEED_BASE + count)
    from multiprocessing import get_context

    chunks = [(list(seeds[i : i + 256]), 0.6) for i in range(0, count, 256)]
    with get_context("spawn").Pool(os.cpu_count() or 1) as pool:
        out = np.concatenate(pool.map(_patch_chunk, chunks))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, out)
    return out


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


def class_loss(logits: torch.Tensor, targets: torch.Tensor, kind: str = "softmax") -> torch.Tensor:
    """Softmax cross entropy on soft targets, or multi-label BCE on the classes present."""
    if kind == "bce":
        present = (targets > 0).to(logits.dtype)
        return nn.functional.binary_cross_entropy_with_logits(logits, present)
    return torch.sum(-targets * torch.log_softmax(logits, dim=-1), dim=-1).mean()


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
    p.add_argument(
        "--schedule-from",
        type=int,
        default=0,
        help="restart warm-up and cosine decay at this step (a fine-tuning run)",
    )
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--train-scenes", type=int, default=16000)
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--eval-scenes", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--loss",
        choices=["softmax", "bce"],
        default="softmax",
        help="softmax cross entropy on soft targets, or per-class sigmoid (multi-label) BCE",
    )
    p.add_argument(
        "--patch-loss",
        type=float,
        default=0.0,
        help="weight of the auxiliary per-patch (token labeling) loss; 0 = off",
    )
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
    step, history, phases = 0, [], []
    state = None
    if args.checkpoint.exists():
        state = torch.load(args.checkpoint, map_location=device, weights_only=True)
    # the auxiliary head exists once any run used the patch loss; its optimizer group follows
    aux = None
    if args.patch_loss > 0 or (state is not None and "aux" in state):
        aux = nn.Linear(model.embed_dim, len(CLASSES) + 1).to(device)
        opt.add_param_group({"params": list(aux.parameters())})
    if state is not None:
        model.load_state_dict(state["model"])
        if aux is not None and "aux" in state:
            aux.load_state_dict(state["aux"])
            opt.load_state_dict(state["opt"])
        else:  # first run with the patch loss: keep the model's optimizer state
            groups = opt.param_groups
            opt.param_groups = groups[:1]
            opt.load_state_dict(state["opt"])
            opt.param_groups.extend(groups[1:])
        step, history = int(state["step"]), json.loads(state["history"])
        phases = json.loads(state.get("phases", '[{"from_step": 0, "patch_loss": 0.0}]'))
        order_rng = np.random.default_rng(args.seed + step)
        print(f"resumed from {args.checkpoint} at step {step}", file=sys.stderr)
    phase = {
        "from_step": step,
        "patch_loss": args.patch_loss,
        "loss": args.loss,
        "lr": args.lr,
        "schedule_from": args.schedule_from,
    }
    if not phases or any(phases[-1].get(k) != phase[k] for k in phase if k != "from_step"):
        phases.append(phase)
    patches = None
    if args.patch_loss > 0:
        patches = cached_patch_targets(args.train_scenes, log=lambda m: print(m, file=sys.stderr))
    # validation scenes: seeds just below the held-out benchmark range, never trained on
    val_images, val_labels = single_object_set(
        range(HELDOUT_SEED_BASE - args.eval_scenes, HELDOUT_SEED_BASE)
    )
    model.train()
    bar = tqdm(total=args.steps, initial=step, desc="training", file=sys.stderr)
    started = time.time()
    while step < args.steps:
        idx = order_rng.integers(0, len(images), args.batch)
        if patches is None:
            batch_images, batch_targets = augment(images[idx], targets[idx], order_rng)
        else:
            batch_images, batch_targets, batch_patches = augment(
                images[idx], targets[idx], order_rng, patches[idx]
            )
        x = to_input(batch_images).to(device)
        y = torch.from_numpy(batch_targets).to(device)
        for group in opt.param_groups:
            group["lr"] = lr_at(
                step - args.schedule_from, args.steps - args.schedule_from, args.lr, args.warmup
            )
        if patches is None:
            loss = class_loss(model(x), y, args.loss)
        else:
            feats = model.forward_features(x)
            logits = model.forward_head(feats)
            loss = class_loss(logits, y, args.loss)
            patch_logits = aux(feats[:, model.num_prefix_tokens :])
            pt = torch.from_numpy(batch_patches.astype(np.float32)).to(device).flatten(1, 2)
            patch_ce = torch.sum(-pt * torch.log_softmax(patch_logits, dim=-1), dim=-1).mean()
            loss = loss + args.patch_loss * patch_ce
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
            ckpt = {
                "model": model.state_dict(),
                "opt": opt.state_dict(),
                "step": step,
                "history": json.dumps(history),
                "phases": json.dumps(phases),
            }
            if aux is not None:
                ckpt["aux"] = aux.state_dict()
            torch.save(ckpt, args.checkpoint)
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
        "loss": args.loss,
        "phases": phases,
        "history": history,
        "train_seconds_this_run": round(time.time() - started),
    }
    save_weights(model.cpu(), args.out, meta)
    print(json.dumps({"out": str(args.out), **meta}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
