"""Why bets win or lose, per round: what auto mode predicted of a draft against what the target
accepted.

The policy hands each round to a `RoundTrace` (`specllm generate --trace FILE`, and
`scripts/lookup-calibration simulate --trace FILE`, which replays recorded outputs): the
drafter, the match length, the acceptance predicted for every drafted token, the expected
tokens and the predicted cost of the round in plain steps, and what the target accepted.
`calibration_report` turns such rounds into the tables that tell a bias from bad luck:

- per predicted-acceptance bucket, the share of the verified draft tokens that were accepted
  (a token after the first rejection is never verified, so it is not counted either way);
- per drafter, the tokens the rounds were expected to emit against those they emitted, and the
  plain steps they were expected to save against the steps they saved, at the predicted costs.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Optional, TextIO

# Edges of the predicted-acceptance buckets of the report (lower bounds).
ALPHA_BUCKETS = (0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)


@dataclass
class RoundRecord:
    generation: int  # 0, 1, ... within one trace (a --jsonl batch has several)
    position: int  # tokens emitted before this round
    source: str  # none, suffix, memory, model, ...
    why: str  # pays, split (the cheap first round of two), probe, look (at the draft model), plain
    match_length: int  # lookup drafts: tokens the text's end matched
    predicted: list[float]  # predicted acceptance of each drafted token
    expected_tokens: float  # E(k): 1 + expected accepted drafts
    cost_steps: float  # predicted cost of the round (drafting + verify) in plain steps
    accepted: int
    target_seconds: float
    busy: bool  # the decode ran on a busy machine (not learned from)
    chat: bool = False

    @property
    def drafted(self) -> int:
        return len(self.predicted)

    @property
    def saved_steps(self) -> float:
        """Plain steps this round saved at its predicted cost (negative: it lost)."""
        return self.accepted + 1 - self.cost_steps

    @property
    def expected_saved_steps(self) -> float:
        return self.expected_tokens - self.cost_steps


@dataclass
class RoundTrace:
    """Rounds as they happen, kept in memory and, with a file, one JSON line each."""

    out: Optional[TextIO] = None
    rounds: list[RoundRecord] = field(default_factory=list)
    generations: int = 0

    @classmethod
    def to_file(cls, path: Path) -> "RoundTrace":
        return cls(out=path.open("w", encoding="utf-8"))

    def begin_generation(self) -> int:
        self.generations += 1
        return self.generations - 1

    def record(self, record: RoundRecord) -> None:
        self.rounds.append(record)
        if self.out is not None:
            self.out.write(json.dumps(asdict(record)) + "\n")
            self.out.flush()

    def close(self) -> None:
        if self.out is not None:
            self.out.close()
            self.out = None


def read_trace(path: Path) -> list[RoundRecord]:
    """The rounds of a trace file; ValueError when it holds none."""
    rounds = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                rounds.append(RoundRecord(**json.loads(line)))
            except (TypeError, ValueError) as e:
                raise ValueError(f"not a round of a trace: {line[:80]!r} ({e})") from None
    if not rounds:
        raise ValueError("no rounds in it")
    return rounds


def alpha_bucket(alpha: float) -> float:
    return max(b for b in ALPHA_BUCKETS if alpha >= b)


def calibration_report(rounds: Iterable[RoundRecord]) -> list[str]:
    """Lines of text: acceptance predicted against acceptance seen, per drafter and bucket,
    then per drafter and reason the rounds' expected and actual tokens and saved steps."""
    tokens: dict = defaultdict(lambda: [0, 0, 0.0])  # (source, bucket) -> [accepted, verified, sum predicted]
    rounds_by: dict = defaultdict(lambda: [0, 0, 0, 0.0, 0, 0.0, 0.0, 0])
    for r in rounds:
        for i, alpha in enumerate(r.predicted[: r.accepted + 1]):  # verified: up to the first rejection
            cell = tokens[r.source, alpha_bucket(alpha)]
            cell[0] += i < r.accepted
            cell[1] += 1
            cell[2] += alpha
        cell = rounds_by[r.source, r.why]
        cell[0] += 1
        cell[1] += r.drafted
        cell[2] += r.accepted
        cell[3] += r.expected_tokens
        cell[4] += r.accepted + 1
        cell[5] += r.expected_saved_steps
        cell[6] += r.saved_steps
        cell[7] += r.busy
    lines = ["draft tokens by predicted acceptance (verified tokens only):",
             f"  {'source':8s} {'predicted':>9s} {'tokens':>7s} {'mean predicted':>15s} {'accepted':>9s}"]
    for (source, bucket), (accepted, verified, predicted) in sorted(tokens.items()):
        lines.append(f"  {source:8s} {'>=' + format(bucket, '.2f'):>9s} {verified:7d} {predicted / verified:15.3f} "
                     f"{accepted / verified:9.3f}")
    lines += ["rounds by source and reason (steps: plain decoding steps, at the predicted costs):",
              f"  {'source':8s} {'why':6s} {'rounds':>6s} {'drafted':>8s} {'accepted':>8s} {'E(tokens)':>9s} "
              f"{'tokens':>7s} {'E(saved)':>9s} {'saved':>7s} {'busy':>5s}"]
    for (source, why), c in sorted(rounds_by.items()):
        lines.append(f"  {source:8s} {why:6s} {c[0]:6d} {c[1]:8d} {c[2]:8d} {c[3]:9.1f} {c[4]:7d} {c[5]:9.1f} "
                     f"{c[6]:7.1f} {c[7]:5d}")
    return lines
