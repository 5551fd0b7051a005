"""Batch generation from JSONL: many prompts, padded on the left and decoded together by the
engine of the chosen mode (`gencli.generation.generate_batch`).

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

from gencli.errors import GencliError
from gencli.files import atomic_path
from gencli.generation import generate_batch
from gencli.loading import LoadedModel
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


@dataclass(frozen=True)
class BatchJob:
    """How a batch job decodes: the same for every chunk, on this machine or on a Ray worker."""

    mode: str
    defaults: DecodingOptions  # each line's own options override these
    batch_size: int = 8
    top_logprobs: int | None = None


def decode_batch(loaded: LoadedModel, items: list[BatchItem], job: BatchJob) -> list[dict[str, Any]]:
    """Prompts that share options, decoded together by the job's mode: one record each."""
    results = generate_batch(
        loaded, [item.prompt for item in items], job.mode, items[0].options, job.top_logprobs
    )
    records = []
    for item, result in zip(items, results, strict=True):
        record = {
            "id": item.id,
            "text": result.text,
            "token_ids": result.token_ids,
            "finish_reason": result.finish_reason,
        }
        if result.logprobs is not None:
            record["logprobs"] = result.logprobs
        if result.constraint is not None:
            record["constraint"] = result.constraint
        records.append(record)
    return records


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


# What planning makes of an input line: an item to decode, a finished error record, or None for
# an id that --resume skips.
Planned = BatchItem | dict[str, Any] | None


def plan(
    lines: Iterable[str], defaults: DecodingOptions, skip_ids: set[str] = frozenset()
) -> Iterator[Planned]:
    """Every non-blank input line, in order, checked without the model: bad lines and duplicate
    ids become error records here, on the machine that reads the file."""
    seen: set[str] = set()
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            item = parse_line(number, text, defaults)
        except LineError as error:
            yield error_record(number, error.item_id, str(error))
            continue
        if item.id in seen:
            yield error_record(number, item.id, f"duplicate id {item.id!r}")
            continue
        seen.add(item.id)
        yield None if item.id in skip_ids else item


def decode_items(loaded: LoadedModel, items: list[BatchItem], job: BatchJob) -> dict[int, dict[str, Any]]:
    """One record per item, by line number: items that share options are decoded together."""
    records: dict[int, dict[str, Any]] = {}
    groups: dict[DecodingOptions, list[BatchItem]] = {}
    for item in items:
        groups.setdefault(item.options, []).append(item)
    for group in groups.values():
        try:
            for item, record in zip(group, decode_batch(loaded, group, job), strict=True):
                records[item.line] = record
        except GencliError:
            # One bad prompt (too long, say) must not sink the others: retry them one by one.
            for item in group:
                try:
                    records[item.line] = decode_batch(loaded, [item], job)[0]
                except GencliError as error:
                    records[item.line] = error_record(item.line, item.id, str(error))
    return records


def run_batch(
    loaded: LoadedModel,
    lines: Iterable[str],
    job: BatchJob,
    skip_ids: set[str] = frozenset(),
    on_done: Callable[[int], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield one record per input line, in input order, decoding `job.batch_size` items at a time."""
    pending: list[Planned] = []
    for planned in plan(lines, job.defaults, skip_ids):
        pending.append(planned)
        if sum(isinstance(entry, BatchItem) for entry in pending) == job.batch_size:
            yield from _flush(loaded, pending, job, on_done)
            pending = []
    yield from _flush(loaded, pending, job, on_done)


def _flush(
    loaded: LoadedModel, pending: list[Planned], job: BatchJob, on_done: Callable[[int], None] | None
) -> Iterator[dict[str, Any]]:
    items = [entry for entry in pending if isinstance(entry, BatchItem)]
    decoded = decode_items(loaded, items, job) if items else {}
    for entry in pending:
        if isinstance(entry, BatchItem):
            yield decoded[entry.line]
        elif entry is not None:
            yield entry
        if on_done:
            on_done(1)
