"""How likely drafts are to be accepted, and what a draft of k tokens is worth.

A round that verifies k drafts emits E(k) = 1 + sum_{j<=k} prod_{i<=j} alpha_i tokens in
expectation, alpha_i being the chance that draft i is accepted when the ones before it were.
The alphas are learned from what the target actually accepted, per kind of evidence:

- lookup drafts (suffix index over the text so far, or over earlier outputs): by how long the
  match is where the token is drafted (2-3 tokens is often chance, 16+ is a copy that tends to
  go on) and by the count-based probability of the drafted token (several different
  continuations seen: less sure). Draft i of a match of m tokens is judged at match length
  m + i: it is verified only if the i drafts before it were accepted, and then the text's end
  matches m + i tokens. So a confirmed copy earns longer drafts as it goes on;
- model drafts: by the draft model's own probability of the token (its confidence).
"""

from __future__ import annotations

import bisect
from typing import Callable, Optional, Sequence

import numpy as np


def expected_tokens(alphas: Sequence[float]) -> list[float]:
    """E(k) for k = 0..len(alphas): 1 (the target's own token) + expected accepted drafts."""
    out, survive = [1.0], 1.0
    for a in alphas:
        survive *= a
        out.append(out[-1] + survive)
    return out


def draft_rates(alphas: Sequence[float], cost: Callable[[int], float]) -> list[float]:
    """E(k) / cost(k), tokens per second, for k = 0..len(alphas)."""
    return [e / c if c > 0 else 0.0 for e, c in ((e, cost(k)) for k, e in enumerate(expected_tokens(alphas)))]


def best_draft_length(alphas: Sequence[float], cost: Callable[[int], float]) -> tuple[int, float]:
    """(k, tokens per second) maximizing E(k) / cost(k) over k = 0..len(alphas)."""
    rates = draft_rates(alphas, cost)
    k = max(range(len(rates)), key=rates.__getitem__)
    return k, rates[k]


def time_saved(alphas: Sequence[float], k: int, t1: float, cost: Callable[[int], float]) -> float:
    """Expected seconds a round verifying the first k drafts saves against plain decoding."""
    return expected_tokens(alphas[:k])[-1] * t1 - cost(k)


# A draft's first tokens are split off into a round of their own (first_round_of_two) only if
# the copy breaks within them at least this often: a 10-15-token match breaks within the next
# 8 tokens about half the time, a 32-token one less than once in a hundred.
MIN_BREAK_RISK = 0.1


def first_round_of_two(alphas: Sequence[float], k: int, t1: float, cost: Callable[[int], float],
                       most: int) -> Optional[int]:
    """w < k if verifying w drafts now and the rest next round is expected to save more time
    than verifying all k now; None otherwise. `cost(j)` is the time of a round of j drafts.

    Where acceptance rises along the draft (a match that grows is more likely a copy), a long
    draft puts its riskiest tokens in its most expensive round. Verifying the first w + 1
    tokens cheaply first (the round's own token tells whether draft w would have been right)
    and the rest next round costs one more round when the copy holds, and saves the long
    round's rest when it breaks early. On a CPU, where a batch of 48 costs 15-25 plain steps and
    a match of 10-15 tokens breaks within the next 8 about half the time (dev subset, raw
    completions: 45%; chat answers: 62%), waiting pays; where a batch costs about one step (a
    GPU), or the start is as safe as the rest, it does not.

    Both plans cover the same k + 1 tokens and are compared by the time they are expected to
    save (it adds up over a generation). The rest is priced at what it adds to the long round
    plus one plain step for the extra round, not at a round of its own: a measured cost curve
    is bumpy, and a split that only exploited a bump would be planned again next round, and
    the long round never come. For the same reason only a risky start is split off (one that
    breaks at least MIN_BREAK_RISK of the time): shorter rounds always waste less when a draft
    breaks, and a start as safe as the rest would be split off again next round, and again.
    A broken copy is followed by plain decoding (saves nothing).
    """
    if k <= 1:
        return None
    best_w, best = None, time_saved(alphas, k, t1, cost)
    for w in range(0, min(most, k - 1) + 1):
        survive = float(np.prod(alphas[: w + 1]))  # drafts 0..w-1 accepted, draft w = the round's own token
        if survive > 1.0 - MIN_BREAK_RISK:
            continue
        rest_tokens = expected_tokens(alphas[w + 1 : k])[-1]
        rest_seconds = cost(k) - cost(w) + t1
        saved = time_saved(alphas, w, t1, cost) + survive * (rest_tokens * t1 - rest_seconds)
        if saved > best:
            best_w, best = w, saved
    return best_w


class AcceptanceTable:
    """alpha per key, Beta-smoothed towards a prior, with fading counts (recent rounds weigh
    more: a prompt of code and one of prose accept differently)."""

    def __init__(self, prior: Callable[[object], float], prior_weight: float, fade: float):
        self.prior = prior
        self.prior_weight = prior_weight
        self.fade = fade
        self.counts: dict[object, list[float]] = {}

    def estimate(self, key) -> float:
        accepted, seen = self.counts.get(key, (0.0, 0.0))
        return (accepted + self.prior_weight * self.prior(key)) / (seen + self.prior_weight)

    def observe(self, key, accepted: bool) -> None:
        c = self.counts.setdefault(key, [0.0, 0.0])
        c[0] = c[0] * self.fade + float(accepted)
        c[1] = c[1] * self.fade + 1.0


# Match-length buckets (lower bounds) and how often a draft after such a match is accepted
# before anything is learned: a match of 1-3 tokens is often chance, 16+ tokens is a copy, and
# a copy that has gone on for 32-64 tokens rarely stops at the next one. On a CPU only such
# near-certain drafts pay at 32-64 tokens (a wrong draft of 64 costs 15-30 plain steps), so
# the long buckets carry the copy's whole case; the learned counts correct them either way.
# Set a little below what `scripts/lookup-calibration acceptance` measured on the dev subset
# (greedy, every token judged at its match length): raw completions 0.26, 0.51, 0.66, 0.61,
# 0.80, 0.86, 0.99, 1.00, 1.00, 0.997 from 1 to 64 tokens; answers in the chat template, which
# paraphrase their prompt more than they copy it, 0.22, 0.48, 0.61, 0.63, 0.79, 0.84, 0.95,
# 0.88, 0.98, 1.00 (long matches are rarer there: 927 tokens at 16-23 against 1721 raw, 317
# at 64+ against 24586).
MATCH_BUCKETS = (1, 2, 3, 4, 6, 10, 16, 24, 32, 64)
MATCH_PRIOR = {1: 0.25, 2: 0.4, 3: 0.5, 4: 0.55, 6: 0.7, 10: 0.8, 16: 0.95, 24: 0.99, 32: 0.995, 64: 0.995}
CHAT_MATCH_PRIOR = {1: 0.2, 2: 0.4, 3: 0.5, 4: 0.55, 6: 0.7, 10: 0.8, 16: 0.88, 24: 0.88, 32: 0.95, 64: 0.97}
# Buckets of the count-based probability of a drafted token (lower bounds).
COUNT_PROB_BUCKETS = (0.0, 0.3, 0.5, 0.7, 0.9, 0.999)
# Prior weight in observations. The tokens of one copy are observed one after the other (match
# 10, 11, 12 ... of the same passage) and say much the same thing, so a few of them must not
# outweigh the calibrated guess: with a weight of 2, three accepted tokens of a short copy made
# the next 13-token match look 94% sure, and its 5-token bet lost (dev subset, simulated).
LOOKUP_PRIOR_WEIGHT = 4.0
# Per-observation fade of lookup counts: about the last 200 positions count. Slow, so that a
# long copy (a repetition loop) earns alphas close to 1 and drafts of 32-64 tokens.
LOOKUP_FADE = 0.995
# Fade of the generation-wide scale of lookup priors (about the last 30 positions).
SCALE_FADE = 0.97
# Pseudo-observations behind the scale's start at 1: two lucky drafts move it by about 10%.
SCALE_PRIOR_WEIGHT = 4.0
# A new generation starts from the priors: one prompt's copies say little about the next one's
# (a raw summary copies its article for hundreds of tokens, a chat summary paraphrases it), and
# acceptance carried from a copy-heavy prompt made the next, weak one bet and lose (simulated
# over the dev outputs as a --jsonl batch: minimum 0.98x plain with a little carried, 0.99x
# without, at the same mean).
# No prior is raised above this by the scale: a guess is never certainty (0.995: a 64-token
# copy is expected to hold for about 55 of them).
MAX_PRIOR = 0.995


def match_bucket(match_length: int) -> int:
    return MATCH_BUCKETS[max(bisect.bisect_right(MATCH_BUCKETS, match_length) - 1, 0)]


def count_prob_bucket(prob: float) -> float:
    return COUNT_PROB_BUCKETS[max(bisect.bisect_right(COUNT_PROB_BUCKETS, prob) - 1, 0)]


class LookupAcceptance:
    """alpha of lookup drafts by (match-length bucket, count-probability bucket).

    A key's prior is its static guess scaled by how lookup drafts have fared against their
    static guesses lately: on a summary most matches continue, in fresh code few do, and a key
    not tried yet should inherit that rather than a fixed guess.
    """

    def __init__(self, match_weight: float = 1.0, chat: bool = False):
        self.match_weight = match_weight  # how many tokens of the text's own match one matched token is worth
        self.match_prior = CHAT_MATCH_PRIOR if chat else MATCH_PRIOR
        self.table = AcceptanceTable(self._prior, LOOKUP_PRIOR_WEIGHT, LOOKUP_FADE)
        # Fading sums of outcomes and of static guesses, starting at SCALE_PRIOR_WEIGHT each.
        self._accepted = self._expected = SCALE_PRIOR_WEIGHT

    def begin_generation(self) -> None:
        self.table.counts.clear()
        self._accepted = self._expected = SCALE_PRIOR_WEIGHT

    def static_prior(self, key) -> float:
        bucket, prob = key
        return self.match_prior[bucket] * max(prob, 0.2)

    def _prior(self, key) -> float:
        # The scale multiplies the odds, not the probability: a few lucky short drafts must not
        # turn a 0.75 guess into near-certainty (a 32-token bet that fails costs 15 plain steps).
        prior = self.static_prior(key)
        odds = prior / (1.0 - prior) * self._accepted / self._expected
        return min(odds / (1.0 + odds), MAX_PRIOR)

    def key(self, match_length: int, prob: float) -> tuple[int, float]:
        return match_bucket(int(match_length * self.match_weight)), count_prob_bucket(prob)

    def alphas(self, match_length: int, probs: Optional[Sequence[float]], n: int) -> list[float]:
        """alpha of each of n drafts after a match of match_length tokens (draft i at m + i)."""
        probs = probs if probs is not None else [1.0] * n
        return [self.table.estimate(self.key(match_length + i, p)) for i, p in enumerate(probs[:n])]

    def observe(self, match_length: int, prob: float, accepted: bool) -> None:
        """One drafted token checked against the target's, drafted where the text's end matched
        match_length tokens (verified, or a shadow: see policy.py)."""
        key = self.key(match_length, prob)
        self._accepted = SCALE_FADE * self._accepted + float(accepted)
        self._expected = SCALE_FADE * self._expected + self.static_prior(key)
        self.table.observe(key, accepted)


# A match in the memory of earlier outputs counts as a match of half as many tokens in the
# text's own history: the same words in another answer to another prompt are often followed by
# something else (boilerplate such as `doctest.testmod()  # ...` ends differently each time).
MEMORY_MATCH_WEIGHT = 0.5


# Edges of the draft model's confidence buckets; the prior of a bucket is its middle.
CONFIDENCE_BUCKETS = np.array([0.2, 0.4, 0.6, 0.8, 0.9, 0.97])
CONFIDENCE_PRIOR_WEIGHT = 4.0  # a model's confidence is a fair guess: trust it for a few rounds
CONFIDENCE_FADE = 0.995


def confidence_bucket(confidence: float) -> int:
    return int(np.searchsorted(CONFIDENCE_BUCKETS, confidence, side="right"))


def _confidence_prior(bucket) -> float:
    edges = np.concatenate([[0.0], CONFIDENCE_BUCKETS, [1.0]])
    return float(0.5 * (edges[bucket] + edges[bucket + 1]))


class ConfidenceAcceptance:
    """alpha of model drafts by the draft model's probability of the token."""

    def __init__(self):
        self.table = AcceptanceTable(_confidence_prior, CONFIDENCE_PRIOR_WEIGHT, CONFIDENCE_FADE)

    def alpha(self, confidence: float) -> float:
        return self.table.estimate(confidence_bucket(confidence))

    def best_alpha(self) -> float:
        """The highest acceptance of any confidence bucket: what the model's surest tokens get."""
        return max(self.table.estimate(bucket) for bucket in range(len(CONFIDENCE_BUCKETS) + 1))

    def observe(self, confidence: float, accepted: bool) -> None:
        self.table.observe(confidence_bucket(confidence), accepted)
