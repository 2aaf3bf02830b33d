"""Auto mode: per round, draft what is expected to pay on this machine, or nothing.

A round that verifies k drafts costs C(k) = drafting + T_target(k+1) and emits E(k) tokens in
expectation (acceptance.py). Plain decoding emits 1 token per T_target(1). Each round:

1. every lookup drafter (the suffix index over the text so far, and over earlier outputs)
   proposes a continuation; each is cut to the k with the best E(k)/C(k), or to its first few
   tokens when verifying those first and the rest next round is expected to save more time
   (a long draft's riskiest tokens are its first ones: acceptance.first_round_of_two);
2. the draft model drafts instead if its rounds have been faster than that and than plain
   decoding (or nothing else is at hand and it is time to look again), stopping when one more
   token is not worth its cost;
3. otherwise the best lookup draft, if it beats plain decoding by MARGIN;
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

from ..drafting.base import NO_DRAFT, Draft, Drafter
from ..sampling import DraftChooser
from .acceptance import (
    MEMORY_MATCH_WEIGHT, ConfidenceAcceptance, LookupAcceptance, best_draft_length, draft_rates, expected_tokens,
    first_round_of_two,
)
from .batch import in_batch
from .costs import CostModel

# A draft must promise this much more tokens/s than a plain step: measured rates are noisy,
# and a draft that only ties with plain decoding adds risk for nothing.
MARGIN = 1.03
# Rounds between probes of unmeasured batch sizes (a probe costs at most one short verify).
SHAPE_PROBE_INTERVAL = 8
# Only a draft expected to come this close to plain decoding's rate is used for a probe: a
# probe then costs a fraction of a step, and one that is far off would cost more than it tells.
PROBE_MIN_RATE = 0.8
# Most tokens a look at a draft model that is not known to pay may draft: enough to measure
# its acceptance and speed, little enough that a look costs about one plain step.
EXPLORE_MAX_K = 4
# Rounds between looks at a draft model whose rounds pay, and the most rounds between looks at
# one that does not (the interval doubles after each look that did not pay).
EXPLORE_INTERVAL = 16
MAX_EXPLORE_INTERVAL = 1024
# A draft model not measured yet is assumed this much faster than plain, so that it gets tried.
UNTRIED_MODEL_OPTIMISM = 1.5
# Weight of the latest model round in the model's measured rate.
MODEL_RATE_EMA = 0.3
# Model rounds a run must have measured before its verdict on the draft model is saved for the
# next run: one lucky look (4 of 4 accepted in a quiet moment) once saved 1.17x plain on a CPU
# where model rounds lose, and the next runs began by drafting with the model.
MIN_MODEL_ROUNDS_TO_SAVE = 3
# Batch sizes above the largest one this run has measured are priced this much cheaper when
# the length of a lookup draft that pays is chosen. Their cost comes from a saved profile or a
# fitted line; one that is too high would never be chosen, so never corrected, and long copies
# would be cut short for good. A wrong guess costs at most this fraction of one round, once per
# size: the round measures it.
UNMEASURED_OPTIMISM = 1.25
# Longest first round considered when a long lookup draft might better be split in two
# (acceptance.first_round_of_two): the risky start of a copy is a few tokens long.
FIRST_ROUND_MOST = 8


class Learned:
    """What auto mode has learned about acceptance; shared by the generations of one engine."""

    def __init__(self):
        self.lookup: dict[str, LookupAcceptance] = {}
        self.confidence = ConfidenceAcceptance()
        self.model_rounds_rate: Optional[float] = None
        self.rounds = 0
        self.last_model_round: Optional[int] = None  # None: never looked at
        self.explore_interval = EXPLORE_INTERVAL
        self.model_rounds_measured = 0  # in this run (start_from does not count)

    def lookup_acceptance(self, source: str, chat: bool = False) -> LookupAcceptance:
        """Lookup acceptance of one source, kept apart for answers in a chat template, which
        copy from their prompt less than raw completions do (see CHAT_MATCH_PRIOR)."""
        key = f"{source}/chat" if chat else source
        if key not in self.lookup:
            self.lookup[key] = LookupAcceptance(MEMORY_MATCH_WEIGHT if source == "memory" else 1.0, chat=chat)
        return self.lookup[key]

    def model_rate(self, plain_rate: float) -> float:
        if self.model_rounds_rate is None:
            return plain_rate * UNTRIED_MODEL_OPTIMISM
        return self.model_rounds_rate

    def start_from(self, model_rate_ratio: Optional[float], plain_rate: float) -> None:
        """Begin with what earlier runs on this machine measured, instead of probing the draft
        model at the start of every generation (a probe costs more than short outputs win)."""
        if model_rate_ratio is None or plain_rate <= 0:
            return
        self.model_rounds_rate = model_rate_ratio * plain_rate
        if model_rate_ratio < 1.0:
            self.last_model_round = 0
            self.explore_interval = MAX_EXPLORE_INTERVAL // 16

    def model_rate_ratio(self, plain_rate: float) -> Optional[float]:
        if self.model_rounds_rate is None or plain_rate <= 0:
            return None
        return self.model_rounds_rate / plain_rate

    def model_verdict_to_save(self, plain_rate: float) -> Optional[float]:
        """The model's rate relative to plain, if this run measured enough rounds to tell."""
        if self.model_rounds_measured < MIN_MODEL_ROUNDS_TO_SAVE:
            return None
        return self.model_rate_ratio(plain_rate)

    def model_worth_trying(self, plain_rate: float) -> bool:
        return self.model_rate(plain_rate) > plain_rate * MARGIN  # a saved 1.00x is noise, not a gain

    def should_explore_model(self) -> bool:
        return self.last_model_round is None or self.rounds - self.last_model_round >= self.explore_interval

    def observe_model_round(self, tokens_per_second: float, plain_rate: float) -> None:
        old = self.model_rounds_rate
        self.model_rounds_rate = (
            tokens_per_second if old is None else (1 - MODEL_RATE_EMA) * old + MODEL_RATE_EMA * tokens_per_second
        )
        self.last_model_round = self.rounds
        self.model_rounds_measured += 1
        # Where model drafts do not pay, look again less and less often.
        if self.model_rounds_rate < plain_rate:
            self.explore_interval = min(self.explore_interval * 2, MAX_EXPLORE_INTERVAL)
        else:
            self.explore_interval = EXPLORE_INTERVAL


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
    ):
        self.lookups = list(lookups)
        self.model = model
        self.k = max_k
        # Prices as one sequence of a shared decode sees them (batch.py; alone: the CostModel's own).
        self.costs = in_batch(costs)
        self.learned = learned or Learned()
        self.memory = memory  # earlier outputs: this generation's output is added at its end
        self.chat = chat  # the prompt is in the target's chat template
        self._last_round: tuple[str, float] = ("none", 0.0)
        self._last_probe = 0
        self._model_ready = False
        # Last round's lookup candidates, to check against what the round emitted (see the
        # module docstring): (length of the history then, [(candidate, tokens verified)]).
        self._shadow: tuple[int, list[tuple[Draft, int]]] = (0, [])

    def begin(self, prompt: Sequence[int]) -> None:
        for lookup in self.lookups:
            lookup.begin(prompt)
        for acceptance in self.learned.lookup.values():
            acceptance.begin_generation()
        self._shadow = (0, [])
        # The draft model takes part in this generation only if its cache gets the prompt now
        # (prompt time): catching up on a whole prompt inside a round would cost seconds.
        self._model_ready = self.model is not None and (
            self.learned.model_worth_trying(self.costs.plain_rate()) or self.learned.should_explore_model()
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
        k_max = min(self.k, max_k)
        plain = self.costs.plain_rate()
        if k_max <= 0 or plain <= 0 or self.costs.wants_plain_probe():
            return self._chosen(NO_DRAFT, 0.0)

        start = time.perf_counter()
        best, best_rate = NO_DRAFT, plain * MARGIN
        near, near_rate = NO_DRAFT, 0.0  # the best candidate at one token or more, paying or not
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
                long_k = max(range(1, len(hopeful)), key=hopeful.__getitem__)
                # Its risky start first, if a cheap round of that is expected to save more.
                first = first_round_of_two(alphas, long_k, self.costs.target_time(1),
                                           lambda j: self.costs.target_time(j + 1), FIRST_ROUND_MOST)
                best, best_rate = candidate.prefix(long_k if first is None else first), rates[k]
            if rates[k] > near_rate:
                near, near_rate = candidate, rates[k]
        lookup_seconds = time.perf_counter() - start

        if self._model_ready:
            # The draft model when its rounds have been faster than the best lookup draft
            # (or plain); or, with nothing better at hand, a short look when it is time to look
            # again (a look costs a few draft tokens, not a full-length draft).
            if self.learned.model_rounds_rate is not None and self.learned.model_rate(plain) > best_rate:
                return self._model_draft(history, k_max, choose)
            if not best.tokens and self.learned.should_explore_model():
                return self._model_draft(history, min(k_max, EXPLORE_MAX_K), choose)
        if not best.tokens and near_rate >= plain * PROBE_MIN_RATE:
            best = self._probe(near)
        self._remember_candidates(len(history), candidates, best)
        return self._chosen(best, lookup_seconds)

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

    def _model_draft(self, history: Sequence[int], k_max: int, choose: DraftChooser) -> Draft:
        start = time.perf_counter()
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
        seconds = time.perf_counter() - start
        if draft.tokens:
            self.costs.observe_draft(len(draft), seconds)
        if draft.tokens and choose.kind != "rejection":
            # Drafting time is spent now; verify the prefix with the best expected rate. Only
            # where verification keeps the target's own choices whatever the draft is.
            alphas = [self.learned.confidence.alpha(c) for c in draft.confidence]
            k, _ = best_draft_length(alphas, lambda k: seconds + self.costs.target_time(k + 1))
            draft = draft.prefix(k)
        return self._chosen(draft, seconds, tried="model")

    def _chosen(self, draft: Draft, draft_seconds: float, tried: Optional[str] = None) -> Draft:
        # `tried` differs from draft.source when a model draft was trimmed to nothing.
        self._last_round = (tried or draft.source, draft_seconds)
        return draft

    def observe(self, draft: Draft, n_accepted: int, target_seconds: float) -> None:
        source, draft_seconds = self._last_round
        self.costs.observe_target(len(draft) + 1, target_seconds)
        verified = min(len(draft), n_accepted + 1)  # positions after the first rejection are unobserved
        if source == "model":
            for i in range(verified):
                self.learned.confidence.observe(draft.confidence[i], i < n_accepted)
            self.learned.observe_model_round(
                (n_accepted + 1) / (draft_seconds + target_seconds), self.costs.plain_rate()
            )
        elif source != "none":
            self._learn_lookup(draft, range(verified), [i < n_accepted for i in range(verified)])
        self.learned.rounds += 1
