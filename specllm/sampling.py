"""Sampling maths: pure numpy, no llama.cpp.

Speculative sampling (Leviathan et al. 2023, Algorithm 1) names the target's distribution p and
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


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    min_p: float = 0.0  # 0 = off

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


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
