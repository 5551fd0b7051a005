"""KV-cache inspection: what each layer holds, as shapes [batch, heads, seq, head_dim] and bytes."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers.cache_utils import Cache


@dataclass(frozen=True)
class LayerCacheInfo:
    layer: int
    key_shape: tuple[int, ...]
    value_shape: tuple[int, ...]
    dtype: str
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        info = asdict(self)
        info["key_shape"], info["value_shape"] = list(self.key_shape), list(self.value_shape)
        return info


@dataclass(frozen=True)
class CacheSnapshot:
    """The cache as it stood when `new_tokens` tokens had been chosen (1 = right after prefill)."""

    new_tokens: int
    seq_len: int
    layers: tuple[LayerCacheInfo, ...]

    @property
    def total_bytes(self) -> int:
        return sum(layer.bytes for layer in self.layers)

    def to_dict(self) -> dict[str, Any]:
        return {
            "new_tokens": self.new_tokens,
            "seq_len": self.seq_len,
            "total_bytes": self.total_bytes,
            "layers": [layer.to_dict() for layer in self.layers],
        }


def describe_cache(cache: Cache) -> tuple[LayerCacheInfo, ...]:
    layers = []
    for index, layer in enumerate(cache.layers):
        keys, values = layer.keys, layer.values
        if keys is None or values is None:
            continue
        layers.append(
            LayerCacheInfo(
                layer=index,
                key_shape=tuple(keys.shape),
                value_shape=tuple(values.shape),
                dtype=str(keys.dtype).removeprefix("torch."),
                bytes=keys.nbytes + values.nbytes,
            )
        )
    return tuple(layers)


def snapshot_cache(cache: Cache, new_tokens: int) -> CacheSnapshot:
    return CacheSnapshot(new_tokens=new_tokens, seq_len=cache.get_seq_length(), layers=describe_cache(cache))
