"""One generation, whatever the mode: tokenize, seed, run the engine, time it, report the result.

This module knows nothing of terminals: text goes to an `on_text` callback.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.stopping_criteria import (
    EosTokenCriteria,
    MaxLengthCriteria,
    StopStringCriteria,
)
from transformers.generation.streamers import BaseStreamer

from gencli import prompt_cache as prompt_cache_files
from gencli.cache import CacheSnapshot, snapshot_cache
from gencli.constraints import CompiledConstraint, constraint_kind
from gencli.engines import DecodeRequest
from gencli.errors import GencliError
from gencli.loading import LoadedModel
from gencli.padding import left_pad, pad_token_id
from gencli.prefix import CachedPrefix, reusable_length
from gencli.results import FinishReason, GenerationResult, Timings
from gencli.sampling import end_token_ids, token_logprobs
from gencli.settings import DecodingOptions, check_prompt
from gencli.speculative import VerifiedPass, speculator_for
from gencli.threads import adapt_threads
from gencli.tokens import TokenText, token_bytes

CacheInspection = Literal["ends", "steps"]


@dataclass(frozen=True)
class PromptCacheFile:
    """`--prompt-cache PATH` (and `--prompt-cache-ro`: read it, never write it)."""

    path: Path
    read_only: bool = False


class GenerationInterrupted(Exception):
    """Ctrl-C during generation; carries what was generated until then."""

    def __init__(self, result: GenerationResult):
        super().__init__("interrupted")
        self.result = result


class TextCallbackStreamer(BaseStreamer):
    """Hands each new token's text to `on_text` as soon as its characters are whole: a token at
    a time, where Hugging Face's TextStreamer waits for the end of a word. It hears new tokens
    only (the prompt is not streamed)."""

    def __init__(self, tokenizer: Any, on_text: Callable[[str], None], skip_special_tokens: bool = True):
        self.text = TokenText(tokenizer, skip_special_tokens)
        self.on_text = on_text

    def put(self, value: torch.Tensor) -> None:
        for token in value.reshape(-1).tolist():
            if piece := self.text.add(token):
                self.on_text(piece)

    def end(self) -> None:
        if piece := self.text.rest():
            self.on_text(piece)


class _RecordingStreamer(BaseStreamer):
    """Collects new token ids and their times; forwards them to text streaming and cache snapshots."""

    def __init__(
        self,
        start: float,
        text_streamer: TextCallbackStreamer | None,
        on_new_token: Callable[[int], None] | None,
    ):
        self.start = start
        self.text_streamer = text_streamer
        self.on_new_token = on_new_token
        self.token_ids: list[int] = []
        self.token_times_s: list[float] = []
        self._prompt_seen = False
        self._ended = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.token_times_s.append(time.perf_counter() - self.start)
        self.token_ids.extend(value.reshape(-1).tolist())
        if self.on_new_token is not None:
            self.on_new_token(len(self.token_ids))
        if self.text_streamer is not None:
            self.text_streamer.put(value)

    def end(self) -> None:
        if not self._ended and self.text_streamer is not None:
            self._ended = True
            self.text_streamer.end()


class _PrefillTimer:
    """Times the model's first forward pass (the prefill) in every mode, `generate` included."""

    def __init__(self, model: torch.nn.Module):
        self.prefill_s: float | None = None
        self._started: float | None = None
        self._handles = [
            model.register_forward_pre_hook(self._before),
            model.register_forward_hook(self._after),
        ]

    def _before(self, module: torch.nn.Module, args: Any) -> None:
        if self._started is None:
            self._started = time.perf_counter()

    def _after(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if self.prefill_s is None and self._started is not None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.prefill_s = time.perf_counter() - self._started

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


class Cancellation(StoppingCriteria):
    """Stops every mode, `generate` included, once `cancelled()` says so."""

    def __init__(self, cancelled: Callable[[], bool]):
        self.cancelled = cancelled
        self.fired = False

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        self.fired = self.fired or self.cancelled()
        return torch.full((input_ids.shape[0],), self.fired, dtype=torch.bool, device=input_ids.device)


def build_stopping_criteria(
    loaded: LoadedModel, prompt_length: int, options: DecodingOptions
) -> StoppingCriteriaList:
    criteria = StoppingCriteriaList([MaxLengthCriteria(max_length=prompt_length + options.max_new_tokens)])
    ending = end_token_ids(stopping_eos(loaded, options), options)
    if ending:
        criteria.append(EosTokenCriteria(eos_token_id=ending))
    if options.stop:
        criteria.append(loaded.stop_criterion(options.stop))
    return criteria


def stopping_eos(loaded: LoadedModel, options: DecodingOptions) -> int | None:
    """The end-of-text token that stops generation, if any."""
    return None if options.ignore_eos else loaded.eos_token_id


def encode_prompt(loaded: LoadedModel, prompt: str | list[int], max_new_tokens: int) -> list[int]:
    """Token ids of `prompt` (text, or ids as they are), checked to fit the model's context."""
    if isinstance(prompt, str):
        check_prompt(prompt)
        prompt_ids = loaded.tokenizer.encode(prompt, add_special_tokens=False)
    else:
        prompt_ids = list(prompt)
        if not prompt_ids:
            raise GencliError("the prompt is empty; pass at least one token")
    if len(prompt_ids) + max_new_tokens > loaded.context_length:
        raise ContextOverflowError(len(prompt_ids), max_new_tokens, loaded.context_length)
    return prompt_ids


class TokenIdOutOfVocabularyError(GencliError):
    """A setting names a token id the model does not have; `key` is the setting (logit_bias)."""

    def __init__(self, key: str, token: int, vocab_size: int):
        self.key, self.token, self.vocab_size = key, token, vocab_size
        super().__init__(
            f"{key} names token id {token}, past the model's vocabulary of {vocab_size} tokens; "
            f"use ids below {vocab_size}"
        )


def prepare_options(loaded: LoadedModel, options: DecodingOptions) -> CompiledConstraint | None:
    """What a run's options need checked against the model before it starts: a logit bias on a
    token the model lacks is refused (Hugging Face's bias processor would fail at the first step;
    suppressed and stop ids past the vocabulary are never chosen), and the answer's shape, if any,
    is compiled (ConstraintError for one that cannot be)."""
    vocab_size = loaded.model.config.vocab_size
    for token in options.logit_bias:
        if token >= vocab_size:
            raise TokenIdOutOfVocabularyError("logit_bias", token, vocab_size)
    if constraint_kind(options) is None:
        return None
    from gencli.constraints import compile_constraint

    return compile_constraint(options, loaded.tokenizer, vocab_size, loaded.eos_token_id)


class ContextOverflowError(GencliError):
    """Prompt plus new tokens past the model's context; `name` words the max_new_tokens key as
    the user gave it (the CLI says --max-new-tokens)."""

    def __init__(self, prompt_tokens: int, max_new_tokens: int, context: int, name: str = "max_new_tokens"):
        self.prompt_tokens, self.max_new_tokens, self.context = prompt_tokens, max_new_tokens, context
        room = context - prompt_tokens
        fix = f"use {name} {room} or less" if room >= 1 else "shorten the prompt"
        super().__init__(
            f"{prompt_tokens} prompt tokens + {max_new_tokens} new tokens = {prompt_tokens + max_new_tokens} "
            f"exceeds the model's context of {context} tokens; {fix}"
        )

    def worded(self, name: str) -> ContextOverflowError:
        return ContextOverflowError(self.prompt_tokens, self.max_new_tokens, self.context, name)


def finish_reason(
    sequence: torch.Tensor,
    new_ids: list[int],
    eos_token_id: int | None,
    stopping: StoppingCriteriaList,
    stop_token_ids: tuple[int, ...] = (),
) -> FinishReason:
    """Why generation of `new_ids` ended; `sequence` is [1, prompt + new] for the stop strings."""
    if new_ids and new_ids[-1] == eos_token_id:
        return "eos"
    if new_ids and new_ids[-1] in stop_token_ids:
        return "stop"
    stop_strings = [c for c in stopping if isinstance(c, StopStringCriteria)]
    if new_ids and any(bool(c(sequence, None).any()) for c in stop_strings):
        return "stop"
    return "length"


def token_entry(tokenizer: Any, token: int, logprob: float | None) -> dict[str, Any]:
    """A token in a logprob record: its id, its text, the bytes it stands for (the text of a token
    that ends inside a character is not its bytes) and its log-probability."""
    return {
        "token": token,
        "text": tokenizer.decode([token]),
        "bytes": list(token_bytes(tokenizer, token)),
        "logprob": logprob,
    }


def logprob_record(
    tokenizer: Any, scores: torch.Tensor, token: int, count: int, unshaped: torch.Tensor | None = None
) -> dict[str, Any]:
    """`token`'s log-probability under `scores` ([vocab], what it was chosen from) and the `count`
    most likely tokens with theirs, each with its text and bytes. With `unshaped` (the model's
    logits, [vocab], where a structured-output shape ruled tokens out): how many tokens the
    shaped scores allowed, and the model's own `count` most likely tokens, each marked allowed
    or not."""
    chosen, top = token_logprobs(scores, token, count)
    record = {
        **token_entry(tokenizer, token, chosen),
        "top": [token_entry(tokenizer, other, value) for other, value in top],
    }
    if unshaped is not None:
        allowed = torch.isfinite(scores)
        _, model_top = token_logprobs(unshaped, token, count)
        record["allowed"] = int(allowed.sum())
        record["unshaped"] = [
            {**token_entry(tokenizer, other, value), "allowed": bool(allowed[other])}
            for other, value in model_top
        ]
    return record


def pass_record(tokenizer: Any, verified: VerifiedPass) -> dict[str, Any]:
    """A verification pass for a reader of the stream: the pass's counts, each proposed token
    with its text; the pass's last `tokens` tokens are its own (`accepted` of them proposed)."""
    proposed = [{"token": token, "text": tokenizer.decode([token])} for token in verified.proposed]
    return {**asdict(verified), "proposed": proposed}


def run_seed(options: DecodingOptions) -> int | None:
    """The seed a run uses: the one given, or for sampling without one a fresh one that the record
    reports, so any run can be replayed; None for greedy decoding."""
    if options.seed is None and options.samples:
        return random.SystemRandom().randrange(2**32)
    return options.seed


def run_record(
    loaded: LoadedModel,
    mode: str,
    prompt: str | list[int],
    prompt_ids: list[int],
    new_ids: list[int],
    reason: FinishReason,
    timings: Timings,
    seed: int | None,
    options: DecodingOptions | None = None,
    **fields: Any,
) -> GenerationResult:
    """The record of one run, as every path that generates (or scores a prompt) returns it;
    `options`: the run's (how its text is written, what shaped it); `fields`: the optional parts
    (logprobs, cache snapshots, prompt-cache reuse)."""
    skip_special_tokens = options is None or options.skip_special_tokens
    kind = None if options is None else constraint_kind(options)
    if kind is not None:  # complete only where the shape let the answer end
        fields["constraint"] = {"kind": kind, "complete": reason == "eos"}
    return GenerationResult(
        mode=mode,
        model=loaded.name,
        prompt=prompt if isinstance(prompt, str) else loaded.tokenizer.decode(prompt_ids),
        prompt_token_ids=prompt_ids,
        token_ids=list(new_ids),
        text=loaded.tokenizer.decode(new_ids, skip_special_tokens=skip_special_tokens),
        finish_reason=reason,
        timings=timings,
        seed=seed,
        device=str(loaded.device),
        dtype=str(loaded.dtype).removeprefix("torch."),
        weights=loaded.weights,
        kernels=loaded.kernels_ran(mode),
        **fields,
    )


def generate_text(
    loaded: LoadedModel,
    prompt: str | list[int],
    mode: str,
    options: DecodingOptions,
    on_text: Callable[[str], None] | None = None,
    inspect_cache: CacheInspection | None = None,
    prompt_cache: PromptCacheFile | None = None,
    on_notice: Callable[[str], None] | None = None,
    prefix: CachedPrefix | None = None,
    cancelled: Callable[[], bool] | None = None,
    top_logprobs: int | None = None,
    on_logprob: Callable[[dict[str, Any]], None] | None = None,
    on_snapshot: Callable[[CacheSnapshot], None] | None = None,
    on_pass: Callable[[dict[str, Any]], None] | None = None,
) -> GenerationResult:
    """Continue `prompt` (text or token ids) with the given mode; stream text to `on_text`.

    `prefix`: a cache kept across runs (a chat session's); the prompt reuses what it shares with
    it, and it holds this run's tokens afterwards. Without one, a fresh cache is made.
    With `prompt_cache`, reuse and update a prompt cache file; `on_notice` hears why a file
    was refused, or could not be written. `cancelled()`, asked after every token, ends the run
    (finish reason "interrupted") when it turns true: a server's client went away, say.
    `top_logprobs`: record each new token's log-probability and the N most likely alternatives;
    `on_logprob` hears each record as it is made (in generate mode, after the run: Hugging Face
    hands its scores over at the end); `on_snapshot` hears each cache snapshot as it is taken;
    `on_pass` each speculative verification pass (`pass_record`) once its tokens are out."""
    engine = loaded.engine(mode)
    adapt_threads()  # between runs too: generate mode's loop is Hugging Face's
    constraint = prepare_options(loaded, options)
    prompt_ids = encode_prompt(loaded, prompt, options.max_new_tokens)
    input_ids = torch.tensor([prompt_ids], device=loaded.device)
    stopping = build_stopping_criteria(loaded, len(prompt_ids), options)
    cancel = Cancellation(cancelled) if cancelled else None
    if cancel is not None:
        stopping.append(cancel)
    if prefix is None and engine.uses_cache:
        prefix = CachedPrefix(engine.new_cache(len(prompt_ids) + options.max_new_tokens))
    save_prompt = False
    if prompt_cache is not None:
        if prefix is None:
            raise GencliError(f"--prompt-cache needs a mode with a KV cache; {mode} mode has none")
        save_prompt = _restore_prompt_cache(loaded, prompt_cache, prompt_ids, prefix, on_notice)
    reused = prefix.reuse(prompt_ids) if prefix is not None else 0
    cache = prefix.cache if prefix is not None else None

    # In greedy mode there is no cache: an inspection then reports an empty list.
    snapshots: list[CacheSnapshot] | None = [] if inspect_cache else None

    def take_snapshot(count: int) -> None:
        snapshots.append(snapshot_cache(cache, count))
        if on_snapshot is not None:
            on_snapshot(snapshots[-1])

    speculator = speculator_for(loaded, mode, options, input_ids, stopping_eos(loaded, options))
    # With speculation a step is a verification pass: it is shown as the pass's two snapshots.
    every_step = inspect_cache == "steps" and speculator is None

    def on_new_token(count: int) -> None:
        if snapshots is not None and cache is not None and (count == 1 or every_step):
            take_snapshot(count)

    def on_verified(verified: VerifiedPass) -> None:
        if on_pass is not None:
            on_pass(pass_record(loaded.tokenizer, verified))
        if inspect_cache != "steps" or cache is None:
            return
        count, proposed = len(streamer.token_ids), len(verified.proposed)
        if not proposed:
            events = [(count, None, "no proposal: a plain step")]
        else:
            kept = "all kept:" if verified.accepted == proposed else "rolled back to"
            events = [
                (
                    count - verified.accepted - 1,
                    verified.written,
                    f"verify {proposed} proposed: +{proposed + 1}",
                ),
                (count, None, f"{verified.accepted} of {proposed} accepted: {kept} {verified.kept}"),
            ]
        for new_tokens, seq_len, event in events:
            snapshots.append(snapshot_cache(cache, new_tokens, seq_len, event))
            if on_snapshot is not None:
                on_snapshot(snapshots[-1])

    if speculator is not None:
        speculator.on_pass = on_verified

    seed = run_seed(options)
    if seed is not None:
        torch.manual_seed(seed)

    logprobs: list[dict[str, Any]] | None = None if top_logprobs is None else []

    def on_scores(scores: torch.Tensor, tokens: torch.Tensor, logits: torch.Tensor) -> None:
        unshaped = None if constraint is None else logits[0].float()
        record = logprob_record(loaded.tokenizer, scores[0], int(tokens[0]), top_logprobs, unshaped)
        logprobs.append(record)
        if on_logprob is not None:
            on_logprob(record)

    text_streamer = (
        TextCallbackStreamer(loaded.tokenizer, on_text, options.skip_special_tokens) if on_text else None
    )
    timer = _PrefillTimer(engine.forward_module)
    streamer = _RecordingStreamer(time.perf_counter(), text_streamer, on_new_token)
    request = DecodeRequest(
        tokenizer=loaded.tokenizer,
        input_ids=input_ids,
        options=options,
        eos_token_id=stopping_eos(loaded, options),
        stopping=stopping,
        streamer=streamer,
        cache=cache,
        on_scores=on_scores if logprobs is not None else None,
        constraint=constraint,
        speculator=speculator,
    )

    def result(reason: FinishReason | None) -> GenerationResult:
        new_ids = streamer.token_ids
        if prefix is not None:
            prefix.record(prompt_ids + new_ids)
        if save_prompt and new_ids:  # the cache holds the whole prompt once a token is chosen
            _save_prompt_cache(loaded, prompt_cache, prompt_ids, cache, on_notice)
        # After the last token the cache no longer changes: the last step's snapshot is the final one.
        if (
            snapshots is not None
            and cache is not None
            and new_ids
            and snapshots[-1].new_tokens != len(new_ids)
        ):
            take_snapshot(len(new_ids))
        if reason is None and cancel is not None and cancel.fired:
            reason = "interrupted"
        if reason is None:
            sequence = torch.tensor([prompt_ids + new_ids])
            reason = finish_reason(
                sequence, new_ids, stopping_eos(loaded, options), stopping, options.stop_token_ids
            )
        timings = Timings.measured(timer.prefill_s, streamer.token_times_s, loaded.load_s)
        return run_record(
            loaded,
            mode,
            prompt,
            prompt_ids,
            new_ids,
            reason,
            timings,
            seed,
            options,
            cache_snapshots=snapshots,
            prompt_cache_tokens=reused,
            logprobs=None if logprobs is None else logprobs[: len(new_ids)],
            speculation=None if speculator is None else speculator.record(),
        )

    try:
        engine.decode(request)
    except KeyboardInterrupt:
        streamer.end()
        raise GenerationInterrupted(result("interrupted")) from None
    finally:
        timer.remove()
    return result(None)


def generate_batch(
    loaded: LoadedModel,
    prompts: list[str] | list[list[int]],
    mode: str,
    options: DecodingOptions,
    top_logprobs: int | None = None,
) -> list[GenerationResult]:
    """Continue several prompts at once with the mode's engine, left-padded into one batch.

    Greedy results equal `generate_text` on each prompt alone, in every mode; sampling draws
    from one random stream for the whole batch, so it differs from single runs with the seed."""
    engine = loaded.engine(mode)
    constraint = prepare_options(loaded, options)
    rows = [encode_prompt(loaded, prompt, options.max_new_tokens) for prompt in prompts]
    input_ids, attention_mask = left_pad(rows, pad_token_id(loaded.tokenizer), loaded.device)
    width = input_ids.shape[1]
    stopping = build_stopping_criteria(loaded, width, options)
    seed = run_seed(options)
    if seed is not None:
        torch.manual_seed(seed)
    logprobs: list[list[dict[str, Any]]] = [[] for _ in rows]

    def on_scores(scores: torch.Tensor, tokens: torch.Tensor, logits: torch.Tensor) -> None:
        for row, records in enumerate(logprobs):
            unshaped = None if constraint is None else logits[row].float()
            record = logprob_record(loaded.tokenizer, scores[row], int(tokens[row]), top_logprobs, unshaped)
            records.append(record)

    cache = engine.new_cache(width + options.max_new_tokens, batch=len(rows)) if engine.uses_cache else None
    request = DecodeRequest(
        tokenizer=loaded.tokenizer,
        input_ids=input_ids,
        options=options,
        eos_token_id=stopping_eos(loaded, options),
        stopping=stopping,
        streamer=None,
        cache=cache,
        on_scores=on_scores if top_logprobs is not None else None,
        attention_mask=attention_mask if bool((attention_mask == 0).any()) else None,
        constraint=constraint,
    )
    request.speculator = speculator_for(
        loaded, mode, options, input_ids, request.eos_token_id, request.padding_lengths
    )
    sequences = engine.decode(request).cpu()

    results = []
    for row, (prompt, prompt_ids) in enumerate(zip(prompts, rows, strict=True)):
        count = _finished_length(sequences[row : row + 1], width, stopping, request.pad_token_id)
        new_ids = sequences[row, width : width + count].tolist()
        sequence = torch.tensor([prompt_ids + new_ids])
        reason = finish_reason(sequence, new_ids, request.eos_token_id, stopping, options.stop_token_ids)
        results.append(
            run_record(
                loaded,
                mode,
                prompt,
                prompt_ids,
                new_ids,
                reason,
                Timings.measured(None, [], loaded.load_s),
                seed,
                options,
                logprobs=None if top_logprobs is None else logprobs[row][:count],
                speculation=None if request.speculator is None else request.speculator.record(),
            )
        )
    return results


def _finished_length(sequence: torch.Tensor, width: int, stopping: StoppingCriteriaList, pad: int) -> int:
    """How many new tokens a row of a finished batch has before its padding: the first length at
    which a stopping criterion fires. A finished row gets only padding, so the row was still
    going up to its last other token."""
    new = sequence[0, width:].tolist()
    last_real = max((index for index, token in enumerate(new) if token != pad), default=-1)
    for count in range(last_real + 1, len(new) + 1):
        if count and bool(stopping(sequence[:, : width + count], None).any()):
            return count
    return len(new)


def _restore_prompt_cache(
    loaded: LoadedModel,
    request: PromptCacheFile,
    prompt_ids: list[int],
    prefix: CachedPrefix,
    on_notice: Callable[[str], None] | None,
) -> bool:
    """Fill `prefix` with the file's positions this prompt can reuse; return whether to write
    the file after this run."""
    if not request.path.exists():
        return not request.read_only
    try:
        stored = prompt_cache_files.load(request.path, loaded)
    except prompt_cache_files.PromptCacheRefused as refusal:
        if on_notice:
            action = "left as it is (--prompt-cache-ro)" if request.read_only else "it will be rewritten"
            on_notice(f"prompt cache {request.path} {refusal}: not used, {action}")
        return not request.read_only
    length = reusable_length(stored.token_ids, prompt_ids)
    prompt_cache_files.restore(stored, length, prefix.cache)
    prefix.token_ids = stored.token_ids[:length]
    return not request.read_only and stored.token_ids != prompt_ids


def _save_prompt_cache(
    loaded: LoadedModel,
    request: PromptCacheFile,
    prompt_ids: list[int],
    cache: Any,
    on_notice: Callable[[str], None] | None,
) -> None:
    """A cache that cannot be written costs a notice, never the output already generated."""
    try:
        prompt_cache_files.save(request.path, loaded, prompt_ids, cache)
    except OSError as problem:
        if on_notice:
            on_notice(f"could not write the prompt cache {request.path}: {problem.strerror or problem}")
