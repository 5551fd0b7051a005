"""Speed and token agreement of every mode on the GPT-2 124M architecture with random weights.

Decoding cost does not depend on the weights' values, so `GPT2Config()` with random weights
measures what real GPT-2 would cost. Usage: python scripts/measure_modes.py [--new-tokens 128]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from gencli.config import MODES, DecodingOptions
from gencli.generation import generate_text
from gencli.loading import BUNDLED_TOKENIZER, load_model

PROMPT = "It is a truth universally acknowledged, that a single man in possession of a good"  # 16 tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=5, help="seeded sampling runs for the agreement check")
    args = parser.parse_args()

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        GPT2LMHeadModel(GPT2Config()).save_pretrained(folder)
        AutoTokenizer.from_pretrained(str(BUNDLED_TOKENIZER)).save_pretrained(folder)
        loaded = load_model(folder, device="cpu", dtype="float32")
    threads = torch.get_num_threads()
    prompt_tokens = len(loaded.tokenizer.encode(PROMPT))
    print(f"GPT-2 124M architecture, random weights; torch {torch.__version__}, {threads} threads")
    print(f"prompt: {prompt_tokens} tokens, {args.new_tokens} new tokens, float32, CPU")

    greedy = DecodingOptions(max_new_tokens=args.new_tokens)
    generate_text(loaded, PROMPT, "kv-cache", DecodingOptions(max_new_tokens=4))  # warm-up
    print(f"\n{'mode':<10} {'decode tok/s':>13} {'TTFT s':>8} {'prefill s':>10}   (median of {args.repeats})")
    outputs = {}
    for mode in MODES:
        runs = [generate_text(loaded, PROMPT, mode, greedy) for _ in range(args.repeats)]
        outputs[mode] = runs[0].token_ids
        tokens_per_s = statistics.median(r.timings.tokens_per_s for r in runs)
        ttft = statistics.median(r.timings.ttft_s for r in runs)
        prefill = statistics.median(r.timings.prefill_s for r in runs)
        print(f"{mode:<10} {tokens_per_s:>13.1f} {ttft:>8.3f} {prefill:>10.3f}")

    print("\ntoken agreement with generate:")
    print(f"  greedy decoding: {all(ids == outputs['generate'] for ids in outputs.values())}")
    for seed in range(args.seeds):
        options = DecodingOptions(
            max_new_tokens=args.new_tokens, sample=True, seed=seed, temperature=0.9, top_k=50, top_p=0.95
        )
        ids = {mode: generate_text(loaded, PROMPT, mode, options).token_ids for mode in MODES}
        print(f"  sampled, seed {seed}: {all(v == ids['generate'] for v in ids.values())}")


if __name__ == "__main__":
    main()
