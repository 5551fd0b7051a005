"""`generate` mode: Hugging Face `model.generate`, the reference the hand-written loops must match."""

from __future__ import annotations

import torch
from transformers import GenerationConfig
from transformers.cache_utils import DynamicCache

from gencli.engines.base import DecodeRequest, Engine
from gencli.sampling import generate_kwargs, processors_generate_lacks
from gencli.transformers_compat import cache_argument


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
            return self._generate(request)
        finally:
            self.model.generation_config = checkpoint_config

    def _generate(self, request: DecodeRequest) -> torch.Tensor:
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
            )
        sequences = output.sequences if wants_scores else output
        if wants_scores:
            start = input_ids.shape[1]
            for step, (scores, logits) in enumerate(zip(output.scores, output.logits, strict=True)):
                request.on_scores(scores, sequences[:, start + step], logits)
        return sequences
