"""How well a draft predicts its target, measured teacher-forced on the target's greedy outputs.

For greedy decoding this is exact speculative decoding without running it: the draft sees the
target's own tokens (what verification would have accepted), so one llama.cpp pass over
prompt + output gives the draft's greedy choice at every position (ModelDrafter.greedy_choices,
the pass `specllm drafts` makes), and drafting/replay.py plays the k-token rounds over them with
the loop's own stopping rules (the rounds `generate --mode draft -k K --temp 0` would play).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence


from .. import llama
from ..drafting.base import ModelDrafter
from ..drafting.replay import RecordedOutput, ReplayedRounds, agreement_proposals, replay_fixed_k
from ..stats import SpecStats
from .data import Sample


@dataclass
class Agreement:
    """Greedy agreement of a draft with the target, and the rounds of k-token speculation."""

    k: int
    positions: int = 0  # output tokens seen
    matches: int = 0  # positions where the draft's greedy token is the target's
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

    def add(self, output: RecordedOutput, choices: Sequence[int], is_draft_eog=lambda token: False) -> None:
        """One output, with the draft's teacher-forced greedy choice at each position of
        output.sequence (its end-of-generation token included, when it has one)."""
        self.positions += len(output.tokens)
        self.matches += sum(c == t for c, t in zip(choices, output.tokens))
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
                        agreement.add(output, choices, model.vocab.is_eog)
        finally:
            if adapter:
                adapter.close()
    return agreement
