"""`generate` mode: Hugging Face `model.generate`, the reference the hand-written loops must match."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers import GenerationConfig
from transformers.cache_utils import DynamicCache

from gencli.engines.base import DecodeRequest, Engine
from gencli.errors import GencliError
from gencli.sampling import generate_kwargs, processors_generate_lacks
from gencli.speculative import LONGEST_NGRAM, DraftProposer, Speculator
from gencli.transformers_compat import CACHE_KEYWORD, cache_argument


class HFGenerateEngine(Engine):
    name = "generate"
    uses_cache = True

    def new_cache(self, max_length: int, batch: int = 1) -> DynamicCache:
        # Passing our own cache object lets gencli inspect it while and after `generate` runs.
        return DynamicCache(config=self.model.config)

    def decode(self, request: DecodeRequest) -> torch.Tensor:
        # generate fills every option left unset from the model's own generation_config; gencli
        # has already taken the checkpoint's options into its settings, so it runs on a clean one
        # that keeps only the special tokens (a checkpoint's num_beams, say, must not leak in).
        checkpoint_config = self.model.generation_config
        self.model.generation_config = GenerationConfig(
            bos_token_id=checkpoint_config.bos_token_id, eos_token_id=checkpoint_config.eos_token_id
        )
        try:
            if request.speculator is None:
                return self._generate(request)
            if request.input_ids.shape[0] > 1:
                raise GencliError(
                    "generate mode speculates one prompt at a time (Hugging Face's assisted "
                    "generation); use --mode kv-cache to speculate over a batch"
                )
            with assisted(self.model, request.speculator, request.input_ids.shape[1]) as speculation_kwargs:
                sequences = self._generate(request, speculation_kwargs)
            # Every pass gives the tokens it accepted and one of its own.
            stats = request.speculator.stats
            stats.tokens = max(sequences.shape[1] - request.input_ids.shape[1] - 1, 0)
            stats.accepted = stats.tokens - stats.passes
            return sequences
        finally:
            self.model.generation_config = checkpoint_config

    def _generate(self, request: DecodeRequest, speculation_kwargs: dict | None = None) -> torch.Tensor:
        wants_scores = request.on_scores is not None
        input_ids, attention_mask = request.input_ids, request.attention_mask
        # generate's own processors would count left padding as text (its repetition penalty
        # would hold EOS back in padded rows only): a padded batch gets gencli's, which skip it.
        # Otherwise generate builds its own, and takes the few it has no option for from gencli.
        padded = attention_mask is not None
        processors = (
            request.logits_processors()
            if padded
            else processors_generate_lacks(request.options, input_ids.shape[1], request.constraint)
        )
        with torch.inference_mode():
            output = self.model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids) if attention_mask is None else attention_mask,
                **cache_argument(request.cache),
                streamer=request.streamer,
                # Ours replace generate's own criteria of the same types, so every mode stops alike.
                stopping_criteria=request.stopping,
                # None (with --ignore-eos) overrides the checkpoint's own EOS, so generate goes on too.
                eos_token_id=request.end_token_ids or None,
                pad_token_id=request.pad_token_id,
                logits_processor=processors,
                # generate keeps each step's processed scores, the ones it chose from, and the
                # model's own logits, when asked.
                output_scores=wants_scores,
                output_logits=wants_scores,
                return_dict_in_generate=wants_scores,
                **generate_kwargs(request.options, build_processors=not padded),
                **(speculation_kwargs or {}),
            )
        sequences = output.sequences if wants_scores else output
        if wants_scores:
            start = input_ids.shape[1]
            for step, (scores, logits) in enumerate(zip(output.scores, output.logits, strict=True)):
                request.on_scores(scores, sequences[:, start + step], logits)
        return sequences


@contextmanager
def assisted(model: torch.nn.Module, speculator: Speculator, prompt_length: int) -> Iterator[dict]:
    """Hugging Face's assisted generation for `speculator`: prompt lookup
    (`prompt_lookup_num_tokens`) or a draft model (`assistant_model`, K tokens a pass, every
    time). Yields `generate`'s arguments; counts the verification passes and the tokens each
    verified into `speculator.stats` (a pass runs the newest token and the proposals after it)."""
    stats = speculator.stats
    proposer = speculator.proposer
    if isinstance(proposer, DraftProposer):
        draft = proposer.engine.model
        kept = draft.generation_config
        draft.generation_config = GenerationConfig(
            num_assistant_tokens=speculator.tokens,
            num_assistant_tokens_schedule="constant",
            assistant_confidence_threshold=0,
        )
        kwargs = {"assistant_model": draft}
    else:
        kept, kwargs = (
            None,
            {"prompt_lookup_num_tokens": speculator.tokens, "max_matching_ngram_size": LONGEST_NGRAM},
        )
    # Every call of the model is a pass: the first runs the prompt with the first proposal (it is
    # the prefill too), each later one the newest token and a proposal. Counted as the hand-written
    # modes count them: the prefill apart.
    calls, positions, cached = 0, 0, 0

    def count(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        nonlocal calls, positions, cached
        if not calls:
            cache = kwargs.get(CACHE_KEYWORD)
            cached = 0 if cache is None else int(cache.get_seq_length())
        calls += 1
        positions += kwargs["input_ids"].shape[1]

    handle = model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        yield kwargs
    finally:
        handle.remove()
        if kept is not None:
            proposer.engine.model.generation_config = kept
        stats.passes = max(calls - 1, 0)
        stats.proposed = positions - (prompt_length - cached) - max(calls - 1, 0)
