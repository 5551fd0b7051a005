"""GPT-2 from scratch: embeddings, blocks of (LayerNorm -> attention -> residual -> LayerNorm -> MLP
-> residual), a final LayerNorm, and an LM head (tied to the token embedding, as in GPT-2, or not).

Loads the weights of any Hugging Face `GPT2LMHeadModel` (any MLP width, the activations GPT-2's
config may name, the attention scalings it may switch) and keeps its own preallocated KV cache.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from gencli.errors import GencliError
from gencli.gemv import Projection, fast_projection
from gencli.kernels import Kernel
from gencli.quantize import Int8Projection
from gencli.scratch.attention import KVCache, MultiHeadSelfAttention


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's GELU, with the tanh approximation of the Gaussian CDF."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def gelu_erf(x: torch.Tensor) -> torch.Tensor:
    """GELU exactly: x times the Gaussian CDF, 0.5 * (1 + erf(x / sqrt 2))."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def silu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU approximated by a sigmoid: x * sigmoid(1.702 x)."""
    return x * torch.sigmoid(1.702 * x)


# The names a GPT-2 config's `activation_function` may use, as Hugging Face reads them.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "gelu_fast": gelu_tanh,
    "gelu": gelu_erf,
    "gelu_python": gelu_erf,
    "relu": torch.relu,
    "silu": silu,
    "swish": silu,
    "quick_gelu": quick_gelu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "linear": lambda x: x,
}


@dataclass(frozen=True)
class ScratchConfig:
    vocab_size: int
    n_positions: int
    n_embd: int
    n_layer: int
    n_head: int
    layer_norm_epsilon: float = 1e-5
    n_inner: int | None = None  # the MLP's width; None: 4 * n_embd
    activation: str = "gelu_new"
    tied_head: bool = True  # the LM head is the token embedding


class MLP(nn.Module):
    def __init__(self, n_embd: int, n_inner: int, activation: str):
        super().__init__()
        self.expand = nn.Linear(n_embd, n_inner)
        self.activation = ACTIVATIONS[activation]
        self.contract = nn.Linear(n_inner, n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.contract(self.activation(self.expand(x)))


class Block(nn.Module):
    def __init__(self, config: ScratchConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attention = MultiHeadSelfAttention(config.n_embd, config.n_head)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config.n_embd, config.n_inner or 4 * config.n_embd, config.activation)

    def forward(
        self, x: torch.Tensor, attention_mask: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> torch.Tensor:
        attended, _ = self.attention(self.ln_1(x), attention_mask, cache)
        x = x + attended
        return x + self.mlp(self.ln_2(x))


class ScratchCache:
    """One preallocated `KVCache` per layer, with the parts of transformers' `Cache` API gencli uses:
    `layers[i].keys` / `.values` ([batch, heads, max_length, head_dim]), `get_seq_length()`, `update()`."""

    def __init__(self, layers: list[KVCache]):
        self.layers = layers

    def get_seq_length(self) -> int:
        return self.layers[0].length

    def update(
        self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.layers[layer_idx].append(keys, values)


class ScratchGPT2(nn.Module):
    def __init__(self, config: ScratchConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        # An untied head has weights of its own, [vocab, n_embd] like the embedding's.
        self.head_weight = (
            None if config.tied_head else nn.Parameter(torch.empty(config.vocab_size, config.n_embd))
        )
        self._head: Projection | None = None
        self.head_kernel: Kernel | None = None  # the one-row kernel chosen for the head's weight
        # An int8 LM head (gencli.quantize), used in place of the embedding's weight.
        self.quantized_head: nn.Module | None = None

    def new_cache(self, batch: int, max_length: int) -> ScratchCache:
        weight = self.wte.weight
        head_dim = self.config.n_embd // self.config.n_head
        return ScratchCache(
            [
                KVCache(batch, self.config.n_head, max_length, head_dim, weight.dtype, weight.device)
                for _ in range(self.config.n_layer)
            ]
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        cache: ScratchCache | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        keep: int | None = None,
    ) -> torch.Tensor:
        """input_ids: [batch, seq], the new positions only when `cache` holds the earlier ones.
        attention_mask: [batch, all positions] of 1/0, for left-padded batches.
        Returns logits [batch, seq, vocab], or with `keep` those of the last `keep` positions only
        (the head's product is the largest of a step: a prefill needs one row of it)."""
        past = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + input_ids.size(1), device=input_ids.device)[None]
        x = self.wte(input_ids) + self.wpe(position_ids)
        for index, block in enumerate(self.blocks):
            x = block(x, attention_mask, cache.layers[index] if cache is not None else None)
        if keep is not None:
            x = x[:, -keep:]  # [batch, keep, n_embd]
        return self.lm_head(self.ln_f(x))

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits = hidden · wteᵀ: the LM head is the token embedding (weight tying).

        The product is a `gencli.gemv.Projection`, whose one-row path (a decode step) streams the
        embedding at memory bandwidth. It is made once, and again when `wte.weight` is replaced
        (this is an inference model: its weights are not edited in place)."""
        if self.quantized_head is not None:
            return self.quantized_head(hidden)
        weight = self.wte.weight if self.head_weight is None else self.head_weight
        if self._head is None or self._head.weight.data_ptr() != weight.data_ptr():
            self._head = Projection(weight, layout="out_in", kernel=self.head_kernel)
        return self._head(hidden)

    @classmethod
    def from_hf(cls, hf_model: nn.Module) -> ScratchGPT2:
        """Build from a Hugging Face `GPT2LMHeadModel`, on its device and in its dtype."""
        hf_config = hf_model.config
        if hf_config.activation_function not in ACTIVATIONS:
            raise GencliError(
                f"the from-scratch GPT-2 has no {hf_config.activation_function!r} activation; it covers "
                f"{', '.join(ACTIVATIONS)}: use another mode for this model"
            )
        transformer = hf_model.transformer
        config = ScratchConfig(
            vocab_size=hf_config.vocab_size,
            n_positions=hf_config.n_positions,
            n_embd=hf_config.n_embd,
            n_layer=hf_config.n_layer,
            n_head=hf_config.n_head,
            layer_norm_epsilon=hf_config.layer_norm_epsilon,
            n_inner=hf_config.n_inner,
            activation=hf_config.activation_function,
            # An int8 head is used as it is (below), whatever it was made from.
            tied_head=isinstance(hf_model.lm_head, Int8Projection)
            or hf_model.lm_head.weight.data_ptr() == transformer.wte.weight.data_ptr(),
        )
        # Built empty, then given the Hugging Face model's own tensors: embeddings, layer norms and
        # the MLP's [in, out] weights are shared (a `Projection` reads them where they lie), not
        # copied. The attention keeps separate q/k/v/output matrices of its own (from_hf).
        with torch.device("meta"):
            model = cls(config)
        model.wte.weight = transformer.wte.weight
        model.wpe.weight = transformer.wpe.weight
        if model.head_weight is not None:
            model.head_weight = hf_model.lm_head.weight
        model.ln_f = transformer.ln_f
        for block, hf_block in zip(model.blocks, transformer.h, strict=True):
            block.ln_1, block.ln_2 = hf_block.ln_1, hf_block.ln_2
            block.attention = MultiHeadSelfAttention.from_hf(hf_block.attn)
            block.mlp.expand = fast_projection(hf_block.mlp.c_fc)
            block.mlp.contract = fast_projection(hf_block.mlp.c_proj)
        if isinstance(hf_model.lm_head, Int8Projection):
            model.quantized_head = hf_model.lm_head
        model.head_kernel = getattr(hf_model.lm_head, "one_row_kernel", None)
        return model.eval()
