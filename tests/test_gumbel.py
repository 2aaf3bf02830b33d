"""Drafter-invariant sampling: the counter-based noise, the cheap Gumbel-max choice, and the
exactness arguments on hand-written distributions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from specllm.noise import EPS, G_LOW, GumbelNoise, mix, position_key, unit
from specllm.sampling import (
    Sampler,
    SamplingParams,
    filter_logits,
    gumbel_choice,
    support,
    verify_rejection,
)


def reference_noise(seed: int, t: int, ids: np.ndarray, n_vocab: int) -> np.ndarray:
    """The README's formula, written out plainly (slow: walks the lucky-set stream in Python)."""
    key = int(position_key(seed, t))
    lucky, a, j = set(), -1, 1
    while a < n_vocab:
        e = float(unit(mix(np.array([key ^ int(mix(np.array([(1 << 63) + j], dtype=np.uint64))[0])], dtype=np.uint64)))[0])
        a += 1 + math.floor(math.log(e) / math.log1p(-EPS))
        lucky.add(a)
        j += 1
    out = []
    for i in ids:
        v = float(unit(mix(np.array([key ^ int(mix(np.array([i], dtype=np.uint64))[0])], dtype=np.uint64)))[0])
        out.append(-math.log(-math.log1p(-EPS * v)) if i in lucky else -math.log(-math.log1p(-EPS) - math.log(v)))
    return np.array(out)


def test_noise_matches_the_documented_formula():
    noise = GumbelNoise(7)
    ids = np.array([0, 1, 5, 1000, 4095])
    lucky_ids, _ = noise.lucky(3, 4096)
    ids = np.concatenate([ids, lucky_ids[:3]])
    assert np.allclose(noise.values(3, ids, 4096), reference_noise(7, 3, ids, 4096))


def test_noise_is_standard_gumbel_and_depends_on_seed_and_position():
    n = 100_000
    g = GumbelNoise(1).values(0, np.arange(n), n)
    assert abs(g.mean() - np.euler_gamma) < 0.015
    assert abs(g.std() - math.pi / math.sqrt(6)) < 0.015
    assert not np.allclose(g[:100], GumbelNoise(2).values(0, np.arange(100), n))
    assert not np.allclose(g[:100], GumbelNoise(1).values(1, np.arange(100), n))
    # The lucky set holds about EPS of the ids, and nobody outside it reaches G_LOW.
    lucky_ids, lucky_g = GumbelNoise(1).lucky(0, n)
    assert abs(lucky_ids.size - EPS * n) < 5 * math.sqrt(EPS * n)
    outside = np.setdiff1d(np.arange(n), lucky_ids)
    assert g[outside].max() < G_LOW <= lucky_g.min()


def test_noise_does_not_depend_on_the_vocabulary_size():
    # A padded draft vocabulary must see the same noise on the ids it shares with the target.
    a, b = GumbelNoise(5), GumbelNoise(5)
    ids = np.arange(3000)
    assert np.array_equal(a.values(9, ids, 3000), b.values(9, ids, 5000))


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=1.0),
        SamplingParams(temperature=0.3),
        SamplingParams(temperature=0.8, top_k=20),
        SamplingParams(temperature=1.2, top_p=0.9),
        SamplingParams(temperature=0.7, min_p=0.05),
    ],
)
def test_cheap_choice_equals_the_full_argmax(params):
    rng = np.random.default_rng(0)
    noise = GumbelNoise(11)
    for t in range(60):
        logits = (rng.standard_normal(5000) * rng.uniform(0.5, 4.0)).astype(np.float32)
        full = filter_logits(logits, params) / params.temperature + noise.values(t, np.arange(5000), 5000)
        assert gumbel_choice(logits, params, noise, t) == int(np.argmax(full))


def test_support_is_what_the_filters_keep():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal(1000).astype(np.float32)
    for params in (SamplingParams(temperature=1, top_k=7), SamplingParams(temperature=1, top_k=30, min_p=0.2),
                   SamplingParams(temperature=1, top_p=0.5)):
        assert np.array_equal(support(logits, params), np.flatnonzero(np.isfinite(filter_logits(logits, params))))
    assert support(logits, SamplingParams(temperature=1)) is None


def test_gumbel_choice_samples_the_filtered_distribution():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32))
    params = SamplingParams(temperature=1.0)
    n = 8_000
    noise = GumbelNoise(3)
    counts = np.bincount([gumbel_choice(logits, params, noise, t) for t in range(n)], minlength=4)
    assert np.allclose(counts / n, [0.5, 0.3, 0.15, 0.05], atol=0.02)


def test_greedy_is_gumbel_with_zero_noise():
    logits = np.array([0.1, 2.0, 1.9], dtype=np.float32)
    assert gumbel_choice(logits, SamplingParams(temperature=0.0), GumbelNoise(0), 0) == 1


def test_a_draft_of_the_same_distribution_always_matches():
    # Same logits, same noise: the draft's choice is the target's, at every position.
    rng = np.random.default_rng(2)
    sampler = Sampler(SamplingParams(temperature=0.9), "gumbel", seed=4)
    for t in range(50):
        logits = rng.standard_normal(2000).astype(np.float32) * 3
        token, confidence, q = sampler.choose_draft(logits, t, want_confidence=True)
        assert q is None and 0 < confidence <= 1
        assert sampler.verify(logits[None, :].repeat(2, axis=0), [token], None, t) == (1, gumbel_choice(logits, sampler.params, sampler.noise, t + 1))


def _first_token_of_rejection(p, q, rng, keep=lambda x: True) -> int:
    """One rejection-sampled first token, the draft x ~ q verified only when keep(x)."""
    x = int(rng.choice(len(q), p=q))
    logits_tgt = np.log(np.stack([p, p]))
    if not keep(x):
        return int(rng.choice(len(p), p=p))  # not verified: the target samples alone
    n, token = verify_rejection(logits_tgt, [x], [q], SamplingParams(temperature=1.0), rng)
    return x if n == 1 else token


def test_rejection_sampling_is_exact_and_a_token_dependent_trim_is_not():
    # The example: q = (0.9, 0.1), p = (0.5, 0.5). Verifying x only when q(x) is high
    # gives P(a) = 0.9 x 5/9 + 0.1 x 0.5 = 0.55: the control must see it.
    p, q = np.array([0.5, 0.5]), np.array([0.9, 0.1])
    rng = np.random.default_rng(5)
    n = 16_000
    exact = np.mean([_first_token_of_rejection(p, q, rng) == 0 for _ in range(n)])
    trimmed = np.mean([_first_token_of_rejection(p, q, rng, keep=lambda x: q[x] > 0.5) == 0 for _ in range(n)])
    sd = math.sqrt(0.25 / n)
    assert abs(exact - 0.5) < 4 * sd
    assert abs(trimmed - 0.55) < 4 * sd and abs(trimmed - 0.5) > 10 * sd


def test_sampler_streams_are_separate():
    # How much a round drafts must not shift the draws that decide verification.
    a = Sampler(SamplingParams(temperature=1.0), "rejection", seed=9)
    b = Sampler(SamplingParams(temperature=1.0), "rejection", seed=9)
    a.rng_draft.random(10)
    assert a.rng_verify.random() == b.rng_verify.random()
