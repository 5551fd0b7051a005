"""Which models gencli can run here: the bundled demo model and the local Hugging Face cache.

Imports neither torch nor transformers: sizes and parameter counts come from file headers.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

DEMO_MODEL = "demo"


def bundled_model_dir() -> Path:
    return Path(str(resources.files("gencli") / "assets" / "demo-model"))


@dataclass(frozen=True)
class ModelEntry:
    name: str
    path: str
    source: str  # "bundled" or "hub cache"
    parameters: int | None
    size_bytes: int
    model_type: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def safetensors_parameters(folder: Path) -> int | None:
    """Count parameters from the safetensors headers alone (8-byte length, then JSON shapes)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        with file.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        for name, tensor in header.items():
            if name != "__metadata__":
                count = 1
                for dim in tensor["shape"]:
                    count *= dim
                total += count
    return total


def _model_type(folder: Path) -> str | None:
    try:
        return json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return None


def _folder_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def describe_folder(name: str, folder: Path, source: str, size_bytes: int | None = None) -> ModelEntry:
    return ModelEntry(
        name=name,
        path=str(folder),
        source=source,
        parameters=safetensors_parameters(folder),
        size_bytes=_folder_size(folder) if size_bytes is None else size_bytes,
        model_type=_model_type(folder),
    )


def cached_hub_models(cache_dir: str | Path | None = None) -> list[ModelEntry]:
    from huggingface_hub import constants, scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        # The current setting, not the default that scan_cache_dir bound when it was imported.
        cache = scan_cache_dir(cache_dir or constants.HF_HUB_CACHE)
    except CacheNotFound:
        return []
    entries = []
    for repo in sorted(cache.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model" or not repo.revisions:
            continue
        revision = max(repo.revisions, key=lambda r: r.last_modified)
        entries.append(describe_folder(repo.repo_id, revision.snapshot_path, "hub cache", repo.size_on_disk))
    return entries


def list_models(cache_dir: str | Path | None = None) -> list[ModelEntry]:
    bundled = bundled_model_dir()
    entries = [describe_folder(DEMO_MODEL, bundled, "bundled")] if (bundled / "config.json").exists() else []
    return entries + cached_hub_models(cache_dir)
