"""Which models gencli can run here, and what a model folder holds.

Imports neither torch nor transformers: everything comes from `config.json`, the safetensors
headers and file sizes, so `gencli models` and `gencli show` answer at once.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from gencli.errors import GencliError

DEMO_MODEL = "demo"
SUPPORTED_MODEL_TYPE = "gpt2"
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")


def bundled_model_dir() -> Path:
    return Path(str(resources.files("gencli") / "assets" / "demo-model"))


def looks_like_path(name: str) -> bool:
    """A hub id is `name` or `owner/name`; anything else is meant as a folder."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1


def cached_snapshot(model_id: str) -> Path | None:
    """The hub model's folder in the local Hugging Face cache, if its config is there."""
    from huggingface_hub import try_to_load_from_cache

    try:
        config = try_to_load_from_cache(model_id, "config.json")
    except ValueError:  # not a valid repo id
        return None
    return Path(config).parent if isinstance(config, str) else None


def locate_model(name: str) -> Path | None:
    """The local folder `name` refers to (bundled, a folder, or a cached hub model), or None
    when it would have to be downloaded. Never touches the network."""
    if name == DEMO_MODEL:
        return bundled_model_dir()
    folder = Path(name).expanduser()
    if folder.is_dir():
        return folder
    if looks_like_path(name):
        return None
    return cached_snapshot(name)


def read_config(folder: Path) -> dict[str, Any]:
    """The model's config.json; GencliError when there is none or it is not a JSON object."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GencliError(f"{folder} is not a model folder: it has no config.json") from None
    except (OSError, ValueError) as error:
        raise GencliError(f"cannot read {folder / 'config.json'}: {error}") from None
    if not isinstance(config, dict):
        raise GencliError(f"{folder / 'config.json'} is not a JSON object")
    return config


def unsupported_reason(config: dict[str, Any]) -> str | None:
    """Why gencli cannot run a model with this config, or None when it can."""
    model_type = config.get("model_type")
    if model_type != SUPPORTED_MODEL_TYPE:
        return f"a {model_type!r} model; gencli runs GPT-2 models"
    return None


def check_runnable(name: str, folder: Path) -> None:
    """Refuse another architecture from config.json alone, before any weights are read."""
    reason = unsupported_reason(read_config(folder))
    if reason:
        raise GencliError(f"model {name!r} is {reason}")


def safetensors_parameters(folder: Path) -> int | None:
    """Count parameters from the safetensors headers alone (8-byte length, then JSON shapes)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        with file.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > file.stat().st_size - 8:
                raise ValueError(f"{file} is not a safetensors file: its header length is past its end")
            header = json.loads(handle.read(length))
        for name, tensor in header.items():
            if name != "__metadata__":
                count = 1
                for dim in tensor["shape"]:
                    count *= dim
                total += count
    return total


def _folder_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


@dataclass(frozen=True)
class ModelEntry:
    name: str
    path: str
    source: str  # "bundled", "hub cache" or "folder"
    parameters: int | None
    size_bytes: int
    model_type: str | None
    runnable: bool
    reason: str | None  # why gencli cannot run it, when it cannot

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def describe_folder(name: str, folder: Path, source: str, size_bytes: int | None = None) -> ModelEntry:
    try:
        config = read_config(folder)
        reason = unsupported_reason(config)
    except GencliError as error:
        config, reason = {}, str(error)
    try:
        parameters = safetensors_parameters(folder)
    except (OSError, ValueError, struct.error):
        parameters = None
    return ModelEntry(
        name=name,
        path=str(folder),
        source=source,
        parameters=parameters,
        size_bytes=_folder_size(folder) if size_bytes is None else size_bytes,
        model_type=config.get("model_type"),
        runnable=reason is None,
        reason=reason,
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


@dataclass(frozen=True)
class ModelDescription:
    """What `gencli show` prints: read from the folder's files, nothing loaded."""

    entry: ModelEntry
    architecture: str | None
    layers: int | None
    heads: int | None
    width: int | None
    vocab_size: int | None
    context_length: int | None
    dtype: str | None
    tokenizer: str
    generation_config: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(data.pop("entry"))
        return data


def describe_model(name: str) -> ModelDescription:
    """Describe a model that is here (bundled, a folder or cached); GencliError otherwise."""
    folder = locate_model(name)
    if folder is None:
        raise GencliError(
            f"model {name!r} is not here (neither a folder nor in the local Hugging Face cache); "
            f"download it with 'gencli pull {name}'"
        )
    source = (
        "bundled" if name == DEMO_MODEL else "folder" if Path(name).expanduser().is_dir() else "hub cache"
    )
    entry = describe_folder(name, folder, source)
    config = read_config(folder)
    tokenizer_files = [file for file in TOKENIZER_FILES if (folder / file).exists()]
    if tokenizer_files:
        tokenizer = f"{', '.join(tokenizer_files)} in the model folder"
    elif config.get("vocab_size") == 50257:
        tokenizer = "none in the folder: gencli uses its bundled GPT-2 tokenizer"
    else:
        tokenizer = "none in the folder, and its vocabulary is not GPT-2's: gencli cannot run it"
    try:
        generation_config = json.loads((folder / "generation_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        generation_config = {}
    architectures = config.get("architectures") or [None]
    return ModelDescription(
        entry=entry,
        architecture=architectures[0],
        layers=config.get("n_layer"),
        heads=config.get("n_head"),
        width=config.get("n_embd"),
        vocab_size=config.get("vocab_size"),
        context_length=config.get("n_positions"),
        dtype=config.get("dtype") or config.get("torch_dtype"),
        tokenizer=tokenizer,
        generation_config=generation_config if isinstance(generation_config, dict) else {},
    )
