"""Reading weights files safely: safetensors, or a pickle with ``weights_only=True``."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from vitviz.errors import WeightsFileError


def read_state_dict(
    path: str | os.PathLike, *, max_bytes: int | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a weights file safely: safetensors, or a pickle with ``weights_only=True``.

    Args:
        path: the file (a regular file: pipes and devices are refused unread).
        max_bytes: refuse larger files before reading them.

    Returns:
        The state dict (a nested ``state_dict``/``model`` entry is unwrapped, ``module.``
        prefixes stripped) and the safetensors metadata (empty for pickles).

    Raises:
        WeightsError: missing file, too large, unsafe pickle content, no tensors, or not a
            state dict.
    """
    p = Path(path)
    if not p.is_file():
        raise WeightsFileError(f"weights file {p} does not exist (or is not a file)")
    size = p.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise WeightsFileError(
            f"{p}: the file is {size / 2**30:.1f} GiB, over the limit of "
            f"{max_bytes / 2**30:.1f} GiB for a model here; choose a smaller model"
        )
    meta: dict[str, str] = {}
    if p.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(p), framework="pt") as f:
                meta = dict(f.metadata() or {})
                sd = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
        except Exception as e:
            raise WeightsFileError(f"{p}: not a valid safetensors file ({e})") from None
    elif p.suffix in (".pth", ".pt", ".bin", ".ckpt"):
        try:
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise WeightsFileError(
                f"{p}: refused to load: the file holds more than tensors (pickled code or "
                f"objects), which could run code on this machine ({first[:160]}). "
                "Convert it to .safetensors from a trusted environment"
            ) from None
        sd = obj
        for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
            if isinstance(sd, dict) and isinstance(sd.get(key), dict):
                sd = sd[key]
                break
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise WeightsFileError(f"{p}: holds no state dict of tensors")
    else:
        raise WeightsFileError(
            f"{p}: unknown weights format {p.suffix!r}; use .safetensors (or .pth/.bin)"
        )
    if not sd:
        raise WeightsFileError(f"{p}: holds no tensors; it is not a model's weights")
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    return sd, meta


def depth_of(sd: dict[str, torch.Tensor]) -> int | None:
    """Number of transformer blocks in a state dict (``blocks.N.…`` keys), if any."""
    found = [int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))]
    return max(found) + 1 if found else None


def classes_of(sd: dict[str, torch.Tensor]) -> int:
    """Number of classes of a state dict's head (``head.weight`` rows), 0 without one."""
    w = sd.get("head.weight")
    return int(w.shape[0]) if w is not None else 0
