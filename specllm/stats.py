"""What a generation measured: drafts, acceptance, timings. Plain data; rendering lives in render.py.

Definitions (also in the README):
- a round is one target decode; it verifies the round's drafts (possibly none) and emits
  the accepted drafts plus one token of the target's own.
- acceptance_rate = accepted / drafted.
- mean_accepted_length = generated tokens / rounds: tokens emitted per target decode,
  the bonus/correction token included (1.0 for plain decoding).
- per_position_acceptance[i] = of the rounds that drafted an i+1-th token, the share where
  it was accepted.
- tokens_per_second = generated tokens / decode seconds (after the prompt is processed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# One round as the loop records it: (drafter, drafted, accepted, emitted). Runs keep a count per
# shape, so that pooled runs (bench) are recorded through `record_round` too, and a cost model
# can price each round by what it drafted.
RoundShape = tuple[str, int, int, int]


@dataclass
class SpecStats:
    mode: str = "none"
    k: int = 0
    prompt_tokens: int = 0
    generated: int = 0
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    drafted_at: list[int] = field(default_factory=list)  # per draft position
    accepted_at: list[int] = field(default_factory=list)
    rounds_by_source: dict[str, int] = field(default_factory=dict)  # "model", "ngram", "none"
    prompt_seconds: float = 0.0
    decode_seconds: float = 0.0
    target_seconds: float = 0.0  # target decodes during generation (verification)
    draft_seconds: float = 0.0  # drafting, model and n-gram
    round_shapes: dict[RoundShape, int] = field(default_factory=dict)
    draft_lora: str | None = None  # the LoRA adapter applied to the draft model, if any

    def record_round(self, source: str, n_drafted: int, n_accepted: int, n_emitted: int) -> None:
        shape = (source, n_drafted, n_accepted, n_emitted)
        self.round_shapes[shape] = self.round_shapes.get(shape, 0) + 1
        self.rounds += 1
        self.generated += n_emitted
        self.drafted += n_drafted
        self.accepted += n_accepted
        self.rounds_by_source[source] = self.rounds_by_source.get(source, 0) + 1
        while len(self.drafted_at) < n_drafted:
            self.drafted_at.append(0)
            self.accepted_at.append(0)
        for i in range(n_drafted):
            self.drafted_at[i] += 1
            if i < n_accepted:
                self.accepted_at[i] += 1

    def add(self, other: "SpecStats") -> None:
        """Pool another run into this one: its rounds (recorded again) and its times."""
        for shape, count in other.round_shapes.items():
            for _ in range(count):
                self.record_round(*shape)
        self.prompt_tokens += other.prompt_tokens
        self.prompt_seconds += other.prompt_seconds
        self.decode_seconds += other.decode_seconds
        self.target_seconds += other.target_seconds
        self.draft_seconds += other.draft_seconds

    def counts_by_source(self) -> dict[str, tuple[int, int, int]]:
        """(rounds, drafted, accepted) of each drafter's rounds: exact even when auto mode mixes
        drafters within one generation, since every round is recorded with its source."""
        counts: dict[str, tuple[int, int, int]] = {}
        for (source, n_drafted, n_accepted, _), count in self.round_shapes.items():
            rounds, drafted, accepted = counts.get(source, (0, 0, 0))
            counts[source] = (rounds + count, drafted + count * n_drafted, accepted + count * n_accepted)
        return counts

    def drafted_by(self, sources: tuple[str, ...]) -> tuple[int, int]:
        """Tokens drafted and accepted in the rounds of the given drafters."""
        counts = [c for source, c in self.counts_by_source().items() if source in sources]
        return sum(c[1] for c in counts), sum(c[2] for c in counts)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def mean_accepted_length(self) -> float:
        return self.generated / self.rounds if self.rounds else 0.0

    @property
    def per_position_acceptance(self) -> list[float]:
        return [a / d if d else 0.0 for a, d in zip(self.accepted_at, self.drafted_at)]

    @property
    def mean_draft_length(self) -> float:
        """Tokens drafted per round (auto mode chooses it per round)."""
        return self.drafted / self.rounds if self.rounds else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.generated / self.decode_seconds if self.decode_seconds > 0 else 0.0

    @property
    def prompt_tokens_per_second(self) -> float:
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "k": self.k,
            "prompt_tokens": self.prompt_tokens,
            "generated": self.generated,
            "rounds": self.rounds,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "acceptance_rate": self.acceptance_rate,
            "mean_accepted_length": self.mean_accepted_length,
            "mean_draft_length": self.mean_draft_length,
            "per_position_acceptance": self.per_position_acceptance,
            "rounds_by_source": dict(self.rounds_by_source),
            "tokens_per_second": self.tokens_per_second,
            "prompt_tokens_per_second": self.prompt_tokens_per_second,
            "prompt_ms": self.prompt_seconds * 1e3,
            "decode_ms": self.decode_seconds * 1e3,
            "target_ms": self.target_seconds * 1e3,
            "draft_ms": self.draft_seconds * 1e3,
            "draft_lora": self.draft_lora,
        }
