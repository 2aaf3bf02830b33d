"""How well a draft predicts its target, measured teacher-forced on the target's greedy outputs.

For greedy decoding this is exact speculative decoding without running it: the draft sees the
target's own tokens (what verification would have accepted), so one llama.cpp pass over
prompt + output gives the draft's greedy choice at every position. A round that drafts k tokens
from position i accepts the run of matches starting at i (stopping at the first miss) and
emits one more token of the target's own.

The teacher-forced pass is ModelDrafter.greedy_choices, the one `specllm drafts` makes; the
rounds are counted here (Agreement.add) apart from drafting/replay.py, which plays them for
every k at once with the loop's stopping rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence


from .. import llama
from ..drafting.base import ModelDrafter
from .data import Sample


@dataclass
class Agreement:
    """Greedy agreement of a draft with the target, and the rounds of k-token speculation."""

    k: int
    positions: int = 0  # output tokens seen
    matches: int = 0  # positions where the draft's greedy token is the target's
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    emitted: int = 0
    accepted_at: list[int] = field(default_factory=list)  # per draft position, as SpecStats
    drafted_at: list[int] = field(default_factory=list)

    @property
    def match_rate(self) -> float:
        return self.matches / self.positions if self.positions else 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_round(self) -> float:
        return self.emitted / self.rounds if self.rounds else 0.0

    def add(self, hits: Sequence[bool]) -> None:
        """One output: hits[j] says whether the draft predicted output token j."""
        self.positions += len(hits)
        self.matches += sum(hits)
        i, n = 0, len(hits)
        while i < n:
            k = min(self.k, n - i)  # no drafting past the end of the output
            accepted = 0
            while accepted < k and hits[i + accepted]:
                accepted += 1
            self.rounds += 1
            self.drafted += k
            self.accepted += accepted
            while len(self.drafted_at) < k:
                self.drafted_at.append(0)
                self.accepted_at.append(0)
            for j in range(k):
                self.drafted_at[j] += 1
                self.accepted_at[j] += j < accepted
            emitted = min(accepted + 1, n - i)
            self.emitted += emitted
            i += emitted

    def to_dict(self) -> dict:
        return {
            "k": self.k, "positions": self.positions, "matches": self.matches, "match_rate": self.match_rate,
            "rounds": self.rounds, "drafted": self.drafted, "accepted": self.accepted,
            "acceptance_rate": self.acceptance_rate, "tokens_per_round": self.tokens_per_round,
            "per_position_acceptance": [a / d if d else 0.0 for a, d in zip(self.accepted_at, self.drafted_at)],
        }


def draft_hits(context: llama.Context, sample: Sample) -> list[bool]:
    """Teacher-forced: for each output token, whether the draft's greedy choice was that token
    (the same pass `specllm drafts` makes: ModelDrafter.greedy_choices)."""
    choices = ModelDrafter(context, context.n_vocab).greedy_choices(sample.prompt, sample.output)
    return [choice == token for choice, token in zip(choices, sample.output)]


def measure(draft_path: Path, samples: Sequence[Sample], *, k: int, lora: Optional[Path] = None,
            threads: Optional[int] = None, n_gpu_layers: int = 0) -> Agreement:
    """The agreement of a draft GGUF (with a LoRA adapter, if given) on the samples' outputs."""
    agreement = Agreement(k)
    longest = max((len(s.prompt) + len(s.output) for s in samples), default=1)
    with llama.Model(draft_path, n_gpu_layers=n_gpu_layers) as model:
        adapter = llama.LoraAdapter(model, lora) if lora else None
        try:
            with llama.Context(model, n_ctx=max(longest, 64), n_threads=threads) as context:
                llama.set_lora(context, adapter)
                for sample in samples:
                    if sample.output:
                        agreement.add(draft_hits(context, sample))
        finally:
            if adapter:
                adapter.close()
    return agreement
