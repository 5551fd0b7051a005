import json
import time

import pytest
import torch

from gencli.errors import GencliError
from gencli.loading import load_model, resolve_device, resolve_dtype
from gencli.tokens import BUNDLED_TOKENIZER
from tests.conftest import save_tiny_model

KNOWN_SENTENCE = "Hello world! The meaning of life is"
KNOWN_IDS = [15496, 995, 0, 383, 3616, 286, 1204, 318]


def test_bundled_tokenizer_gives_gpt2_ids():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(BUNDLED_TOKENIZER))
    assert len(tokenizer) == 50257
    assert tokenizer.eos_token_id == 50256
    assert tokenizer.encode(KNOWN_SENTENCE) == KNOWN_IDS


def test_loaded_model_tokenizes_like_gpt2(tiny):
    assert tiny.tokenizer.encode(KNOWN_SENTENCE, add_special_tokens=False) == KNOWN_IDS
    assert tiny.eos_token_id == 50256
    assert tiny.context_length == 1024


def test_folder_without_tokenizer_uses_bundled_one(model_without_tokenizer):
    loaded = load_model(str(model_without_tokenizer), device="cpu")
    assert loaded.tokenizer.encode(KNOWN_SENTENCE) == KNOWN_IDS


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(GencliError, match="does not exist"):
        load_model(str(tmp_path / "missing" / "model"))


def test_uncached_hub_model_offline_fails_fast(hub_cache):
    started = time.perf_counter()
    with pytest.raises(GencliError, match="HF_HUB_OFFLINE"):
        load_model("gpt2")
    assert time.perf_counter() - started < 5  # the hub client's own retries take ~20 s


def test_dtype_choice(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir), device="cpu", dtype="bfloat16")
    assert loaded.dtype == torch.bfloat16
    assert resolve_dtype("auto") == torch.float32  # random weights


def test_auto_dtype_is_the_checkpoints_own_as_in_hugging_face(tmp_path):
    folder = save_tiny_model(tmp_path / "bf16")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "dtype": "bfloat16"}))
    assert load_model(str(folder), device="cpu").dtype == torch.bfloat16
    assert load_model("demo", device="cpu").dtype == torch.float32  # stored as float16, loads as float32


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_is_a_clear_error():
    with pytest.raises(GencliError, match="--device cpu"):
        resolve_device("cuda")
