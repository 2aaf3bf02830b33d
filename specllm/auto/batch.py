"""Auto mode inside a shared batch: what drafts cost one sequence when others decode with it.

Alone, verifying k drafts costs T(k + 1) against T(1) for a plain step. When the round's
decode already carries B rows of other sequences, the round costs T(B + 1) with this
sequence's last token in it, and k drafts make the batch bigger: they cost T(B + 1 + k) -
T(B + 1), the marginal cost of a bigger batch, not T(k + 1). Drafts pay when the tokens they
are expected to add come faster than the round's own rate, one token per row in T(B + 1):

    (E(k) - 1) / (T(B + 1 + k) - T(B + 1))  >  (B + 1) / T(B + 1)

The single-sequence policy compares E(k) / C(k) with 1 / C(0); with C(0) = T(B + 1) / (B + 1)
(this sequence's share of the round) and C(k) = C(0) + T(B + 1 + k) - T(B + 1) that is the same
test, so `BatchCosts` prices C(n) so and the policy runs unchanged. It then finds from the
measured T(n) alone that drafts pay less as the batch grows: where T(n) is flat (a GPU, or a
CPU at small n) a draft row costs almost nothing; where T(n) has become linear, a draft row
costs as much as another sequence's row and pays only if it is almost surely accepted.

B = 0 is the single-sequence policy, unchanged.
"""

from __future__ import annotations

from .costs import CostModel

# The least a row is priced at, as a fraction of T(1): measured T(n) are noisy, and a marginal
# cost of zero or less (T(B + 1) <= T(B) between two noisy points) would make drafts free.
MIN_ROW_FRACTION = 0.01


def marginal_time(costs: CostModel, rows_before: int, n: int) -> float:
    """What n more rows add to a decode that already carries rows_before rows:
    T(rows_before + n) - T(rows_before), but never less than n rows at the slope of the chord
    from T(1) to T(rows_before + n), nor under MIN_ROW_FRACTION x T(1) per row.

    Why the chord: a measured T(n) has plateaus (a noisy size is raised to the larger one
    below it, so that the curve never falls), and across a plateau the difference of two
    neighbours is zero: drafts looked free at a batch of 16 on a CPU, and an auto batch of 16
    ran at 0.66x a plain one. Where T(n) is linear the chord's slope is the true marginal cost;
    where it is still flat (a GPU, a CPU's small batches) the chord is small too; where T(n)
    bends (concave) it prices a row a little high, the safe side for a bet."""
    if rows_before <= 0:
        return costs.target_time(n)
    total = rows_before + n
    added = costs.target_time(total) - costs.target_time(rows_before)
    chord = n * (costs.target_time(total) - costs.target_time(1)) / (total - 1)
    return max(added, chord, n * MIN_ROW_FRACTION * costs.t1)


class BatchCosts:
    """The engine's CostModel as one sequence of a shared decode sees it (`rows_before` rows of
    others in the round). What is not about the price of a round is the CostModel's own."""

    def __init__(self, base: CostModel):
        self.base = base
        self.rows_before = 0

    def target_time(self, n: int) -> float:
        """C(n - 1): this sequence's share of the round for its first row, and the marginal cost
        of the bigger batch for the n - 1 drafts after it (see the module docstring)."""
        rows = self.rows_before
        if rows <= 0:
            return self.base.target_time(n)
        share = self.base.target_time(rows + 1) / (rows + 1)
        return share + marginal_time(self.base, rows + 1, n - 1) if n > 1 else share

    def plain_rate(self) -> float:
        """Tokens per second of this sequence's plain step: one per row of the round."""
        if self.rows_before <= 0:
            return self.base.plain_rate()
        seconds = self.target_time(1)
        return 1.0 / seconds if seconds > 0 else 0.0

    def measured_up_to(self) -> int:
        """Draft lengths whose batch (rows_before + 1 + k) this run has measured."""
        return max(1, self.base.measured_up_to() - self.rows_before)

    def stale_size(self, max_n: int):
        # Probing T(2) means a batch of two rows: only when alone.
        return self.base.stale_size(max_n) if self.rows_before <= 0 else None

    def wants_plain_probe(self) -> bool:
        # A forced plain round measures T(1) only when the sequence is alone in the decode.
        return self.base.wants_plain_probe() if self.rows_before <= 0 else False

    def observe_target(self, n: int, seconds: float, busy: bool = False) -> None:
        """A round's decode time, from the policy: the whole decode's only when alone in it (a
        shared round is recorded once for all its sequences by speculative.step_together)."""
        if self.rows_before <= 0:
            self.base.observe_target(n, seconds, busy)

    def __getattr__(self, name: str):
        return getattr(self.base, name)


def in_batch(costs) -> BatchCosts:
    """`costs` as a BatchCosts (once: a BatchCosts is returned as it is)."""
    return costs if isinstance(costs, BatchCosts) else BatchCosts(costs)
