"""`specllm bench`: the sweep, the cost model's maths, prompt files, output shapes; a short run on tiny models.

Nothing here asserts a speed: timings on a shared machine are noise. Speeds only have to be
positive numbers; everything else (counts, acceptance, which rows exist) is exact.
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import pytest
import typer
from typer.testing import CliRunner

from specllm.bench import (
    ALL_CATEGORIES, PROMPT_MARK, ROW_FIELDS, Bench, BenchConfig, BenchSettings, MeasuredCosts, Totals,
    best_k_by_model, conditional_acceptance, make_rows, model_best_ks, predicted_speedup, prediction_error,
    refused_row, sweep, write_csv,
)
from specllm.bench.costs import expected_round_seconds, predicted_seconds, timing_depth
from specllm.engine import Engine, EngineConfig, Request
from specllm.prompts import BenchPrompt, load_prompts, parse_prompts, select_prompts
from specllm.commands.bench import bench, parse_int_list, parse_modes
from specllm.errors import UsageError
from specllm.plot import overall_rows, require_matplotlib, terminal_plot, write_png
from specllm.stats import SpecStats


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECLLM_CACHE", str(tmp_path / "cache"))


# -- the sweep ----------------------------------------------------------------------------------


def test_sweep_puts_the_baseline_first_then_every_k_of_every_drafter():
    configs = sweep(("none", "ngram", "draft", "auto"), (2, 4), ["a.gguf", "b.gguf"])
    assert configs == [
        BenchConfig("none"),
        BenchConfig("ngram", 2), BenchConfig("ngram", 4),
        BenchConfig("draft", 2, "a.gguf"), BenchConfig("draft", 4, "a.gguf"),
        BenchConfig("draft", 2, "b.gguf"), BenchConfig("draft", 4, "b.gguf"),
        BenchConfig("auto", 4, "a.gguf"), BenchConfig("auto", 4, "b.gguf"),
    ]


def test_sweep_without_drafts_keeps_the_baseline_and_runs_auto_on_ngram_alone():
    assert sweep(("none", "draft", "auto"), (3,), []) == [BenchConfig("none"), BenchConfig("auto", 3, None)]
    assert sweep(("none",), (2, 3), ["a.gguf"]) == [BenchConfig("none")]


def test_config_labels():
    assert BenchConfig("none").label == "none"
    assert BenchConfig("ngram", 3).label == "ngram k=3"
    assert BenchConfig("draft", 2, "small.gguf").label == "draft small k=2"
    assert BenchConfig("auto", 8, "small.gguf").label == "auto small"


def test_option_lists_are_parsed_sorted_and_checked():
    assert parse_int_list("4, 2,2,8", "--k", low=1, high=32) == (2, 4, 8)
    for bad in ("", "2,x", "0,2", "2,33"):
        with pytest.raises(UsageError):
            parse_int_list(bad, "--k", low=1, high=32)
    assert set(parse_modes("draft")) == {"none", "draft"}  # the baseline always runs
    assert set(parse_modes("auto,ngram")) == {"none", "ngram", "auto"}
    with pytest.raises(UsageError, match="fast"):
        parse_modes("ngram,fast")


# -- the cost model (hand-computed values) -------------------------------------------------------


def costs(target_ms: dict[int, float], draft_ms: float | None = None, overhead_ms: float = 0.0,
          draft: str = "d.gguf") -> MeasuredCosts:
    return MeasuredCosts(depth=100, target={n: ms / 1e3 for n, ms in target_ms.items()},
                         draft={draft: draft_ms / 1e3} if draft_ms is not None else {}, overhead=overhead_ms / 1e3)


def stats_of(rounds: list[tuple[int, int]], seconds: float = 1.0, mode: str = "draft", source: str = "model",
             prompt_tokens: int = 20) -> SpecStats:
    """A run of rounds (drafted, accepted), each emitting accepted + 1 tokens."""
    s = SpecStats(mode=mode, prompt_tokens=prompt_tokens)
    for drafted, accepted in rounds:
        s.record_round(source if drafted else "none", drafted, accepted, accepted + 1)
    s.decode_seconds = seconds
    s.target_seconds = seconds * 0.8
    return s


def test_conditional_acceptance_undoes_the_running_product():
    assert conditional_acceptance([0.8, 0.6, 0.3]) == pytest.approx([0.8, 0.75, 0.5])
    assert conditional_acceptance([0.0, 0.0]) == [0.0, 0.0]
    assert conditional_acceptance([]) == []


def test_each_round_is_priced_by_what_it_drafted():
    model = costs({1: 10.0, 2: 12.0, 3: 14.0}, draft_ms=2.0, overhead_ms=1.0)
    # A draft round of 2, one accepted: T(3) + o + 2 draft decodes = 14 + 1 + 4 ms.
    assert predicted_seconds(stats_of([(2, 1)]), model, "d.gguf") == pytest.approx(0.019)
    # All 2 accepted: the next round first decodes the last draft token: one draft decode more.
    assert predicted_seconds(stats_of([(2, 2)]), model, "d.gguf") == pytest.approx(0.021)
    # A round that drafted nothing: T(1) + o. A draft of 1: T(2) + o + 1 decode.
    assert predicted_seconds(stats_of([(0, 0), (1, 0)]), model, "d.gguf") == pytest.approx(0.011 + 0.015)
    # Lookups (n-gram, and auto's suffix and memory) cost nothing to make: T(3) + o, whatever
    # drafting time the run measured.
    for lookup in ("ngram", "suffix", "memory"):
        run = stats_of([(2, 2)], source=lookup)
        run.draft_seconds = 0.004  # the lookup's own time, which the model does not price
        assert predicted_seconds(run, model, None) == pytest.approx(0.015)


def test_predicted_speedup_is_tokens_at_the_predicted_cost_against_plain_decoding():
    model = costs({1: 10.0, 2: 12.0, 3: 14.0}, draft_ms=2.0, overhead_ms=1.0)
    run = stats_of([(2, 2), (2, 1), (2, 0), (0, 0)])  # 3 + 2 + 1 + 1 = 7 tokens
    seconds = (14 + 1 + 6) + (14 + 1 + 4) * 2 + (10 + 1)  # ms
    assert run.generated == 7
    assert predicted_speedup(run, model, "d.gguf") == pytest.approx(7 * 11 / seconds)
    assert prediction_error(1.1, 1.0) == pytest.approx(0.1)
    assert prediction_error(None, 1.0) is None and prediction_error(1.0, None) is None


def test_the_machines_pace_the_overhead_and_the_depth_come_from_the_plain_runs():
    plain = stats_of([(0, 0)] * 100, seconds=1.2, mode="none", prompt_tokens=300)  # 12 ms a round
    plain.target_seconds = 1.1  # 11 ms of it in the target's decode
    measured = MeasuredCosts(depth=200, target={1: 0.010, 2: 0.015}, draft={"d.gguf": 0.004})
    measured.calibrate(plain)
    assert measured.speed == pytest.approx(1.1)  # decodes took 10% longer during the runs than when timed
    assert measured.overhead == pytest.approx(0.001)
    assert measured.target_time(2) == pytest.approx(0.0165) and measured.draft_time("d.gguf") == pytest.approx(0.0044)
    assert measured.plain_seconds == pytest.approx(0.012)  # exactly what a plain round took
    untouched = MeasuredCosts(depth=1, target={1: 0.01})
    untouched.calibrate(SpecStats())
    assert (untouched.speed, untouched.overhead) == (1.0, 0.0)
    # Two pooled runs of 150-token prompts and 50 tokens each: the cache held 175 tokens on average.
    assert timing_depth(plain, runs=2) == 175


def simulated_run(rounds: list[tuple[str, int, int]], t: dict[int, float], t_d: float, o: float,
                  speed: float = 1.0) -> SpecStats:
    """A run whose decodes cost exactly speed * T(n) and speed * t_d, and o a round on top, drafts
    decoded as ModelDrafter does (k decodes, one more after a round whose drafts all stood)."""
    stats = SpecStats(mode="draft", prompt_tokens=50)
    catch_up = 0
    for source, drafted, accepted in rounds:
        model = source == "model"
        stats.target_seconds += speed * t[drafted + 1]
        stats.draft_seconds += speed * (drafted + catch_up) * t_d * model
        stats.decode_seconds += o
        catch_up = int(model and drafted > 0 and accepted == drafted)
        stats.record_round(source, drafted, accepted, accepted + 1)
    stats.decode_seconds += stats.target_seconds + stats.draft_seconds
    return stats


def test_a_run_costing_what_the_model_says_is_predicted_exactly():
    """Runs whose decodes cost what was measured are predicted exactly, however their rounds
    drafted, and when the machine ran slower during the runs than while timing; the old formula
    ("every drafting round drafts k", no loop overhead, no catch-up decode) was not. Scripted
    numbers of the kind measured on a 2-core CPU (ms)."""
    t = {1: 70.0, 2: 85.0, 3: 100.0, 4: 117.0, 5: 133.0}
    o, speed = 14.0, 1.15
    plain = simulated_run([("none", 0, 0)] * 50, t, 0.0, o, speed)
    base_rate = plain.tokens_per_second
    # n-gram k=4: many rounds find no match, and matches near the end of the history run out early.
    ngram = simulated_run([("ngram", 4, 4)] * 10 + [("ngram", 2, 2)] * 10 + [("ngram", 1, 0)] * 8
                          + [("none", 0, 0)] * 10, t, 0.0, o, speed)
    # A 32 ms draft model at k=2 and k=4.
    draft2 = simulated_run([("model", 2, 2)] * 12 + [("model", 2, 1)] * 8 + [("model", 2, 0)] * 6, t, 32.0, o,
                           speed)
    draft4 = simulated_run([("model", 4, 4)] * 6 + [("model", 4, 2)] * 8 + [("model", 4, 1)] * 6
                           + [("model", 4, 0)] * 6, t, 32.0, o, speed)

    model = MeasuredCosts(depth=100, target=dict(t), draft={"d.gguf": 32.0})
    model.calibrate(plain)
    assert (model.speed, model.overhead) == (pytest.approx(speed), pytest.approx(o))

    def old_formula(run: SpecStats, k: int, t_d: float) -> float:
        f = run.drafted_at[0] / run.rounds
        e = 1 + sum(run.per_position_acceptance[:k])
        return t[1] * (1 + f * (e - 1)) / ((1 - f) * t[1] + f * (k * t_d + t[k + 1]))

    errors_before = []
    for run, k, draft in ((ngram, 4, None), (draft2, 2, "d.gguf"), (draft4, 4, "d.gguf")):
        measured = run.tokens_per_second / base_rate
        assert predicted_speedup(run, model, draft) == pytest.approx(measured)
        errors_before.append(old_formula(run, k, 32.0 if draft else 0.0) / measured - 1)
    assert errors_before[0] > 0.15  # short and missing n-gram drafts: tokens over-counted
    assert errors_before[2] < -0.05  # the loop's overhead, paid by every round, left out


def test_best_k_by_model_weighs_acceptance_against_cost():
    per_position = [0.9, 0.81, 0.729]  # alpha = 0.9 at every position
    model = costs({1: 10, 2: 11, 3: 12, 4: 13}, draft_ms=1.0)
    # E(k) = 1, 1.9, 2.71, 3.439; cost(k) = T(k+1) + (k + P(all k accepted)) * 1 ms = 10, 12.9, 14.81, 16.729.
    assert expected_round_seconds(3, per_position, model, "d.gguf") == pytest.approx(0.016729)
    k, speedup = best_k_by_model(per_position, model, "d.gguf", max_k=3)
    assert k == 3
    assert speedup == pytest.approx(10 * 3.439 / 16.729)
    # The loop's overhead is paid once a round, by plain decoding too.
    slow_loop = costs({1: 10, 2: 11, 3: 12, 4: 13}, draft_ms=1.0, overhead_ms=5.0)
    assert best_k_by_model(per_position, slow_loop, "d.gguf", max_k=3)[1] == pytest.approx(15 * 3.439 / 21.729)
    # The same acceptance with a draft as slow as the target: drafting never pays.
    assert best_k_by_model(per_position, costs({1: 10, 2: 11, 3: 12, 4: 13}, draft_ms=10.0), "d.gguf", 3) == (0, 1.0)
    # max_k caps the search.
    assert best_k_by_model(per_position, model, "d.gguf", max_k=1)[0] == 1


def test_measured_costs_look_up_unmeasured_batch_sizes_and_serialise():
    measured = MeasuredCosts(depth=10, target={1: 0.01, 4: 0.02}, draft={"d.gguf": 0.002}, overhead=0.001)
    assert measured.target_time(2) == 0.02  # the next larger measured size
    assert measured.draft_time("d.gguf") == 0.002 and measured.draft_time(None) == 0.0
    assert measured.plain_seconds == pytest.approx(0.011)
    assert measured.to_dict() == {"depth": 10, "target_ms": {"1": pytest.approx(10.0), "4": pytest.approx(20.0)},
                                  "draft_ms_per_token": {"d.gguf": pytest.approx(2.0)}, "speed": 1.0,
                                  "overhead_ms_per_round": pytest.approx(1.0)}


# -- adding up runs into rows --------------------------------------------------------------------


def test_pooled_runs_are_recorded_round_by_round():
    total = SpecStats()
    total.add(stats_of([(2, 2), (2, 0)], 1.0))
    total.add(stats_of([(3, 1)], 0.5))
    assert (total.rounds, total.drafted, total.accepted, total.generated) == (3, 7, 3, 6)
    assert total.drafted_at == [3, 3, 1]
    assert total.accepted_at == [2, 1, 0]
    assert total.round_shapes == {("model", 2, 2, 3): 1, ("model", 2, 0, 1): 1, ("model", 3, 1, 2): 1}
    assert total.decode_seconds == pytest.approx(1.5)
    assert total.prompt_tokens == 40


def test_rows_compare_each_configuration_with_its_groups_baseline():
    base, draft = BenchConfig("none"), BenchConfig("draft", 2, "d.gguf")
    totals = Totals()
    group = ("code", None)
    totals.add(base, group, stats_of([(0, 0)] * 10, 1.0, "none"))  # 10 tok/s
    totals.add(draft, group, stats_of([(2, 2), (2, 1), (2, 0), (2, 2)], 0.5))  # 9 tokens in 0.5 s
    measured = {group: MeasuredCosts(20, target={1: 0.1, 3: 0.12}, draft={"d.gguf": 0.01})}
    rows = make_rows([base, draft], [group], totals, measured, chat_template="<user>{prompt}</user>")

    assert [tuple(r) for r in rows] == [ROW_FIELDS, ROW_FIELDS]
    plain, spec = rows
    assert plain["speedup"] == 1.0 and plain["predicted_speedup"] == 1.0 and plain["tokens"] == 10
    assert plain["prediction_error"] is None and plain["ms_per_round"] == pytest.approx(100.0)
    assert spec["tokens_per_second"] == pytest.approx(18.0)
    assert spec["speedup"] == pytest.approx(1.8)
    assert spec["acceptance_rate"] == pytest.approx(5 / 8)
    assert spec["mean_accepted_length"] == pytest.approx(9 / 4)
    assert spec["per_position_acceptance"] == pytest.approx([3 / 4, 2 / 4])
    # Each round: T(3) + 2 draft decodes = 140 ms, and 10 ms more after the two rounds that kept both drafts.
    seconds = 4 * 0.14 + 2 * 0.01
    assert spec["predicted_ms_per_round"] == pytest.approx(seconds / 4 * 1e3)
    assert spec["predicted_target_ms_per_round"] == pytest.approx(120.0)
    assert spec["predicted_draft_ms_per_round"] == pytest.approx((4 * 0.02 + 2 * 0.01) / 4 * 1e3)
    assert spec["ms_per_round"] == pytest.approx(125.0) and spec["target_ms_per_round"] == pytest.approx(100.0)
    assert spec["predicted_speedup"] == pytest.approx(9 * 0.1 / seconds)
    assert spec["prediction_error"] == pytest.approx(spec["predicted_speedup"] / 1.8 - 1)
    assert spec["best"] and not plain["best"]
    assert (spec["category"], spec["context_length"], spec["prompts"], spec["k"]) == ("code", None, 1, 2)
    assert {r["chat_template"] for r in rows} == {"<user>{prompt}</user>"}

    [best] = model_best_ks([base, draft], [group], totals, measured)
    assert best["draft"] == "d.gguf" and best["k"] in (0, 1, 2)


def test_a_refused_draft_is_a_row_with_its_reason():
    row = refused_row("gemma.gguf", "vocabularies differ")
    assert tuple(row) == ROW_FIELDS
    assert row["refused"] == "vocabularies differ" and row["tokens_per_second"] is None


def test_csv_has_one_header_and_a_line_per_row(tmp_path):
    rows = [
        {**dict.fromkeys(ROW_FIELDS), "mode": "draft", "k": 2, "per_position_acceptance": [0.5, 0.25], "best": True},
        refused_row("gemma.gguf", "vocabularies differ"),
    ]
    path = tmp_path / "rows.csv"
    write_csv(rows, path)
    with path.open(newline="") as f:
        read = list(csv.DictReader(f))
    assert list(read[0]) == list(ROW_FIELDS)
    assert read[0]["per_position_acceptance"] == "0.5000 0.2500"
    assert read[1]["refused"] == "vocabularies differ" and read[1]["tokens_per_second"] == ""
    with pytest.raises(UsageError, match="cannot write"):
        write_csv(rows, tmp_path / "absent" / "rows.csv")


# -- prompt files --------------------------------------------------------------------------------


def test_plain_text_prompts_are_blank_line_separated_blocks():
    text = "first line\nsecond line\n\n  \t\nthird\r\n\r\nfourth\n\n\n"
    assert parse_prompts(text, jsonl=False) == [
        BenchPrompt("first line\nsecond line"), BenchPrompt("third"), BenchPrompt("fourth")]


def test_jsonl_prompts_with_prompt_or_spec_bench_turns_and_categories(tmp_path):
    path = tmp_path / "set.jsonl"
    path.write_text(
        '{"prompt": "def add(a, b):", "category": "code"}\n'
        "\n"
        '{"question_id": 81, "category": "writing", "turns": ["Write a poem.", "Now shorter."]}\n'
        '{"prompt": "no category"}\n'
    )
    assert load_prompts(path) == [
        BenchPrompt("def add(a, b):", "code"), BenchPrompt("Write a poem.", "writing"), BenchPrompt("no category")]


def test_jsonl_is_recognised_without_the_suffix(tmp_path):
    path = tmp_path / "questions.txt"
    path.write_text('{"turns": ["Hello?"]}\n')
    assert load_prompts(path) == [BenchPrompt("Hello?")]


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "ok"', "line 2: not JSON"),
    ('["a list"]', "line 2: expected a JSON object"),
    ('{"text": "no prompt"}', 'line 2: needs a "prompt" string or a "turns" list'),
    ('{"turns": []}', '"turns" must be a non-empty list'),
    ('{"turns": [3]}', "must be a non-empty string"),
    ('{"prompt": "   "}', "must be a non-empty string"),
    ('{"prompt": "x", "category": 7}', '"category" must be a non-empty string'),
])
def test_bad_jsonl_lines_are_usage_errors_naming_the_line(line, message):
    with pytest.raises(UsageError, match=message.replace("[", r"\[")):
        parse_prompts('{"prompt": "fine"}\n' + line + "\n", source="set.jsonl", jsonl=True)


def test_unusable_prompt_files(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_prompts(tmp_path / "absent.txt")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(UsageError, match="not valid UTF-8"):
        load_prompts(tmp_path / "latin1.txt")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(UsageError, match="no prompts"):
        load_prompts(tmp_path / "empty.txt")


def test_select_prompts_by_category_and_limit():
    prompts = [BenchPrompt("a", "code"), BenchPrompt("b", "writing"), BenchPrompt("c", "code")]
    assert select_prompts(prompts, ["code"]) == [prompts[0], prompts[2]]
    assert select_prompts(prompts, None, 2) == prompts[:2]
    with pytest.raises(UsageError) as info:
        select_prompts(prompts, ["math"])
    assert "code, writing" in info.value.hint


# -- plots ---------------------------------------------------------------------------------------


def sample_rows() -> list[dict]:
    def row(mode, k, tps, acc, draft=None, category=ALL_CATEGORIES, best=False):
        return {**dict.fromkeys(ROW_FIELDS), "mode": mode, "k": k, "draft": draft, "category": category,
                "tokens_per_second": tps, "acceptance_rate": acc, "best": best}
    return [
        row("none", 0, 10.0, 0.0),
        row("ngram", 2, 11.0, 0.3),
        row("draft", 2, 14.0, 0.8, "small.gguf", best=True),
        row("draft", 4, 12.0, 0.6, "small.gguf"),
        row("auto", 4, 13.0, 0.7, "small.gguf"),
        row("none", 0, 99.0, 0.0, category="code"),  # a category row: the plots show the overall ones
        refused_row("gemma.gguf", "vocabularies differ"),
    ]


def test_terminal_plot_shows_overall_speed_and_acceptance_by_k():
    assert len(overall_rows(sample_rows())) == 5
    text = terminal_plot(sample_rows()).plain
    assert "draft small k=2" in text and "auto small" in text
    assert "99.0" not in text and "gemma" not in text
    assert "acceptance by k" in text and "80%" in text


def test_png_is_written(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is an optional extra (pip install 'specllm[plot]')")
    path = tmp_path / "bench.png"
    write_png(sample_rows(), path, title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_matplotlib_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    with pytest.raises(UsageError, match="--plot needs matplotlib") as info:
        require_matplotlib()
    assert "specllm[plot]" in info.value.hint


# -- on the tiny models --------------------------------------------------------------------------

# One thread: the tiny models need no more, and on a busy machine llama.cpp's threads wait on each other.
THREADS = 1


def engine_config(tiny, **overrides) -> EngineConfig:
    return EngineConfig(target=str(tiny.target), threads=THREADS, **overrides)


TWO_PROMPTS = [BenchPrompt("the cat said that it was for you and the", "words"),
               BenchPrompt("def add(a, b):\n    return a + b\n\ndef", "code")]


def test_a_bench_run_measures_every_configuration_and_refuses_another_vocabulary(tiny):
    settings = BenchSettings(engine=engine_config(tiny), drafts=(str(tiny.draft_copy), str(tiny.other_vocab)),
                             ks=(2, 3), max_tokens=8, ignore_eos=True, seed=1, warmup_tokens=2)
    with Bench(settings) as bench_:
        result = bench_.run(TWO_PROMPTS)

    measured = [r for r in result.rows if not r["refused"]]
    overall = [r for r in measured if r["category"] == ALL_CATEGORIES]
    assert [(r["mode"], r["draft"], r["k"]) for r in overall] == [
        ("none", None, 0), ("ngram", None, 2), ("ngram", None, 3),
        ("draft", "draft_copy.gguf", 2), ("draft", "draft_copy.gguf", 3), ("auto", "draft_copy.gguf", 3)]
    assert {r["category"] for r in measured} == {"words", "code", ALL_CATEGORIES}
    for row in measured:
        assert row["tokens"] == 8 * row["prompts"]  # --ignore-eos: equal counts
        assert 0.0 <= row["acceptance_rate"] <= 1.0
        assert row["tokens_per_second"] > 0 and row["speedup"] > 0
        assert sum(r["best"] for r in measured if r["category"] == row["category"]) == 1
        if row["mode"] in ("ngram", "draft"):
            assert row["predicted_speedup"] > 0
            assert row["prediction_error"] == pytest.approx(row["predicted_speedup"] / row["speedup"] - 1)
        if row["mode"] == "draft":
            assert row["acceptance_rate"] == 1.0  # a copy of the target agrees on every greedy token
    assert all(r["chat_template"] is None for r in measured)

    [refused] = [r for r in result.rows if r["refused"]]
    assert refused["draft"] == "other_vocab.gguf" and "vocabularies differ" in refused["refused"]
    assert set(result.costs) == {("words", None), ("code", None), (ALL_CATEGORIES, None)}
    for costs_ in result.costs.values():
        assert costs_.target.keys() == {1, 2, 3, 4}
        assert "draft_copy.gguf" in costs_.draft
        assert costs_.depth > 0 and costs_.overhead >= 0
    assert json.loads(json.dumps(result.to_dict()))["rows"] == result.rows


def test_a_bench_run_is_a_generate_run(tiny):
    """Bench goes through the engine: a configuration's counts are those of Engine.generate with
    the same request."""
    settings = BenchSettings(engine=engine_config(tiny), drafts=(str(tiny.draft_other),), ks=(3,),
                             modes=("none", "ngram", "draft"), max_tokens=12, seed=5, warmup_tokens=2)
    with Bench(settings) as bench_:
        result = bench_.run(TWO_PROMPTS[:1])
    rows = {(r["mode"], r["k"]): r for r in result.rows}

    request = Request(max_tokens=12, seed=5)
    for mode, draft in (("ngram", None), ("draft", str(tiny.draft_other))):
        with Engine(replace(engine_config(tiny), draft=draft, mode=mode, k=3)) as engine:
            generation = engine.generate(engine.tokenize_prompt(TWO_PROMPTS[0].text, request), request)
            for _ in generation:
                pass
        stats, row = generation.stats, rows[(mode, 3)]
        assert (row["tokens"], row["rounds"]) == (stats.generated, stats.rounds)
        assert row["acceptance_rate"] == stats.acceptance_rate
        assert row["per_position_acceptance"] == stats.per_position_acceptance


def test_with_chat_prompts_go_in_the_targets_template_and_the_result_says_which(tiny):
    raw = BenchSettings(engine=engine_config(tiny), ks=(2,), modes=("none",), max_tokens=4, warmup_tokens=1)
    chat = replace(raw, chat=True)
    with Bench(raw) as bench_:
        raw_result = bench_.run(TWO_PROMPTS[:1])
    with Bench(chat) as bench_:
        chat_result = bench_.run(TWO_PROMPTS[:1])
        expected = bench_.base.target_model.apply_chat_template(PROMPT_MARK)
    assert raw_result.chat_template is None
    assert chat_result.chat_template == expected
    assert "<|im_start|>user" in expected and PROMPT_MARK in expected  # the tiny target's ChatML
    assert chat_result.rows[0]["chat_template"] == expected
    assert chat_result.to_dict()["chat_template"] == expected
    assert chat_result.rows[0]["prompt_tokens"] > raw_result.rows[0]["prompt_tokens"]


def test_with_cross_vocab_another_vocabulary_drafts_through_text(tiny):
    settings = BenchSettings(engine=engine_config(tiny, cross_vocab=True), drafts=(str(tiny.other_vocab),), ks=(2,),
                             modes=("none", "draft"), max_tokens=8, ignore_eos=True, warmup_tokens=2)
    with Bench(settings) as bench_:
        result = bench_.run(TWO_PROMPTS[:1])
    assert not result.refused
    [row] = [r for r in result.rows if r["mode"] == "draft"]
    assert row["draft"] == "other_vocab.gguf" and row["tokens"] == 8
    assert 0.0 <= row["acceptance_rate"] <= 1.0
    assert any("through text" in w for w in result.warnings)


def test_prompts_are_padded_to_the_context_lengths(tiny):
    settings = BenchSettings(engine=engine_config(tiny), ks=(2,), max_tokens=4, context_lengths=(12, 200, 600))
    with Bench(settings) as bench_:
        groups = bench_.prepare(TWO_PROMPTS)
        warnings = bench_.warnings
    assert list(groups) == [200, 600]  # both prompts are longer than 12 tokens
    assert any("12 tokens" in w for w in warnings)
    for length, group in groups.items():
        assert len(group) == 2
        for prompt in group:
            assert abs(len(prompt.tokens) - length) <= length * 0.1
            assert prompt.context_length == length


def test_a_context_too_small_for_the_prompts_is_a_usage_error(tiny):
    settings = BenchSettings(engine=engine_config(tiny, ctx_size=64), ks=(2,), max_tokens=64)
    with Bench(settings) as bench_, pytest.raises(UsageError, match="does not fit") as info:
        bench_.prepare(TWO_PROMPTS)
    assert "--ctx-size" in info.value.hint


@pytest.fixture
def run_bench_cli():
    app = typer.Typer()
    app.command()(bench)
    app.command("other")(lambda: None)  # two commands, so `bench` is a subcommand as in specllm's app
    runner = CliRunner()
    return lambda *args: runner.invoke(app, ["bench", "-t", str(THREADS), *map(str, args)])


def test_cli_json_csv_and_plot(tiny, tmp_path, run_bench_cli):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p.text, "category": p.category}) + "\n" for p in TWO_PROMPTS))
    csv_path, png_path = tmp_path / "rows.csv", tmp_path / "plot.png"
    args = ["-m", tiny.target, "-md", tiny.draft_copy, "-md", tiny.other_vocab, "--k", "2,3", "-n", 8,
            "--prompts", prompts, "--ignore-eos", "--modes", "draft", "--json", "--csv", csv_path]
    has_matplotlib = True
    try:
        require_matplotlib()
    except UsageError:
        has_matplotlib = False
    if has_matplotlib:
        args += ["--plot", png_path]
    result = run_bench_cli(*args)
    assert result.exit_code == 0, result.output

    document = json.loads(result.stdout)
    assert {"target", "settings", "costs", "best_k", "rows"} <= document.keys()
    modes = [(r["mode"], r["k"]) for r in document["rows"] if r["category"] == ALL_CATEGORIES]
    assert modes == [("none", 0), ("draft", 2), ("draft", 3)]
    assert any(r["refused"] and "vocabularies differ" in r["refused"] for r in document["rows"])
    assert "refused other_vocab.gguf" in result.stderr  # tables and plot go to stderr with --json
    assert "tokens/s" in result.stderr
    with csv_path.open(newline="") as f:
        assert len(list(csv.DictReader(f))) == len(document["rows"])
    if has_matplotlib:
        assert png_path.read_bytes()[:4] == b"\x89PNG"


def test_cli_table_goes_to_stdout(tiny, run_bench_cli):
    result = run_bench_cli("-m", tiny.target, "--k", "2", "-n", 4, "--limit", 1, "--modes", "ngram")
    assert result.exit_code == 0, result.output
    assert "tok/s" in result.stdout and "ngram" in result.stdout and "error" in result.stdout
    assert "prompts as raw text" in result.stdout


def test_cli_chat_shows_the_template_in_the_header_and_the_csv(tiny, tmp_path, run_bench_cli):
    csv_path = tmp_path / "rows.csv"
    result = run_bench_cli("-m", tiny.target, "--k", "2", "-n", 4, "--limit", 1, "--modes", "ngram", "--chat",
                           "--csv", csv_path)
    assert result.exit_code == 0, result.output
    assert "prompts in the chat template <|im_start|>user\\n{prompt}<|im_end|>" in result.stdout
    with csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(r["chat_template"].startswith("<|im_start|>user\n{prompt}") for r in rows)


@pytest.mark.parametrize("args, message", [
    (["--k", "0"], "--k values must be between"),
    (["--modes", "fast"], "--modes takes some of"),
    (["--category", "nothing"], "no prompt of category nothing"),
    (["-n", "0"], "--max-tokens must be >= 1"),
    (["--prompts", "absent.jsonl"], "prompt file not found"),
])
def test_cli_usage_errors_are_one_line(tiny, run_bench_cli, args, message):
    result = run_bench_cli("-m", tiny.target, *args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.output
