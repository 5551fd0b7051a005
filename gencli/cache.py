"""KV-cache inspection: what each layer holds, as shapes [batch, heads, seq, head_dim] and bytes."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers.cache_utils import Cache

    from gencli.scratch.model import ScratchCache


@dataclass(frozen=True)
class LayerCacheInfo:
    """`key_shape`/`value_shape` cover the `positions` in use; `capacity` is how many positions
    are allocated (more than in use for a preallocated cache). `used_bytes` is what the positions
    in use take, `bytes` what the layer has allocated."""

    layer: int
    key_shape: tuple[int, ...]
    value_shape: tuple[int, ...]
    dtype: str
    positions: int
    capacity: int
    used_bytes: int
    bytes: int

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerCacheInfo:
        return cls(
            **{**data, "key_shape": tuple(data["key_shape"]), "value_shape": tuple(data["value_shape"])}
        )

    def to_dict(self) -> dict[str, Any]:
        info = asdict(self)
        info["key_shape"], info["value_shape"] = list(self.key_shape), list(self.value_shape)
        return info


@dataclass(frozen=True)
class CacheSnapshot:
    """The cache as it stood when `new_tokens` tokens had been chosen (1 = right after prefill);
    `event` says what a speculative pass had just done to it (written, rolled back)."""

    new_tokens: int
    seq_len: int
    layers: tuple[LayerCacheInfo, ...]
    event: str | None = None

    @property
    def total_bytes(self) -> int:
        return sum(layer.bytes for layer in self.layers)

    @property
    def used_bytes(self) -> int:
        return sum(layer.used_bytes for layer in self.layers)

    @property
    def capacity(self) -> int:
        return max((layer.capacity for layer in self.layers), default=0)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CacheSnapshot:
        layers = tuple(LayerCacheInfo.from_dict(layer) for layer in data["layers"])
        return cls(
            new_tokens=data["new_tokens"], seq_len=data["seq_len"], layers=layers, event=data.get("event")
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "new_tokens": self.new_tokens,
            **({} if self.event is None else {"event": self.event}),
            "seq_len": self.seq_len,
            "capacity": self.capacity,
            "used_bytes": self.used_bytes,
            "total_bytes": self.total_bytes,
            "layers": [layer.to_dict() for layer in self.layers],
        }


def _filled(shape: torch.Size, seq_len: int) -> tuple[int, ...]:
    batch, heads, _, head_dim = shape
    return (batch, heads, seq_len, head_dim)


def describe_cache(cache: Cache | ScratchCache, seq_len: int | None = None) -> tuple[LayerCacheInfo, ...]:
    """Per layer, for a growing (`DynamicCache`) or preallocated (`StaticCache`, scratch) cache;
    `seq_len`: the positions to describe as in use, where they differ from the fill mark (the
    positions a speculative pass wrote, which a preallocated cache still holds after rolling back)."""
    seq_len = int(cache.get_seq_length()) if seq_len is None else seq_len
    layers = []
    for index, layer in enumerate(cache.layers):
        keys, values = layer.keys, layer.values
        if keys is None or values is None or keys.dim() != 4:
            continue  # a layer not written yet
        layers.append(
            LayerCacheInfo(
                layer=index,
                key_shape=_filled(keys.shape, seq_len),
                value_shape=_filled(values.shape, seq_len),
                dtype=str(keys.dtype).removeprefix("torch."),
                positions=seq_len,
                capacity=keys.shape[2],
                used_bytes=(keys.nbytes + values.nbytes) * seq_len // max(keys.shape[2], 1),
                bytes=keys.nbytes + values.nbytes,
            )
        )
    return tuple(layers)


def snapshot_cache(
    cache: Cache | ScratchCache, new_tokens: int, seq_len: int | None = None, event: str | None = None
) -> CacheSnapshot:
    seq_len = int(cache.get_seq_length()) if seq_len is None else seq_len
    return CacheSnapshot(
        new_tokens=new_tokens, seq_len=seq_len, layers=describe_cache(cache, seq_len), event=event
    )


def _layer_length(layer: Any) -> int:
    if hasattr(layer, "length"):  # gencli.scratch KVCache
        return layer.length
    if hasattr(layer, "cumulative_length"):  # transformers StaticLayer
        return int(layer.cumulative_length) if layer.is_initialized else 0
    keys = getattr(layer, "keys", None)  # transformers DynamicLayer
    return 0 if keys is None or keys.dim() != 4 else keys.shape[-2]


def consistent_length(cache: Cache | ScratchCache) -> int:
    """Positions that every layer holds. Layers fill one after another in a forward pass, so a
    pass cut short (Ctrl-C) leaves the first layers ahead of the rest."""
    return min((_layer_length(layer) for layer in cache.layers), default=0)


def crop_cache(cache: Cache | ScratchCache, length: int) -> None:
    """Forget every position from `length` on, in every layer, without recomputing anything.

    A preallocated cache (`StaticCache`, scratch) only moves its fill mark back: the stale
    positions are overwritten by the next tokens, and until then the causal mask hides them.
    A `DynamicCache` drops them."""
    for layer in cache.layers:
        current = _layer_length(layer)
        if current <= length:
            continue
        if hasattr(layer, "length"):
            layer.length = length
        elif hasattr(layer, "cumulative_length"):
            layer.cumulative_length.fill_(length)
        else:
            layer.crop(length - current)  # a negative count removes that many positions
