"""Where a model runs: device and autocast precision."""

from __future__ import annotations

from typing import Literal

import torch

from vitviz.errors import ModelError

Precision = Literal["auto", "fp32", "bf16", "fp16"]


def device_name(device: torch.device) -> str:
    """The device in words: the GPU's name, Apple GPU or CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "Apple GPU (MPS)" if device.type == "mps" else "CPU"


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` → CUDA if present, else Apple MPS, else CPU."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ModelError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ModelError(f"device {device} asked for, but no CUDA GPU is available; use cpu")
        if dev.index is not None and dev.index >= count:
            raise ModelError(f"device {device} does not exist: this machine has {count} GPU(s)")
    elif dev.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ModelError("device mps asked for, but Apple's MPS is not available; use cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ModelError(f"unsupported device {device!r}: use auto, cpu, cuda, cuda:N or mps")
    return dev


def pick_precision(device: torch.device, precision: Precision = "auto") -> str:
    """bf16 (fp16 where bf16 is unsupported) autocast on CUDA; always fp32 on CPU and MPS."""
    if device.type != "cuda":
        return "fp32"
    if precision != "auto":
        return precision
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
