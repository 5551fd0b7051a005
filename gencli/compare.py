"""Run every mode on the same prompt and options, and say whether, and where, they disagree."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any

import torch

from gencli.generation import GenerationInterrupted, GenerationResult, generate_text
from gencli.loading import LoadedModel
from gencli.settings import MODES, DecodingOptions

# A margin this small between two tokens' logits is within float rounding of a tie.
NEAR_TIE = 1e-3


@dataclass(frozen=True)
class Divergence:
    index: int  # position among the new tokens
    reference_mode: str
    other_mode: str
    reference_token: int | None  # None: that mode had already stopped
    other_token: int | None
    logit_margin: float | None  # reference token's logit minus the other's, at that step

    @property
    def near_tie(self) -> bool:
        return self.logit_margin is not None and abs(self.logit_margin) < NEAR_TIE

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "near_tie": self.near_tie}


@dataclass
class Comparison:
    results: dict[str, GenerationResult]
    divergence: Divergence | None
    # Ctrl-C stopped it: the last result is partial, and modes after it did not run.
    interrupted: bool = False
    # The runs are the same modes on differently stored weights (float32 against int8, say): a
    # parting there is the weights' rounding, not a bug.
    across_weights: bool = False

    @property
    def agree(self) -> bool:
        return self.divergence is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "agree": self.agree,
            "divergence": self.divergence.to_dict() if self.divergence else None,
            "results": {mode: result.to_dict() for mode, result in self.results.items()},
            "interrupted": self.interrupted,
            "across_weights": self.across_weights,
        }


def _first_difference(left: list[int], right: list[int]) -> int | None:
    for index, (a, b) in enumerate(zip(left, right, strict=False)):
        if a != b:
            return index
    return None if len(left) == len(right) else min(len(left), len(right))


def _logit_margin(loaded: LoadedModel, prefix: list[int], token: int, other: int) -> float:
    with torch.inference_mode():
        logits = loaded.model(torch.tensor([prefix], device=loaded.device)).logits[0, -1].float()
    return float(logits[token] - logits[other])


def find_divergence(loaded: LoadedModel, results: dict[str, GenerationResult]) -> Divergence | None:
    """The earliest position where some mode's tokens differ from the first mode's."""
    reference_mode, *others = results
    reference = results[reference_mode]
    earliest: tuple[int, str] | None = None
    for mode in others:
        index = _first_difference(reference.token_ids, results[mode].token_ids)
        if index is not None and (earliest is None or index < earliest[0]):
            earliest = (index, mode)
    if earliest is None:
        return None
    index, other_mode = earliest
    ours, theirs = reference.token_ids, results[other_mode].token_ids
    ours_token = ours[index] if index < len(ours) else None
    their_token = theirs[index] if index < len(theirs) else None
    margin = None
    if ours_token is not None and their_token is not None:
        margin = _logit_margin(loaded, reference.prompt_token_ids + ours[:index], ours_token, their_token)
    return Divergence(index, reference_mode, other_mode, ours_token, their_token, margin)


def compare_modes(
    loaded: LoadedModel,
    prompt: str,
    options: DecodingOptions,
    modes: tuple[str, ...] = MODES,
    against: LoadedModel | None = None,
) -> Comparison:
    """Every mode on `prompt`; with `against` (the same model, its weights stored otherwise),
    every mode on both, labelled by their weights. The first run is the reference."""
    if options.samples and options.seed is None:
        # Every mode must draw from the same random stream: fix one seed for all of them.
        options = options.model_copy(update={"seed": random.SystemRandom().randrange(2**32)})
    runs = [(mode, loaded, mode) for mode in modes]
    if against is not None:
        runs = [
            (f"{mode} {subject.weights}", subject, mode) for subject in (loaded, against) for mode in modes
        ]
    results = {}
    for label, subject, mode in runs:
        try:
            results[label] = generate_text(subject, prompt, mode, options)
        except GenerationInterrupted as interrupted:
            # The runs that finished are still compared; the partial one is shown, not judged.
            complete = dict(results)
            results[label] = interrupted.result
            divergence = find_divergence(loaded, complete) if complete else None
            return Comparison(results, divergence, interrupted=True, across_weights=against is not None)
    return Comparison(results, find_divergence(loaded, results), across_weights=against is not None)
