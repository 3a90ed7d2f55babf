"""Fingerprints of what the command line writes, to show a redesign changed no output.

Runs a fixed set of ``python -m vitviz`` commands on the bundled demo model and sample photos
(every map method, trust, compare, features, atlas, the model listing), then prints one JSON
object: for every file written, a SHA-256 of its content (``.npz``: of each array's dtype,
shape and bytes; ``.json``: of the document with run-dependent fields — times, durations,
versions — removed; pictures: of their decoded pixels). Run it on two checkouts and compare::

    python bench/outputs_fingerprint.py --json > after.json
    (cd OLD_CHECKOUT && python /path/to/bench/outputs_fingerprint.py --json) > before.json
    python bench/outputs_fingerprint.py --compare before.json after.json

The commands use only options that existed before issue 22's redesign, so the same script runs
on both sides. Exit status 1 when ``--compare`` finds a difference.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
ASSET_DIR = HERE.parent / "assets"
SAMPLES = ["chelsea.png", "coffee.png"]
METHODS = ["attention", "rollout", "query", "mask", "chefer", "grad-rollout", "attn-grad"]
VOLATILE = {"seconds", "elapsed", "elapsed_s", "time", "created", "version", "vitviz_version"}


def commands(out: Path, assets: Path) -> list[list[str]]:
    """The CLI runs whose outputs are fingerprinted (each writes under its own folder)."""
    images = [str(assets / s) for s in SAMPLES]
    runs = [["models"]]
    for m in METHODS:
        extra = ["--patch", "37"] if m == "query" else []
        shown = ["--values", "--svg", "--legend", "--top-k", "3"]
        shown += ["--out", str(out / f"explain-{m}")]
        runs.append(["explain", *images, "--model", "demo", "--method", m, *shown, *extra])
    runs += [
        ["trust", images[0], "--model", "demo", "--out", str(out / "trust")],
        ["compare", images[0], "--image-b", images[1], "--model", "demo", "--out", "COMPARE"],
        ["features", images[0], "--model", "demo", "--out", str(out / "features")],
        ["atlas", str(assets), "--model", "demo", "--out", str(out / "atlas")],
    ]
    return [[str(out / "compare") if a == "COMPARE" else a for a in argv] for argv in runs]


def _scrub(doc: object) -> object:
    if isinstance(doc, dict):
        return {k: _scrub(v) for k, v in doc.items() if k not in VOLATILE}
    if isinstance(doc, list):
        return [_scrub(v) for v in doc]
    return doc


def fingerprint(path: Path, checkout: Path, assets: Path) -> str:
    """A SHA-256 of what the file says, without what changes from run to run.

    The sample folder is written as ``ASSETS`` and the checkout's own folder (in the bundled
    weights' location) as ``REPO``.
    """
    h = hashlib.sha256()
    data = path.read_bytes()
    if path.suffix not in {".npz", ".png", ".jpg"}:
        data = data.replace(str(assets).encode(), b"ASSETS")
        data = data.replace(str(checkout).encode(), b"REPO")
    if path.suffix == ".npz":
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            for name in sorted(z.files):
                a = z[name]
                if a.dtype.kind == "U":
                    a = np.char.replace(a, str(assets), "ASSETS")
                    a = np.char.replace(a, str(checkout), "REPO")
                h.update(f"{name}:{a.dtype}:{a.shape}".encode())
                h.update(np.ascontiguousarray(a).tobytes())
    elif path.suffix == ".json":
        h.update(json.dumps(_scrub(json.loads(data)), sort_keys=True).encode())
    elif path.suffix in {".png", ".jpg"}:
        with Image.open(io.BytesIO(data)) as im:
            h.update(f"{im.mode}:{im.size}".encode())
            h.update(im.tobytes())
    else:
        h.update(data)
    return h.hexdigest()


def run(assets: Path) -> dict[str, object]:
    """Run every command; fingerprint each file it wrote and its standard output."""
    result: dict[str, object] = {}
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        copied = Path(tmp) / "samples"  # outside every checkout: paths compare equal
        copied.mkdir()
        for f in sorted(assets.iterdir()):
            if f.suffix.lower() in {".png", ".jpg", ".jpeg"}:
                shutil.copyfile(f, copied / f.name)
        assets = copied
        for argv in commands(out, assets):
            done = subprocess.run(
                [sys.executable, "-m", "vitviz", *argv],
                capture_output=True,
                text=True,
                env=env,
                timeout=900,
            )
            key = " ".join(a.replace(str(out), "OUT").replace(str(assets), "ASSETS") for a in argv)
            text = done.stdout.replace(str(out), "OUT").replace(str(assets), "ASSETS")
            result[f"$ {key}"] = {
                "rc": done.returncode,
                "stdout": hashlib.sha256(text.encode()).hexdigest(),
                "stderr_tail": done.stderr.strip().splitlines()[-1:] if done.returncode else [],
            }
        for f in sorted(out.rglob("*")):
            if f.is_file():
                result[str(f.relative_to(out))] = fingerprint(f, Path.cwd().resolve(), assets)
    return result


def compare(before: dict, after: dict) -> list[str]:
    """What differs between two fingerprint sets (missing, added or changed entries)."""
    diffs = []
    for key in sorted(set(before) | set(after)):
        if before.get(key) != after.get(key):
            diffs.append(f"{key}: {before.get(key)!r} -> {after.get(key)!r}")
    return diffs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the fingerprints as JSON")
    parser.add_argument("--assets", type=Path, default=ASSET_DIR, help="folder of sample photos")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args()
    if args.compare:
        before, after = (json.loads(p.read_text()) for p in args.compare)
        diffs = compare(before, after)
        print(json.dumps({"entries": len(after), "differences": diffs}, indent=1))
        return 1 if diffs else 0
    print(
        json.dumps(run(args.assets.resolve()), indent=1 if not args.json else None, sort_keys=True)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
