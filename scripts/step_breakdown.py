"""Where a kv-cache decode step's time goes: the per-token time of a greedy run of GPT-2 124M's
shapes (random weights), and of the same run with every one-row product replaced by its cached
output, i.e. the time between the products. Alternating pairs, medians.

    python scripts/step_breakdown.py                      # float32
    python scripts/step_breakdown.py --dtype bfloat16
    python scripts/step_breakdown.py --quantize int8
    python scripts/step_breakdown.py --neighbour          # idle against beside a spinning process
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("GOMP_SPINCOUNT", "1000000")  # the CLI's wait policy (gencli.threads)

import torch

from gencli import kernels
from gencli.generation import generate_text
from gencli.loading import random_model
from gencli.settings import DecodingOptions

PROMPT = list(range(1000, 1016))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--quantize", default="none")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--neighbour", action="store_true", help="compare idle with a spinning neighbour")
    args = parser.parse_args()
    loaded = random_model("gpt2", device="cpu", dtype=args.dtype, quantize=args.quantize)
    options = DecodingOptions(
        max_new_tokens=args.tokens, repetition_penalty=1.0, no_repeat_ngram_size=0, ignore_eos=True
    )

    def ms_per_token() -> float:
        return 1e3 / generate_text(loaded, PROMPT, "kv-cache", options).timings.tokens_per_s

    ms_per_token()  # warm-up
    label = f"{args.dtype}{'' if args.quantize == 'none' else '+' + args.quantize}"
    if args.neighbour:
        idle, busy = [], []
        for _ in range(args.pairs):
            idle.append(ms_per_token())
            spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(0.5)
            busy.append(min(ms_per_token() for _ in range(2)))  # the governor settles in the first
            spinner.kill()
            spinner.wait()
        fast, slow = 1e3 / statistics.median(idle), 1e3 / statistics.median(busy)
        print(
            f"{label}: idle {fast:.1f} tok/s, "
            f"beside a spinning neighbour {slow:.1f} tok/s ({slow / fast:.0%})"
        )
        return
    run, outputs = kernels.Kernel.run, {}

    def cached_run(kernel: kernels.Kernel, x: torch.Tensor, prepared: kernels.Prepared) -> torch.Tensor:
        if id(prepared) not in outputs:
            outputs[id(prepared)] = run(kernel, x, prepared)
        return outputs[id(prepared)]

    whole, between = [], []
    for _ in range(args.pairs):
        kernels.Kernel.run = run
        whole.append(ms_per_token())
        kernels.Kernel.run = cached_run
        between.append(ms_per_token())
    kernels.Kernel.run = run
    step, rest = statistics.median(whole), statistics.median(between)
    print(
        f"{label}: {step:.2f} ms per token ({1e3 / step:.1f} tok/s), {rest:.2f} ms of it between the "
        f"products, {step - rest:.2f} ms in them"
    )


if __name__ == "__main__":
    main()
