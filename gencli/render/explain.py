"""`gencli explain`: one attention head worked step by step, and the tutorials' 3-token example."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console

from gencli.render.cache import shape_text
from gencli.render.console import token_label, verdict

if TYPE_CHECKING:
    from gencli.scratch.explain import Explanation, WorkedExample


def _say(console: Console, text: str = "") -> None:
    """A line of plain text: no markup, no highlighting, not wrapped (tables of numbers)."""
    console.print(text, highlight=False, markup=False, soft_wrap=True)


def _numbers(values: Any, digits: int = 4) -> str:
    """Aligned columns with `digits` decimals."""
    return "  ".join(f"{float(value):>8.{digits}f}" for value in values)


def _vector(vector: Any, shown: int) -> str:
    """The first `shown` values of a 1-d tensor, and how many there are."""
    more = f"  … ({len(vector)} in all)" if len(vector) > shown else ""
    return f"[{_numbers(vector[:shown])} ]{more}"


def _matrix(console: Console, title: str, matrix: Any, row_labels: list[str] | None = None) -> None:
    rows = matrix.tolist()
    labels = row_labels or [""] * len(rows)
    width = max(map(len, labels))
    # Whole-number tables (the worked example's inputs) without decimals.
    digits = 0 if all(float(value).is_integer() for row in rows for value in row) else 4
    _say(console, f"{title}  {shape_text((len(rows), len(rows[0])))}")
    for label, row in zip(labels, rows, strict=True):
        _say(console, f"  {label:>{width}} {_numbers(row, digits)}")
    _say(console)


def print_worked_example(example: WorkedExample, console: Console) -> None:
    """The tutorials' 3-token self-attention as tables of numbers, unmasked and then causal."""
    tokens = ["token 0", "token 1", "token 2"]
    dims = [f"in {i}" for i in range(4)]

    def say(text: str = "") -> None:
        _say(console, text)

    say("Self-attention by hand: 3 tokens of 4 dimensions, d_k = 3, scores not scaled")
    say()
    _matrix(console, "x: one row per token", example.x, tokens)
    for name, weight in (("W_q", example.w_q), ("W_k", example.w_k), ("W_v", example.w_v)):
        _matrix(console, f"{name}: one row per input dimension", weight, dims)
    _matrix(console, "Q = x·W_q: the queries", example.query, tokens)
    _matrix(console, "K = x·W_k: the keys", example.key, tokens)
    _matrix(console, "V = x·W_v: the values", example.value, tokens)
    _matrix(
        console, "scores = Q·Kᵀ: row i, column j = token i's query · token j's key", example.scores, tokens
    )
    _matrix(console, "weights = softmax of each row of the scores", example.weights, tokens)
    _matrix(console, "output = weights·V: each row a weighted sum of the values", example.output, tokens)
    say("With GPT-2's causal mask, no token attends to a later one (masked scores count as -∞):")
    say()
    _matrix(console, "weights, causal", example.causal_weights, tokens)
    _matrix(console, "output, causal", example.causal_output, tokens)


def print_explanation(explained: Explanation, console: Console, shown: int = 6) -> None:
    """One head's attention for one query position, step by step, then the KV cache and the check."""
    say = console.print
    steps, position, head, head_dim = explained.steps, explained.position, explained.head, explained.head_dim
    n_embd = head_dim * explained.n_head
    labels = [token_label(token, 12) for token in explained.tokens]
    count = len(labels)
    start, end = head * head_dim, (head + 1) * head_dim

    def line(text: str = "") -> None:
        _say(console, text)

    line(
        f"Attention, step by step: model {explained.model}, layer {explained.layer}, head {head}, "
        f"the query at position {position} ({labels[position]}) of {count} tokens"
    )
    line(
        f"{explained.n_head} heads of {head_dim} dimensions (n_embd {n_embd}); vectors show the first {shown}"
    )
    line()
    line(f"1. The input row: x = LayerNorm₁(hidden state at position {position}), shape [{n_embd}]")
    line(f"   x = {_vector(steps.x, shown)}")
    line()
    line(
        f"2. Head {head}'s projections: columns {start}:{end} of W_q, W_k and W_v "
        f"([{n_embd}, {head_dim}] each, plus biases)"
    )
    line(f"   q = x·W_q + b_q, shape [{head_dim}]: {_vector(steps.query, shown)}")
    line(f"   and for every position j, k_j = x_j·W_k + b_k and v_j = x_j·W_v + b_v, shape [{head_dim}]:")
    width = max(map(len, labels))
    for j in range(position + 1):
        line(f"   {j:>4} {labels[j]:>{width}}  k {_vector(steps.keys[j], min(shown, 4))}")
        line(f"   {'':>4} {'':>{width}}  v {_vector(steps.values[j], min(shown, 4))}")
    line()
    line(
        f"3. Scores q·k_j, scaled by {steps.scale:.4f} (1/√{head_dim}), masked where j > {position}, "
        "and their softmax:"
    )
    line(f"   {'j':>4} {'token':>{width}}  {'q·k_j':>10} {'scaled':>10}  weight")
    for j in range(count):
        if not steps.allowed[j]:
            line(f"   {j:>4} {labels[j]:>{width}}  masked: position {j} comes after the query")
            continue
        weight = float(steps.weights[j])
        bar = "█" * round(weight * 20)
        line(
            f"   {j:>4} {labels[j]:>{width}}  {float(steps.raw_scores[j]):>10.4f} "
            f"{float(steps.scaled_scores[j]):>10.4f}  {weight:.4f} {bar}"
        )
    line()
    line(f"4. The head's output: Σ_j weight_j · v_j, shape [{head_dim}]")
    line(f"   {_vector(steps.head_output, shown)}")
    line()
    line(
        f"5. Next: the {explained.n_head} heads' outputs side by side make a row of {n_embd} (head {head} at "
        f"columns {start}:{end}); the output projection W_o [{n_embd}, {n_embd}] + b_o turns it into the "
        f"attention output, shape [{n_embd}]:"
    )
    line(f"   {_vector(explained.attention_output, shown)}")
    line("   It is added to the residual stream; then come LayerNorm₂ and the MLP.")
    line()
    cache = explained.cache
    cached = f"positions 0-{position - 1}" if position else "no positions"
    line(f"6. With a KV cache, as generation computes position {position}:")
    line(f"   keys and values of {cached} come from the cache, {shape_text(cache.cached_shape)} each")
    line(f"   position {position}'s key and value are computed now, {shape_text(cache.new_shape)} each")
    line(
        f"   the query attends over {shape_text(cache.attended_shape)}; the output differs from step 5 "
        f"by at most {cache.max_abs_difference:.1e}"
    )
    line()
    check = explained.check
    say(
        f"check against Hugging Face's layer {explained.layer} attention at position {position}: max abs "
        f"error {check.max_abs_error:.1e}, max rel error {check.max_rel_error:.1e} (atol {check.atol:g}, "
        f"rtol {check.rtol:g}): {verdict(check.passed)}",
        highlight=False,
        soft_wrap=True,
    )
