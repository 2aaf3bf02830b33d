"""Auto mode: per round, draft what is expected to pay on this machine, or nothing.

A round that verifies k drafts costs  C(k) = (drafting time) + T_target(k+1)  and emits
E(k) = 1 + sum_{j<=k} prod_{i<=j} alpha_i  tokens in expectation, where alpha_i is the chance
that draft i is accepted given that the ones before it were. Plain decoding emits 1 token per
T_target(1). A round drafts only when E(k)/C(k) beats that, by a margin.

- T_target(n) is measured per batch size n (on CPUs it is far from flat, and not even
  monotone: batches of 4 or 8 can be cheaper than 3 or 7) at load time and refined by every
  round. The draft model's per-token time is measured the same way.
- n-gram drafts cost nothing to make; their alpha_i is learned per match length and position.
- A model draft stops early when the draft's own confidence says the next token is unlikely
  to be accepted (the p_min idea of llama.cpp, made cost-aware), and is then trimmed to the
  prefix with the best expected rate. Whether model drafting pays at all is judged from the
  tokens per second its rounds actually achieved, tried again now and then.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from .drafters import NO_DRAFT, Draft, ModelDrafter, NgramDrafter
from .llama import Context

EMA_WEIGHT = 0.2  # weight of a new cost measurement
MARGIN = 1.03  # a draft must promise 3% more tokens/s than a plain step
CONFIDENCE_BUCKETS = np.array([0.2, 0.4, 0.6, 0.8, 0.9, 0.97])
# A draft model this far behind is not worth a look just to re-measure it: catching up
# would cost more than the look can win back.
MAX_EXPLORE_LAG = 8


def expected_tokens(alphas: Sequence[float]) -> list[float]:
    """E(k) for k = 0..len(alphas): 1 (the target's own token) + expected accepted drafts."""
    out, survive = [1.0], 1.0
    for a in alphas:
        survive *= a
        out.append(out[-1] + survive)
    return out


def best_draft_length(alphas: Sequence[float], cost: Callable[[int], float]) -> tuple[int, float]:
    """(k, tokens per second) maximizing E(k) / cost(k) over k = 0..len(alphas)."""
    best_k, best_rate = 0, 0.0
    for k, e in enumerate(expected_tokens(alphas)):
        c = cost(k)
        rate = e / c if c > 0 else 0.0
        if rate > best_rate:
            best_k, best_rate = k, rate
    return best_k, best_rate


@dataclass
class CostModel:
    """Seconds per decode call, by batch size, for the target and the draft."""

    target: dict[int, float] = field(default_factory=dict)
    draft: dict[int, float] = field(default_factory=dict)
    # Tokens/s of model-draft rounds relative to plain decoding, as last measured here.
    model_rate_ratio: Optional[float] = None

    @staticmethod
    def _lookup(table: dict[int, float], n: int) -> float:
        if n in table:
            return table[n]
        if not table:
            return 0.0
        # Unmeasured size: the next larger measured one is a safe (pessimistic) stand-in.
        larger = [m for m in table if m > n]
        if larger:
            return table[min(larger)]
        top = max(table)
        return table[top] * n / top

    def target_time(self, n: int) -> float:
        return self._lookup(self.target, n)

    def plain_rate(self) -> float:
        """Tokens per second of plain decoding: 1 / T(1) (0 before anything is measured)."""
        t1 = self.target_time(1)
        return 1.0 / t1 if t1 > 0 else 0.0

    def draft_time(self, n: int) -> float:
        return self._lookup(self.draft, n)

    @staticmethod
    def _observe(table: dict[int, float], n: int, seconds: float) -> None:
        old = table.get(n)
        table[n] = seconds if old is None else (1 - EMA_WEIGHT) * old + EMA_WEIGHT * seconds

    def observe_target(self, n: int, seconds: float) -> None:
        self._observe(self.target, n, seconds)

    def observe_draft(self, n: int, seconds: float) -> None:
        self._observe(self.draft, n, seconds)

    @property
    def calibrated(self) -> bool:
        return bool(self.target)

    def calibrate(self, target: Context, draft: Optional[Context], max_batch: int) -> None:
        """Time decodes of batch sizes up to max_batch (after a warm-up) on scratch positions:
        every size up to 9, then a few larger ones (unmeasured sizes cost as the next larger)."""
        sizes = sorted({n for n in (*range(1, 10), 12, 16, 24, 32) if n < max_batch} | {max_batch})
        self.target.update(time_batches(target, sizes))
        if draft is not None:
            self.draft.update(time_batches(draft, (1, 2, 4, 8)))

    # A measured profile is reused across runs of the same models and settings.
    def save(self, path: Path, key: str) -> None:
        try:
            data = json.loads(path.read_text()) if path.exists() else {}
        except (OSError, ValueError):
            data = {}
        data[key] = {"target": self.target, "draft": self.draft, "model_rate_ratio": self.model_rate_ratio,
                     "saved": time.time()}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data))
            os.replace(tmp, path)
        except OSError:
            pass  # a cache we cannot write only costs a calibration next time

    def load(self, path: Path, key: str) -> bool:
        try:
            entry = json.loads(path.read_text())[key]
            self.target = {int(n): float(s) for n, s in entry["target"].items()}
            self.draft = {int(n): float(s) for n, s in entry["draft"].items()}
            ratio = entry.get("model_rate_ratio")
            self.model_rate_ratio = float(ratio) if ratio is not None else None
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return bool(self.target)


def time_batches(ctx: Context, sizes: Sequence[int]) -> dict[int, float]:
    """Decode scratch tokens after the cached ones, time each batch, then forget them."""
    n_keep = ctx.n_past
    sizes = [n for n in sizes if n_keep + 1 + n <= ctx.n_ctx]
    filler = ctx.model.vocab.tokenize(" the quick brown fox jumps over the lazy dog" * 4, add_special=False)
    filler = (filler * (1 + max(sizes, default=1) // max(len(filler), 1)))[: max(sizes, default=1) + 1]
    times: dict[int, float] = {}
    try:
        ctx.decode(filler[:1])  # warm-up: first decodes allocate buffers
        for n in sizes:
            best = float("inf")
            for _ in range(2):
                start = time.perf_counter()
                ctx.decode(filler[1 : 1 + n], all_logits=True)
                best = min(best, time.perf_counter() - start)
                ctx.truncate(n_keep + 1)
            times[n] = best
    finally:
        ctx.truncate(n_keep)
    return times


class AcceptanceTable:
    """alpha per key (n-gram size and position, or draft-confidence bucket), Beta-smoothed, fading."""

    def __init__(self, prior: Callable[[object], float], prior_weight: float = 2.0, fade: float = 0.98):
        self.prior = prior
        self.prior_weight = prior_weight
        self.fade = fade
        self.counts: dict[object, list[float]] = {}

    def estimate(self, key) -> float:
        accepted, seen = self.counts.get(key, (0.0, 0.0))
        return (accepted + self.prior_weight * self.prior(key)) / (seen + self.prior_weight)

    def observe(self, key, accepted: bool) -> None:
        c = self.counts.setdefault(key, [0.0, 0.0])
        # Fading counts: recent rounds weigh more (prompts differ: code, prose, summaries).
        c[0] = c[0] * self.fade + float(accepted)
        c[1] = c[1] * self.fade + 1.0


# Match-length buckets (lower bounds) and how likely a draft after such a match is accepted
# before anything is learned. A match of 2-3 tokens is often chance; 10+ tokens is a copy.
MATCH_BUCKETS = (1, 2, 3, 4, 6, 10, 16)
MATCH_PRIOR = {1: 0.15, 2: 0.25, 3: 0.35, 4: 0.45, 6: 0.6, 10: 0.7, 16: 0.8}
POSITION_DECAY = 0.9
MATCH_REACH = 2  # n-gram drafts are at most this many times the match length


def match_bucket(match_length: int) -> int:
    return max(b for b in MATCH_BUCKETS if b <= max(match_length, 1))


class NgramAcceptance:
    """alpha of n-gram drafts by (match-length bucket, draft position).

    A key's prior is its static guess scaled by how this generation's n-gram drafts have fared
    against their static guesses so far: on a summary most matches continue, in fresh code few
    do, and a bucket not tried yet should inherit that rather than a fixed guess.
    """

    def __init__(self):
        self.by_bucket = AcceptanceTable(self._prior, prior_weight=2.0, fade=0.97)
        self._accepted = 1.0  # fading sums of outcomes and of static guesses, with a prior of 1:1
        self._expected = 1.0

    @staticmethod
    def static_prior(key) -> float:
        bucket, position = key
        return MATCH_PRIOR[bucket] * POSITION_DECAY**position

    def _prior(self, key) -> float:
        return min(self.static_prior(key) * self._accepted / self._expected, 0.95)

    def estimate(self, match_length: int, position: int) -> float:
        return self.by_bucket.estimate((match_bucket(match_length), position))

    def observe(self, match_length: int, position: int, accepted: bool) -> None:
        key = (match_bucket(match_length), position)
        self._accepted = 0.97 * self._accepted + float(accepted)
        self._expected = 0.97 * self._expected + self.static_prior(key)
        self.by_bucket.observe(key, accepted)



def _confidence_prior(bucket) -> float:
    edges = np.concatenate([[0.0], CONFIDENCE_BUCKETS, [1.0]])
    return float(0.5 * (edges[bucket] + edges[bucket + 1]))


def confidence_bucket(confidence: float) -> int:
    return int(np.searchsorted(CONFIDENCE_BUCKETS, confidence, side="right"))


class AutoPolicy:
    mode = "auto"

    def __init__(self, ngram: NgramDrafter, model: Optional[ModelDrafter], *, max_k: int, costs: CostModel,
                 learned: Optional["Learned"] = None):
        self.ngram = ngram
        self.model = model
        self.k = max_k
        self.costs = costs
        self.learned = learned or Learned()
        self._last_round: tuple[str, float] = ("none", 0.0)

    def begin(self, prompt: Sequence[int]) -> None:
        self.ngram.begin(prompt)
        if self.model is not None and self.learned.model_worth_trying(self.costs.plain_rate()):
            self.model.begin(prompt)

    def draft(self, history: Sequence[int], max_k: int, rng: np.random.Generator) -> Draft:
        k_max = min(self.k, max_k)
        plain = self.costs.plain_rate()
        if k_max <= 0 or plain <= 0:
            return self._chosen(NO_DRAFT, 0.0)

        start = time.perf_counter()
        tokens, n = self.ngram.lookup(history, k_max)
        # A match of n tokens predicts a copy of about that length, not more: long drafts are
        # for long matches (a verify of 16 tokens costs 3-4 plain steps on a CPU).
        tokens = tokens[: max(2, MATCH_REACH * n)]
        ngram_k, ngram_rate = 0, 0.0
        if tokens:
            alphas = [self.learned.ngram.estimate(n, i) for i in range(len(tokens))]
            ngram_k, ngram_rate = best_draft_length(alphas, lambda k: self.costs.target_time(k + 1))
        lookup_seconds = time.perf_counter() - start

        model_rate = self.learned.model_rate(plain) if self.model is not None else 0.0
        explore = (
            self.model is not None
            and self.learned.should_explore_model()
            and self._model_lag(history) <= MAX_EXPLORE_LAG
        )
        if ngram_k > 0 and ngram_rate >= max(plain * MARGIN, model_rate):
            return self._chosen(Draft(tokens=tokens[:ngram_k], source="ngram", ngram_size=n), lookup_seconds)
        if self.model is not None and (model_rate > plain * MARGIN or explore):
            return self._model_draft(history, k_max, rng)
        return self._chosen(NO_DRAFT, lookup_seconds)

    def _model_lag(self, history: Sequence[int]) -> int:
        """About how many tokens the draft model must decode before it can draft."""
        return len(history) - self.model.context.n_past

    def _model_draft(self, history: Sequence[int], k_max: int, rng: np.random.Generator) -> Draft:
        start = time.perf_counter()
        alphas: list[float] = []
        per_token = self.costs.draft_time(1)

        def keep_drafting(i: int, confidence: float) -> bool:
            alphas.append(self.learned.confidence_alpha(confidence))
            rate_now = expected_tokens(alphas)[-1] / ((i + 1) * per_token + self.costs.target_time(i + 2))
            # One more token is worth drafting if its expected gain (it survives and is accepted,
            # guessing the next confidence like this one) comes faster than the current rate.
            gain = float(np.prod(alphas)) * alphas[-1]
            extra_cost = per_token + max(self.costs.target_time(i + 3) - self.costs.target_time(i + 2), 0.0)
            return gain > rate_now * extra_cost

        draft = self.model.propose(history, k_max, rng, keep_drafting)
        seconds = time.perf_counter() - start
        if draft.tokens:
            # Drafting time is spent now; verify the prefix with the best expected rate.
            alphas = [self.learned.confidence_alpha(c) for c in draft.confidence]
            k, _ = best_draft_length(alphas, lambda k: seconds + self.costs.target_time(k + 1))
            draft = draft.prefix(k)
        return self._chosen(draft, seconds, tried="model")

    def _chosen(self, draft: Draft, draft_seconds: float, tried: str | None = None) -> Draft:
        # `tried` differs from draft.source when a model draft was trimmed to nothing.
        self._last_round = (tried or draft.source, draft_seconds)
        return draft

    def observe(self, draft: Draft, n_accepted: int, target_seconds: float) -> None:
        source, draft_seconds = self._last_round
        self.costs.observe_target(len(draft) + 1, target_seconds)
        verified = min(len(draft), n_accepted + 1)  # positions after the first rejection are unobserved
        if source == "ngram":
            for i in range(verified):
                self.learned.ngram.observe(draft.ngram_size, i, i < n_accepted)
        elif source == "model":
            for i in range(verified):
                self.learned.observe_confidence(draft.confidence[i], i < n_accepted)
            self.learned.observe_model_round((n_accepted + 1) / (draft_seconds + target_seconds), self.costs.plain_rate())
        self.learned.rounds += 1


class Learned:
    """What auto mode has learned about acceptance; shared by the generations of one engine."""

    def __init__(self):
        self.ngram = NgramAcceptance()
        self.confidence = AcceptanceTable(_confidence_prior, prior_weight=4.0, fade=0.995)
        self.model_rounds_rate: Optional[float] = None
        self.rounds = 0
        self.last_model_round = -(10**9)
        self.explore_interval = 16

    def confidence_alpha(self, confidence: float) -> float:
        return self.confidence.estimate(confidence_bucket(confidence))

    def observe_confidence(self, confidence: float, accepted: bool) -> None:
        self.confidence.observe(confidence_bucket(confidence), accepted)

    def model_rate(self, plain_rate: float) -> float:
        # Untried: optimistic, so that the draft model gets measured.
        return self.model_rounds_rate if self.model_rounds_rate is not None else plain_rate * 1.5

    def start_from(self, model_rate_ratio: Optional[float], plain_rate: float) -> None:
        """Begin with what earlier runs on this machine measured, instead of probing the draft
        model at the start of every generation (a probe costs more than short outputs win)."""
        if model_rate_ratio is None or plain_rate <= 0:
            return
        self.model_rounds_rate = model_rate_ratio * plain_rate
        if model_rate_ratio < 1.0:
            self.last_model_round = 0
            self.explore_interval = 64

    def model_rate_ratio(self, plain_rate: float) -> Optional[float]:
        if self.model_rounds_rate is None or plain_rate <= 0:
            return None
        return self.model_rounds_rate / plain_rate

    def model_worth_trying(self, plain_rate: float) -> bool:
        return self.model_rate(plain_rate) > plain_rate

    def should_explore_model(self) -> bool:
        return self.rounds - self.last_model_round >= self.explore_interval

    def observe_model_round(self, tokens_per_second: float, plain_rate: float) -> None:
        old = self.model_rounds_rate
        self.model_rounds_rate = tokens_per_second if old is None else 0.7 * old + 0.3 * tokens_per_second
        self.last_model_round = self.rounds
        # Where model drafts do not pay, look again less and less often.
        if self.model_rounds_rate < plain_rate:
            self.explore_interval = min(self.explore_interval * 2, 1024)
        else:
            self.explore_interval = 16
