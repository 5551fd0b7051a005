"""Speculative decoding: propose K tokens cheaply, verify them in one forward pass, keep the ones
the model would have chosen itself, and roll the KV cache back over the rest.

A decode step reads every weight to produce one token. A verification pass reads them once for
K + 1 positions: the newest token (which the model has not seen yet) and the K proposed after it.
Row i of its logits is what the model says after the newest token and proposals 1..i, so

    choose from row 0 -> if it is proposal 1, choose from row 1 -> ... -> row K (a bonus token)

gives, up to the first refused proposal, exactly the tokens single steps would give, each chosen
by the same processors from the same sequence before it. The cache then holds K + 1 new
positions, of which it keeps those of the tokens accepted: `StepEngine.roll_back` crops it.

Sampling uses the speculative sampling rule (Leviathan et al. 2023, Chen et al. 2023): a token d
proposed with probability q(d) is accepted with probability min(1, p(d) / q(d)) under the model's
processed distribution p, and a refused one is replaced by a draw from the normalised (p - q)+;
the output is distributed exactly as the model's. A proposal chosen outright (prompt lookup, or a
greedy draft) has q(d) = 1.

In a batch every row verifies together and keeps as many positions as the row that accepted the
fewest: each row's tokens are still the ones it chooses alone, some of them chosen from a later
pass instead of accepted from this one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from array import array
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from transformers import LogitsProcessorList

from gencli.errors import GencliError
from gencli.gemv import packed_few_row_products
from gencli.sampling import build_logits_processors
from gencli.settings import DecodingOptions

if TYPE_CHECKING:
    from gencli.engines.base import DecodeRequest, StepEngine
    from gencli.loading import LoadedModel

# Prompt lookup matches the text's last 3 tokens first, then 2, then 1 (HF's default stops at 2;
# a longer match proposes text that is more likely to be copied on).
LONGEST_NGRAM = 3


class MissingDraftModel(GencliError):
    """`speculate = "draft"` without a `draft_model`."""

    def __init__(self) -> None:
        super().__init__(
            "speculate draft needs a draft model: give --draft-model MODEL (draft_model), a smaller "
            "model with the same tokenizer"
        )


@dataclass(frozen=True)
class Proposal:
    """`tokens` ([batch, k]) proposed after a sequence; `probs` ([batch, k, vocab]): the
    distribution each was drawn from, or None where they were chosen outright (q = 1)."""

    tokens: torch.Tensor
    probs: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return self.tokens.shape[1]


class Proposer(ABC):
    """Where proposed tokens come from."""

    @abstractmethod
    def propose(
        self, sequence: torch.Tensor, attention_mask: torch.Tensor | None, count: int, active: torch.Tensor
    ) -> Proposal:
        """Up to `count` tokens to follow `sequence` ([batch, length]); rows where `active`
        ([batch] bool) is false have finished, and what is proposed for them does not matter."""

    def keep(self, length: int) -> None:
        """The text now agrees with the last proposal's for its first `length` tokens only."""
        return  # prompt lookup keeps nothing between proposals


class PromptLookup(Proposer):
    """Propose what followed the latest earlier occurrence of the text's last n tokens (n from
    `LONGEST_NGRAM` down to 1), in the prompt or the output: no second model. Text that is being
    copied or edited (a rewrite, code, a quote) is proposed whole; free text rarely matches.

    `no_repeat_ngram_size`: the run's n-gram rule, which refuses exactly what this proposes (a
    copy repeats n-grams): a proposal ends before its first token the rule bans, so a run under
    the rule pays for no pass that cannot succeed."""

    def __init__(self, no_repeat_ngram_size: int = 0):
        self.no_repeat_ngram_size = no_repeat_ngram_size

    def propose(
        self, sequence: torch.Tensor, attention_mask: torch.Tensor | None, count: int, active: torch.Tensor
    ) -> Proposal:
        rows = [
            self._row(ids, count) if live else None
            for ids, live in zip(sequence.tolist(), active.tolist(), strict=True)
        ]
        found = [row for row in rows if row is not None]
        length = min((len(row) for row in found), default=0)
        tokens = [(row or found[0])[:length] if found else [] for row in rows]
        return Proposal(
            torch.tensor(tokens, dtype=sequence.dtype, device=sequence.device).view(len(rows), -1)
        )

    def _row(self, ids: list[int], count: int) -> list[int]:
        proposed = continuation(ids, count)
        if self.no_repeat_ngram_size and proposed:
            proposed = proposed[: unbanned_length(ids, proposed, self.no_repeat_ngram_size)]
        return proposed


def continuation(ids: list[int], count: int) -> list[int]:
    """Up to `count` tokens that followed the latest earlier occurrence of `ids`' last n tokens,
    for the longest n (at most `LONGEST_NGRAM`) that occurred before; [] when none did."""
    text = _packed(ids)
    for n in range(min(LONGEST_NGRAM, len(ids) - 1), 0, -1):
        # Latest first: the nearest occurrence is the likeliest to go on the same way.
        start = _rfind(text, _packed(ids[-n:]), len(ids) - 1)
        if start >= 0:
            return ids[start + n : start + n + count]
    return []


def unbanned_length(ids: list[int], proposed: list[int], size: int) -> int:
    """How many of `proposed` come before the first one that would repeat an n-gram of `size`
    tokens (Hugging Face's no_repeat_ngram rule) after `ids` and the proposals before it."""
    text = list(ids)
    for index, token in enumerate(proposed):
        text.append(token)
        if len(text) > size and _rfind(_packed(text), _packed(text[-size:]), len(text) - 1) >= 0:
            return index
    return len(proposed)


def _packed(ids: list[int]) -> bytes:
    return array("q", ids).tobytes()


def _rfind(text: bytes, pattern: bytes, end: int) -> int:
    """The token index of `pattern`'s latest occurrence in `text` (both `_packed`) that ends
    before token `end`; -1 if none. A C-speed byte search: a step's search costs microseconds."""
    width = array("q").itemsize
    limit = end * width
    while (found := text.rfind(pattern, 0, limit)) >= 0:
        if found % width == 0:
            return found // width
        limit = found + len(pattern) - 1  # a match across token boundaries: look before it
    return -1


class DraftProposer(Proposer):
    """A smaller model proposes, one token per step over its own cache, chosen as the model
    chooses (greedy, or sampled from its own processed distribution, which is q); its cache is
    cropped back to the text both agree on before the next proposal."""

    def __init__(self, engine: StepEngine, cache: Any, processors: LogitsProcessorList, samples: bool):
        self.engine, self.cache = engine, cache
        self.processors, self.samples = processors, samples

    def propose(
        self, sequence: torch.Tensor, attention_mask: torch.Tensor | None, count: int, active: torch.Tensor
    ) -> Proposal:
        tokens, probs = [], []
        for _ in range(count):
            logits = self.engine.run(self.cache, sequence, attention_mask)[:, -1]  # [batch, vocab]
            scores = self.processors(sequence, logits.to(dtype=torch.float32))
            if self.samples:
                probs.append(torch.softmax(scores, dim=-1))
                token = torch.multinomial(probs[-1], num_samples=1).squeeze(1)
            else:
                token = torch.argmax(scores, dim=-1)
            tokens.append(token)
            sequence = torch.cat([sequence, token[:, None]], dim=-1)
            if attention_mask is not None:
                attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(token), 1)], dim=-1)
        if not tokens:
            return Proposal(sequence.new_zeros(sequence.shape[0], 0))
        return Proposal(torch.stack(tokens, dim=1), torch.stack(probs, dim=1) if probs else None)

    def keep(self, length: int) -> None:
        self.engine.roll_back(self.cache, length)


def judge(
    scores: torch.Tensor,
    proposal: Proposal,
    index: int,
    sample: bool,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's token at a proposed position ([batch]) and whether it is the proposed one.

    `scores` ([batch, vocab]) are the processed scores at that position. Greedy: the argmax,
    accepted when it is the proposal. Sampling: the speculative sampling rule (module docstring),
    drawing from `generator` (a served row's own stream) or the global one."""
    proposed = proposal.tokens[:, index]  # [batch]
    if not sample:
        token = torch.argmax(scores, dim=-1)
        return token, token == proposed
    probs = torch.softmax(scores, dim=-1)  # p: [batch, vocab]
    p_proposed = probs.gather(1, proposed[:, None])[:, 0]
    if proposal.probs is None:  # chosen outright: q is all on the proposed token
        q = torch.zeros_like(probs).scatter_(1, proposed[:, None], 1.0)
    else:
        q = proposal.probs[:, index].to(probs.dtype)
    q_proposed = q.gather(1, proposed[:, None])[:, 0]
    accepted = (
        torch.rand(p_proposed.shape, device=probs.device, generator=generator) * q_proposed < p_proposed
    )
    residual = (probs - q).clamp(min=0)  # (p - q)+: [batch, vocab]
    mass = residual.sum(dim=-1, keepdim=True)
    # p = q leaves no residual, and then a proposal is never refused.
    residual = torch.where(mass > 0, residual / mass.clamp(min=torch.finfo(probs.dtype).tiny), probs)
    resampled = torch.multinomial(residual, num_samples=1, generator=generator).squeeze(1)
    return torch.where(accepted, proposed, resampled), accepted


@dataclass
class SpeculationStats:
    """What speculation did in a run: verification passes after the prefill, tokens proposed and
    accepted (per row in a batch), and every new token after the prefill's."""

    method: str
    speculative_tokens: int
    passes: int = 0
    proposed: int = 0
    accepted: int = 0
    tokens: int = 0

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted / self.proposed if self.proposed else None

    @property
    def tokens_per_pass(self) -> float | None:
        return self.tokens / self.passes if self.passes else None

    @property
    def passes_saved(self) -> int:
        """Decode steps a run without speculation would have taken, less the passes this one did."""
        return self.tokens - self.passes

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "speculative_tokens": self.speculative_tokens,
            "passes": self.passes,
            "proposed": self.proposed,
            "accepted": self.accepted,
            "acceptance_rate": self.acceptance_rate,
            "tokens_per_pass": self.tokens_per_pass,
            "passes_saved": self.passes_saved,
        }


@dataclass(frozen=True)
class VerifiedPass:
    """One verification pass, as `Speculator.on_pass` hears it (the first row's): the tokens
    proposed, how many the model accepted, how many tokens the pass added (the accepted ones and
    the model's own after them, fewer where the run ended), the cache's length after the pass
    wrote its positions and after the roll-back."""

    proposed: list[int]
    accepted: int
    tokens: int
    written: int
    kept: int


@dataclass
class Speculator:
    """The proposing side of the one decoding loop (`engines.base.decode_n_tokens`): propose and
    verify, then count and roll back. Every hand-written mode, `gencli batch`, chat and the server's
    requests that run alone use it (the server's continuous batch verifies with the same parts:
    `server.scheduler.Batch`); `tokens` proposed per pass at most."""

    proposer: Proposer
    tokens: int
    stats: SpeculationStats
    # Hears each pass when it is done (cache snapshots, the explore page's marks).
    on_pass: Callable[[VerifiedPass], None] | None = None
    passes: list[VerifiedPass] = field(default_factory=list)
    # Where the current pass's tokens begin in the sequence, and the rows still going when it began.
    _start: int = field(default=0, repr=False)
    _active: torch.Tensor | None = field(default=None, repr=False)

    def record(self) -> dict[str, Any]:
        """What a run's record says of its speculation: the counts, and each pass where known."""
        record = self.stats.to_dict()
        if self.passes:
            record["steps"] = [asdict(verified) for verified in self.passes]
        return record

    def verify(
        self,
        engine: StepEngine,
        request: DecodeRequest,
        sequence: torch.Tensor,
        attention_mask: torch.Tensor | None,
        unfinished: torch.Tensor,
    ) -> tuple[Proposal, torch.Tensor]:
        """Propose after `sequence` and run the newest token and the proposal in one pass;
        returns the proposal and the logits after each of them, [batch, 1 + proposed, vocab]."""
        room = request.options.max_new_tokens - (sequence.shape[1] - request.input_ids.shape[1])
        # The pass itself gives one token: proposing more than `room - 1` writes past the cache.
        proposal = self.proposer.propose(sequence, attention_mask, min(self.tokens, room - 1), unfinished)
        self.stats.proposed += proposal.length * int(unfinished.sum())
        self.stats.passes += 1
        self._start, self._active = sequence.shape[1], unfinished.clone()
        candidate = torch.cat([sequence, proposal.tokens], dim=-1)  # [batch, length + proposed]
        if attention_mask is not None:
            attention_mask = torch.cat(
                [attention_mask, attention_mask.new_ones(attention_mask.shape[0], proposal.length)], -1
            )
        # A few rows' products on weights packed for them (gencli.gemv): 1.5-2x a one-row
        # product's time for 5 rows, where the unpacked ones take 3x.
        with packed_few_row_products():
            return proposal, engine.run(request.cache, candidate, attention_mask, proposal.length + 1)

    def roll_back(self, engine: StepEngine, cache: Any, sequence: torch.Tensor, proposal: Proposal) -> None:
        """Count what the pass gave, crop the cache to every token but the newest (the next pass
        runs it), tell the proposer what was kept, and report the pass."""
        given = sequence[:, self._start :]  # [batch, tokens the pass gave]
        judged = given[:, : proposal.length]
        # A token is the proposed one exactly where it was accepted (a refused one is drawn from
        # (p - q)+, which is 0 there): each row's leading run of agreement, rows that were going on.
        agreed = (judged == proposal.tokens[:, : judged.shape[1]]).long().cumprod(dim=1).sum(dim=1)
        agreed *= self._active
        self.stats.tokens += given.shape[1]
        self.stats.accepted += int(agreed.sum())
        accepted = int(agreed[0])
        written = None if cache is None else int(cache.get_seq_length())
        kept = sequence.shape[1] - 1
        engine.roll_back(cache, kept)
        self.proposer.keep(kept)
        verified = VerifiedPass(
            proposed=proposal.tokens[0].tolist(),
            accepted=accepted,
            tokens=given.shape[1],
            written=kept - accepted + proposal.length if written is None else written,
            kept=kept,
        )
        self.passes.append(verified)
        if self.on_pass is not None:
            self.on_pass(verified)


def speculator_for(
    loaded: LoadedModel,
    mode: str,
    options: DecodingOptions,
    input_ids: torch.Tensor,
    eos_token_id: int | None,
    padding_lengths: torch.Tensor | None = None,
) -> Speculator | None:
    """The speculator `options` ask for in `mode`, for the prompts `input_ids` ([batch, width]);
    None without speculation. A draft model is loaded on first use (`LoadedModel.draft`)."""
    if options.speculate == "none":
        return None
    stats = SpeculationStats(options.speculate, options.speculative_tokens)
    if options.speculate == "ngram":
        return Speculator(PromptLookup(options.no_repeat_ngram_size), options.speculative_tokens, stats)
    if options.draft_model is None:
        raise MissingDraftModel()
    draft = loaded.draft(options.draft_model)
    if mode == "generate":  # Hugging Face's assisted generation runs the draft itself
        return Speculator(
            DraftProposer(draft.engine("kv-cache"), None, LogitsProcessorList(), False),
            options.speculative_tokens,
            stats,
        )
    engine = draft.engine(mode)
    width, batch = input_ids.shape[1], input_ids.shape[0]
    cache = engine.new_cache(width + options.max_new_tokens, batch=batch) if engine.uses_cache else None
    processors = build_logits_processors(
        options, width, eos_token_id, padding_lengths=padding_lengths, device=input_ids.device
    )
    return Speculator(
        DraftProposer(engine, cache, processors, options.samples), options.speculative_tokens, stats
    )
