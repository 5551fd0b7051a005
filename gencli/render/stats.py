"""The lines after a run on stderr: timings and sizes of a generation or a chat turn, and the
--top-logprobs table."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gencli.render.console import format_seconds, token_label
from gencli.render.words import plural

if TYPE_CHECKING:
    from gencli.chat import TurnResult as ChatTurn
    from gencli.results import GenerationResult


def print_stats(result: GenerationResult, console: Console) -> None:
    timings = result.timings
    speed = "-" if timings.tokens_per_s is None else f"{timings.tokens_per_s:.1f} tokens/s"
    reused = f" ({result.prompt_cache_tokens} reused from a cache)" if result.prompt_cache_tokens else ""
    console.print(
        f"[dim]{result.mode} · {plural(len(result.prompt_token_ids), 'prompt token')}{reused} · "
        f"{plural(len(result.token_ids), 'new token')} ({result.finish_reason}) · "
        f"prefill {format_seconds(timings.prefill_s)} · first token {format_seconds(timings.ttft_s)} · "
        f"decode {speed} · load {format_seconds(timings.load_s)} · "
        f"total {format_seconds(timings.total_s)} · {result.device} {result.weights} · "
        f"kernels {result.kernels}"
        f"{constraint_note(result)}{speculation_note(result.speculation)}[/dim]",
        soft_wrap=True,
    )


def speculation_note(speculation: dict[str, Any] | None) -> str:
    """What speculative decoding did: proposals accepted, tokens per verification pass, passes
    saved (the decode steps a run without it takes, less its passes)."""
    if speculation is None:
        return ""
    rate, per_pass = speculation["acceptance_rate"], speculation["tokens_per_pass"]
    proposals = (
        "nothing proposed"
        if rate is None
        else f"{rate:.0%} of {plural(speculation['proposed'], 'proposal')} accepted"
    )
    saved = speculation["passes_saved"]
    return (
        f" · speculate {speculation['method']}: {proposals}, "
        f"{'-' if per_pass is None else f'{per_pass:.2f}'} tokens/pass, "
        f"{saved} {'pass' if saved == 1 else 'passes'} saved"
    )


def constraint_note(result: GenerationResult) -> str:
    """How the answer was shaped, and whether it got to the end of its shape: an answer cut off
    by the length (or a stop) is not claimed to fit."""
    if result.constraint is None:
        return ""
    state = "complete" if result.constraint["complete"] else f"INCOMPLETE ({result.finish_reason})"
    return f" · shaped by {result.constraint['kind']}: {state}"


def print_turn_stats(turn: ChatTurn, console: Console) -> None:
    result = turn.result
    timings = result.timings
    speed = "-" if timings.tokens_per_s is None else f"{timings.tokens_per_s:.1f} tokens/s"
    console.print(
        f"[dim]turn {turn.number} · {plural(turn.cached_tokens, 'token')} from the cache + "
        f"{turn.prefilled_tokens} prefilled · prefill {format_seconds(timings.prefill_s)} · first token "
        f"{format_seconds(timings.ttft_s)} · decode {speed} · {plural(len(result.token_ids), 'new token')} "
        f"({result.finish_reason}){speculation_note(result.speculation)}[/dim]",
        soft_wrap=True,
    )


def print_logprobs(logprobs: list[dict[str, Any]], console: Console) -> None:
    """One row per new token: the token, its probability, and the alternatives with theirs."""
    import math

    table = Table(title="Next-token probabilities (after the logits processors)", title_justify="left")
    for column in ("#", "token", "p", "most likely"):
        table.add_column(column, justify="right" if column in ("#", "p") else "left", overflow="fold")
    for index, step in enumerate(logprobs):
        others = ", ".join(
            f"{token_label(alternative['text'], 12)} {math.exp(alternative['logprob']):.2f}"
            for alternative in step["top"]
        )
        table.add_row(
            str(index),
            escape(token_label(step["text"], 16)),
            f"{math.exp(step['logprob']):.3f}",
            escape(others),
        )
    console.print(table)
