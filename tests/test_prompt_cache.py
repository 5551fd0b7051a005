"""Prompt caches: token-identical output, prefix reuse, and every refusal handled without harm."""

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import GPT2LMHeadModel

from gencli.errors import GencliError
from gencli.generation import PromptCacheFile, generate_text
from gencli.loading import load_model
from gencli.settings import DecodingOptions
from tests.conftest import save_tiny_model

PROMPT = "It is a truth universally acknowledged, that a single man in possession of a good fortune"
LONGER = PROMPT + ", must be in want of a wife."
GREEDY = DecodingOptions(max_new_tokens=8)
SAMPLED = DecodingOptions(max_new_tokens=8, sample=True, seed=5, top_k=40)


def run(loaded, prompt, mode, path=None, read_only=False, options=GREEDY):
    notices = []
    cache_file = PromptCacheFile(path, read_only) if path else None
    result = generate_text(loaded, prompt, mode, options, prompt_cache=cache_file, on_notice=notices.append)
    return result, notices


@pytest.mark.parametrize("mode", ["generate", "kv-cache", "scratch"])
@pytest.mark.parametrize("options", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_output_is_identical_with_and_without_the_cache(tiny, tmp_path, mode, options):
    path = tmp_path / "prompt.safetensors"
    plain, _ = run(tiny, PROMPT, mode, options=options)
    first, _ = run(tiny, PROMPT, mode, path, options=options)
    assert path.exists() and first.prompt_cache_tokens == 0
    again, notices = run(tiny, PROMPT, mode, path, options=options)
    longer, _ = run(tiny, LONGER, mode, path, options=options)
    plain_longer, _ = run(tiny, LONGER, mode, options=options)
    assert plain.token_ids == first.token_ids == again.token_ids
    assert longer.token_ids == plain_longer.token_ids
    prompt_length = len(plain.prompt_token_ids)
    assert again.prompt_cache_tokens == prompt_length - 1  # the last token runs to give logits
    assert longer.prompt_cache_tokens == prompt_length
    assert notices == []


@pytest.mark.parametrize("mode", ["generate", "kv-cache", "scratch"])
def test_a_prompt_that_parts_from_the_cached_one_reuses_their_common_start(tiny, tmp_path, mode):
    # The README's example: the same context, then another question.
    context = PROMPT + ", must be in want of a wife. However little known the feelings"
    path = tmp_path / "ctx.safetensors"
    run(tiny, context + " Question one?", mode, path)
    second, notices = run(tiny, context + " Question two?", mode, path, read_only=True)
    plain, _ = run(tiny, context + " Question two?", mode)
    shared = len(tiny.tokenizer.encode(context + " Question"))
    assert second.prompt_cache_tokens == shared and notices == []
    assert second.token_ids == plain.token_ids


def test_an_unrelated_prompt_reuses_nothing_and_is_not_refused(tiny, tmp_path):
    path = tmp_path / "p.safetensors"
    run(tiny, PROMPT, "kv-cache", path)
    other, notices = run(tiny, "Call me Ishmael.", "kv-cache", path)
    assert other.prompt_cache_tokens == 0 and notices == []
    assert other.token_ids == run(tiny, "Call me Ishmael.", "kv-cache")[0].token_ids


def test_file_holds_tensors_and_metadata(tiny, tmp_path):
    path = tmp_path / "p.safetensors"
    result, _ = run(tiny, PROMPT, "kv-cache", path)
    tensors = load_file(path)
    assert sorted(tensors) == sorted(f"layer.{i}.{kind}" for i in range(2) for kind in ("keys", "values"))
    assert tensors["layer.0.keys"].shape == (1, 4, len(result.prompt_token_ids), 16)
    from safetensors import safe_open

    with safe_open(path, "pt") as file:
        metadata = file.metadata()
    assert {"gencli_prompt_cache_format", "model_fingerprint", "dtype", "device_type", "token_ids"} <= set(
        metadata
    )
    assert metadata["dtype"] == "float32" and metadata["device_type"] == "cpu"


def test_greedy_mode_has_no_cache_to_reuse(tiny, tmp_path):
    with pytest.raises(GencliError, match="greedy mode has none"):
        run(tiny, PROMPT, "greedy", tmp_path / "p.safetensors")


def rewrite_metadata(path, **changes):
    from safetensors import safe_open

    with safe_open(path, "pt") as file:
        metadata = {**file.metadata(), **changes}
    save_file(load_file(path), path, metadata=metadata)


def other_model(tmp_path):
    return load_model(str(save_tiny_model(tmp_path / "other", seed=1)), device="cpu")


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (lambda path, loaded: rewrite_metadata(path, gencli_prompt_cache_format="0"), "another cache format"),
        (lambda path, loaded: rewrite_metadata(path, device_type="cuda"), "another device type"),
        (lambda path, loaded: path.write_bytes(b"\x00" * 40), "unreadable"),
        (
            lambda path, loaded: path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2]),
            "unreadable",
        ),
        (lambda path, loaded: rewrite_metadata(path, token_ids="[1, 2]"), "damaged"),
    ],
    ids=["format", "device", "garbage", "truncated", "shapes"],
)
@pytest.mark.parametrize("read_only", [False, True], ids=["rewrite", "read-only"])
def test_refusals(tiny, tmp_path, spoil, reason, read_only):
    path = tmp_path / "p.safetensors"
    expected, _ = run(tiny, PROMPT, "kv-cache")
    run(tiny, PROMPT, "kv-cache", path)
    spoil(path, tiny)
    spoiled = path.read_bytes()
    result, notices = run(tiny, PROMPT, "kv-cache", path, read_only)
    assert result.token_ids == expected.token_ids and result.prompt_cache_tokens == 0
    assert len(notices) == 1 and reason in notices[0] and str(path) in notices[0]
    if read_only:
        assert "left as it is" in notices[0] and path.read_bytes() == spoiled
    else:
        assert "rewritten" in notices[0]
        assert run(tiny, PROMPT, "kv-cache", path)[0].prompt_cache_tokens > 0  # usable again


def test_refuses_another_model_and_dtype(tiny, tiny_model_dir, tmp_path):
    path = tmp_path / "p.safetensors"
    run(tiny, PROMPT, "kv-cache", path)
    _, notices = run(other_model(tmp_path), PROMPT, "kv-cache", path, read_only=True)
    assert "is for another model" in notices[0]
    bf16 = load_model(str(tiny_model_dir), device="cpu", dtype="bfloat16")
    _, notices = run(bf16, PROMPT, "kv-cache", path, read_only=True)
    assert "holds another dtype" in notices[0]


def test_read_only_never_creates_the_file(tiny, tmp_path):
    path = tmp_path / "p.safetensors"
    run(tiny, PROMPT, "kv-cache", path, read_only=True)
    assert not path.exists()


def test_damaged_shapes_are_refused(tiny, tmp_path):
    path = tmp_path / "p.safetensors"
    run(tiny, PROMPT, "kv-cache", path)
    tensors = load_file(path)
    tensors["layer.1.values"] = torch.zeros(1, 4, 3, 16)
    from safetensors import safe_open

    with safe_open(path, "pt") as file:
        metadata = file.metadata()
    save_file(tensors, path, metadata=metadata)
    _, notices = run(tiny, PROMPT, "kv-cache", path)
    assert "damaged" in notices[0]


def test_a_symlinked_cache_stays_a_link(tiny, tmp_path):
    target = tmp_path / "real.safetensors"
    link = tmp_path / "link.safetensors"
    run(tiny, PROMPT, "kv-cache", target)
    link.symlink_to(target)
    run(tiny, LONGER, "kv-cache", link)
    assert link.is_symlink() and link.resolve() == target
    assert (
        run(tiny, LONGER, "kv-cache", target)[0].prompt_cache_tokens == len(tiny.tokenizer.encode(LONGER)) - 1
    )


def test_a_one_row_change_to_the_weights_refuses_the_cache(tmp_path):
    folder = save_tiny_model(tmp_path / "model")
    path = tmp_path / "p.safetensors"
    run(load_model(str(folder), device="cpu"), PROMPT, "kv-cache", path)
    changed = GPT2LMHeadModel.from_pretrained(folder)
    with torch.no_grad():
        changed.transformer.wte.weight[12345] += 1e-3  # one embedding row, overwritten in place
    changed.save_pretrained(folder)
    reloaded = load_model(str(folder), device="cpu")
    result, notices = run(reloaded, PROMPT, "kv-cache", path, read_only=True)
    assert result.prompt_cache_tokens == 0 and "is for another model" in notices[0]


WRITER = """
import sys
from pathlib import Path

from gencli import prompt_cache
from gencli.loading import load_model

loaded = load_model(sys.argv[1], device="cpu")
cache = loaded.engine("scratch").new_cache(8)
for _ in range(30):
    prompt_cache.save(Path(sys.argv[2]), loaded, [int(sys.argv[3])] * 5, cache)
"""


def test_two_processes_writing_one_cache_leave_one_whole_file(tiny, tiny_model_dir, tmp_path):
    import subprocess
    import sys

    from gencli import prompt_cache

    path = tmp_path / "shared.safetensors"
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(tiny_model_dir), str(path), token])
        for token in ("11", "22")
    ]
    assert [writer.wait(timeout=120) for writer in writers] == [0, 0]
    stored = prompt_cache.load(path, tiny)  # whole and readable: one writer's file, not a mix
    assert stored.token_ids in ([11] * 5, [22] * 5)
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
