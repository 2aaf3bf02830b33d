"""Auto mode without models: its arithmetic, its costs that heal, and its per-round choices on
scripted costs and acceptances."""

from __future__ import annotations

import json

import pytest

from specllm.auto import (
    AcceptanceTable,
    AutoPolicy,
    CostModel,
    Learned,
    ShapePoint,
    best_draft_length,
    confidence_bucket,
    expected_tokens,
)
from specllm.auto.costs import PLAIN_PROBE_INTERVAL, PROFILE_VERSION
from specllm.auto.learned import MARGIN
from specllm.drafting.base import NO_DRAFT, Draft
from specllm.sampling import DraftChooser, Sampler, SamplingParams

# The target's cost on a 2-core CPU (1.5B Q4_K_M), ms per decode of n tokens.
CPU_MS = {1: 90, 2: 133, 4: 164, 8: 338, 16: 425, 24: 662, 32: 785, 48: 1220, 64: 1358, 128: 2466}


def cpu_costs(scale: float = 1.0) -> CostModel:
    costs = CostModel(t1=CPU_MS[1] / 1000 * scale, t1_fresh=1)
    for n, ms in CPU_MS.items():
        if n > 1:
            costs.shape[n] = ShapePoint(ms / CPU_MS[1], fresh=2)
    return costs


def loaded_with_shape_3x_too_high(path) -> CostModel:
    """A cost model loaded from a saved profile whose every T(n)/T(1) is 3x too high."""
    poisoned = cpu_costs()
    for point in poisoned.shape.values():
        point.ratio *= 3
    poisoned.save(path, "key")
    costs = CostModel()
    assert costs.load(path, "key")
    return costs


def test_expected_tokens_is_one_plus_survival_products():
    assert expected_tokens([]) == [1.0]
    assert expected_tokens([0.5, 0.5]) == pytest.approx([1.0, 1.5, 1.75])
    assert expected_tokens([1.0, 1.0, 1.0]) == pytest.approx([1, 2, 3, 4])


def test_best_length_on_a_flat_cost_drafts_everything_useful():
    k, rate = best_draft_length([0.8] * 4, lambda k: 0.010)
    assert k == 4
    assert rate == pytest.approx((1 + 0.8 + 0.64 + 0.512 + 0.4096) / 0.010)


def test_best_length_on_a_cpu_cost_curve_can_be_zero():
    costs = {0: 0.072, 1: 0.115, 2: 0.150}
    k, rate = best_draft_length([0.5, 0.5], lambda k: costs[k])
    assert k == 0 and rate == pytest.approx(1 / 0.072)
    k, _ = best_draft_length([0.9, 0.9], lambda k: costs[k])
    assert k == 2


def test_unmeasured_sizes_come_from_a_fitted_curve():
    costs = cpu_costs()
    # Between measured sizes: interpolated, not the next measured size.
    assert costs.ratio(12) == pytest.approx((338 + (425 - 338) / 2) / 90)
    # Beyond them: a line through the measured points, never below the largest.
    assert costs.ratio(200) > costs.ratio(128)
    assert costs.target_time(1) == pytest.approx(0.09)
    only_small = CostModel(t1=0.1, t1_fresh=1, shape={2: ShapePoint(1.5, fresh=1)})
    assert only_small.ratio(3) == pytest.approx(2.0)  # the line through (1, 1) and (2, 1.5)


def test_a_poisoned_speed_heals_with_the_first_plain_decode():
    costs = cpu_costs(scale=4.0)  # T(1) stored 4x too high (a busy spell)
    costs.t1_fresh = 0  # as loaded from a profile
    costs.observe_target(1, 0.090)
    assert costs.target_time(1) == pytest.approx(0.090)
    costs.observe_target(1, 0.100)
    assert costs.target_time(1) == pytest.approx(0.092)


def test_a_shape_3x_too_high_is_rescaled_by_one_fresh_measurement(tmp_path):
    costs = loaded_with_shape_3x_too_high(tmp_path / "costs.json")
    assert costs.t1_fresh == 0
    costs.observe_target(1, 0.090)
    assert costs.ratio(64) == pytest.approx(3 * 1358 / 90)
    assert costs.stale_size(65) == 2
    costs.observe_target(2, 0.133)  # a probe at the smallest unmeasured size
    assert costs.ratio(2) == pytest.approx(133 / 90)
    assert costs.ratio(64) == pytest.approx(1358 / 90, rel=0.01)  # every other size follows


def test_a_run_saves_only_what_it_measured(tmp_path):
    path = tmp_path / "costs.json"
    cpu_costs().save(path, "key")
    costs = CostModel()
    costs.load(path, "key")
    costs.observe_target(1, 0.3)  # a busy run
    costs.observe_target(8, 1.2)  # measured once: not enough to replace the saved shape
    costs.save(path, "key")
    entry = json.loads(path.read_text())["key"]
    assert entry["version"] == PROFILE_VERSION
    assert entry["shape"]["8"] == pytest.approx(338 / 90)


def test_old_or_broken_profiles_are_ignored(tmp_path):
    path = tmp_path / "costs.json"
    path.write_text(json.dumps({"key": {"target": {"1": 0.315}, "draft": {}}}))  # specllm 0.1's layout
    assert not CostModel().load(path, "key")
    path.write_text("{not json")
    assert not CostModel().load(path, "key")
    CostModel(t1=0.1, t1_fresh=1, shape={2: ShapePoint(1.5, fresh=2)}).save(path, "key")  # overwrites the junk
    assert CostModel().load(path, "key")


def test_acceptance_table_starts_at_prior_and_learns():
    table = AcceptanceTable(lambda key: 0.5, prior_weight=2.0, fade=1.0)
    assert table.estimate("a") == 0.5
    for _ in range(8):
        table.observe("a", True)
    assert table.estimate("a") == pytest.approx((8 + 1) / (8 + 2))


def test_confidence_buckets_are_ordered():
    assert confidence_bucket(0.05) < confidence_bucket(0.5) < confidence_bucket(0.95) < confidence_bucket(0.99)


# -- the policy on scripted drafters --------------------------------------------------------


class ScriptedLookup:
    """A lookup drafter that proposes a fixed continuation with a fixed match length."""

    def __init__(self, tokens: list[int], match_length: int, source: str = "suffix"):
        self.name = source
        self.tokens, self.match_length = tokens, match_length

    def begin(self, prompt) -> None:
        pass

    def propose(self, history, k, choose, keep_drafting=None) -> Draft:
        tokens = self.tokens[:k]
        if not tokens:
            return NO_DRAFT
        return Draft(tokens=tokens, source=self.name, ngram_size=self.match_length, confidence=[1.0] * len(tokens))


class ScriptedModel:
    name = "model"

    def __init__(self):
        self.calls = 0

    def begin(self, prompt) -> None:
        pass

    def propose(self, history, k, choose, keep_drafting=None) -> Draft:
        self.calls += 1
        self.last_k = k
        confidence = [0.95] * min(k, 3)
        return Draft(tokens=[7] * len(confidence), source="model", confidence=confidence)


CHOOSE = DraftChooser(Sampler(SamplingParams()), 0)


def run_rounds(policy: AutoPolicy, n: int, accept_all: bool = True, seconds=None) -> list[Draft]:
    policy.begin([1, 2, 3])
    drafts = []
    for _ in range(n):
        draft = policy.draft([1, 2, 3], 1000, CHOOSE)
        n_accepted = len(draft) if accept_all else 0
        policy.observe(draft, n_accepted, seconds(len(draft) + 1) if seconds else CPU_MS.get(len(draft) + 1, 100) / 1000)
        drafts.append(draft)
    return drafts


def true_cpu_seconds(n: int) -> float:
    known = sorted(CPU_MS)
    for a, b in zip(known, known[1:]):
        if a <= n <= b:
            return (CPU_MS[a] + (CPU_MS[b] - CPU_MS[a]) * (n - a) / (b - a)) / 1000
    return CPU_MS[128] / 1000 * n / 128


def test_nothing_to_draft_means_plain_rounds():
    policy = AutoPolicy([ScriptedLookup([], 0)], None, max_k=64, costs=cpu_costs())
    assert all(not d.tokens for d in run_rounds(policy, 20, seconds=true_cpu_seconds))


def test_a_repetition_loop_drafts_long():
    # A copy that is always accepted: drafts grow to dozens of tokens (CPU costs: ~32-64).
    policy = AutoPolicy([ScriptedLookup(list(range(100)), 40)], None, max_k=64, costs=cpu_costs())
    drafts = run_rounds(policy, 60, seconds=true_cpu_seconds)
    assert len(drafts[-1]) >= 24
    assert sum(len(d) for d in drafts[-10:]) / 10 >= 24


def test_short_chance_matches_are_not_drafted_when_they_fail():
    policy = AutoPolicy([ScriptedLookup([5, 6, 7], 2)], None, max_k=64, costs=cpu_costs())
    drafts = run_rounds(policy, 80, accept_all=False, seconds=true_cpu_seconds)
    assert sum(1 for d in drafts[-40:] if d.tokens) <= 6  # only the occasional probe


def test_the_draft_model_is_used_when_its_rounds_pay_and_dropped_when_not():
    model = ScriptedModel()
    learned = Learned()
    learned.start_from(2.0, plain_rate=1 / 0.09)  # earlier runs: model rounds at 2x plain
    policy = AutoPolicy([ScriptedLookup([], 0)], model, max_k=64, costs=cpu_costs(), learned=learned)
    policy.begin([1, 2, 3])
    policy.draft([1, 2, 3], 1000, CHOOSE)
    assert model.calls == 1

    slow = Learned()
    slow.start_from(0.6, plain_rate=1 / 0.09)  # model rounds at 0.6x plain: not worth it
    model = ScriptedModel()
    policy = AutoPolicy([ScriptedLookup([], 0)], model, max_k=64, costs=cpu_costs(), learned=slow)
    run_rounds(policy, 30, seconds=true_cpu_seconds)
    assert model.calls <= 1


def test_a_3x_poisoned_shape_heals_within_a_few_dozen_rounds(tmp_path):
    costs = loaded_with_shape_3x_too_high(tmp_path / "costs.json")
    for n in (1, 2, 3, 9):  # what the engine times when it loads a profile (LOAD_CHECK_SIZES)
        costs.observe_target(n, true_cpu_seconds(n))
    assert costs.ratio(64) == pytest.approx(1358 / 90, rel=0.15)  # rescaled before the first round
    policy = AutoPolicy([ScriptedLookup(list(range(100)), 12)], None, max_k=64, costs=costs)
    drafts = run_rounds(policy, 40, seconds=true_cpu_seconds)
    assert costs.ratio(64) == pytest.approx(1358 / 90, rel=0.15)
    assert sum(len(d) for d in drafts[-10:]) / 10 >= 16


def test_a_near_paying_draft_probes_an_unmeasured_size():
    costs = cpu_costs()
    for point in costs.shape.values():
        point.fresh = 0  # all from a saved profile
    costs.shape[2].ratio *= 1.3  # and T(2) a bit too high: a 1-token draft looks not worth it
    policy = AutoPolicy([ScriptedLookup([5], 10)], None, max_k=64, costs=costs)
    drafts = run_rounds(policy, 12, seconds=true_cpu_seconds)
    assert [len(d) for d in drafts].count(1) >= 1
    assert costs.shape[2].fresh and costs.ratio(2) == pytest.approx(133 / 90)


def test_a_stale_plain_speed_is_refreshed_by_a_forced_plain_round():
    policy = AutoPolicy([ScriptedLookup(list(range(100)), 40)], None, max_k=64, costs=cpu_costs())
    drafts = run_rounds(policy, PLAIN_PROBE_INTERVAL + 5, seconds=true_cpu_seconds)
    assert any(not d.tokens for d in drafts[PLAIN_PROBE_INTERVAL - 5 :])


def test_memory_receives_the_output():
    class Memory:
        def __init__(self):
            self.added = []

        def add(self, tokens):
            self.added.append(tokens)

    memory = Memory()
    policy = AutoPolicy([], None, max_k=8, costs=cpu_costs(), memory=memory)
    policy.end([4, 5, 6])
    policy.end([])
    assert memory.added == [[4, 5, 6]]


def test_a_look_at_an_untried_draft_model_is_short_and_needs_the_prompt_in_its_cache():
    model = ScriptedModel()
    policy = AutoPolicy([ScriptedLookup([], 0)], model, max_k=64, costs=cpu_costs())
    policy.draft([1, 2, 3], 1000, CHOOSE)
    assert model.calls == 0  # begin() did not give it the prompt
    policy.begin([1, 2, 3])
    policy.draft([1, 2, 3], 1000, CHOOSE)
    assert model.calls == 1 and model.last_k <= 4


def test_a_confirmed_copy_earns_longer_drafts_as_its_match_grows():
    # Draft i after a match of m tokens is verified only when the text's end matches m + i
    # tokens: its alpha is that of the longer match.
    acceptance = Learned().lookup_acceptance("suffix")
    alphas = acceptance.alphas(12, None, 60)
    assert alphas == sorted(alphas) and alphas[-1] > alphas[0]
    assert alphas[20] == pytest.approx(acceptance.alphas(32, None, 1)[0])
    # Observations land on the match length each draft was verified at.
    policy = AutoPolicy([ScriptedLookup(list(range(100)), 12)], None, max_k=64, costs=cpu_costs())
    policy._last_round = ("suffix", 0.0)
    policy.observe(Draft(tokens=list(range(30)), source="suffix", ngram_size=12, confidence=[1.0] * 30), 30, 0.6)
    table = policy.learned.lookup_acceptance("suffix").table
    assert (32, 0.999) in table.counts and table.counts[(10, 0.999)][1] == pytest.approx(4, rel=0.02)


def test_a_large_size_priced_too_high_is_tried_and_corrected():
    # Sizes up to 16 measured in this run; the larger ones only saved, 20% too high. Without
    # optimism about unmeasured sizes, a perfect copy would stay at 15-token drafts for good.
    costs = cpu_costs()
    for n, point in costs.shape.items():
        if n > 16:
            point.ratio *= 1.2
            point.fresh = 0
    policy = AutoPolicy([ScriptedLookup(list(range(100)), 40)], None, max_k=64, costs=costs)
    drafts = run_rounds(policy, 12, seconds=true_cpu_seconds)
    largest = max(n for n, point in costs.shape.items() if point.fresh)
    assert largest >= 48 and costs.ratio(largest) == pytest.approx(true_cpu_seconds(largest) / 0.09)
    assert all(len(d) >= 48 for d in drafts[-4:]), [len(d) for d in drafts]


def test_between_two_measured_sizes_their_line_beats_a_saved_point():
    costs = CostModel(t1=0.1, t1_fresh=1, shape={
        8: ShapePoint(4.0, fresh=1), 16: ShapePoint(20.0, saved=20.0), 32: ShapePoint(8.0, fresh=1)})
    assert costs.ratio(16) == pytest.approx(4.0 + 4.0 * 8 / 24)
    assert costs.ratio(24) == pytest.approx(4.0 + 4.0 * 16 / 24)


def test_a_new_generation_keeps_little_of_the_last_ones_lookup_acceptance():
    # A raw summary copies its article for hundreds of tokens; the next prompt (a chat
    # summary that paraphrases) must not start out betting long copies on that evidence.
    learned = Learned()
    acceptance = learned.lookup_acceptance("suffix")
    fresh = acceptance.alphas(10, None, 1)[0]
    for _ in range(300):
        acceptance.observe(12, 1.0, True)
    assert acceptance.alphas(10, None, 1)[0] > 0.97
    policy = AutoPolicy([ScriptedLookup([], 0)], None, max_k=64, costs=cpu_costs(), learned=learned)
    policy.begin([1, 2, 3])
    assert acceptance.alphas(10, None, 1)[0] < fresh + 0.5 * (1 - fresh)


def test_lucky_short_drafts_do_not_make_a_long_bet_look_certain():
    acceptance = Learned().lookup_acceptance("suffix")
    before = acceptance.alphas(10, None, 1)[0]
    acceptance.observe(4, 1.0, True)  # two short matches that happened to continue
    acceptance.observe(6, 1.0, True)
    after = acceptance.alphas(10, None, 1)[0]
    assert before < after < before + 0.05


def test_one_lucky_model_round_is_not_saved_as_a_verdict():
    learned = Learned()
    learned.start_from(0.9, plain_rate=10.0)
    learned.observe_model_round(5, 5 / 13.0, plain_rate=10.0)  # one look, 4 of 4 accepted
    assert learned.model_verdict_to_save(10.0) is None  # the saved 0.9 stays
    for _ in range(2):
        learned.observe_model_round(2, 2 / 8.0, plain_rate=10.0)
    assert learned.model_verdict_to_save(10.0) == pytest.approx(learned.model_rate_ratio(10.0))


def model_round_seconds(k: int, draft_per_token: float, verify) -> float:
    return k * draft_per_token + verify(k + 1)


def flat_seconds(n: int) -> float:
    return 0.010 * (1 + 0.01 * (n - 1))  # a GPU: a verify of n tokens costs about one step


def test_one_lucky_look_does_not_keep_a_losing_draft_model_drafting():
    # CPU costs, a draft token at 0.4 of a target step (the 0.5B here): a look with 4 of 4
    # accepted, then rounds with 1 of 3 accepted (0.7x plain each).
    plain = 1 / true_cpu_seconds(1)
    bar = plain * MARGIN
    learned = Learned()
    learned.observe_model_round(5, model_round_seconds(4, 0.036, true_cpu_seconds), plain)
    assert learned.model_rate(plain) > bar  # every token accepted: it may draft
    learned.observe_model_round(2, model_round_seconds(3, 0.036, true_cpu_seconds), plain)
    assert learned.model_rate(plain) < bar  # one losing round ends its turn

    # A look that missed two of its four tokens is no reason to draft at all.
    missed = Learned()
    missed.observe_model_round(3, model_round_seconds(4, 0.036, true_cpu_seconds), plain)
    assert missed.model_rate(plain) < bar


def test_where_verifying_is_flat_a_model_accepting_a_third_keeps_drafting():
    plain = 1 / flat_seconds(1)
    learned = Learned()
    for _ in range(20):
        learned.observe_model_round(2, model_round_seconds(3, 0.002, flat_seconds), plain)
        assert learned.model_rate(plain) > plain * MARGIN
    # After a few rounds its own rate is what counts, not the prior.
    own = 2 / model_round_seconds(3, 0.002, flat_seconds)
    assert learned.model_rate(plain) == pytest.approx(own, rel=0.01)


# -- a long draft's risky start first; shadow observations; chat answers --------------------


def cpu_round(k: int) -> float:
    return true_cpu_seconds(k + 1)


def test_a_young_copy_verifies_its_risky_start_before_betting_long():
    from specllm.auto.acceptance import first_round_of_two

    # A 12-token match: its next few tokens are a coin flip, after that a copy goes on.
    young = [0.85] * 4 + [0.99] * 8 + [0.999] * 36
    w = first_round_of_two(young, 48, 0.09, cpu_round, 8)
    assert w is not None and w <= 8
    # A copy past its risky start: one long round saves the most.
    assert first_round_of_two([0.995] * 48, 48, 0.09, cpu_round, 8) is None
    # Where a long round costs about one step (a GPU), waiting saves nothing.
    assert first_round_of_two(young, 48, 0.09, lambda k: 0.09 * (1 + 0.01 * k), 8) is None


def test_the_policy_splits_a_long_bet_on_a_young_match_but_not_on_an_old_one():
    young = AutoPolicy([ScriptedLookup(list(range(100)), 12)], None, max_k=64, costs=cpu_costs())
    young.learned.lookup_acceptance("suffix").observe(10, 1.0, True)  # this text copies
    draft = young.draft([1, 2, 3], 64, CHOOSE)
    assert len(draft) <= 8
    old = AutoPolicy([ScriptedLookup(list(range(100)), 40)], None, max_k=64, costs=cpu_costs())
    assert len(old.draft([1, 2, 3], 64, CHOOSE)) >= 48


def test_a_plain_step_still_checks_the_lookup_against_the_emitted_token():
    policy = AutoPolicy([ScriptedLookup([5, 6, 7], 2)], None, max_k=64, costs=cpu_costs())
    policy.begin([1, 2, 3])
    assert not policy.draft([1, 2, 3], 64, CHOOSE).tokens  # a 2-token match does not pay here
    policy.observe(NO_DRAFT, 0, 0.09)
    draft = policy.draft([1, 2, 3, 5], 64, CHOOSE)  # the target emitted 5: the lookup was right
    counts = policy.learned.lookup_acceptance("suffix").table.counts
    assert counts[(2, 0.999)] == pytest.approx([1.0, 1.0])
    policy.observe(draft, 0, 0.09)
    policy.draft([1, 2, 3, 5, 9], 64, CHOOSE)  # then 9, not 5: wrong (verified or not)
    assert counts[(2, 0.999)][1] == pytest.approx(1.995) and counts[(2, 0.999)][0] == pytest.approx(0.995)


def test_verified_drafts_are_not_counted_twice_by_the_shadow_check():
    policy = AutoPolicy([ScriptedLookup(list(range(10, 110)), 40)], None, max_k=64, costs=cpu_costs())
    policy.begin([1, 2, 3])
    draft = policy.draft([1, 2, 3], 64, CHOOSE)
    assert len(draft) >= 48
    policy.observe(draft, 2, 1.0)  # 2 accepted, the third rejected: 3 verified tokens
    policy.draft([1, 2, 3, 10, 11, 99], 64, CHOOSE)
    counts = policy.learned.lookup_acceptance("suffix").table.counts
    assert sum(c[1] for c in counts.values()) == pytest.approx(3, rel=0.01)  # (counts fade)


def test_chat_answers_learn_apart_and_start_less_sure_of_long_matches():
    learned = Learned()
    raw, chat = learned.lookup_acceptance("suffix"), learned.lookup_acceptance("suffix", chat=True)
    assert raw is not chat
    assert chat.alphas(16, None, 1)[0] < raw.alphas(16, None, 1)[0]
    policy = AutoPolicy([ScriptedLookup([5], 2)], None, max_k=64, costs=cpu_costs(), learned=learned, chat=True)
    policy.begin([1])
    policy.draft([1], 64, CHOOSE)
    policy.observe(NO_DRAFT, 0, 0.09)
    policy.draft([1, 5], 64, CHOOSE)
    assert chat.table.counts and not raw.table.counts


def test_a_bumpy_cost_curve_does_not_make_a_safe_copy_wait_forever():
    from specllm.auto.acceptance import first_round_of_two

    # Measured T(n)/T(1): 48 tokens cheap, 64 dear. Splitting 64 into 9 + 55 exploits the bump;
    # planned again each round, the long round would never come (seen: 40 plain rounds in a copy).
    bumpy = CostModel(t1=0.06, t1_fresh=5, shape={
        2: ShapePoint(1.9, fresh=3), 21: ShapePoint(14.1, fresh=3), 33: ShapePoint(20.1, fresh=3),
        48: ShapePoint(24.6, fresh=3), 64: ShapePoint(35.5, fresh=3), 65: ShapePoint(36.0, fresh=3)})
    assert first_round_of_two([0.995] * 63, 63, 0.06, lambda j: bumpy.target_time(j + 1), 8) is None
    policy = AutoPolicy([ScriptedLookup(list(range(100)), 88)], None, max_k=64, costs=bumpy)
    drafts = run_rounds(policy, 6, seconds=lambda n: bumpy.target_time(n))
    assert all(len(d) >= 32 for d in drafts), [len(d) for d in drafts]
