"""Sampling maths on hand-written arrays."""

import math

import numpy as np
import pytest

from specllm.sampling import (
    token_logprobs,
    SamplingParams,
    accept_probability,
    filter_logits,
    greedy,
    logits_to_probs,
    residual_distribution,
    sample,
    softmax,
    speculative_accept,
    top_probability,
)

LOGITS = np.array([2.0, 1.0, 0.5, -1.0, 3.0], dtype=np.float32)


def test_softmax_matches_definition():
    e = np.exp(LOGITS.astype(np.float64))
    np.testing.assert_allclose(softmax(LOGITS), e / e.sum())


def test_softmax_is_stable_for_huge_logits():
    probs = softmax(np.array([1000.0, 999.0]))
    np.testing.assert_allclose(probs, [1 / (1 + math.exp(-1)), 1 - 1 / (1 + math.exp(-1))])


def test_token_logprobs_are_the_log_softmax_and_its_top_tokens_likeliest_first():
    logits = np.array([2.0, -1.0, 3.5, -np.inf, 0.5], dtype=np.float32)
    with np.errstate(divide="ignore"):  # log 0 for the -inf one
        exact = np.log(softmax(logits.astype(np.float64)))
    chosen, top = token_logprobs(logits, 4, 3)
    assert chosen == pytest.approx(exact[4])
    assert [t for t, _ in top] == [2, 0, 4]
    assert [lp for _, lp in top] == pytest.approx([exact[2], exact[0], exact[4]])
    # No more alternatives than possible tokens: the suppressed one (-inf) is never listed.
    assert [t for t, _ in token_logprobs(logits, 2, 20)[1]] == [2, 0, 4, 1]
    assert token_logprobs(logits, 2, 0) == (pytest.approx(exact[2]), [])


def test_greedy_is_argmax():
    assert greedy(LOGITS) == 4


def test_temperature_scales_logits():
    probs = logits_to_probs(LOGITS, SamplingParams(temperature=2.0))
    np.testing.assert_allclose(probs, softmax(LOGITS / 2.0))


def test_top_k_keeps_k_largest():
    out = filter_logits(LOGITS, SamplingParams(temperature=1.0, top_k=2))
    assert np.isfinite(out).tolist() == [True, False, False, False, True]


def test_top_p_keeps_smallest_set_reaching_mass():
    probs = softmax(LOGITS)  # sorted: idx4 .61, idx0 .22, idx1 .08, ...
    top2 = probs[4] + probs[0]
    out = filter_logits(LOGITS, SamplingParams(temperature=1.0, top_p=top2 - 1e-6))
    assert set(np.flatnonzero(np.isfinite(out))) == {4, 0}
    out = filter_logits(LOGITS, SamplingParams(temperature=1.0, top_p=top2 + 1e-6))
    assert set(np.flatnonzero(np.isfinite(out))) == {4, 0, 1}


def test_min_p_drops_tokens_far_below_the_best():
    # Relative to the best token: exp(1-3) = 0.135 survives min_p 0.1, exp(0.5-3) = 0.08 does not.
    out = filter_logits(LOGITS, SamplingParams(temperature=1.0, min_p=0.1))
    assert set(np.flatnonzero(np.isfinite(out))) == {4, 0, 1}


def test_filters_compose_and_renormalise():
    probs = logits_to_probs(LOGITS, SamplingParams(temperature=0.7, top_k=3, min_p=0.05))
    assert probs.sum() == pytest.approx(1.0)
    assert probs[3] == 0.0 and probs[2] == 0.0


def test_sample_follows_the_distribution():
    rng = np.random.default_rng(0)
    probs = np.array([0.1, 0.0, 0.6, 0.3])
    draws = np.bincount([sample(probs, rng) for _ in range(20000)], minlength=4) / 20000
    np.testing.assert_allclose(draws, probs, atol=0.015)
    assert draws[1] == 0.0


def test_accept_probability_is_min_one_ratio():
    assert accept_probability(0.5, 0.25) == 1.0
    assert accept_probability(0.2, 0.8) == pytest.approx(0.25)


def test_residual_is_normalised_positive_part():
    p = np.array([0.5, 0.3, 0.2])
    q = np.array([0.2, 0.6, 0.2])
    np.testing.assert_allclose(residual_distribution(p, q, 1), [1.0, 0.0, 0.0])


def test_point_mass_residual_removes_the_draft_token():
    p = np.array([0.5, 0.3, 0.2])
    np.testing.assert_allclose(residual_distribution(p, None, 0), [0.0, 0.6, 0.4])


def _speculative_first_token(p, q, rng):
    """One step of Algorithm 1 with a single draft token: the emitted token."""
    x = sample(q, rng) if q is not None else 0
    if speculative_accept(p, q, x, rng):
        return x
    return sample(residual_distribution(p, q, x), rng)


@pytest.mark.parametrize("q", [np.array([0.7, 0.1, 0.1, 0.1]), np.array([0.05, 0.05, 0.3, 0.6]), None])
def test_speculative_step_has_the_target_distribution(q):
    """Accept-or-resample yields exactly p, whatever the draft q (model or point mass)."""
    rng = np.random.default_rng(1)
    p = np.array([0.4, 0.3, 0.2, 0.1])
    n = 40000
    counts = np.bincount([_speculative_first_token(p, q, rng) for _ in range(n)], minlength=4)
    chi2 = float((((counts - n * p) ** 2) / (n * p)).sum())
    assert chi2 < 16.3  # chi-square, 3 degrees of freedom, p = 0.001


def test_a_wrong_residual_is_detected():
    """The test above has the power to catch a bug: resampling from p instead of the residual."""
    rng = np.random.default_rng(1)
    p = np.array([0.4, 0.3, 0.2, 0.1])
    q = np.array([0.05, 0.05, 0.3, 0.6])
    n = 40000
    draws = []
    for _ in range(n):
        x = sample(q, rng)
        draws.append(x if speculative_accept(p, q, x, rng) else sample(p, rng))
    counts = np.bincount(draws, minlength=4)
    chi2 = float((((counts - n * p) ** 2) / (n * p)).sum())
    assert chi2 > 16.3


def test_top_probability_is_the_softmax_of_the_argmax():
    assert top_probability(LOGITS, 4) == pytest.approx(softmax(LOGITS)[4])
    with_masked = np.array([1.0, -np.inf, 0.0], dtype=np.float32)
    assert top_probability(with_masked, 0) == pytest.approx(softmax(with_masked)[0])
