"""Sampling maths: pure numpy, no llama.cpp.

Two ways to verify sampled drafts, both exact (the emitted tokens have the target's
distribution p whatever the drafts are):

- **gumbel** (the default, drafter-invariant; Daliri, Musco and Suresh 2024): the target's
  token at output position t is argmax_i(logits_i / T + g_t(i)) over the filtered support,
  with the counter-based noise of noise.py. A draft model proposes the same argmax over its own
  logits with the same noise; a draft token stands when it equals the target's own choice. The
  text is a function of the seed and the target's logits alone: the same whatever the drafter.
- **rejection** (Leviathan et al. 2023, Algorithm 1; the maximal coupling): (Leviathan et al. 2023, Algorithm 1) names the target's distribution p and
the draft's q; so do we. A draft token x ~ q is accepted with probability min(1, p(x) / q(x));
at the first rejection the replacement is drawn from norm(max(0, p - q)). The emitted tokens
then have exactly the target's distribution p. An n-gram draft is a point mass (q(x) = 1): it is
accepted with probability p(x), and the residual is p with x removed.

Filters follow llama.cpp's default chain: top-k, then top-p, then min-p on the raw logits,
then temperature over the survivors. p and q go through the same filters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .noise import G_LOW, GumbelNoise

SAMPLERS = ("gumbel", "rejection")
# Drafter-invariant sampling by default: one seed gives one text whatever the mode, drafter or
# timing (auto mode's choices follow wall-clock costs). It accepts 6-15% fewer model drafts than
# rejection sampling (README, "Which sampler"), and as many lookup drafts.
DEFAULT_SAMPLER = "gumbel"


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    min_p: float = 0.0  # 0 = off

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    @property
    def filtered(self) -> bool:
        return 0 < self.top_k or self.top_p < 1.0 or self.min_p > 0.0


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - np.max(logits)
    e = np.exp(z)
    return e / e.sum()


def filter_logits(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """A float64 copy of `logits` with every token the filters drop set to -inf."""
    out = logits.astype(np.float64)
    if 0 < params.top_k < out.size:
        kth_largest = np.partition(out, -params.top_k)[-params.top_k]
        out[out < kth_largest] = -np.inf
    if params.top_p < 1.0:
        out = _top_p(out, params.top_p)
    if params.min_p > 0.0:
        probs = softmax(out)
        out[probs < params.min_p * probs.max()] = -np.inf
    return out


def _top_p(logits: np.ndarray, top_p: float) -> np.ndarray:
    """Keep the smallest set of most likely tokens whose mass reaches top_p."""
    alive = np.flatnonzero(np.isfinite(logits))
    probs = softmax(logits[alive])
    order = np.argsort(-probs, kind="stable")
    cumulative = np.cumsum(probs[order])
    n_keep = int(np.searchsorted(cumulative, top_p)) + 1  # the token that crosses top_p stays
    dropped = alive[order[n_keep:]]
    logits[dropped] = -np.inf
    return logits


def logits_to_probs(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """The sampling distribution over the vocabulary (float64, sums to 1)."""
    filtered = filter_logits(logits, params)
    return softmax(filtered / params.temperature)


def greedy(logits: np.ndarray) -> int:
    return int(np.argmax(logits))


def top_probability(logits: np.ndarray, top: int) -> float:
    """softmax(logits)[top] for the argmax `top`, in one float32 pass (the draft's confidence)."""
    return float(1.0 / np.exp(logits - logits[top]).sum(dtype=np.float64))


def token_logprobs(logits: np.ndarray, token: int, n_top: int) -> tuple[float, list[tuple[int, float]]]:
    """log p(token) under softmax(logits), the model's own distribution (no temperature, no
    truncation: what an API's logprobs report), and the n_top likeliest tokens with theirs,
    likeliest first. Tokens made impossible (-inf, a suppressed end of generation) are never
    among them."""
    row = np.asarray(logits, dtype=np.float64)
    peak = float(row.max())
    log_z = peak + float(np.log(np.exp(row - peak).sum()))
    chosen = float(row[token]) - log_z
    n_top = min(n_top, int(np.isfinite(row).sum()))
    if n_top <= 0:
        return chosen, []
    top = np.argpartition(-row, n_top - 1)[:n_top]
    top = top[np.argsort(-row[top], kind="stable")]
    return chosen, [(int(t), float(row[t]) - log_z) for t in top]


def sample(probs: np.ndarray, rng: np.random.Generator) -> int:
    # Inverse-CDF sampling: O(V) with one random number, much cheaper than rng.choice.
    cdf = np.cumsum(probs)
    index = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    return min(index, probs.size - 1)


def accept_probability(p_x: float, q_x: float) -> float:
    """min(1, p(x) / q(x)); q(x) > 0 because x was drawn from q."""
    return 1.0 if p_x >= q_x else p_x / q_x


def speculative_accept(p: np.ndarray, q: np.ndarray | None, x: int, rng: np.random.Generator) -> bool:
    """Accept draft token x? `q` None means a point-mass draft (q(x) = 1)."""
    q_x = 1.0 if q is None else float(q[x])
    return rng.random() < accept_probability(float(p[x]), q_x)


def residual_distribution(p: np.ndarray, q: np.ndarray | None, x: int) -> np.ndarray:
    """norm(max(0, p - q)): where to sample after rejecting x. A point mass q removes x from p."""
    if q is None:
        residual = p.copy()
        residual[x] = 0.0
    else:
        residual = np.maximum(p - q, 0.0)
    total = residual.sum()
    if total <= 0.0:
        # Only reachable through rounding when p == q (then rejection has probability ~0).
        return p
    return residual / total


def support(logits: np.ndarray, params: SamplingParams) -> np.ndarray | None:
    """The ids the filters keep (None: all of them)."""
    if not params.filtered:
        return None
    if 0 < params.top_k < logits.size and params.top_p >= 1.0:
        # top-k (then min-p) alone: no pass over the whole distribution needed.
        ids = np.argpartition(logits, -params.top_k)[-params.top_k :]
        if params.min_p > 0.0:
            sub = logits[ids]
            ids = ids[sub >= sub.max() + np.log(params.min_p)]
        return np.sort(ids)
    return np.flatnonzero(np.isfinite(filter_logits(logits, params)))


def gumbel_choice(logits: np.ndarray, params: SamplingParams, noise: GumbelNoise, t: int) -> int:
    """argmax over the support of logits / T + g_t: an exact sample of the filtered, tempered
    distribution, and the same choice for every model whose distribution agrees.

    Noise is computed only where it can matter: the lucky ids of position t (see noise.py) and
    the ids within G_LOW (scaled) of the best perturbed value found so far.
    """
    if params.greedy:
        return greedy(logits)
    n_vocab, inv_t = logits.size, 1.0 / params.temperature
    allowed = support(logits, params)
    if allowed is not None and allowed.size <= 4096:
        scores = logits[allowed].astype(np.float64) * inv_t + noise.values(t, allowed, n_vocab)
        return int(allowed[int(np.argmax(scores))])
    lucky_ids, lucky_g = noise.lucky(t, n_vocab)
    if allowed is not None:
        keep = np.isin(lucky_ids, allowed, assume_unique=True)
        lucky_ids, lucky_g = lucky_ids[keep], lucky_g[keep]
        top = int(allowed[int(np.argmax(logits[allowed]))])
    else:
        top = greedy(logits)
    # A lower bound on the winning value: the best of the top token and the lucky ones.
    lucky_scores = logits[lucky_ids].astype(np.float64) * inv_t + lucky_g
    best = float(logits[top]) * inv_t + noise.value(t, top, n_vocab)
    if lucky_scores.size:
        best = max(best, float(lucky_scores.max()))
    # Outside the lucky set g < G_LOW: only ids whose scaled logit is above best - G_LOW can win.
    candidates = np.flatnonzero(logits > (best - G_LOW) * params.temperature)
    if allowed is not None:
        candidates = candidates[np.isin(candidates, allowed, assume_unique=True)]
    scores = logits[candidates].astype(np.float64) * inv_t + noise.values(t, candidates, n_vocab)
    winner, winner_score = top, -np.inf
    if scores.size:
        winner, winner_score = int(candidates[int(np.argmax(scores))]), float(scores.max())
    if lucky_scores.size and float(lucky_scores.max()) > winner_score:
        winner = int(lucky_ids[int(np.argmax(lucky_scores))])
    return winner


def verify_greedy(logits_tgt: np.ndarray, draft_tokens) -> tuple[int, int]:
    """(accepted count, target's next token): drafts stand while they are the target's argmax."""
    for i, x in enumerate(draft_tokens):
        target_choice = greedy(logits_tgt[i])
        if target_choice != x:
            return i, target_choice
    return len(draft_tokens), greedy(logits_tgt[len(draft_tokens)])


def verify_gumbel(
    logits_tgt: np.ndarray, draft_tokens, params: SamplingParams, noise: GumbelNoise, t0: int
) -> tuple[int, int]:
    """Drafts stand while they equal the target's own Gumbel-max choice at their position."""
    for i, x in enumerate(draft_tokens):
        target_choice = gumbel_choice(logits_tgt[i], params, noise, t0 + i)
        if target_choice != x:
            return i, target_choice
    n = len(draft_tokens)
    return n, gumbel_choice(logits_tgt[n], params, noise, t0 + n)


def verify_rejection(
    logits_tgt: np.ndarray, draft_tokens, draft_probs, params: SamplingParams, rng: np.random.Generator
) -> tuple[int, int]:
    """Speculative sampling: accept x ~ q with min(1, p/q), else resample from norm(max(0, p - q)).
    `draft_probs` None: point-mass drafts (n-gram, cross-vocabulary)."""
    for i, x in enumerate(draft_tokens):
        p = logits_to_probs(logits_tgt[i], params)
        q = draft_probs[i] if draft_probs is not None else None
        if not speculative_accept(p, q, x, rng):
            return i, sample(residual_distribution(p, q, x), rng)
    # Every draft accepted: the bonus token comes from the target alone.
    p = logits_to_probs(logits_tgt[len(draft_tokens)], params)
    return len(draft_tokens), sample(p, rng)


class Sampler:
    """One generation's sampling: how a model drafts the token at output position t, and how
    the target verifies a round's drafts. Greedy (temperature 0) is the Gumbel case g = 0.

    `seed` keys the Gumbel noise, or seeds the rejection sampler's generators: one for
    verification, one for drafting, so that how much a round drafts never shifts the draws
    that decide verification.
    """

    def __init__(self, params: SamplingParams, kind: str = DEFAULT_SAMPLER, seed: int = 0):
        if kind not in SAMPLERS:
            raise ValueError(f"unknown sampler {kind!r}")
        self.params = params
        self.seed = seed
        self.kind = "greedy" if params.greedy else kind
        self.noise = GumbelNoise(seed) if self.kind == "gumbel" else None
        self.rng_verify = np.random.default_rng([seed, 0])
        self.rng_draft = np.random.default_rng([seed, 1])

    def choose_draft(self, logits: np.ndarray, t: int, want_confidence: bool) -> tuple[int, float, np.ndarray | None]:
        """(token, the draft's probability of it, q or None) for a model draft at position t.
        q is returned only for the rejection sampler, which needs it to verify."""
        if self.kind == "rejection":
            q = logits_to_probs(logits, self.params)
            token = sample(q, self.rng_draft)
            return token, float(q[token]), q
        if self.kind == "greedy":
            token = greedy(logits)
            return token, top_probability(logits, token) if want_confidence else 1.0, None
        token = gumbel_choice(logits, self.params, self.noise, t)
        if not want_confidence:
            return token, 1.0, None
        allowed = support(logits, self.params)
        row = logits if allowed is None else logits[allowed]
        scaled = (row.astype(np.float64) - float(logits[token])) / self.params.temperature
        return token, float(1.0 / np.exp(scaled).sum()), None

    def verify(self, logits_tgt: np.ndarray, draft_tokens, draft_probs, t0: int) -> tuple[int, int]:
        """(accepted drafts, the target's own next token) for drafts at positions t0, t0+1, ..."""
        if self.kind == "greedy":
            return verify_greedy(logits_tgt, draft_tokens)
        if self.kind == "gumbel":
            return verify_gumbel(logits_tgt, draft_tokens, self.params, self.noise, t0)
        return verify_rejection(logits_tgt, draft_tokens, draft_probs, self.params, self.rng_verify)


class DraftChooser:
    """What a model drafter calls for draft position j of a round that starts at output position t0."""

    def __init__(self, sampler: Sampler, t0: int):
        self.sampler = sampler
        self.t0 = t0

    @property
    def kind(self) -> str:
        return self.sampler.kind

    def __call__(self, j: int, logits: np.ndarray, want_confidence: bool) -> tuple[int, float, np.ndarray | None]:
        return self.sampler.choose_draft(logits, self.t0 + j, want_confidence)
