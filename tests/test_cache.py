import pytest

from gencli.generation import generate_text
from gencli.settings import DecodingOptions
from tests.conftest import TINY_CONFIG

PROMPT = "Hello world! The meaning of life is"  # 8 tokens
HEADS = TINY_CONFIG["n_head"]
HEAD_DIM = TINY_CONFIG["n_embd"] // TINY_CONFIG["n_head"]


def layer_bytes(positions, bytes_per_value=4):
    return 2 * bytes_per_value * HEADS * positions * HEAD_DIM  # keys and values


# generate grows a DynamicCache; kv-cache (StaticCache) and scratch preallocate prompt + new tokens
PREALLOCATED = {"generate": False, "kv-cache": True, "scratch": True}


@pytest.mark.parametrize("mode", list(PREALLOCATED))
def test_cache_shapes_after_prefill_and_at_the_end(tiny, mode):
    result = generate_text(tiny, PROMPT, mode, DecodingOptions(max_new_tokens=5), inspect_cache="ends")
    prefill, final = result.cache_snapshots
    assert (prefill.new_tokens, prefill.seq_len) == (1, 8)
    # the last token is chosen but never fed back, so the cache holds prompt + new - 1 positions
    assert (final.new_tokens, final.seq_len) == (5, 12)
    for snapshot in (prefill, final):
        assert [layer.layer for layer in snapshot.layers] == list(range(TINY_CONFIG["n_layer"]))
        capacity = 8 + 5 if PREALLOCATED[mode] else snapshot.seq_len
        for layer in snapshot.layers:
            shape = (1, HEADS, snapshot.seq_len, HEAD_DIM)
            assert layer.key_shape == layer.value_shape == shape
            assert layer.dtype == "float32"
            assert layer.capacity == capacity and layer.positions == snapshot.seq_len
            assert layer.bytes == layer_bytes(capacity)
            assert layer.used_bytes == layer_bytes(snapshot.seq_len)
        assert snapshot.total_bytes == sum(layer.bytes for layer in snapshot.layers)
        assert snapshot.used_bytes == TINY_CONFIG["n_layer"] * layer_bytes(snapshot.seq_len)


@pytest.mark.parametrize("mode", list(PREALLOCATED))
def test_cache_grows_one_position_per_step(tiny, mode):
    result = generate_text(tiny, PROMPT, mode, DecodingOptions(max_new_tokens=6), inspect_cache="steps")
    assert [s.new_tokens for s in result.cache_snapshots] == [1, 2, 3, 4, 5, 6]
    assert [s.seq_len for s in result.cache_snapshots] == [8, 9, 10, 11, 12, 13]


def test_one_new_token_gives_one_snapshot(tiny):
    result = generate_text(tiny, PROMPT, "kv-cache", DecodingOptions(max_new_tokens=1), inspect_cache="ends")
    assert [s.seq_len for s in result.cache_snapshots] == [8]


def test_greedy_mode_has_no_cache(tiny):
    result = generate_text(tiny, PROMPT, "greedy", DecodingOptions(max_new_tokens=3), inspect_cache="ends")
    assert result.cache_snapshots == []
    assert result.to_dict()["cache"] == []


def test_cache_in_json_dict(tiny):
    result = generate_text(tiny, PROMPT, "kv-cache", DecodingOptions(max_new_tokens=2), inspect_cache="ends")
    cache = result.to_dict()["cache"]
    assert cache[0] == {
        "layer": 0,
        "key_shape": [1, HEADS, 9, HEAD_DIM],
        "value_shape": [1, HEADS, 9, HEAD_DIM],
        "dtype": "float32",
        "positions": 9,
        "capacity": 10,
        "used_bytes": layer_bytes(9),
        "bytes": layer_bytes(10),
    }


def test_bfloat16_cache(tiny_model_dir):
    from gencli.loading import load_model

    loaded = load_model(str(tiny_model_dir), device="cpu", dtype="bfloat16")
    result = generate_text(
        loaded, PROMPT, "kv-cache", DecodingOptions(max_new_tokens=2), inspect_cache="ends"
    )
    layer = result.cache_snapshots[-1].layers[0]
    assert layer.dtype == "bfloat16"
    assert layer.bytes == layer_bytes(10, bytes_per_value=2)
