"""Auto mode: per round, draft what is expected to pay on this machine, or nothing.

A round that verifies k drafts costs C(k) = drafting + T_target(k+1) and emits E(k) tokens in
expectation (acceptance.py). Plain decoding emits 1 token per T_target(1). Each round:

1. every lookup drafter (the suffix index over the text so far, and over earlier outputs)
   proposes a continuation; each is cut to the k with the best E(k)/C(k), or to its first few
   tokens when verifying those first and the rest next round is expected to save more time
   (a long draft's riskiest tokens are its first ones: acceptance.first_round_of_two);
2. the draft model drafts instead if its rounds in this generation have been faster than that
   and than plain decoding, stopping when one more token is not worth its cost; or, with
   nothing else at hand, a short look at it when it is time to look, and only if a model draft
   could pay at all at the measured costs and the best acceptance learned for it
   (`_model_can_pay`: on a CPU where T(n) grows almost like n it cannot, on a GPU it can);
3. otherwise the best lookup draft, if it beats plain decoding by LOOKUP_MARGIN;
4. otherwise a plain step, or a probe: a short lookup draft verified at a batch size this run
   has not measured, so that a wrong cost profile cannot keep itself alive.

Lookup acceptance is also learned for free from the drafts not verified: the tokens a round
emits are the target's own, so each lookup candidate of the round before is checked against
them up to its first miss (a "shadow" observation). A plain step thus tells whether the
lookup's next token would have been accepted, and the first long bet of a generation rests on
how this text's lookups have fared, not on priors alone (a raw summary copies its article, a
chat summary paraphrases it: the same 16-token match means a copy in one and not the other).

Exactness: under the rejection sampler, whether a drafted token is verified never depends on
that token's own value: the stop rule only decides whether to draft the next one. Under greedy
and Gumbel verification the emitted tokens are the target's own choices whatever the draft, so
a model draft may also be trimmed to its best prefix afterwards. Shadow observations use only
tokens already emitted, each a draw from the target's distribution given the ones before it: a
lookup token matches one with the probability that verification would have accepted it.
"""

from __future__ import annotations

import time
from typing import Optional, Sequence

import numpy as np

from ..drafting.base import MODEL_SOURCE, NO_DRAFT, NO_SOURCE, CatchUp, Draft, Drafter
from ..sampling import DraftChooser
from .acceptance import best_draft_length, draft_rates, expected_tokens, first_round_of_two
from .contention import ContentionMeter, Span
from .batch import in_batch
from .costs import CostModel
from .learned import MARGIN, Learned
from .trace import RoundRecord, RoundTrace

# A lookup draft must promise this much more than plain decoding's rate, more than the
# model's MARGIN: bets on short matches (2-4 tokens) are at 50-60% acceptance and all or
# nothing, and their predicted acceptance runs above what the text then accepts (simulated on
# the dev subset: tokens predicted at 0.30-0.50 were accepted 41% of the time against 48%
# predicted, at 0.50-0.70 55% against 58%). Replayed at this 2-core CPU's costs
# (`lookup-calibration simulate`), 1.10 raised the lowest prompt from 0.96x to 0.97x plain and
# the mean from 1.186x to 1.196x; at the CPU costs and a GPU's it moves each by 0.01 or less.
LOOKUP_MARGIN = 1.10
# Rounds between probes of unmeasured batch sizes (a probe costs at most one short verify).
SHAPE_PROBE_INTERVAL = 8
# Only a draft expected to come this close to plain decoding's rate is used for a probe: a
# probe then costs a fraction of a step, and one that is far off would cost more than it tells.
PROBE_MIN_RATE = 0.8
# Most tokens a look at a draft model that is not known to pay may draft: enough to measure
# its acceptance and speed, little enough that a look costs about one plain step.
EXPLORE_MAX_K = 4
# Longest model draft considered when judging whether a model draft could pay at all.
MODEL_PRICING_MAX_K = 64
# Batch sizes above the largest one this run has measured are priced this much cheaper when
# the length of a lookup draft that pays is chosen, among the lengths that pay at their honest
# price. Their cost comes from a saved profile or a fitted line; one that is a little too high
# would never be chosen, so never corrected, and long copies would be cut short for good.
UNMEASURED_OPTIMISM = 1.25
# Longest first round considered when a long lookup draft might better be split in two
# (acceptance.first_round_of_two): the risky start of a copy is a few tokens long.
FIRST_ROUND_MOST = 8


class AutoPolicy:
    mode = "auto"

    def __init__(
        self,
        lookups: Sequence[Drafter],
        model: Optional[Drafter],
        *,
        max_k: int,
        costs: CostModel,
        learned: Optional[Learned] = None,
        memory=None,
        chat: bool = False,
        trace: Optional[RoundTrace] = None,
    ):
        self.lookups = list(lookups)
        self.model = model
        self.k = max_k
        # Prices as one sequence of a shared decode sees them (batch.py; alone: the CostModel's own).
        self.costs = in_batch(costs)
        self.learned = learned or Learned()
        self.memory = memory  # earlier outputs: this generation's output is added at its end
        self.chat = chat  # the prompt is in the target's chat template
        self.trace = trace  # every round's prediction against its outcome (trace.py)
        # The round being played: what was tried, its drafting time, why, the predicted
        # acceptance of each drafted token, and the clocks when its target decode began.
        self._last_round: tuple[str, float] = (NO_SOURCE, 0.0)
        self._why, self._predicted = "plain", []
        self._span: Optional[Span] = None
        self._prompt_length = self._position = 0  # position: tokens emitted before this round
        self._generation = 0
        self._last_probe = 0
        self._model_ready = False
        # Last round's lookup candidates, to check against what the round emitted (see the
        # module docstring): (length of the history then, [(candidate, tokens verified)]).
        self._shadow: tuple[int, list[tuple[Draft, int]]] = (0, [])

    def begin(self, prompt: Sequence[int]) -> None:
        for lookup in self.lookups:
            lookup.begin(prompt)
        plain = self.costs.plain_rate()
        self.learned.begin_generation(plain)
        self._shadow = (0, [])
        self._prompt_length = len(prompt)
        if self.trace is not None:
            self._generation = self.trace.begin_generation()
        # The draft model takes part in this generation only if its cache gets the prompt now
        # (prompt time): catching up on a whole prompt inside a round would cost seconds.
        self._model_ready = self.model is not None and (
            self.learned.model_rate(plain) > plain * MARGIN
            or (self.learned.wants_a_look() and self._model_can_pay(self.k))
        )
        if self._model_ready:
            self.model.begin(prompt)

    def share_round(self, rows_before: int) -> None:
        """This round's decode also carries rows_before rows of other sequences (batch.py)."""
        self.costs.rows_before = rows_before

    @property
    def round_costs(self) -> CostModel:
        """The cost model a shared round's decode time is recorded in (once for all its sequences)."""
        return self.costs.base

    def end(self, output: Sequence[int]) -> None:
        if self.memory is not None and output:
            self.memory.add(list(output))

    def draft(self, history: Sequence[int], max_k: int, choose: DraftChooser) -> Draft:
        self._observe_shadows(history)
        self._position = len(history) - self._prompt_length
        k_max = min(self.k, max_k)
        plain = self.costs.plain_rate()
        if k_max <= 0 or plain <= 0 or self.costs.wants_plain_probe():
            return self._chosen(NO_DRAFT, 0.0)

        start = time.perf_counter()
        best, best_rate, best_alphas, why = NO_DRAFT, plain * LOOKUP_MARGIN, [], "plain"
        near, near_rate, near_alphas = NO_DRAFT, 0.0, []  # the best candidate at one token or more
        measured = None  # the largest batch size this run has measured, once a draft pays
        candidates = []
        for lookup in self.lookups:
            candidate = lookup.propose(history, k_max, choose)
            if not candidate.tokens:
                continue
            candidates.append(candidate)
            alphas = self.learned.lookup_acceptance(candidate.source, self.chat).alphas(
                candidate.ngram_size, candidate.confidence, len(candidate)
            )
            rates = draft_rates(alphas, lambda k: self.costs.target_time(k + 1))
            k = max(range(1, len(rates)), key=rates.__getitem__)  # the best length of one token or more
            if rates[k] > best_rate:
                # It pays; how long: with unmeasured sizes priced optimistically (see
                # UNMEASURED_OPTIMISM), which lengthens a paying draft but never makes one pay.
                if measured is None:
                    measured = self.costs.measured_up_to()
                hopeful = draft_rates(alphas, lambda k: self._hopeful_verify_time(k, measured))
                # Only among the lengths that pay at their honest price: a first bet at a new
                # size must not lose (a short run measures few sizes, and bets once at each).
                paying = [j for j in range(1, len(rates)) if rates[j] >= plain]
                long_k = max(paying, key=hopeful.__getitem__)
                # Its risky start first, if a cheap round of that is expected to save more.
                first = first_round_of_two(alphas, long_k, self.costs.target_time(1),
                                           lambda j: self.costs.target_time(j + 1), FIRST_ROUND_MOST)
                best, best_rate, best_alphas = candidate.prefix(long_k if first is None else first), rates[k], alphas
                why = "pays" if first is None else "split"
            if rates[k] > near_rate:
                near, near_rate, near_alphas = candidate, rates[k], alphas
        lookup_seconds = time.perf_counter() - start

        if self._model_ready:
            # The draft model when its rounds in this generation have been faster than the
            # best lookup draft (or plain); or, with nothing better at hand, a short look when
            # it is time to look (a look costs a few draft tokens, not a full-length draft).
            if self.learned.model_rate(plain) > (best_rate if best.tokens else plain * MARGIN):
                return self._model_draft(history, k_max, choose, MODEL_SOURCE)
            if (not best.tokens and self.learned.wants_a_look()
                    and self._model_can_pay(k_max, self._unseen_by_model(history))):
                return self._model_draft(history, min(k_max, EXPLORE_MAX_K), choose, "look")
        if not best.tokens and near_rate >= plain * PROBE_MIN_RATE:
            best, best_alphas, why = self._probe(near), near_alphas, "probe"
        self._remember_candidates(len(history), candidates, best)
        return self._chosen(best, lookup_seconds, why=why if best.tokens else "plain", predicted=best_alphas)

    def _model_can_pay(self, k_max: int, unseen: int = 0) -> bool:
        """Whether a model draft could beat plain decoding at all: every token at the best
        acceptance learned for any confidence, at the measured costs of drafting and verifying,
        and of first catching up on `unseen` history tokens. Where a verify of n tokens costs
        almost n plain steps (a CPU), only near-certain tokens pay, and a look at the model is a
        loss before it starts; so is a look that must first decode the 40 tokens of the plain
        rounds since the last one (on a 2-core CPU 0.5B's catch-up took 150-250 ms, 2-3 target
        steps, and two looks cost 8% of a 96-token run); on a GPU both are cheap."""
        alpha = self.learned.confidence.best_alpha()
        per_token = self.costs.draft_time(1)
        switch = self.costs.catch_up_time(unseen)
        alphas = [alpha] * min(k_max, MODEL_PRICING_MAX_K)
        rates = draft_rates(alphas, lambda k: switch + k * per_token + self.costs.target_time(k + 1))
        return len(rates) > 1 and max(rates[1:]) > self.costs.plain_rate() * MARGIN

    def _unseen_by_model(self, history: Sequence[int]) -> int:
        unseen = getattr(self.model, "unseen", None)
        return unseen(history) if unseen is not None else 0

    def _remember_candidates(self, history_length: int, candidates: list[Draft], drafted: Draft) -> None:
        # The drafted candidate's first len(drafted) tokens are observed by `observe`.
        self._shadow = (history_length, [
            (c, len(drafted) if drafted.tokens and c.source == drafted.source else 0) for c in candidates
        ])

    def _observe_shadows(self, history: Sequence[int]) -> None:
        """Check last round's lookup candidates against the tokens it emitted."""
        start, candidates = self._shadow
        self._shadow = (0, [])
        if not candidates or len(history) <= start:
            return
        emitted = history[start : start + max(len(c) for c, _ in candidates)]
        for candidate, verified in candidates:
            checked = min(len(candidate), len(emitted))
            hits = [candidate.tokens[i] == emitted[i] for i in range(checked)]
            if False in hits:
                checked = hits.index(False) + 1  # nothing after the first miss was on the text
            self._learn_lookup(candidate, range(verified, checked), hits)

    def _learn_lookup(self, draft: Draft, positions: range, accepted: Sequence[bool]) -> None:
        """Lookup acceptance learns draft token i (i in positions) was right or not, at the match
        length it was drafted at."""
        table = self.learned.lookup_acceptance(draft.source, self.chat)
        probs = draft.confidence or [1.0] * len(draft)
        for i in positions:
            table.observe(draft.ngram_size + i, probs[i], accepted[i])

    def _hopeful_verify_time(self, k: int, measured_up_to: int) -> float:
        """What verifying k drafts is taken to cost when choosing a paying lookup draft's length."""
        seconds = self.costs.target_time(k + 1)
        return seconds / UNMEASURED_OPTIMISM if k + 1 > measured_up_to else seconds

    def _probe(self, draft: Draft) -> Draft:
        """A lookup draft cut to a batch size this run has not measured yet, now and then."""
        if self.learned.rounds - self._last_probe < SHAPE_PROBE_INTERVAL:
            return NO_DRAFT
        n = self.costs.stale_size(len(draft) + 1)
        if n is None:
            return NO_DRAFT
        self._last_probe = self.learned.rounds
        return draft.prefix(n - 1)

    def _model_draft(self, history: Sequence[int], k_max: int, choose: DraftChooser, why: str) -> Draft:
        span = ContentionMeter.start()
        alphas: list[float] = []
        per_token = self.costs.draft_time(1)

        def keep_drafting(i: int, confidence: float) -> bool:
            # Decides only whether to draft token i + 2 (never whether token i + 1 stays).
            alphas.append(self.learned.confidence.alpha(confidence))
            rate_now = expected_tokens(alphas)[-1] / ((i + 1) * per_token + self.costs.target_time(i + 2))
            # One more token is worth drafting if its expected gain (it survives and is accepted,
            # guessing its confidence like this one's) comes faster than the current rate.
            gain = float(np.prod(alphas)) * alphas[-1]
            extra_cost = per_token + max(self.costs.target_time(i + 3) - self.costs.target_time(i + 2), 0.0)
            return gain > rate_now * extra_cost

        draft = self.model.propose(history, k_max, choose, keep_drafting)
        seconds, busy = self.costs.meter.stop(span)
        # The price of a draft token leaves out the history the model caught up on first: after
        # plain or lookup rounds that is a cost of switching to the model, once, and counted as
        # drafting it made the model's tokens look dearer than the target's (a look after 16
        # plain rounds decodes 16 tokens first). The round's own rate keeps it: a look that
        # had to catch up cost that much, and looks that do not pay come less and less often.
        drafting = max(seconds - getattr(self.model, "catch_up", CatchUp()).seconds, 0.0)
        if draft.tokens:
            self.costs.observe_draft(len(draft), drafting, busy)
        alphas = [self.learned.confidence.alpha(c) for c in draft.confidence or []]
        if draft.tokens and choose.kind != "rejection":
            # Drafting time is spent now; verify the prefix with the best expected rate. Only
            # where verification keeps the target's own choices whatever the draft is.
            k, _ = best_draft_length(alphas, lambda k: seconds + self.costs.target_time(k + 1))
            draft = draft.prefix(k)
        return self._chosen(draft, seconds, tried=MODEL_SOURCE, why=why, predicted=alphas[: len(draft)])

    def _chosen(self, draft: Draft, draft_seconds: float, tried: Optional[str] = None, why: str = "plain",
                predicted: Sequence[float] = ()) -> Draft:
        # `tried` differs from draft.source when a model draft was trimmed to nothing.
        self._last_round = (tried or draft.source, draft_seconds)
        self._why, self._predicted = why, list(predicted[: len(draft)])
        self._span = ContentionMeter.start()  # the target decode follows at once
        return draft

    def observe(self, draft: Draft, n_accepted: int, target_seconds: float) -> None:
        source, draft_seconds = self._last_round
        busy = False
        if self._span is not None:
            _, busy = self.costs.meter.stop(self._span)
            self._span = None
        self._record(draft, n_accepted, target_seconds, busy)
        self.costs.observe_target(len(draft) + 1, target_seconds, busy)
        verified = min(len(draft), n_accepted + 1)  # positions after the first rejection are unobserved
        if source == MODEL_SOURCE:
            for i in range(verified):
                self.learned.confidence.observe(draft.confidence[i], i < n_accepted)
            self.learned.observe_model_round(n_accepted + 1, draft_seconds + target_seconds,
                                             self.costs.plain_rate(), busy)
        elif source != NO_SOURCE:
            self._learn_lookup(draft, range(verified), [i < n_accepted for i in range(verified)])
        self.learned.rounds += 1

    def _record(self, draft: Draft, n_accepted: int, target_seconds: float, busy: bool) -> None:
        """The round's prediction against its outcome, for the trace (before anything learns
        from it, so the prediction is the one the choice was made on)."""
        if self.trace is None:
            return
        source, draft_seconds = self._last_round
        t1 = self.costs.target_time(1)
        cost = (draft_seconds if source == MODEL_SOURCE else 0.0) + self.costs.target_time(len(draft) + 1)
        self.trace.record(RoundRecord(
            generation=self._generation, position=self._position, source=draft.source, why=self._why,
            match_length=draft.ngram_size if draft.tokens and source != MODEL_SOURCE else 0,
            predicted=[round(a, 4) for a in self._predicted], expected_tokens=expected_tokens(self._predicted)[-1],
            cost_steps=cost / t1 if t1 > 0 else 0.0, accepted=n_accepted, target_seconds=target_seconds, busy=busy,
            chat=self.chat,
        ))
