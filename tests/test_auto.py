"""Auto mode's arithmetic: expected tokens, best draft length, measured costs."""

import pytest

from specllm.auto import AcceptanceTable, CostModel, best_draft_length, confidence_bucket, expected_tokens


def test_expected_tokens_is_one_plus_survival_products():
    assert expected_tokens([]) == [1.0]
    assert expected_tokens([0.5, 0.5]) == pytest.approx([1.0, 1.5, 1.75])
    assert expected_tokens([1.0, 1.0, 1.0]) == pytest.approx([1, 2, 3, 4])


def test_best_length_on_a_flat_cost_drafts_everything_useful():
    # GPU-like: verifying 1 or 5 tokens costs the same, so every draft is worth it.
    k, rate = best_draft_length([0.8] * 4, lambda k: 0.010)
    assert k == 4
    assert rate == pytest.approx((1 + 0.8 + 0.64 + 0.512 + 0.4096) / 0.010)


def test_best_length_on_a_cpu_cost_curve_can_be_zero():
    # CPU-like costs measured on a 2-core machine: T(1)=72ms, T(2)=115ms, T(3)=150ms.
    costs = {0: 0.072, 1: 0.115, 2: 0.150}
    k, rate = best_draft_length([0.5, 0.5], lambda k: costs[k])
    assert k == 0 and rate == pytest.approx(1 / 0.072)
    k, _ = best_draft_length([0.9, 0.9], lambda k: costs[k])
    assert k == 2  # (1 + .9 + .81) / .150 = 18.1/s beats 1/.072 = 13.9/s


def test_best_length_exploits_a_cheap_larger_batch():
    # Batches of 4 can be cheaper than 3 on CPUs (kernel shapes): T(4) < T(3).
    costs = {0: 0.072, 1: 0.115, 2: 0.150, 3: 0.122}
    k, _ = best_draft_length([0.7, 0.7, 0.7], lambda k: costs[k])
    assert k == 3


def test_cost_model_lookup_and_moving_average():
    costs = CostModel(target={1: 0.07, 4: 0.12})
    assert costs.target_time(1) == 0.07
    assert costs.target_time(3) == 0.12  # unmeasured: next larger measured size
    assert costs.target_time(8) == pytest.approx(0.24)  # beyond: scaled from the largest
    costs.observe_target(1, 0.17)
    assert costs.target_time(1) == pytest.approx(0.8 * 0.07 + 0.2 * 0.17)


def test_cost_profile_round_trip(tmp_path):
    path = tmp_path / "costs.json"
    CostModel(target={1: 0.07, 2: 0.1}, draft={1: 0.03}).save(path, "key")
    loaded = CostModel()
    assert loaded.load(path, "key")
    assert loaded.target == {1: 0.07, 2: 0.1} and loaded.draft == {1: 0.03}
    assert not CostModel().load(path, "other key")


def test_acceptance_table_starts_at_prior_and_learns():
    table = AcceptanceTable(lambda key: 0.5, prior_weight=2.0, fade=1.0)
    assert table.estimate("a") == 0.5
    for _ in range(8):
        table.observe("a", True)
    assert table.estimate("a") == pytest.approx((8 + 1) / (8 + 2))


def test_confidence_buckets_are_ordered():
    assert confidence_bucket(0.05) < confidence_bucket(0.5) < confidence_bucket(0.95) < confidence_bucket(0.99)


def test_draft_model_verdict_is_kept_between_runs(tmp_path):
    from specllm.auto import Learned

    path = tmp_path / "costs.json"
    CostModel(target={1: 0.07}, model_rate_ratio=0.8).save(path, "key")
    costs = CostModel()
    assert costs.load(path, "key") and costs.model_rate_ratio == 0.8

    slow = Learned()
    slow.start_from(0.8, plain_rate=10.0)
    assert slow.model_rate(10.0) == pytest.approx(8.0)
    assert not slow.should_explore_model()  # no probe at the start of the next generation

    fresh = Learned()
    fresh.start_from(None, plain_rate=10.0)
    assert fresh.should_explore_model() and fresh.model_rate(10.0) > 10.0  # untried: worth a look
