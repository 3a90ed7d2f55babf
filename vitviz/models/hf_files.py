"""Where a Hugging Face model's files are: a local folder (``hf:./folder``), the hub cache, or
the hub (downloaded with progress, the config checked before any weights, sizes checked before
downloading)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitviz.errors import ModelError, WeightsError
from vitviz.models.hf_config import check_config, count_parameters
from vitviz.models.hub import check_repo_id, hub_endpoint, require_reachable

CONFIG = "config.json"
PROCESSOR = "preprocessor_config.json"
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


@dataclass
class Source:
    """Where a model's files are: a folder (the user's, or a hub cache snapshot)."""

    folder: Path
    origin: str  # "file" (the user's folder), "cache" or "hub"
    config: dict[str, Any]
    processor: dict[str, Any] | None
    weights: Path | None  # the weights file (or shard index), None if absent

    @property
    def location(self) -> str:
        """The weights file, or the folder when there is none."""
        return str(self.weights or self.folder)


def read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: not a readable {what} ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: {what} is not a JSON object")
    return data


def _weights_in(folder: Path) -> Path | None:
    """The weights file of a folder (safetensors first; a shard index only with its shards)."""
    for name in WEIGHTS:
        path = folder / name
        if not path.is_file():
            continue
        if name.endswith(".index.json"):
            shards = set(read_json(path, "shard index").get("weight_map", {}).values())
            if not shards or not all((folder / s).is_file() for s in shards):
                continue
        return path
    return None


def is_path(ref: str) -> bool:
    """Whether ``ref`` names a folder: only an explicit path (``/…``, ``./…``, ``../…``,
    ``~…``, ``C:…``) does; anything else is a hub id, so a hub id can never reach a folder of
    the machine by being a relative path that happens to exist."""
    return ref.startswith(("/", "./", "../", "~", ".\\")) or (len(ref) > 1 and ref[1] == ":")


def _folder_of(ref: str) -> Path | None:
    """The local folder ``ref`` names, None for a hub id; refuses anything else."""
    if is_path(ref):
        path = Path(ref).expanduser()
        if path.is_dir():
            return path
        raise ModelError(
            f"hf:{ref}: no such folder; give a folder with config.json and model.safetensors "
            "(a relative folder as ./NAME)"
        )
    check_repo_id(ref, f"hf:{ref}")
    return None


def _cached(ref: str, name: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(ref, name)
    return Path(hit) if isinstance(hit, str) and Path(hit).is_file() else None


def _source_in(folder: Path, origin: str) -> Source:
    config_path = folder / CONFIG
    if not config_path.is_file():
        raise ModelError(f"the folder {folder} has no config.json: not a transformers model")
    processor_path = folder / PROCESSOR
    return Source(
        folder=folder,
        origin=origin,
        config=read_json(config_path, "config.json"),
        processor=read_json(processor_path, PROCESSOR) if processor_path.is_file() else None,
        weights=_weights_in(folder),
    )


def local_source(ref: str) -> Source | None:
    """The files of a folder or of the hub cache (None when the cache lacks the config)."""
    folder = _folder_of(ref)
    if folder is not None:
        return _source_in(folder, "file")
    hit = _cached(ref, CONFIG)
    return None if hit is None else _source_in(hit.parent, "cache")


def _require_hub(ref: str) -> str:
    """The hub page of ``ref`` if the hub answers now; a fast, clear error if not."""
    where = f"{hub_endpoint()}/{ref}"
    require_reachable(
        where,
        f"model hf:{ref} is",
        "give a local folder with config.json and model.safetensors: --model hf:FOLDER",
    )
    return where


def _hub_error(ref: str, err: Exception) -> ModelError:
    name = type(err).__name__
    if name in ("RepositoryNotFoundError", "GatedRepoError"):
        return ModelError(
            f"hf:{ref}: no such model on the Hugging Face hub, or it is private or gated "
            "(log in with `hf auth login` and accept its terms on the hub)"
        )
    first = (str(err).strip().splitlines() or [name])[0][:200]
    return WeightsError(f"could not download hf:{ref}: {first}")


def download_weights(
    ref: str,
    progress: Callable[[int, int | None], None] | None = None,
    *,
    weights: bool = True,
) -> Path:
    """Download a hub model's config, image processor config and (``weights``) its weights
    into the Hugging Face cache, reporting the weights' bytes as
    ``progress(bytes_done, bytes_total)``; returns the snapshot folder.

    The config is checked (custom code, refused architectures) before any weights come.

    Raises:
        WeightsError: the hub cannot be reached or the download failed; ModelError: refused.
    """
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    from tqdm.auto import tqdm

    _require_hub(ref)

    class Reporter(tqdm):  # huggingface_hub drives it; we forward the byte counts
        done = 0

        def update(self, n: float | None = 1) -> bool | None:
            self.done += int(n or 0)
            if progress is not None:
                progress(self.done, int(self.total) if self.total else None)
            return super().update(n)

    def fetch(name: str, report: bool = False) -> Path | None:
        try:
            kwargs = {"tqdm_class": Reporter} if report else {}
            return Path(huggingface_hub.hf_hub_download(ref, name, **kwargs))
        except EntryNotFoundError as e:
            if isinstance(e, LocalEntryNotFoundError):  # the hub went away meanwhile
                raise _hub_error(ref, e) from None
            return None  # the repository has no such file
        except Exception as e:  # any other failure is one clear message
            raise _hub_error(ref, e) from None

    config = fetch(CONFIG)
    if config is None:
        raise ModelError(f"hf:{ref} has no config.json: it is not a transformers model")
    raw = read_json(config, "config.json")
    check_config(raw, ref)
    fetch(PROCESSOR)
    if weights:
        # the files may not be bigger than the config's model in float32 (plus a margin):
        # a small config beside a huge file never fills this machine's disk
        limit = int(4 * count_parameters(raw, ref) * 1.1) + 32 * 2**20
        for name in WEIGHTS:
            if name.endswith(".index.json"):
                got = fetch(name)
                if got is None:
                    continue
                shards = sorted(set(read_json(got, "shard index")["weight_map"].values()))
                check_download_size(ref, shards, limit)
                for shard in shards:
                    fetch(shard, report=True)
                break
            if check_download_size(ref, [name], limit) == 0:
                continue  # the repository has no such file
            got = fetch(name, report=True)
            if got is not None:
                break
        else:
            raise WeightsError(
                f"hf:{ref} has no model.safetensors (nor pytorch_model.bin) on the hub"
            )
    return config.parent


def resolve(ref: str, *, weights: bool = True) -> Source:
    """The files of ``ref``: its folder, the hub cache, or (when reachable) the hub, which
    then downloads the config, and the weights too when ``weights``."""
    src = local_source(ref)
    if src is not None and (src.origin == "file" or src.weights is not None or not weights):
        return src
    return _source_in(download_weights(ref, weights=weights), "hub")


def check_download_size(ref: str, names: list[str], limit: int) -> int:
    """The bytes of ``names`` in the hub repository ``ref`` (0 for files it lacks), asked
    before downloading; a :class:`WeightsError` when they pass ``limit``."""
    import huggingface_hub

    try:
        infos = huggingface_hub.HfApi().get_paths_info(ref, names)
    except Exception as e:  # the hub went away, or refused the question
        raise _hub_error(ref, e) from None
    total = sum(int(getattr(info, "size", 0) or 0) for info in infos)
    if total > limit:
        raise WeightsError(
            f"hf:{ref}: its weights files hold {total / 2**20:,.0f} MiB, more than its config's "
            f"model can need ({limit / 2**20:,.0f} MiB); not downloaded"
        )
    return total
