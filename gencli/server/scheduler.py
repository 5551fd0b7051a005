"""Continuous batching: every active request of a batched mode decoded together, a token per row
per step, the way vLLM's scheduler runs requests.

A new request is prefilled alone (reusing its prompt's longest cached prefix from the pool) and
joins the running batch at a step boundary; a finished or cancelled one leaves at once. The
batch's KV cache is left-padded: rows are right-aligned, an attention mask marks each row's
padding, and position ids count from each row's first token, as in `gencli batch`. A join or a
leave rebuilds the cache from the keys and values the rows hold (a copy, no recompute).

Each row keeps its own settings: its logits processors and stopping criteria see its own tokens
only, and a sampled row draws from its own generator, seeded as a run alone seeds the global one,
so a request gives the tokens it gives alone (greedy equal to rounding, as `gencli batch`).

Rows that ask for prompt lookup (`speculate = "ngram"`) each propose their own tokens; when every
row has a proposal, one pass verifies them all (gencli.speculative) and the batch keeps as many
positions as the row that accepted the fewest, so greedy rows still give their solo tokens (a
sampled row follows the model's distribution, drawn in another order than alone).
Nothing else in the server knows how requests are batched: the worker hands jobs over and gets
results back through the jobs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from gencli.cache import crop_cache
from gencli.engines.base import CachedStepEngine
from gencli.gemv import packed_few_row_products
from gencli.generation import (
    Cancellation,
    TextCallbackStreamer,
    build_stopping_criteria,
    encode_prompt,
    finish_reason,
    logprob_record,
    prepare_options,
    run_record,
    run_seed,
    stopping_eos,
)
from gencli.loading import LoadedModel
from gencli.padding import position_ids
from gencli.prefix import CachedPrefix
from gencli.results import GenerationResult, Timings
from gencli.sampling import build_logits_processors, select_next_token
from gencli.server.jobs import Job
from gencli.speculative import PromptLookup, Proposal, SpeculationStats, judge
from gencli.threads import adapt_threads

BATCHED_MODES = ("kv-cache", "scratch")
MAX_BATCH = 8  # rows decoded together; more wait in the queue


def batchable(job: Job) -> bool:
    """Whether a job can run in a batch: a generation in a mode whose engine steps with a cache
    (`generate` runs inside Hugging Face's loop, `greedy` keeps no cache), without cache
    snapshots (they describe one request's cache), an echoed prompt (scored on its own) or a
    draft model (whose own cache would have to be batched too: such a request verifies alone)."""
    request = job.request
    return (
        request.mode in BATCHED_MODES
        and request.generates
        and request.inspect_cache is None
        and not request.echo
        and request.options.speculate != "draft"
    )


class Row:
    """One request in the batch: its own tokens, processors, stopping, random stream and output."""

    def __init__(self, loaded: LoadedModel, job: Job):
        request = job.request
        options = request.options
        self.loaded, self.job = loaded, job
        constraint = prepare_options(loaded, options)
        self.shaped = constraint is not None
        self.prompt_ids = encode_prompt(loaded, request.prompt, options.max_new_tokens)
        self.sequence = torch.tensor([self.prompt_ids], device=loaded.device)  # [1, prompt + chosen]
        self.stopping = build_stopping_criteria(loaded, len(self.prompt_ids), options)
        self.cancel = Cancellation(job.cancelled.is_set)
        self.stopping.append(self.cancel)
        self.processors = build_logits_processors(
            options,
            len(self.prompt_ids),
            stopping_eos(loaded, options),
            device=loaded.device,
            constraint=constraint,
        )
        self.seed = run_seed(options)
        self.generator = None
        if options.samples:
            self.generator = torch.Generator(device=loaded.device).manual_seed(self.seed)
        self.proposer = PromptLookup(options.no_repeat_ngram_size) if options.speculate == "ngram" else None
        self.speculation = SpeculationStats(options.speculate, options.speculative_tokens)
        self.text = TextCallbackStreamer(loaded.tokenizer, job.send, options.skip_special_tokens)
        self.new_ids: list[int] = []
        self.logprobs: list[dict[str, Any]] | None = None if request.top_logprobs is None else []
        self.started = time.perf_counter()
        self.token_times_s: list[float] = []
        self.prefill_s: float | None = None
        self.reused = 0
        self.done = False

    @property
    def length(self) -> int:
        """Positions the row's keys and values take in the cache: all but the newest token."""
        return self.sequence.shape[1] - 1

    def propose(self) -> Proposal | None:
        """What prompt lookup proposes after the row's tokens, as many as its room allows; None
        for a row that does not speculate."""
        if self.proposer is None:
            return None
        options = self.job.request.options
        room = options.max_new_tokens - len(self.new_ids) - 1  # the pass adds a token of its own
        active = torch.ones(1, dtype=torch.bool)
        return self.proposer.propose(self.sequence, None, min(options.speculative_tokens, room), active)

    def choose(self, logits: torch.Tensor, proposal: Proposal | None = None, index: int = 0) -> bool:
        """Take the next token from this row's logits ([1, vocab]), as a run alone does, or judge
        `proposal`'s token at `index` by the speculative rule; return whether it was accepted."""
        options = self.job.request.options
        scores = self.processors(self.sequence, logits.to(dtype=torch.float32))
        accepted = False
        if proposal is None:
            token = select_next_token(scores, options.samples, self.generator)
        else:
            token, verdict = judge(scores, proposal, index, options.samples, self.generator)
            accepted = bool(verdict[0])
        if self.logprobs is not None:
            count = self.job.request.top_logprobs
            unshaped = logits[0].float() if self.shaped else None
            self.logprobs.append(
                logprob_record(self.loaded.tokenizer, scores[0], int(token[0]), count, unshaped)
            )
            self.job.send_step("logprob", self.logprobs[-1])
        self.sequence = torch.cat([self.sequence, token[:, None]], dim=-1)
        self.new_ids.append(int(token[0]))
        self.token_times_s.append(time.perf_counter() - self.started)
        self.text.put(token.cpu())
        self.done = bool(self.stopping(self.sequence, scores).any())
        return accepted

    def result(self) -> GenerationResult:
        self.text.end()
        loaded, request = self.loaded, self.job.request
        reason = "interrupted" if self.cancel.fired or self.job.cancelled.is_set() else None
        if reason is None:
            eos, stop_ids = stopping_eos(loaded, request.options), request.options.stop_token_ids
            reason = finish_reason(self.sequence, self.new_ids, eos, self.stopping, stop_ids)
        timings = Timings.measured(self.prefill_s, self.token_times_s, loaded.load_s)
        return run_record(
            loaded,
            request.mode,
            request.prompt,
            self.prompt_ids,
            self.new_ids,
            reason,
            timings,
            self.seed,
            request.options,
            prompt_cache_tokens=self.reused,
            logprobs=self.logprobs,
            speculation=None if self.proposer is None else self.speculation.to_dict(),
        )


class Batch:
    """The rows of one mode decoded together, over one left-padded KV cache."""

    def __init__(self, loaded: LoadedModel, mode: str):
        engine = loaded.engine(mode)
        if not isinstance(engine, CachedStepEngine):
            raise ValueError(f"{mode} mode does not decode step by step over a cache: it cannot batch")
        self.loaded, self.mode, self.engine = loaded, mode, engine
        self.rows: list[Row] = []
        self.cache: Any = None
        self.mask: torch.Tensor | None = None  # [rows, width]: 1 a token, 0 padding

    def prefill(self, row: Row, prefix: CachedPrefix | None) -> tuple[Row, list, list]:
        """Run the row's prompt alone, in `prefix`'s cache (reusing what it holds), and choose its
        first token; returns the row with the keys and values of its prompt, ready to `join`."""
        cache = prefix.cache if prefix is not None else self.engine.new_cache(len(row.prompt_ids))
        row.reused = prefix.reuse(row.prompt_ids) if prefix is not None else 0
        started = time.perf_counter()
        with torch.inference_mode():
            logits = self.engine.next_logits(cache, row.sequence[:, row.reused :])
        row.prefill_s = time.perf_counter() - started
        row.choose(logits)
        if prefix is not None:
            prefix.record(row.prompt_ids + row.new_ids)
        return (row, *_held(cache, 0, row.length))

    def join(self, prefilled: list[tuple[Row, list, list]]) -> None:
        """Add prefilled rows to the batch, in one rebuild; `drop_finished` takes out any whose
        first token was its last."""
        self._rebuild([*self._rows_held(), *prefilled])
        self.rows += [row for row, _, _ in prefilled]

    def step(self) -> list[Row]:
        """One token for every row, or with every row's proposal as many as the batch accepts;
        returns the rows that finished, which have left."""
        adapt_threads()
        proposals = [row.propose() for row in self.rows]
        length = min((0 if proposal is None else proposal.length for proposal in proposals), default=0)
        with torch.inference_mode():
            newest = torch.cat([row.sequence[:, -1:] for row in self.rows])  # [rows, 1]
            if length:
                proposed = torch.cat([proposal.tokens[:, :length] for proposal in proposals])
                newest = torch.cat([newest, proposed], dim=1)  # [rows, 1 + length]
            width = self.mask.shape[1]
            self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1 + length)], dim=-1)
            positions = position_ids(self.mask)[:, -(1 + length) :]
            with packed_few_row_products():  # the rows' products at bandwidth (gencli.gemv)
                logits = self.engine.logits(self.cache, newest, self.mask, positions, keep=1 + length)
        if not length:
            for index, row in enumerate(self.rows):
                row.choose(logits[index : index + 1, 0])
                row.speculation.passes += 1  # a plain step is a pass without a proposal
                row.speculation.tokens += 1
            return self.drop_finished()
        kept = self._verify(logits, [Proposal(p.tokens[:, :length]) for p in proposals])
        # The pass wrote 1 + length positions a row; every row keeps its newest token's and the
        # accepted ones' (the token chosen last is run by the next step).
        crop_cache(self.cache, width + kept)
        self.mask = self.mask[:, : width + kept]
        return self.drop_finished()

    def _verify(self, logits: torch.Tensor, proposals: list[Proposal]) -> int:
        """Choose every row's tokens from a verification pass's logits ([rows, 1 + length,
        vocab]) until a row refuses its proposal; return how many positions the rows took."""
        length = proposals[0].length
        for index in range(length + 1):
            refused = False
            for number, (row, proposal) in enumerate(zip(self.rows, proposals, strict=True)):
                if row.done:
                    continue
                judged = proposal if index < length else None
                accepted = row.choose(logits[number : number + 1, index], judged, index)
                row.speculation.tokens += 1
                row.speculation.accepted += int(accepted)
                refused |= not accepted
            if refused or all(row.done for row in self.rows):
                break
        for row in self.rows:
            row.speculation.passes += 1
            row.speculation.proposed += length
        return index + 1

    def drop_finished(self) -> list[Row]:
        finished = [row for row in self.rows if row.done or row.job.cancelled.is_set()]
        if finished:
            kept = [held for held in self._rows_held() if held[0] not in finished]
            self._rebuild(kept)
            self.rows = [held[0] for held in kept]
        return finished

    def _rows_held(self) -> list[tuple[Row, list[torch.Tensor], list[torch.Tensor]]]:
        """Each row with the keys and values it holds, per layer [1, heads, its length, head_dim]."""
        width = 0 if self.mask is None else self.mask.shape[1]
        return [(row, *_held(self.cache, index, row.length, width)) for index, row in enumerate(self.rows)]

    def _rebuild(self, held: list[tuple[Row, list[torch.Tensor], list[torch.Tensor]]]) -> None:
        """A new cache with these rows right-aligned, room for what they may still generate."""
        if not held:
            self.cache, self.mask = None, None
            return
        width = max(row.length for row, _, _ in held)
        room = max(row.job.request.options.max_new_tokens - len(row.new_ids) for row, _, _ in held)
        self.cache = self.engine.new_cache(width + room + 1, batch=len(held))
        layers = len(held[0][1])
        for layer in range(layers):
            first = held[0][1][layer]
            keys = first.new_zeros(
                len(held), first.shape[1], width, first.shape[3]
            )  # [rows, heads, width, dim]
            values = torch.zeros_like(keys)
            for index, (row, row_keys, row_values) in enumerate(held):
                keys[index, :, width - row.length :] = row_keys[layer][0]
                values[index, :, width - row.length :] = row_values[layer][0]
            self.cache.update(keys, values, layer)
        self.mask = torch.zeros(len(held), width, dtype=torch.long, device=self.loaded.device)
        for index, (row, _, _) in enumerate(held):
            self.mask[index, width - row.length :] = 1


def _held(cache: Any, index: int, length: int, width: int | None = None) -> tuple[list, list]:
    """Row `index`'s keys and values per layer: its last `length` positions of `width` filled."""
    width = length if width is None else width
    keys = [layer.keys[index : index + 1, :, width - length : width].clone() for layer in cache.layers]
    values = [layer.values[index : index + 1, :, width - length : width].clone() for layer in cache.layers]
    return keys, values


def run_batches(
    loaded: LoadedModel,
    first: Job,
    take_next: Callable[[str], Job | None],
    prefix_for: Callable[[str, list[int]], CachedPrefix | None],
    finish: Callable[[Job, GenerationResult | None, Exception | None], None],
) -> None:
    """Decode `first` and every job of its mode that `take_next(mode)` hands over while the batch
    runs (asked at every step boundary, while there is room), until no row is left."""
    batch = Batch(loaded, first.request.mode)
    joining: list[Job] = [first]
    while joining or batch.rows:
        prefilled = []
        for job in joining:
            try:
                row = Row(loaded, job)
                prefilled.append(batch.prefill(row, prefix_for(batch.mode, row.prompt_ids)))
            except Exception as problem:  # one request's fault must not take the others down
                finish(job, None, problem)
        if prefilled:
            batch.join(prefilled)
            for row in batch.drop_finished():
                finish(row.job, row.result(), None)
        if batch.rows:
            try:
                finished = batch.step()
            except Exception as problem:
                for row in batch.rows:
                    finish(row.job, None, problem)
                return
            for row in finished:
                finish(row.job, row.result(), None)
        joining = []  # every waiting job of this mode that fits joins at this step boundary
        while len(batch.rows) + len(joining) < MAX_BATCH and (job := take_next(batch.mode)) is not None:
            joining.append(job)
