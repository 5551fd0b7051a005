"""What a structured-output shape costs a decode step, as the closing note measured it:

    python scripts/constraint_cost.py MODEL        # e.g. a save_pretrained GPT-2 124M folder

kv-cache mode, greedy, 64 new tokens: no shape (ignore_eos), a JSON schema, and a list of 50
choices; 3 alternating rounds after a warm-up; per token, the decode step and the shape's own
processor (gencli.constraints.GrammarConstraint). Run it on an otherwise idle machine.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import gencli.constraints as constraints
from gencli.generation import generate_text
from gencli.loading import load_model
from gencli.settings import DecodingOptions

spent: list[float] = []
shape_step = constraints.GrammarConstraint.__call__


def timed(self, input_ids, scores):  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    shaped = shape_step(self, input_ids, scores)
    spent.append(time.perf_counter() - started)
    return shaped


def main(model_name: str) -> None:
    constraints.GrammarConstraint.__call__ = timed
    model = load_model(model_name, device="cpu")
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "tags": {"type": "array"}},
        "required": ["name", "age", "tags"],
    }
    shapes = {
        "none": DecodingOptions(max_new_tokens=64, ignore_eos=True),
        "json_schema": DecodingOptions(max_new_tokens=64, json_schema=json.dumps(schema)),
        "choice x50": DecodingOptions(
            max_new_tokens=64, choice=tuple(f"option number {i} of the list" for i in range(50))
        ),
    }
    prompt = "The record: it is a truth universally acknowledged"
    for options in shapes.values():
        generate_text(model, prompt, "kv-cache", options)  # warm-up: the engine, llguidance's tables
    rows: dict[str, list[tuple[int, float, float]]] = {name: [] for name in shapes}
    for _ in range(3):
        for name, options in shapes.items():
            spent.clear()
            result = generate_text(model, prompt, "kv-cache", options)
            tokens = len(result.token_ids)
            step_ms = 1000 * result.timings.decode_s / max(1, tokens - 1)
            rows[name].append((tokens, step_ms, 1000 * sum(spent) / max(1, len(spent))))
    for name, runs in rows.items():
        step = statistics.median(run[1] for run in runs)
        shape = statistics.median(run[2] for run in runs)
        print(f"{name:12s} {runs[0][0]:3d} tokens · step {step:6.2f} ms · shape {shape:5.3f} ms a token")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(sys.argv[1])
