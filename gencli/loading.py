"""Model and tokenizer resolution: a local folder or a hub id, on a device, in a dtype."""

from __future__ import annotations

import socket
import threading
import urllib.parse
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as transformers_logging

from gencli.catalog import DEMO_MODEL, bundled_model_dir
from gencli.errors import GencliError

BUNDLED_TOKENIZER = resources.files("gencli") / "assets" / "gpt2-tokenizer"
GPT2_VOCAB_SIZE = 50257

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    # Why the bundled demo model stands in for the one asked for, when it does.
    fallback_reason: str | None = None

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def context_length(self) -> int:
        return self.model.config.n_positions

    @property
    def eos_token_id(self) -> int | None:
        eos = self.model.generation_config.eos_token_id
        if isinstance(eos, list):
            eos = eos[0] if eos else None
        return eos if eos is not None else self.tokenizer.eos_token_id


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise GencliError("--device cuda: no CUDA GPU is available here; use --device cpu or --device auto")
    if name == "mps" and not torch.backends.mps.is_available():
        raise GencliError("--device mps: Apple MPS is not available here; use --device cpu or --device auto")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` is float32 on CPU (fastest and exact there) and a 16-bit type on accelerators."""
    if name != "auto":
        return _DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def _hub_is_reachable(timeout_s: float = 2.0) -> bool:
    """One bounded probe instead of the hub client's retries, which take ~20 s to fail offline.

    It runs in a thread because a socket timeout does not cover name resolution, which can hang.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urllib.parse.urlparse(constants.ENDPOINT)
    address = (url.hostname, url.port or (443 if url.scheme == "https" else 80))
    reachable = threading.Event()

    def probe() -> None:
        try:
            with socket.create_connection(address, timeout=timeout_s):
                reachable.set()
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return reachable.is_set()


def _is_cached(model_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(model_id, "config.json"), str)


def _load_tokenizer(source: str, model: PreTrainedModel, local_only: bool) -> PreTrainedTokenizerBase:
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    except (OSError, ValueError):
        tokenizer = None
    # transformers 5.x builds an EMPTY tokenizer, without error, for a folder lacking tokenizer files.
    if tokenizer is not None and len(tokenizer) > 1:
        return tokenizer
    if model.config.vocab_size == GPT2_VOCAB_SIZE:
        return AutoTokenizer.from_pretrained(str(BUNDLED_TOKENIZER))
    raise GencliError(
        f"model {source!r} has no tokenizer files and a vocabulary of {model.config.vocab_size} tokens; "
        "save its tokenizer into the model folder (tokenizer.save_pretrained(folder))"
    )


def _quiet_transformers() -> None:
    # Progress bars and advice meant for library users would clutter a CLI's stderr.
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


class ModelUnavailable(GencliError):
    """A hub model that is neither cached nor reachable: the case the demo model can stand in for."""


def _resolve_source(name: str) -> tuple[str, bool]:
    """(what to pass to from_pretrained, whether to stay off the network)."""
    if name == DEMO_MODEL:
        if not (bundled_model_dir() / "config.json").exists():
            raise GencliError("the bundled demo model is missing from this installation; reinstall gencli")
        return str(bundled_model_dir()), True
    folder = Path(name).expanduser()
    if folder.is_dir():
        return str(folder), True
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:
        raise GencliError(f"model folder {name!r} does not exist; check the --model path")
    if _is_cached(name):
        return name, not _hub_is_reachable()
    if _hub_is_reachable():
        return name, False
    raise ModelUnavailable(
        f"model {name!r} is not in the local Hugging Face cache and the hub is unreachable "
        "(or HF_HUB_OFFLINE is set); pass a local folder with --model PATH, --model demo for the "
        "bundled model, or download it once with network access"
    )


def load_model(name: str, device: str = "auto", dtype: str = "auto", fallback: bool = False) -> LoadedModel:
    """Load `name`: `demo`, a local folder, or a hub id, ready for inference.

    With `fallback`, a hub model that cannot be had (not cached, hub unreachable) is replaced by
    the bundled demo model, and `fallback_reason` says so.
    """
    _quiet_transformers()
    try:
        source, local_only = _resolve_source(name)
    except ModelUnavailable:
        if not fallback:
            raise
        loaded = load_model(DEMO_MODEL, device, dtype)
        loaded.fallback_reason = (
            f"{name} is not cached and the hub is unreachable: using the bundled demo model "
            "(--no-fallback makes this an error)"
        )
        return loaded
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, local_files_only=local_only)
    except OSError as error:
        raise GencliError(
            f"cannot load model {name!r}: {str(error).splitlines()[0]} "
            "Check the hub id, or pass a local folder with --model PATH"
        ) from None
    if getattr(model.config, "model_type", None) != "gpt2":
        raise GencliError(f"model {name!r} is a {model.config.model_type!r} model; gencli runs GPT-2 models")
    model.to(torch_device).eval()
    tokenizer = _load_tokenizer(source, model, local_only)
    return LoadedModel(name=name, model=model, tokenizer=tokenizer)


ARCHITECTURES = {"gpt2": "GPT-2 124M: 12 layers, 12 heads, 768 wide, 50,257 tokens, 1,024 positions"}


def random_model(
    architecture: str = "gpt2", device: str = "auto", dtype: str = "auto", seed: int = 0
) -> LoadedModel:
    """A model of a real architecture with seeded random weights: it costs what the real one does."""
    from transformers import GPT2Config, GPT2LMHeadModel

    if architecture not in ARCHITECTURES:
        raise GencliError(f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")
    _quiet_transformers()
    torch_device = resolve_device(device)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config()).to(device=torch_device, dtype=resolve_dtype(dtype, torch_device))
    tokenizer = AutoTokenizer.from_pretrained(str(BUNDLED_TOKENIZER))
    return LoadedModel(
        name=f"{architecture} architecture, random weights", model=model.eval(), tokenizer=tokenizer
    )
