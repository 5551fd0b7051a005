"""Model and tokenizer resolution: a local folder or a hub id, on a device, in a dtype."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.generation.stopping_criteria import StopStringCriteria

from gencli.catalog import (
    read_config,
)
from gencli.errors import GencliError
from gencli.gemv import choose_one_row_kernels
from gencli.hub import quiet_libraries, runnable_folder
from gencli.quantize import quantize_model
from gencli.settings import KernelName, Quantization
from gencli.tokens import BUNDLED_TOKENIZER, load_tokenizer

if TYPE_CHECKING:
    from gencli.engines import Engine
    from gencli.kernels import Choice


class DraftModelError(GencliError):
    """A draft model that cannot propose for this model; `draft` is its name."""

    def __init__(self, draft: str, problem: str):
        self.draft = draft
        super().__init__(f"draft model {draft!r} {problem}")


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    folder: Path | None = None  # where it was loaded from; None for random weights
    quantization: Quantization = "none"
    # The one-row kernel of each kind of projection weight (gencli.kernels), and the setting that
    # chose them (auto, or a forced kernel).
    kernels: dict[str, Choice] = field(default_factory=dict)
    kernel_setting: KernelName = "auto"
    load_s: float | None = None  # seconds to load it (imports excluded)
    # What the user should hear about how it was loaded: the demo model standing in, the bundled
    # tokenizer standing in.
    notices: list[str] = field(default_factory=list)
    _engines: dict[str, Engine] = field(default_factory=dict, repr=False)
    _fingerprint: str | None = field(default=None, repr=False)
    _stop_criteria: dict[tuple[str, ...], StopStringCriteria] = field(default_factory=dict, repr=False)
    _drafts: dict[str, LoadedModel] = field(default_factory=dict, repr=False)

    def fingerprint(self) -> str:
        """A hash of the config and of every byte of every weight, as loaded (0.65 s for GPT-2
        500 MB), computed once: a prompt cache must never serve other weights."""
        if self._fingerprint is None:
            digest = hashlib.sha256(self.model.config.to_json_string(use_diff=False).encode())
            for name, tensor in sorted(self.model.state_dict().items()):
                digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
                digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def engine(self, mode: str) -> Engine:
        """The mode's engine for this model, built on first use and kept (the fast paths copy
        weights once)."""
        from gencli.engines import ENGINES

        if mode not in self._engines:
            self._engines[mode] = ENGINES[mode](self.model)
        return self._engines[mode]

    def stop_criterion(self, stops: tuple[str, ...]) -> StopStringCriteria:
        """Hugging Face's stop-string criterion, kept: building one scans the whole vocabulary
        (a quarter of a second for GPT-2's), and it holds no state between runs."""
        if stops not in self._stop_criteria:
            self._stop_criteria[stops] = StopStringCriteria(
                tokenizer=self.tokenizer, stop_strings=list(stops)
            )
        return self._stop_criteria[stops]

    def draft(self, name: str) -> LoadedModel:
        """The draft model `name` for speculative decoding, loaded on first use on this model's
        device and in its dtype, and kept. It must share this model's tokenizer (a proposal is
        token ids) and be no larger (it runs K times per pass)."""
        if name not in self._drafts:
            try:
                draft = load_model(
                    name,
                    device=str(self.device),
                    dtype=str(self.dtype).removeprefix("torch."),
                    kernels=self.kernel_setting,
                )
            except GencliError as problem:  # the loader's words name --model: this is the draft
                raise DraftModelError(
                    name, f"cannot be loaded: {problem}".replace("--model", "--draft-model")
                ) from None
            if draft.tokenizer.get_vocab() != self.tokenizer.get_vocab():
                raise DraftModelError(
                    name,
                    f"has another tokenizer than {self.name!r} ({len(draft.tokenizer)} tokens against "
                    f"{len(self.tokenizer)}): its proposals would be other tokens; pick a draft of "
                    f"{self.name!r}'s family",
                )
            sizes = [sum(p.numel() for p in model.parameters()) for model in (draft.model, self.model)]
            if sizes[0] > sizes[1]:
                raise DraftModelError(
                    name,
                    f"is larger than {self.name!r} ({sizes[0] / 1e6:,.1f}M parameters against "
                    f"{sizes[1] / 1e6:,.1f}M): a draft must be the smaller model, or it costs more "
                    "than it saves",
                )
            self._drafts[name] = draft
        return self._drafts[name]

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def weights(self) -> str:
        """How the weights are stored: the dtype, and int8 where the projections are."""
        dtype = str(self.dtype).removeprefix("torch.")
        return dtype if self.quantization == "none" else f"{dtype}+{self.quantization}"

    def kernels_ran(self, mode: str) -> str:
        """The one-row kernels a decode step of `mode` runs, most used first: the chosen ones in
        the modes that run `gencli.gemv` projections (kv-cache, scratch), PyTorch's elsewhere."""
        if mode not in ("kv-cache", "scratch") or not self.kernels:
            return "PyTorch's"
        counts: dict[str, int] = {}
        for choice in self.kernels.values():
            counts[choice.kernel] = counts.get(choice.kernel, 0) + 1
        return "+".join(sorted(counts, key=lambda name: -counts[name]))

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


def resolve_dtype(name: str, folder: Path | None = None) -> torch.dtype:
    """`auto` means what it means in Hugging Face: the dtype the checkpoint's config names
    (float32 when it names none, or for random weights)."""
    if name != "auto":
        return _DTYPES[name]
    config = read_config(folder) if folder else {}
    return _DTYPES.get(config.get("dtype") or config.get("torch_dtype"), torch.float32)


def load_model(
    name: str,
    device: str = "auto",
    dtype: str = "auto",
    fallback: bool = False,
    quantize: Quantization = "none",
    kernels: KernelName = "auto",
) -> LoadedModel:
    """Load `name`: `demo`, a local folder, or a hub id, ready for inference.

    With `fallback`, a hub model that cannot be had (not cached, hub unreachable) is replaced by
    the bundled demo model, and a notice says so. `quantize="int8"`: weight-only int8 projections.
    `kernels`: the one-row products' kernels, measured on this machine (auto) or forced.
    """
    quiet_libraries()
    return load_from_folder(*runnable_folder(name, fallback), device, dtype, quantize, kernels)


def load_from_folder(
    name: str,
    folder: Path,
    notice: str | None,
    device: str = "auto",
    dtype: str = "auto",
    quantize: Quantization = "none",
    kernels: KernelName = "auto",
    on_step: Callable[[str], None] | None = None,
) -> LoadedModel:
    """Load the model `gencli.hub.runnable_folder` found (its name, folder and notice); `on_step`
    hears a step that takes seconds (measuring the kernels at a machine's first load)."""
    started = time.perf_counter()
    quiet_libraries()
    torch_device = resolve_device(device)
    config = load_config(name, folder)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(folder), config=config, dtype=resolve_dtype(dtype, folder), local_files_only=True
        )
    except OSError as error:
        raise GencliError(
            f"cannot load model {name!r}: {str(error).splitlines()[0]} "
            "Check the hub id, or pass a local folder with --model PATH"
        ) from None
    except SafetensorError as error:
        raise GencliError(
            f"the weights of model {name!r} in {folder} are damaged or incomplete ({error}); "
            "download or save them again"
        ) from None
    model.to(torch_device).eval()
    quantize_model(model, quantize)
    chosen = choose_one_row_kernels(model, kernels, _measuring(on_step))
    tokenizer = load_tokenizer(folder, model.config.vocab_size)
    check_vocabulary(name, tokenizer, model.config.vocab_size)
    loaded = LoadedModel(
        name=name,
        model=model,
        tokenizer=tokenizer,
        folder=folder,
        quantization=quantize,
        kernels=chosen,
        kernel_setting=kernels,
        load_s=time.perf_counter() - started,
    )
    if notice:
        loaded.notices.append(notice)
    if tokenizer.name_or_path == str(BUNDLED_TOKENIZER):
        loaded.notices.append(f"{folder} has no tokenizer files: using gencli's bundled GPT-2 tokenizer")
    return loaded


def _measuring(on_step: Callable[[str], None] | None) -> Callable[[], None] | None:
    if on_step is None:
        return None
    return lambda: on_step("measuring the one-row kernels on this machine (once, kept in the cache)")


def load_config(name: str, folder: Path) -> PretrainedConfig:
    """The folder's config, as transformers validates it: a value of the wrong type or out of range
    (`"n_layer": "two"`) is one line naming the field, whichever error type the installed
    transformers and huggingface_hub raise for it."""
    try:
        return AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (StrictDataclassError, TypeError, ValueError) as error:
        detail = " ".join(str(error).split())
        raise GencliError(
            f"the config.json of model {name!r} in {folder} is not valid ({detail}); fix or replace it"
        ) from None


def check_vocabulary(name: str, tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> None:
    """A tokenizer with ids the model has no embedding for would fail at the first such token."""
    if len(tokenizer) > vocab_size:
        raise GencliError(
            f"model {name!r} embeds {vocab_size} tokens but its tokenizer has {len(tokenizer)}; ids "
            f"from {vocab_size} on have no embedding: save the tokenizer it was trained with into its folder"
        )


ARCHITECTURES = {"gpt2": "GPT-2 124M: 12 layers, 12 heads, 768 wide, 50,257 tokens, 1,024 positions"}


def random_model(
    architecture: str = "gpt2",
    device: str = "auto",
    dtype: str = "auto",
    seed: int = 0,
    quantize: Quantization = "none",
    kernels: KernelName = "auto",
    on_step: Callable[[str], None] | None = None,
) -> LoadedModel:
    """A model of a real architecture with seeded random weights: it costs what the real one does."""
    from transformers import GPT2Config, GPT2LMHeadModel

    if architecture not in ARCHITECTURES:
        raise GencliError(f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")
    quiet_libraries()
    torch_device = resolve_device(device)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config()).to(device=torch_device, dtype=resolve_dtype(dtype))
    quantize_model(model.eval(), quantize)
    chosen = choose_one_row_kernels(model, kernels, _measuring(on_step))
    tokenizer = AutoTokenizer.from_pretrained(str(BUNDLED_TOKENIZER))
    return LoadedModel(
        name=f"{architecture} architecture, random weights",
        model=model.eval(),
        tokenizer=tokenizer,
        quantization=quantize,
        kernels=chosen,
        kernel_setting=kernels,
    )
