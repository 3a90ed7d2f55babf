"""The Hugging Face hub and cache, reached through timm's own pretrained loading.

Without a network the hub is never waited on: an unreachable hub fails within seconds and
says what to do.
"""

from __future__ import annotations

import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import timm

from vitviz.errors import ModelError, WeightsError

HUB_PROBE_SECONDS = 3.0


def hub_endpoint() -> str:
    """The Hugging Face endpoint in use (``HF_ENDPOINT`` or the default)."""
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT


def hub_offline() -> bool:
    """Whether the user asked for offline mode (``HF_HUB_OFFLINE``)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return env in ("1", "true", "yes", "on") or bool(constants.HF_HUB_OFFLINE)


_PROBES: dict[str, tuple[float, bool]] = {}  # url → (time, answer): one probe per 30 s
PROBE_MEMORY_SECONDS = 30.0


def hub_reachable(url: str | None = None, timeout: float = HUB_PROBE_SECONDS) -> bool:
    """Whether ``url`` (default: the hub) answers within ``timeout`` s; never hangs (DNS too).

    The answer is remembered for 30 s, so a page that asks twice in a row waits once.
    """
    if hub_offline():
        return False
    target = url or hub_endpoint()
    seen = _PROBES.get(target)
    if seen is not None and time.monotonic() - seen[0] < PROBE_MEMORY_SECONDS:
        return seen[1]
    answer = _probe(target, timeout)
    _PROBES[target] = (time.monotonic(), answer)
    return answer


def _probe(url: str, timeout: float) -> bool:
    result: list[bool] = []

    def probe() -> None:
        try:
            req = urllib.request.Request(url, method="HEAD")
            urllib.request.urlopen(req, timeout=timeout).close()
            result.append(True)
        except urllib.error.HTTPError:
            result.append(True)  # it answered
        except Exception:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def cached_weights(timm_name: str) -> Path | None:
    """Local file of a timm pretrained tag in the Hugging Face cache, if downloaded."""
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(timm_name)
    repo = getattr(cfg, "hf_hub_id", None) if cfg else None
    if not repo:
        return None
    files = [cfg.hf_hub_filename] if getattr(cfg, "hf_hub_filename", None) else []
    files += ["model.safetensors", "pytorch_model.bin"]
    for fname in files:
        hit = try_to_load_from_cache(repo, fname)
        if isinstance(hit, str) and Path(hit).is_file():
            return Path(hit)
    return None


def download_location(timm_name: str) -> str | None:
    """Where timm would download a tag's weights from (hub page or URL), or None if nowhere."""
    cfg = timm.models.get_pretrained_cfg(timm_name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        return None
    return f"{hub_endpoint()}/{cfg.hf_hub_id}" if cfg.hf_hub_id else cfg.url


def check_repo_id(repo: str, name: str) -> None:
    """A :class:`ModelError` unless ``repo`` is a valid Hugging Face repository id (the hub
    library's own rule), so a bad id never reaches the hub client as a traceback."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError:
        raise ModelError(
            f"{name}: {repo!r} is not a Hugging Face repository id; type owner/name, e.g. "
            "google/vit-base-patch16-224"
        ) from None
    if repo.count("/") != 1:
        raise ModelError(f"{name}: give the repository as owner/name, not {repo!r}")


def require_reachable(where: str, what: str, way_out: str, *, by_file: bool = False) -> None:
    """A fast, clear :class:`WeightsError` when ``where`` does not answer now: ``what`` is not
    in the local cache, why the hub cannot be used, and the two ways out (connect, or
    ``way_out``). ``by_file``: the way out is a local weights file (``--weights FILE``); the
    error then has the code ``weights_unreachable`` and its ``reason`` (all but the way out),
    so the page words the way out itself."""
    if hub_reachable(where):
        return
    why = "offline mode is on (HF_HUB_OFFLINE)" if hub_offline() else "it cannot be reached"
    reason = (
        f"{what} not in the local cache and {why}. Connect to the internet and run again "
        f"(it downloads once from {where})"
    )
    if by_file:
        raise WeightsError(f"{reason}, or {way_out}", code="weights_unreachable", reason=reason)
    raise WeightsError(f"{reason}, or {way_out}")
