"""Many sequences in one batch (issue 24): one KV cache with a sequence per slot, one shared
decode per round, each sequence exact as if it ran alone. Tiny models (clear margins: exact)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from specllm.batch import Scheduler
from specllm.engine import Engine, EngineConfig, Request
from specllm.llama import Context, Model, Rows
from specllm.sampling import SamplingParams
from specllm.speculative import PREFILL_CHUNK

PROMPTS = [
    "the cat said that it was for you and the",
    "def add(a, b):\n    return a + b\n\ndef",
    "one word: when your hand is up, the other",
    "she said there was",
]
N_TOKENS = 32
# scripts/gpu-check runs these tests with every layer on the GPU (-1): a device's batched
# kernels must keep each sequence's output too.
GPU_LAYERS = int(os.environ.get("SPECLLM_TEST_N_GPU_LAYERS", "0"))
SAMPLED = Request(max_tokens=N_TOKENS, params=SamplingParams(temperature=0.9), seed=1234)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECLLM_CACHE", str(tmp_path / "cache"))


def config_for(tiny, **kwargs) -> EngineConfig:
    return EngineConfig(**{"target": str(tiny.target), "threads": 1, "mode": "none", "n_gpu_layers": GPU_LAYERS,
                           **kwargs})


def alone(engine: Engine, prompt: str, request: Request) -> list[int]:
    generation = engine.generate(engine.tokenize_prompt(prompt, request), request)
    for _ in generation:
        pass
    return generation.tokens


def together(engine: Engine, jobs: list[tuple[str, Request]], *, rounds_before_each: int = 0,
             on_round=None) -> dict[int, object]:
    """Run jobs through the scheduler; job i starts after `rounds_before_each * i` rounds (when a
    slot is free). Returns each job's generation."""
    scheduler = Scheduler(engine)
    started: dict[int, object] = {}
    n_round = 0
    while len(started) < len(jobs) or scheduler.active:
        for i, (prompt, request) in enumerate(jobs):
            if i not in started and n_round >= rounds_before_each * i and scheduler.n_free:
                tokens = engine.tokenize_prompt(prompt, request)
                started[i] = scheduler.start(tokens, request, tag=i).generation
        results = scheduler.round()
        if on_round is not None:
            on_round(scheduler, results)
        n_round += 1
    scheduler.close()
    return started


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPECLLM_CACHE", str(tmp_path_factory.mktemp("cache")))
        with Engine(EngineConfig(target=str(tiny.target), threads=1, mode="none", n_gpu_layers=GPU_LAYERS)) as engine:
            return {p: alone(engine, p, Request(max_tokens=N_TOKENS)) for p in PROMPTS}


# -- the context: sequences in one cache ------------------------------------------------------


def test_rows_of_two_sequences_decode_as_each_would_alone(tiny):
    model = Model(tiny.target, n_gpu_layers=GPU_LAYERS)
    a, b = model.vocab.tokenize(PROMPTS[0]), model.vocab.tokenize(PROMPTS[1])
    with Context(model, n_ctx=128, n_threads=1) as single:
        logits_a = single.decode(a, all_logits=True).copy()
        single.clear()
        logits_b = single.decode(b, all_logits=True).copy()
    with Context(model, n_ctx=128, n_threads=1, n_seq=2) as shared:
        seq_a, seq_b = shared.sequences
        out_a, out_b = shared.decode_rows([Rows(seq_a, a), Rows(seq_b, b)])
        assert out_a.shape == (len(a), model.vocab.n_tokens) and out_b.shape == (len(b), model.vocab.n_tokens)
        np.testing.assert_allclose(out_a, logits_a, atol=1e-3)
        np.testing.assert_allclose(out_b, logits_b, atol=1e-3)
        assert (seq_a.tokens, seq_b.tokens) == (a, b)
        assert seq_a.room == seq_b.room == shared.n_ctx - len(a) if len(a) == len(b) else True
    model.close()


def test_rolling_back_one_sequence_never_touches_another(tiny):
    model = Model(tiny.target, n_gpu_layers=GPU_LAYERS)
    a = model.vocab.tokenize(PROMPTS[0])
    b = model.vocab.tokenize(PROMPTS[2])
    with Context(model, n_ctx=128, n_threads=1) as single:
        single.decode(a)
        expected_next = single.decode([a[-1]], all_logits=True).copy()  # a + a[-1]
    with Context(model, n_ctx=128, n_threads=1, n_seq=3) as shared:
        seq_a, seq_b, seq_c = shared.sequences
        shared.decode_rows([Rows(seq_a, a, "none"), Rows(seq_b, b, "last"), Rows(seq_c, a[:3], "none")])
        # Sequence b decodes "drafts" and rejects them; c is cleared; a must not notice.
        shared.decode_rows([Rows(seq_b, a[:5]), Rows(seq_c, b[:2])])
        seq_b.truncate(len(b) + 1)
        seq_c.clear()
        assert seq_a.in_sync() and seq_b.in_sync() and seq_c.in_sync()
        assert seq_a.cached_length() == len(a) and seq_b.cached_length() == len(b) + 1 and seq_c.cached_length() == 0
        next_a = seq_a.decode([a[-1]], all_logits=True)
        np.testing.assert_allclose(next_a, expected_next, atol=1e-3)
    model.close()


def test_each_sequence_has_the_full_ctx_size(tiny):
    model = Model(tiny.target, n_gpu_layers=GPU_LAYERS)
    with Context(model, n_ctx=64, n_threads=1, n_seq=4) as ctx:
        assert ctx.n_ctx == 64 and all(s.room == 64 for s in ctx.sequences)
        ctx.sequence(1).decode(list(range(10, 70)))
        assert ctx.sequence(1).room == 4 and ctx.sequence(0).room == 64
    model.close()


# -- exactness per sequence -------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["none", "ngram", "draft", "auto"])
def test_greedy_output_in_a_shared_batch_is_the_output_alone(tiny, reference, mode):
    config = config_for(tiny, mode=mode, draft=str(tiny.draft_other) if mode in ("draft", "auto") else None,
                        k=4, parallel=len(PROMPTS), ngram_sizes=(3, 2, 1))
    rows_seen = []
    with Engine(config) as engine:
        generations = together(engine, [(p, Request(max_tokens=N_TOKENS)) for p in PROMPTS],
                               on_round=lambda s, r: rows_seen.append(len(r)))
    for i, prompt in enumerate(PROMPTS):
        assert generations[i].tokens == reference[prompt], (mode, prompt)
        assert generations[i].finish_reason == "length"
    assert max(rows_seen) == len(PROMPTS)  # they really shared rounds
    if mode in ("ngram", "draft"):  # and speculated inside the shared decode
        assert sum(generations[i].stats.drafted for i in generations) > 0


def test_the_draft_model_drafts_for_every_slot_in_one_decode_per_token(tiny, reference, monkeypatch):
    config = config_for(tiny, mode="draft", draft=str(tiny.draft_other), k=4, parallel=len(PROMPTS))
    with Engine(config) as engine:
        sequences_per_decode = []
        real = engine.draft.decode_now

        def counting(rows):
            sequences_per_decode.append(len({r.sequence.seq_id for r in rows}))
            return real(rows)

        monkeypatch.setattr(engine.draft, "decode_now", counting)
        generations = together(engine, [(p, Request(max_tokens=N_TOKENS)) for p in PROMPTS])
    assert [generations[i].tokens for i in range(len(PROMPTS))] == [reference[p] for p in PROMPTS]
    drafted = sum(generations[i].stats.drafted for i in generations)
    # Alone, every drafted token would cost a decode of one sequence; here most carry them all.
    assert max(sequences_per_decode) == len(PROMPTS)
    assert len(sequences_per_decode) < drafted / 2


@pytest.mark.parametrize("mode", ["none", "ngram", "draft", "auto"])
def test_a_seed_gives_the_same_text_whatever_else_is_in_the_batch(tiny, mode):
    config = config_for(tiny, mode=mode, draft=str(tiny.draft_other) if mode in ("draft", "auto") else None, k=3,
                        parallel=3, ngram_sizes=(2, 1))
    others = Request(max_tokens=N_TOKENS, params=SamplingParams(temperature=1.0, top_k=20), seed=99)
    with Engine(config) as engine:
        solo = alone(engine, PROMPTS[0], SAMPLED)
        with_two = together(engine, [(PROMPTS[1], others), (PROMPTS[0], SAMPLED), (PROMPTS[2], Request(max_tokens=8))])
        with_one = together(engine, [(PROMPTS[0], SAMPLED), (PROMPTS[3], others)], rounds_before_each=3)
    assert with_two[1].tokens == solo
    assert with_one[0].tokens == solo
    assert len(set(solo)) > 3  # really sampled text, not one repeated token


def test_a_prompt_joins_mid_stream_in_chunks_and_the_others_keep_going(tiny, reference):
    long_prompt = " ".join(PROMPTS) * 12
    config = config_for(tiny, mode="ngram", k=4, parallel=2, ngram_sizes=(3, 2, 1), ctx_size=2048)
    stalled_rounds = []

    def watch(scheduler, results):
        for active, events in results:
            if active.tag == 0 and not active.finished and len(results) == 2:
                stalled_rounds.append(len(events))

    with Engine(config) as engine:
        n_long = len(engine.tokenize_prompt(long_prompt, Request()))
        assert n_long > 3 * PREFILL_CHUNK
        solo_long = alone(engine, long_prompt, Request(max_tokens=N_TOKENS))
        engine.target.clear()
        generations = together(engine, [(PROMPTS[0], Request(max_tokens=N_TOKENS)),
                                        (long_prompt, Request(max_tokens=N_TOKENS))], rounds_before_each=2,
                               on_round=watch)
    assert generations[0].tokens == reference[PROMPTS[0]]
    assert generations[1].tokens == solo_long
    # While the long prompt went in (several rounds), the first generation emitted every round.
    assert len(stalled_rounds) >= 3 and all(n >= 1 for n in stalled_rounds)


def test_a_generation_dropped_mid_stream_frees_its_slot_and_the_others_go_on(tiny, reference):
    config = config_for(tiny, mode="ngram", k=4, parallel=2, ngram_sizes=(3, 2, 1))
    with Engine(config) as engine:
        scheduler = Scheduler(engine)
        request = Request(max_tokens=N_TOKENS)
        kept = scheduler.start(engine.tokenize_prompt(PROMPTS[0], request), request, tag="kept")
        gone = scheduler.start(engine.tokenize_prompt(PROMPTS[1], request), request, tag="gone")
        for _ in range(3):
            scheduler.round()
        scheduler.drop(gone, "cancelled")  # its client went away between two rounds
        assert scheduler.n_free == 1 and gone.generation.finish_reason == "cancelled"
        late = scheduler.start(engine.tokenize_prompt(PROMPTS[2], request), request, tag="late")
        assert late.slot == gone.slot
        while scheduler.active:
            scheduler.round()
    assert kept.generation.tokens == reference[PROMPTS[0]]
    assert late.generation.tokens == reference[PROMPTS[2]]
    assert 0 < len(gone.generation.tokens) < N_TOKENS


def test_a_full_context_in_one_slot_does_not_stop_the_others(tiny, reference):
    config = config_for(tiny, mode="ngram", k=4, parallel=2, ngram_sizes=(3, 2, 1), ctx_size=64)
    with Engine(config) as engine:
        long = engine.tokenize_prompt(" ".join(PROMPTS), Request())[:56]  # 8 tokens of room left
        scheduler = Scheduler(engine)
        full = scheduler.start(long, Request(max_tokens=100), tag="full")
        short = scheduler.start(engine.tokenize_prompt(PROMPTS[0], Request()), Request(max_tokens=N_TOKENS), tag=1)
        while scheduler.active:
            scheduler.round()
    assert full.generation.finish_reason == "length" and len(full.generation.tokens) <= 64 - 56 + 1
    assert short.generation.tokens == reference[PROMPTS[0]]


def test_the_slot_sharing_the_longest_prefix_is_picked(tiny):
    config = config_for(tiny, parallel=3)
    with Engine(config) as engine:
        scheduler = Scheduler(engine)
        request = Request(max_tokens=4)
        first = scheduler.start(engine.tokenize_prompt(PROMPTS[1], request), request, tag=0)
        assert first.slot == 0
        while scheduler.active:
            scheduler.round()
        # A follow-up of the same prompt goes back to slot 0, where its prefix is cached.
        other = scheduler.start(engine.tokenize_prompt(PROMPTS[0], request), request, tag=1)
        again = scheduler.start(engine.tokenize_prompt(PROMPTS[1] + " more", request), request, tag=2)
        assert other.slot != 0 and again.slot == 0
        assert again.cached_tokens >= len(engine.tokenize_prompt(PROMPTS[1], request)) - 1


# -- prompts that begin alike: their common beginning decoded once (shared_prefix.py) ----------

SHARED_BEGINNING = " ".join(PROMPTS) * 2


def prefill_rows(engine: Engine, jobs: list[tuple[str, Request]], rounds_before_each: int = 0) -> tuple[dict, int]:
    """Each job's Active from empty caches, job i started after `rounds_before_each * i` rounds,
    and the rows decoded in all."""
    for sequence in engine.target.sequences:
        sequence.clear()
    rows = []
    scheduler = Scheduler(engine, on_round=lambda n, seconds: rows.append(n))
    started, n_round = {}, 0
    while len(started) < len(jobs) or scheduler.active:
        for i, (prompt, request) in enumerate(jobs):
            if i not in started and n_round >= rounds_before_each * i and scheduler.n_free:
                started[i] = scheduler.start(engine.tokenize_prompt(prompt, request), request, tag=i)
        scheduler.round()
        n_round += 1
    scheduler.close()
    return started, sum(rows)


@pytest.mark.parametrize("late", [False, True], ids=["started-together", "started-after-the-other-began"])
def test_prompts_that_begin_alike_decode_their_beginning_once_and_write_what_they_write_alone(tiny, late):
    prompts = [SHARED_BEGINNING + " the cat", SHARED_BEGINNING + " she said", SHARED_BEGINNING + " the cat"]
    requests = [Request(max_tokens=N_TOKENS), SAMPLED, Request(max_tokens=N_TOKENS, params=SamplingParams(temperature=1.0),
                                                                seed=7)]
    jobs = list(zip(prompts, requests))
    with Engine(config_for(tiny, parallel=3, ctx_size=512)) as engine:
        solo = [alone(engine, p, r) for p, r in jobs]
        n_beginning = len(engine.tokenize_prompt(SHARED_BEGINNING, Request()))
        n_prompt = [len(engine.tokenize_prompt(p, Request())) for p in prompts]
        gap = 3 if late else 0
        shared, rows_shared = prefill_rows(engine, jobs, gap)
        engine.target.shares_cells = False  # as a cache with a sliding window
        unshared, rows_unshared = prefill_rows(engine, jobs, gap)
    for i in range(3):
        assert shared[i].generation.tokens == solo[i] == unshared[i].generation.tokens, i
    # The two later prompts took at least the shared beginning from the first one's cells.
    taken = [shared[i].generation.shared_prompt_tokens for i in range(3)]
    assert taken[0] == 0 and min(taken[1:]) >= n_beginning - 2
    assert shared[2].cached_tokens == n_prompt[2] - 1  # the same prompt as the first: all of it
    assert rows_unshared - rows_shared == sum(taken) and rows_shared < rows_unshared - sum(n_prompt) // 2
    assert all(a.generation.shared_prompt_tokens == 0 for a in unshared.values())


def test_the_draft_models_sequences_take_a_shared_beginning_too(tiny, monkeypatch):
    """In draft mode each slot's draft-model sequence prefills its prompt when the generation
    begins: a beginning another slot's draft sequence holds is taken from its cells as well."""
    prompts = [SHARED_BEGINNING + " the cat", SHARED_BEGINNING + " she said", SHARED_BEGINNING + " what will"]
    jobs = [(p, Request(max_tokens=N_TOKENS)) for p in prompts]
    config = config_for(tiny, mode="draft", draft=str(tiny.draft_other), k=4, parallel=3, ctx_size=512)
    with Engine(config) as engine:
        solo = [alone(engine, p, r) for p, r in jobs]
        draft_rows = []
        real = engine.draft.decode_now

        def counting(rows):
            draft_rows.append(sum(len(r.tokens) for r in rows))
            return real(rows)

        monkeypatch.setattr(engine.draft, "decode_now", counting)
        runs = {}
        for sharing in (True, False):
            for sequence in engine.draft.sequences:
                sequence.clear()
            engine.draft.shares_cells = sharing
            draft_rows.clear()
            taken = []
            started, _ = prefill_rows(engine, jobs)
            for active in started.values():
                taken.append(active.generation.policy.drafter.shared_prompt_tokens)
            runs[sharing] = (started, sum(draft_rows), taken)
        n_beginning = len(engine.tokenize_prompt(SHARED_BEGINNING, Request()))
    (shared, rows_shared, taken), (unshared, rows_unshared, not_taken) = runs[True], runs[False]
    for i in range(3):
        assert shared[i].generation.tokens == solo[i] == unshared[i].generation.tokens, i
        assert shared[i].generation.stats.drafted == unshared[i].generation.stats.drafted, i
    assert sorted(taken)[0] == 0 and min(sorted(taken)[1:]) >= n_beginning - 2 and not any(not_taken)
    assert rows_unshared - rows_shared == sum(taken)


def test_a_prompt_keeps_the_cells_it_took_when_their_donor_moves_on(tiny):
    """The donor finishes and its slot takes another prompt (its cells of the shared part are
    dropped for it): the sequence that took them still has them."""
    request = Request(max_tokens=N_TOKENS)
    first, second = SHARED_BEGINNING + " the cat", SHARED_BEGINNING + " one word"
    with Engine(config_for(tiny, parallel=2, ctx_size=512)) as engine:
        solo = alone(engine, second, request)
        engine.target.sequences[0].clear()
        scheduler = Scheduler(engine)
        donor = scheduler.start(engine.tokenize_prompt(first, Request(max_tokens=4)), Request(max_tokens=4), tag=0)
        while not donor.generation.begun:
            scheduler.round()
        taker = scheduler.start(engine.tokenize_prompt(second, request), request, tag=1)
        while not donor.finished:
            scheduler.round()
        scheduler.start(engine.tokenize_prompt(PROMPTS[3], request), request, tag=2)  # into the donor's slot
        while scheduler.active:
            scheduler.round()
    assert taker.generation.shared_prompt_tokens > 0 and taker.slot != donor.slot
    assert taker.generation.tokens == solo


def test_a_cache_with_a_sliding_window_does_not_share_cells(tiny, tmp_path):
    from tiny_models import gemma3_variant

    with Model(gemma3_variant(tiny.draft_other, tmp_path / "g.gguf")) as model:
        assert model.n_swa > 0
        with Context(model, n_ctx=64, n_seq=2, n_threads=1) as context:
            assert not context.shares_cells
    with Model(tiny.target) as model, Context(model, n_ctx=64, n_seq=2, n_threads=1) as context:
        assert context.shares_cells


# -- auto across a batch: drafts priced at the batch's marginal cost --------------------------

# T(n) in ms on scripted costs: flat while the batch is small, then linear (a CPU past its knee).
BATCH_MS = {1: 31, 2: 32, 4: 33, 8: 36, 12: 120, 16: 269, 17: 285, 20: 333, 24: 400, 32: 530, 48: 800, 64: 1060}


def scripted_costs():
    from specllm.auto import CostModel, ShapePoint

    costs = CostModel(t1=BATCH_MS[1] / 1000, t1_fresh=1)
    for n, ms in BATCH_MS.items():
        if n > 1:
            costs.shape[n] = ShapePoint(ms / BATCH_MS[1], fresh=2)
    return costs


def test_the_marginal_cost_of_rows_is_the_bigger_batch_minus_the_batch():
    from specllm.auto.batch import BatchCosts, marginal_time

    costs = scripted_costs()
    assert marginal_time(costs, 0, 4) == pytest.approx(0.033)  # alone: T(k + 1)
    assert marginal_time(costs, 16, 1) == pytest.approx(0.285 - 0.269)
    assert marginal_time(costs, 16, 8) == pytest.approx(costs.target_time(24) - 0.269)
    view = BatchCosts(costs)
    assert view.plain_rate() == pytest.approx(1 / 0.031)
    assert view.target_time(5) == pytest.approx(costs.target_time(5))  # alone: the policy as it was
    view.rows_before = 15  # with this sequence's row: a round of 16 rows
    assert view.plain_rate() == pytest.approx(16 / 0.269)  # a token per row of the round
    assert view.target_time(2) == pytest.approx(0.269 / 16 + 0.285 - 0.269)  # + one draft: T(17) - T(16)
    assert view.target_time(9) - view.target_time(1) > 7 * 0.016  # past the knee each row costs a row
    view.observe_target(9, 1.0)  # a shared round's time is not one sequence's: not recorded
    assert costs.target_time(9) < 0.1


def test_auto_drafts_alone_and_not_where_a_big_batch_makes_rows_dear():
    from specllm.auto import AutoPolicy
    from specllm.drafting.base import Draft
    from specllm.sampling import DraftChooser, Sampler

    class Copy:  # a lookup drafter with a long match: a copy that is usually accepted
        name = "suffix"

        def begin(self, prompt) -> None:
            pass

        def propose(self, history, k, choose, keep_drafting=None) -> Draft:
            return Draft(tokens=list(range(k)), source="suffix", ngram_size=6, confidence=[1.0] * k)

    choose = DraftChooser(Sampler(SamplingParams()), 0)
    drafted = {}
    for rows_before in (0, 3, 40):
        policy = AutoPolicy([Copy()], None, max_k=16, costs=scripted_costs())
        policy.begin([1, 2, 3])
        policy.share_round(rows_before)
        drafted[rows_before] = len(policy.draft([1, 2, 3, 4], 16, choose))
    assert drafted[0] >= 3
    assert drafted[3] >= 1
    assert drafted[40] == 0


def test_the_loop_overhead_script_prints_one_line_per_setting():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "scripts" / "loop-overhead"
    result = subprocess.run([sys.executable, str(script), "--tokens", "12", "--parallel", "1,2", "--modes", "none"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:5] == ["mode", "parallel", "rows", "ms/round", "ms/row"]
    assert [line.split()[:2] for line in lines[1:]] == [["none", "1"], ["none", "2"]]
    assert all(float(line.split()[3]) > 0 for line in lines[1:])


def test_the_shared_beginnings_script_compares_sharing_on_and_off(tiny, tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    script = Path(__file__).resolve().parent.parent / "scripts" / "shared-beginnings"
    result = subprocess.run([sys.executable, str(script), "--prompts", str(prompts), "--shots", "2", "--slots", "2",
                             "-n", "6", "--pairs", "1", "-t", "1", "-m", str(tiny.target), "-md", str(tiny.draft_other)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    on = next(line for line in lines if "sharing on" in line)
    off = next(line for line in lines if "sharing off" in line)
    assert "draft 0" not in on and off.endswith("draft 0")
    assert "outputs the same" in lines[-1]
