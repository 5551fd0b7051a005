"""Batch generation from JSONL: many prompts, padded on the left and decoded together.

Each input line is a JSON object: `prompt`, an optional `id`, and optional generation options
(the config keys: `max_new_tokens`, `sample`, `temperature`, ...). Results come out in input order,
one JSON object a line: `id`, `text`, `token_ids`, `finish_reason`; a bad line gets an `error`
record with its line number and the others go on.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers.cache_utils import DynamicCache

from gencli.errors import GencliError
from gencli.files import atomic_path
from gencli.generation import build_stopping_criteria, encode_prompt, finish_reason, stopping_eos
from gencli.loading import LoadedModel
from gencli.sampling import build_logits_processors, select_next_token
from gencli.settings import DECODING_KEYS, DecodingOptions, UnknownSettingError, check_values


@dataclass(frozen=True)
class BatchItem:
    line: int
    id: str
    prompt: str
    options: DecodingOptions


class LineError(GencliError):
    """What is wrong with one input line; `item_id` is the line's id when it has one."""

    def __init__(self, message: str, item_id: str | None = None):
        super().__init__(message)
        self.item_id = item_id


def parse_line(line: int, text: str, defaults: DecodingOptions) -> BatchItem:
    """One JSONL line -> a validated item; LineError says what is wrong with it."""
    try:
        record = json.loads(text)
    except ValueError as error:
        raise LineError(f"not valid JSON ({error})") from None
    except RecursionError:
        raise LineError("not valid JSON here (nested too deeply)") from None
    if not isinstance(record, dict):
        raise LineError("not a JSON object")
    item_id = None if record.get("id") is None else str(record["id"])
    prompt = record.get("prompt")
    try:
        if not isinstance(prompt, str) or not prompt.strip():
            raise GencliError("'prompt' must be a non-empty string")
        unknown = set(record) - set(DECODING_KEYS) - {"prompt", "id"}
        if unknown:
            raise UnknownSettingError(unknown, "the line", ("prompt", "id", *DECODING_KEYS))
        overrides = check_values({key: value for key, value in record.items() if key in DECODING_KEYS})
    except GencliError as error:
        raise LineError(str(error), item_id) from None
    return BatchItem(line, item_id or str(line), prompt, defaults.model_copy(update=overrides))


def error_record(line: int, item_id: str | None, message: str) -> dict[str, Any]:
    return {"id": item_id, "line": line, "error": message}


def decode_batch(loaded: LoadedModel, items: list[BatchItem]) -> list[dict[str, Any]]:
    """Greedy or sampled decoding of prompts that share options, left-padded into one batch."""
    options = items[0].options
    prompts = [encode_prompt(loaded, item.prompt, options.max_new_tokens) for item in items]
    width = max(map(len, prompts))
    pad = loaded.tokenizer.eos_token_id
    device = loaded.device
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    padding = torch.tensor([width - len(p) for p in prompts], device=device)
    eos = stopping_eos(loaded, options)
    processors = build_logits_processors(options, width, eos, padding_lengths=padding, device=device)
    stopping = build_stopping_criteria(loaded, width, options)
    if options.seed is not None:
        torch.manual_seed(options.seed)

    cache = DynamicCache(config=loaded.model.config)
    unfinished = torch.ones(len(items), dtype=torch.bool, device=device)
    finished_at = [options.max_new_tokens] * len(items)
    sequence, step_input = input_ids, input_ids
    with torch.inference_mode():
        for step in range(options.max_new_tokens):
            positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, -step_input.size(1) :]
            logits = loaded.model(
                step_input, attention_mask=attention_mask, position_ids=positions, past_key_values=cache
            ).logits[:, -1]
            scores = processors(sequence, logits.to(dtype=torch.float32))
            next_tokens = select_next_token(scores, options.samples)
            next_tokens = torch.where(unfinished, next_tokens, pad)  # finished rows only pad
            sequence = torch.cat([sequence, next_tokens[:, None]], dim=-1)
            attention_mask = torch.cat([attention_mask, unfinished[:, None].long()], dim=-1)
            stops = stopping(sequence, scores) & unfinished
            for row in stops.nonzero().flatten().tolist():
                finished_at[row] = step + 1
            unfinished &= ~stops
            if not unfinished.any():
                break
            step_input = next_tokens[:, None]

    results = []
    for row, item in enumerate(items):
        new_ids = sequence[row, width : width + finished_at[row]].tolist()
        row_sequence = sequence[row : row + 1, : width + len(new_ids)]
        results.append(
            {
                "id": item.id,
                "text": loaded.tokenizer.decode(new_ids, skip_special_tokens=True),
                "token_ids": new_ids,
                "finish_reason": finish_reason(row_sequence, new_ids, eos, stopping),
            }
        )
    return results


def finished_ids(output: Path) -> set[str]:
    """Ids with a result in `output`, for `--resume`. The file is rewritten, atomically, without
    its error records (those lines are retried) and without a last line cut short by an
    interruption. A file with any other line is not gencli's: it is refused and left alone."""
    try:
        text = output.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as problem:
        raise GencliError(f"cannot resume from {output}: {problem}") from None
    kept, ids = [], set()
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        is_record = (
            isinstance(record, dict)
            and record.get("id") is not None
            and ("text" in record or "error" in record)
        )
        if not is_record:
            if number == len(lines) and not text.endswith("\n"):
                continue  # cut short by an interruption
            raise GencliError(
                f"--output {output} line {number} is not a gencli batch record; --resume only continues "
                "a file that gencli batch wrote, and leaves this one alone"
            )
        if "error" not in record:
            kept.append(line)
            ids.add(str(record["id"]))
    with atomic_path(output) as partial:
        partial.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    return ids


def run_batch(
    loaded: LoadedModel,
    lines: Iterable[str],
    defaults: DecodingOptions,
    batch_size: int,
    skip_ids: set[str] = frozenset(),
    on_done: Callable[[int], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield one record per input line, in input order, a chunk of `batch_size` lines at a time."""
    seen: set[str] = set()
    chunk: list[tuple[int, str]] = []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        chunk.append((number, text))
        if len(chunk) == batch_size:
            yield from _run_chunk(loaded, chunk, defaults, skip_ids, seen, on_done)
            chunk = []
    if chunk:
        yield from _run_chunk(loaded, chunk, defaults, skip_ids, seen, on_done)


def _run_chunk(loaded, chunk, defaults, skip_ids, seen, on_done) -> Iterator[dict[str, Any]]:
    records: dict[int, dict[str, Any]] = {}
    groups: dict[DecodingOptions, list[BatchItem]] = {}
    for number, text in chunk:
        try:
            item = parse_line(number, text, defaults)
        except LineError as error:
            records[number] = error_record(number, error.item_id, str(error))
            continue
        if item.id in seen:
            records[number] = error_record(number, item.id, f"duplicate id {item.id!r}")
            continue
        seen.add(item.id)
        if item.id in skip_ids:
            continue
        groups.setdefault(item.options, []).append(item)
    for items in groups.values():
        try:
            for item, record in zip(items, decode_batch(loaded, items), strict=True):
                records[item.line] = record
        except GencliError:
            # One bad prompt (too long, say) must not sink the others: retry them one by one.
            for item in items:
                try:
                    records[item.line] = decode_batch(loaded, [item])[0]
                except GencliError as error:
                    records[item.line] = error_record(item.line, item.id, str(error))
    for number, _ in chunk:
        if number in records:
            yield records[number]
        if on_done:
            on_done(1)
