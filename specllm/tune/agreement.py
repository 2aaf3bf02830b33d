"""How well a draft predicts its target, measured teacher-forced on the target's greedy outputs.

For greedy decoding this is exact speculative decoding without running it: the draft sees the
target's own tokens (what verification would have accepted), so one llama.cpp pass over
prompt + output gives the draft's greedy choice at every position (ModelDrafter.greedy_choices,
the pass `specllm drafts` makes), and drafting/replay.py plays the k-token rounds over them with
the loop's own stopping rules (the rounds `generate --mode draft -k K --temp 0` would play).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence


from .. import llama
from ..drafting.base import ModelDrafter
from ..drafting.replay import RecordedOutput, ReplayedRounds, agreement_proposals, replay_fixed_k
from ..stats import SpecStats
from .data import Sample

# Bins of the target's own probability for the token it chose. A draft that misses where the
# target was sure has something left to learn. Where the target's token had under
# UNSURE_BELOW, the target all but tossed a coin between its top choices, which another network
# rarely learns to call: on 2,560 held-out HumanEval tokens of the Qwen 1.5B, the 0.5B tuned on
# 200 prompts still missed 48% of the tokens under 0.5 and 30% of those at 0.5-0.7 (52% and 33%
# untuned), against 7% at 0.7-0.9 and none above 0.99; 93 of its 112 misses were under 0.7.
UNSURE_BELOW = 0.7
CONFIDENCE_EDGES = (0.5, UNSURE_BELOW, 0.9, 0.99)


@dataclass
class MissesByConfidence:
    """Positions and draft misses in each bin of the target's probability for its own token."""

    positions: list[int] = field(default_factory=lambda: [0] * (len(CONFIDENCE_EDGES) + 1))
    misses: list[int] = field(default_factory=lambda: [0] * (len(CONFIDENCE_EDGES) + 1))

    def add(self, target_probability: float, matched: bool) -> None:
        b = bisect_right(CONFIDENCE_EDGES, target_probability)
        self.positions[b] += 1
        self.misses[b] += not matched

    @property
    def unsure_misses(self) -> int:
        """Misses where the target's token had under UNSURE_BELOW."""
        return sum(self.misses[: CONFIDENCE_EDGES.index(UNSURE_BELOW) + 1])

    def to_dict(self) -> dict:
        edges = (0.0, *CONFIDENCE_EDGES, 1.0)
        return {"bins": [{"from": lo, "to": hi, "positions": n, "misses": m}
                         for lo, hi, n, m in zip(edges, edges[1:], self.positions, self.misses)],
                "unsure_below": UNSURE_BELOW, "unsure_misses": self.unsure_misses, "misses": sum(self.misses)}


def target_probabilities(sample: Sample) -> Optional[list[float]]:
    """The target's probability for each token of a greedy sample's output (its top-1, the
    token it chose), when the sample holds its log-probabilities."""
    if sample.variant != "greedy" or len(sample.top_logprobs) < len(sample.output):
        return None
    return [math.exp(row[0]) for row in sample.top_logprobs[: len(sample.output)]]


@dataclass
class Agreement:
    """Greedy agreement of a draft with the target, and the rounds of k-token speculation."""

    k: int
    positions: int = 0  # output tokens seen
    matches: int = 0  # positions where the draft's greedy token is the target's
    by_confidence: MissesByConfidence = field(default_factory=MissesByConfidence)
    # False once an output came without the target's probabilities: a breakdown of some outputs would mislead.
    every_output_has_probabilities: bool = True
    replayed: ReplayedRounds = field(init=False)

    def __post_init__(self) -> None:
        self.replayed = ReplayedRounds(self.k, SpecStats(mode="draft", k=self.k))

    @property
    def stats(self) -> SpecStats:
        return self.replayed.stats

    @property
    def match_rate(self) -> float:
        return self.matches / self.positions if self.positions else 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.stats.acceptance_rate

    @property
    def tokens_per_round(self) -> float:
        return self.stats.mean_accepted_length

    def add(self, output: RecordedOutput, choices: Sequence[int], is_draft_eog=lambda token: False,
            target_probabilities: Optional[Sequence[float]] = None) -> None:
        """One output, with the draft's teacher-forced greedy choice at each position of
        output.sequence (its end-of-generation token included, when it has one), and the target's
        probability for each of its output tokens if known."""
        self.positions += len(output.tokens)
        self.matches += sum(c == t for c, t in zip(choices, output.tokens))
        if target_probabilities is None:
            self.every_output_has_probabilities = False
        else:
            for c, t, p in zip(choices, output.tokens, target_probabilities):
                self.by_confidence.add(p, c == t)
        end = output.end_token
        proposals = agreement_proposals(output.sequence, choices, is_draft_eog)
        replay_fixed_k(output, (self.k,), proposals, lambda token: token == end, into={self.k: self.replayed})

    def to_dict(self) -> dict:
        stats = self.stats
        return {
            "k": self.k, "positions": self.positions, "matches": self.matches, "match_rate": self.match_rate,
            "rounds": stats.rounds, "drafted": stats.drafted, "accepted": stats.accepted,
            "acceptance_rate": self.acceptance_rate, "tokens_per_round": self.tokens_per_round,
            "per_position_acceptance": stats.per_position_acceptance,
            "misses_by_target_confidence": (self.by_confidence.to_dict()
                                            if self.every_output_has_probabilities and self.positions else None),
        }


def recorded_output(sample: Sample, max_tokens: Optional[int] = None) -> RecordedOutput:
    """A sample as replay.py reads an output. Without the budget it ran with, one that ended on its
    end-of-generation token is taken to have had room for just that token (a last round then
    drafts at most up to it)."""
    if max_tokens is None:
        max_tokens = len(sample.output) + (sample.end_token is not None)
    return RecordedOutput(sample.prompt, sample.output, sample.end_token, max_tokens)


def measure(draft_path: Path, samples: Sequence[Sample], *, k: int, lora: Optional[Path] = None,
            threads: Optional[int] = None, n_gpu_layers: int = 0, max_tokens: Optional[int] = None) -> Agreement:
    """The agreement of a draft GGUF (with a LoRA adapter, if given) on the samples' outputs
    (generated with at most `max_tokens` tokens each, if known)."""
    agreement = Agreement(k)
    longest = max((len(s.prompt) + len(s.output) for s in samples), default=1)
    with llama.Model(draft_path, n_gpu_layers=n_gpu_layers) as model:
        adapter = llama.LoraAdapter(model, lora) if lora else None
        try:
            with llama.Context(model, n_ctx=max(longest, 64), n_threads=threads) as context:
                llama.set_lora(context, adapter)
                drafter = ModelDrafter(context, context.n_vocab)
                for sample in samples:
                    if sample.output:
                        output = recorded_output(sample, max_tokens)
                        choices = drafter.greedy_choices(output.prompt, output.sequence)
                        agreement.add(output, choices, model.vocab.is_eog, target_probabilities(sample))
        finally:
            if adapter:
                adapter.close()
    return agreement
