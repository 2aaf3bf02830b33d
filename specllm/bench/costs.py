"""bench's cost model: what a run should have cost, from what it did and what one decode costs here.

Measured after a group's runs, with the cache at the group's mean depth while generating (prompt
plus half the tokens generated; a decode's cost grows with the cache it attends to):

- T(n), the target's time for one decode of n tokens, and t_d, a draft model's for one token
  (medians of repeated timings: the runs meet a busy machine's slow spells too);
- from the plain runs of the same prompts: s, their one-token decodes' time over the timed
  T(1) (a machine busier or quieter during the runs than while timing scales every decode),
  and o, the loop's own work per round outside the decodes (bookkeeping, emitting).

Every round of a run is priced by what it drafted: j drafted tokens cost s T(j+1) + o, plus,
for a draft model, j draft decodes of s t_d, and one more in the next round when all j were
accepted (the draft never decoded its own last token). Lookups cost nothing. Plain
decoding costs s T(1) + o a token (what the plain runs took), so

    predicted speedup = tokens * (s T(1) + o) / sum over rounds of their costs

Pricing the rounds as they were, rather than "every round drafts k", keeps rounds that drafted
nothing or less than k (a match near the end of the history, the last tokens before -n) from
skewing the prediction. The prediction error (predicted / measured - 1) says how far the
measured costs explain the measured speed.

For a k that was not run, a round of k drafts is expected to emit E(k) = 1 + sum_j prod_{i<=j}
alpha_i tokens (auto.expected_tokens), alpha_i being the chance that draft i is accepted once
the ones before it were, for s (T(k+1) + (k + prod_{i<=k} alpha_i) t_d) + o; the best k maximises
their ratio (auto.best_draft_length).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Optional, Sequence

from .. import llama
from ..auto import best_draft_length, time_batches
from ..drafting.base import LOOKUP_SOURCES, MODEL_SOURCE, NO_SOURCE
from ..stats import SpecStats

TIMING_REPEATS = 5  # timings per batch size; the median is kept

# Round sources whose drafting the model prices: a draft model per decode; lookups (n-gram,
# suffix, memory) decode nothing and are free, as is no draft. Any other drafter (through text,
# --cross-vocab) is priced by the drafting time its run measured.
FREE_SOURCES = LOOKUP_SOURCES + (NO_SOURCE,)


@dataclass
class MeasuredCosts:
    """What one decode costs at one cache depth, and the loop's own work per round."""

    depth: int  # tokens in the cache while timing
    target: dict[int, float] = field(default_factory=dict)  # seconds per decode, by batch size, as timed
    draft: dict[str, float] = field(default_factory=dict)  # seconds per token, by draft name, as timed
    speed: float = 1.0  # s: how much longer decodes took during the runs than when timed (calibrate)
    overhead: float = 0.0  # o: seconds per round outside the decodes

    def target_time(self, n: int) -> float:
        """s T(n); an unmeasured size costs as the next larger timed one (pessimistic), or grows
        in proportion beyond the largest."""
        if n in self.target or not self.target:
            return self.speed * self.target.get(n, 0.0)
        larger = [m for m in self.target if m > n]
        if larger:
            return self.speed * self.target[min(larger)]
        top = max(self.target)
        return self.speed * self.target[top] * n / top

    def draft_time(self, draft: Optional[str]) -> float:
        return self.speed * self.draft.get(draft, 0.0) if draft else 0.0

    @property
    def plain_seconds(self) -> float:
        """One token of plain decoding: s T(1) + o."""
        return self.target_time(1) + self.overhead

    def calibrate(self, plain: SpecStats) -> None:
        """s and o from the plain runs: their one-token target decodes against the timed T(1)
        (the machine's pace during the runs), and their time a round outside any decode."""
        if not plain.rounds:
            return
        timed_t1 = self.target.get(1, 0.0)
        in_run_t1 = plain.target_seconds / plain.rounds
        if timed_t1 > 0 and in_run_t1 > 0:
            self.speed = in_run_t1 / timed_t1
        outside = plain.decode_seconds - plain.target_seconds - plain.draft_seconds
        self.overhead = max(outside / plain.rounds, 0.0)

    def to_dict(self) -> dict:
        return {
            "depth": self.depth,
            "target_ms": {str(n): s * 1e3 for n, s in sorted(self.target.items())},
            "draft_ms_per_token": {name: s * 1e3 for name, s in self.draft.items()},
            "speed": self.speed,
            "overhead_ms_per_round": self.overhead * 1e3,
        }


def measure_decodes(ctx: llama.Context, cached: Sequence[int], sizes: Sequence[int]) -> dict[int, float]:
    """Median seconds per decode of each batch size, with the cache holding exactly `cached`."""
    fill_cache(ctx, cached)
    runs = [time_batches(ctx, sizes) for _ in range(TIMING_REPEATS)]
    return {n: statistics.median(run[n] for run in runs) for n in runs[0]}


def fill_cache(ctx: llama.Context, tokens: Sequence[int]) -> None:
    """Make the cache hold exactly `tokens`, decoding only what it lacks."""
    ctx.truncate(llama.common_prefix_length(ctx.tokens, tokens))
    if len(tokens) > ctx.n_past:
        ctx.decode(list(tokens[ctx.n_past:]))


def timing_depth(plain: SpecStats, runs: int) -> int:
    """The mean cache depth while generating, over `runs` pooled runs: prompt plus half of what
    each generated."""
    if runs <= 0:
        return 0
    return round((plain.prompt_tokens + plain.generated / 2) / runs)


@dataclass(frozen=True)
class RoundCosts:
    """Seconds a run's rounds should have cost, by where they go."""

    target: float = 0.0  # target decodes, s T(j+1) a round
    draft: float = 0.0  # drafting: draft-model decodes, or what drafting through text measured
    loop: float = 0.0  # o a round

    @property
    def total(self) -> float:
        return self.target + self.draft + self.loop


def predicted_costs(stats: SpecStats, costs: MeasuredCosts, draft: Optional[str]) -> RoundCosts:
    """What the run's rounds should have cost, each priced by what it drafted."""
    t_d = costs.draft_time(draft)
    target = drafting = 0.0
    unpriced_rounds = 0
    for (source, drafted, accepted, _), count in stats.round_shapes.items():
        target += count * costs.target_time(drafted + 1)
        if source == MODEL_SOURCE:
            catch_up = 1 if drafted and accepted == drafted else 0
            drafting += count * (drafted + catch_up) * t_d
        elif source not in FREE_SOURCES:
            unpriced_rounds += count
    if unpriced_rounds:
        drafting += stats.draft_seconds  # drafting through text: priced as the run measured it
    return RoundCosts(target=target, draft=drafting, loop=stats.rounds * costs.overhead)


def predicted_seconds(stats: SpecStats, costs: MeasuredCosts, draft: Optional[str]) -> float:
    return predicted_costs(stats, costs, draft).total


def predicted_speedup(stats: SpecStats, costs: MeasuredCosts, draft: Optional[str] = None) -> Optional[float]:
    """The run's tokens at its predicted cost, against plain decoding's s T(1) + o per token."""
    seconds = predicted_seconds(stats, costs, draft)
    if seconds <= 0 or costs.plain_seconds <= 0:
        return None
    return stats.generated * costs.plain_seconds / seconds


def prediction_error(predicted: Optional[float], measured: Optional[float]) -> Optional[float]:
    """predicted / measured - 1: +0.05 means the model promised 5% more than the run gave."""
    if predicted is None or not measured:
        return None
    return predicted / measured - 1


def conditional_acceptance(per_position: Sequence[float]) -> list[float]:
    """alpha_i, the chance that draft i is accepted given that the ones before it were, from
    per-position acceptance (the share of i-th drafts accepted, i.e. prod_{j<=i} alpha_j)."""
    alphas, survived = [], 1.0
    for p in per_position:
        alphas.append(min(p / survived, 1.0) if survived > 0 else 0.0)
        survived = p
    return alphas


def expected_round_seconds(k: int, per_position: Sequence[float], costs: MeasuredCosts,
                           draft: Optional[str]) -> float:
    """A round of k drafts: s T(k+1) + o + (k + P(all k accepted)) s t_d."""
    all_accepted = per_position[k - 1] if 0 < k <= len(per_position) else 0.0
    drafting = (k + all_accepted) * costs.draft_time(draft) if k else 0.0
    return costs.target_time(k + 1) + costs.overhead + drafting


def best_k_by_model(per_position: Sequence[float], costs: MeasuredCosts, draft: Optional[str],
                    max_k: int) -> tuple[int, float]:
    """(k, predicted speedup) of the best draft length 0..max_k (0: speculation does not pay)."""
    alphas = conditional_acceptance(per_position[:max_k])
    k, rate = best_draft_length(alphas, lambda k: expected_round_seconds(k, per_position, costs, draft))
    return k, rate * costs.plain_seconds
