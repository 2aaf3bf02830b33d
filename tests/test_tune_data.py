"""Issue 25 without PyTorch: the tuning data file (round trip, resume), the teacher-forced
acceptance measure, --draft-lora in every command, and the bad inputs that need no training."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import PROMPT, assert_clean_error, generate, invoke, json_result
from tiny_models import build_tiny_model
from specllm import llama
from specllm.engine import Engine, EngineConfig
from specllm.errors import TuneError
from specllm.drafting.compat import VocabSummary, check_vocabularies
from specllm.drafting.replay import RecordedOutput
from specllm.drafting.selection import SelectionSettings, measure_rounds
from specllm.tune.agreement import Agreement, measure, target_probabilities
from specllm.tune.data import DataSettings, generate_data, plan, read_samples, top_logprobs
from specllm.tune.export import write_adapter
from specllm.tune.synthetic import clean, distinct, synthetic_prompts

TEXTS = ["the of and to in is", "it you that he was for", "on are as with his they", "at be this have from"]


def settings_for(tiny, **given) -> DataSettings:
    return DataSettings(target=tiny.target.name, target_bytes=tiny.target.stat().st_size,
                        **{"top_k": 5, "max_tokens": 12, "temp": 1.0, "samples": 1, **given})


@pytest.fixture(scope="module")
def engine(tiny):
    with Engine(EngineConfig(target=str(tiny.target), mode="none", ctx_size=256, threads=1)) as e:
        yield e


def test_top_logprobs_are_the_largest_sorted_and_normalised():
    logits = np.array([[0.0, 3.0, 1.0, 2.0]])
    ids, logprobs = top_logprobs(logits, 2)
    assert ids.tolist() == [[1, 3]]
    full = logits - np.log(np.exp(logits).sum())
    assert np.allclose(logprobs, full[0, [1, 3]])


def test_data_file_round_trips_and_holds_the_targets_greedy_choice(tiny, engine, tmp_path):
    s = settings_for(tiny)
    jobs = plan(TEXTS, 3, s)
    assert [(j.split, j.variant) for j in jobs].count(("eval", "greedy")) == 1
    assert not any(j.split == "eval" and j.variant != "greedy" for j in jobs)
    made = generate_data(engine, tmp_path / "d.jsonl", s, jobs)
    assert len(made) == len(jobs) == 7
    again = read_samples(tmp_path / "d.jsonl", s)
    assert again == made
    for sample in made:
        assert len(sample.top_ids) == len(sample.top_logprobs) == len(sample.output) == 12
        assert all(np.all(np.diff(row) <= 0) and np.exp(row).sum() <= 1 + 1e-6 for row in sample.top_logprobs)
        if sample.variant == "greedy":  # the target's greedy token is its most likely one
            assert [row[0] for row in sample.top_ids] == sample.output


def test_an_interrupted_run_keeps_its_samples_and_a_rerun_continues(tiny, engine, tmp_path):
    s, path = settings_for(tiny), tmp_path / "d.jsonl"
    jobs = plan(TEXTS, 3, s)
    seen = []

    def interrupt_after_three(sample):
        seen.append(sample)
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate_data(engine, path, s, jobs, on_sample=interrupt_after_three)
    kept = read_samples(path, s)
    assert kept == seen
    with path.open("a") as f:  # an interruption in the middle of writing a line
        f.write('{"prompt_index": 9, "variant": "gre')
    made = []
    complete = generate_data(engine, path, s, jobs, on_sample=made.append)
    assert len(made) == len(jobs) - 3  # only the missing samples were generated
    assert complete[:3] == seen
    assert sorted(x.key for x in complete) == sorted((j.prompt_index, j.variant) for j in jobs)
    assert read_samples(path, s) == complete


# What llama.cpp's rounding moves a log-probability by when the rows are decoded in other batches
# (other sequences beside them, or the whole output at once): the 4-decimal file keeps the rest.
BATCH_LOGPROB_TOLERANCE = 1e-3


def assert_same_samples(got, expected) -> None:
    """The same samples: keys, tokens and top-k ids exactly, log-probabilities within the tolerance."""
    assert [x.key for x in got] == [x.key for x in expected]
    for a, b in zip(got, expected):
        assert (a.prompt, a.output, a.top_ids, a.end_token) == (b.prompt, b.output, b.top_ids, b.end_token), a.key
        assert np.allclose(a.top_logprobs, b.top_logprobs, atol=BATCH_LOGPROB_TOLERANCE), a.key


@pytest.fixture(scope="module")
def batched_engine(tiny):
    with Engine(EngineConfig(target=str(tiny.target), mode="none", ctx_size=256, threads=1, parallel=3)) as e:
        yield e


def test_samples_made_in_a_shared_batch_are_those_made_alone(tiny, engine, batched_engine, tmp_path):
    """--parallel: the same samples (greedy and sampled, seeded per sample) as one at a time,
    the log-probabilities within llama.cpp's batch non-invariance; the top-k rows are those a
    separate teacher-forced pass over prompt + output gives."""
    s = settings_for(tiny)
    jobs = plan(TEXTS, 3, s)
    alone = generate_data(engine, tmp_path / "alone.jsonl", s, jobs)
    together = generate_data(batched_engine, tmp_path / "together.jsonl", s, jobs)
    assert [x.key for x in together] == [x.key for x in alone] == [(j.prompt_index, j.variant) for j in jobs]
    assert_same_samples(together, alone)
    for sample in alone:  # one teacher-forced decode over the whole output gives the same rows
        ctx = engine.target
        ctx.clear()
        logits = ctx.decode(sample.prompt + sample.output[:-1], all_logits=True)[len(sample.prompt) - 1:]
        ids, logprobs = top_logprobs(logits, s.top_k)
        assert ids.tolist() == sample.top_ids
        assert np.allclose(logprobs, sample.top_logprobs, atol=BATCH_LOGPROB_TOLERANCE)


def test_samples_finished_out_of_order_resume_by_key(tmp_path):
    """A target that ends its answers after 2-8 tokens: in a batch the jobs finish out of their
    order. An interruption keeps those written, and a rerun makes exactly the others and
    returns every sample in the jobs' order."""
    target = build_tiny_model(tmp_path / "eos_target.gguf", eos_rate=0.3)
    s = DataSettings(target=target.name, target_bytes=target.stat().st_size, top_k=5, max_tokens=12, temp=1.0)
    jobs, path = plan(TEXTS, 4, s), tmp_path / "d.jsonl"
    keys = [(j.prompt_index, j.variant) for j in jobs]
    with Engine(EngineConfig(target=str(target), mode="none", ctx_size=256, threads=1, parallel=3)) as engine:
        order = []
        whole = generate_data(engine, tmp_path / "whole.jsonl", s, jobs, on_sample=lambda x: order.append(x.key))
        assert order != keys, "every sample finished in the jobs' order: pick other prompts"
        assert any(x.end_token is not None for x in whole)
        written = []

        def interrupt_after_three(sample):
            written.append(sample.key)
            if len(written) == 3:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            generate_data(engine, path, s, jobs, on_sample=interrupt_after_three)
        # (Which three finish first depends on what the slots cached before: prompts share cells.)
        assert [x.key for x in read_samples(path, s)] == written and len(written) == 3
        made = []
        complete = generate_data(engine, path, s, jobs, on_sample=lambda x: made.append(x.key))
    assert sorted(made + written) == sorted(keys) and not set(made) & set(written)
    assert_same_samples(complete, whole)  # in the jobs' order, as the run never interrupted
    assert sorted(read_samples(path, s), key=lambda x: x.key) == sorted(complete, key=lambda x: x.key)


def test_a_data_file_of_other_settings_is_refused(tiny, engine, tmp_path):
    path = tmp_path / "d.jsonl"
    generate_data(engine, path, settings_for(tiny), plan(TEXTS[:2], 1, settings_for(tiny)))
    with pytest.raises(TuneError, match="other settings .*max_tokens"):
        read_samples(path, settings_for(tiny, max_tokens=99))
    (tmp_path / "x.jsonl").write_text('{"prompt": "not ours"}\n')
    with pytest.raises(TuneError, match="not a specllm tune-draft data file"):
        read_samples(tmp_path / "x.jsonl")


# -- synthetic prompts -----------------------------------------------------------------------


def test_the_target_writes_distinct_synthetic_prompts_and_an_interrupted_run_resumes(tiny, batched_engine, tmp_path):
    whole = synthetic_prompts(batched_engine, tmp_path / "whole.jsonl", TEXTS, 5)
    assert len(whole) == 5 and len({" ".join(t.split()) for t in whole}) == 5
    assert not set(whole) & set(TEXTS) and all(t.strip() for t in whole)
    path, heard = tmp_path / "s.jsonl", []

    def interrupt_after_two(text):
        heard.append(text)
        if len(heard) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        synthetic_prompts(batched_engine, path, TEXTS, 5, on_prompt=interrupt_after_two)
    assert len(path.read_text().splitlines()) == 3  # the header and the two attempts made
    again = []
    assert synthetic_prompts(batched_engine, path, TEXTS, 5, on_prompt=again.append) == whole
    assert len(again) >= 3  # only the missing attempts were made
    with pytest.raises(TuneError, match="other settings .*seed"):
        synthetic_prompts(batched_engine, path, TEXTS, 5, seed=1)


def test_duplicates_and_real_prompts_are_not_synthetic_prompts():
    attempts = {0: "def f(x):", 3: "  def   f(x):  ", 1: TEXTS[0], 2: "", 4: "def g(y):", 5: "def h():"}
    assert distinct(attempts, TEXTS, 2) == ["def f(x):", "def g(y):"]
    assert clean("```python\ndef f(x):\n    pass\n```") == "def f(x):\n    pass"


def test_synthetic_prompts_are_training_prompts_after_the_real_ones(tiny):
    s = settings_for(tiny, samples=1)
    jobs = plan(TEXTS, 3, s, synthetic=["def a():", "def b():"])
    synthetic = [j for j in jobs if j.prompt_index >= len(TEXTS)]
    assert {(j.prompt_index, j.text) for j in synthetic} == {(4, "def a():"), (5, "def b():")}
    assert {j.split for j in synthetic} == {"train"} and len(synthetic) == 4  # greedy + one sampled each
    real = plan(TEXTS, 3, s)
    assert jobs[:len(real)] == real  # the real prompts' jobs (and keys) stay as they were


def test_tune_draft_makes_its_data_in_parallel_with_synthetic_prompts(tiny, tmp_path):
    pytest.importorskip("torch", reason="tune-draft trains with PyTorch after its data step")
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n\n".join(TEXTS))
    result = invoke("tune-draft", tiny.target, tiny.draft_other, "--prompts", prompts, "-o", tmp_path / "a.gguf",
                    "-n", 8, "--parallel", 3, "--synthetic", 2, "--max-steps", 1, "--json")
    assert result.exit_code == 0, result.output
    assert re.search(r"\d+ tokens, [\d.]+ tok/s", result.stderr)  # the data step's progress
    samples = read_samples(tmp_path / "a.gguf.data.jsonl")
    synthetic = {x.prompt_index for x in samples if x.prompt_index >= len(TEXTS)}
    assert synthetic == {4, 5} and all(x.split == "train" for x in samples if x.prompt_index in synthetic)
    assert len((tmp_path / "a.gguf.data.jsonl.synthetic.jsonl").read_text().splitlines()) >= 3
    assert json.loads(result.stdout)["samples"]["train"] == 2 * (3 + 2)  # greedy + sampled, real + synthetic


@pytest.mark.parametrize("args, fragment", [(["--parallel", "0"], "--parallel must be between"),
                                            (["--synthetic", "-1"], "--synthetic must be >= 0")])
def test_bad_data_options_are_one_usage_line(tiny, tmp_path, args, fragment):
    pytest.importorskip("torch", reason="tune-draft asks for torch before it reads its options")
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n\n".join(TEXTS))
    assert_clean_error(invoke("tune-draft", tiny.target, tiny.draft_other, "--prompts", prompts, *args), 2, fragment)


def test_agreement_plays_the_rounds_of_replay_with_the_loops_stopping_rules():
    y = [10, 11, 12, 13, 14, 15, 16]
    a = Agreement(k=3)
    a.add(RecordedOutput([1], y, None, len(y)), [10, 11, 99, 13, 14, 15, 16])
    # round 1 drafts 3 from 0: accepts 2, emits 3 (position 2 is the target's own);
    # round 2 drafts 3 from 3: accepts 3, emits 4 (3 + bonus) and reaches the end.
    assert (a.stats.rounds, a.stats.drafted, a.stats.accepted, a.stats.generated) == (2, 6, 5, 7)
    assert a.to_dict()["per_position_acceptance"] == [1.0, 1.0, 0.5]
    assert (a.positions, a.matches) == (7, 6)
    # The loop never drafts a token it could not emit: 6 tokens at k = 4 are one round of 4
    # drafts (5 emitted), then one plain round.
    b = Agreement(k=4)
    b.add(RecordedOutput([1], y[:6], None, 6), y[:6])
    assert (b.stats.rounds, b.stats.drafted, b.stats.accepted) == (2, 4, 4)
    # An output that ended on its end-of-generation token (7): the draft that drafts it is accepted.
    c = Agreement(k=4)
    c.add(RecordedOutput([1], y[:2], 7, 10), [10, 11, 7], is_draft_eog=lambda t: t == 7)
    assert (c.stats.rounds, c.stats.drafted, c.stats.accepted, c.stats.generated) == (1, 3, 3, 2)


def test_misses_are_counted_by_the_targets_probability_for_its_own_token():
    y = [10, 11, 12, 13, 14]
    a = Agreement(k=2)
    # the target's probability of each token: sure, sure, a near tie, unsure, barely sure
    a.add(RecordedOutput([1], y, None, len(y)), [10, 11, 99, 98, 97], target_probabilities=[1.0, 0.995, 0.45, 0.6, 0.8])
    m = a.to_dict()["misses_by_target_confidence"]
    assert [(b["from"], b["to"], b["positions"], b["misses"]) for b in m["bins"]] == [
        (0.0, 0.5, 1, 1), (0.5, 0.7, 1, 1), (0.7, 0.9, 1, 1), (0.9, 0.99, 0, 0), (0.99, 1.0, 2, 0)]
    assert (m["misses"], m["unsure_misses"], m["unsure_below"]) == (3, 2, 0.7)
    # One output without the target's probabilities: no breakdown rather than one of some outputs.
    a.add(RecordedOutput([1], y, None, len(y)), y)
    assert a.to_dict()["misses_by_target_confidence"] is None


def test_the_targets_own_weights_agree_everywhere(tiny, engine, tmp_path):
    s = settings_for(tiny, temp=0.0)
    samples = generate_data(engine, tmp_path / "d.jsonl", s, plan(TEXTS, 2, s))
    assert measure(tiny.draft_copy, samples, k=4, threads=1).match_rate == 1.0
    other = measure(tiny.draft_other, samples, k=4, threads=1)
    assert 0.2 < other.match_rate < 1.0
    # The data's log-probabilities give the target's probability for each of its greedy tokens,
    # and every position falls in one bin of the breakdown.
    assert all(len(target_probabilities(x)) == len(x.output) for x in samples)
    m = other.to_dict()["misses_by_target_confidence"]
    assert sum(b["positions"] for b in m["bins"]) == other.positions
    assert m["misses"] == other.positions - other.matches


def test_tune_acceptance_counts_the_rounds_specllm_drafts_counts(tiny, engine, tmp_path):
    """One round counter: tune-draft's acceptance and `specllm drafts` play the same rounds."""
    s = settings_for(tiny, temp=0.0)
    samples = generate_data(engine, tmp_path / "d.jsonl", s, plan(TEXTS, 4, s))
    agreement = measure(tiny.draft_other, samples, k=4, threads=1, max_tokens=s.max_tokens)
    outputs = [RecordedOutput(x.prompt, x.output, x.end_token, s.max_tokens) for x in samples]
    with llama.Model(tiny.draft_other) as draft:
        verdict = check_vocabularies(VocabSummary.from_model(engine.target_model), VocabSummary.from_model(draft))
        rounds, _ = measure_rounds(draft, engine.target_model, verdict, outputs,
                                   SelectionSettings(max_tokens=s.max_tokens, threads=1, model_ks=(4,)))
    assert agreement.stats.round_shapes == rounds[4].stats.round_shapes
    assert 0 < agreement.acceptance_rate < 1


# -- --draft-lora ------------------------------------------------------------------------------


def random_adapter(path: Path, arch: str, n_embd: int = 64, rank: int = 2, scale: float = 0.5) -> Path:
    rng = np.random.default_rng(0)
    lora = {f"blk.{i}.attn_v.weight": (rng.standard_normal((rank, n_embd)), scale * rng.standard_normal((n_embd, rank)))
            for i in range(2)}
    write_adapter(path, arch, alpha=float(rank), lora=lora)
    return path


@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> Path:
    return random_adapter(tmp_path_factory.mktemp("lora") / "a.gguf", "llama")


def test_generate_applies_the_adapter_and_says_so(tiny, adapter):
    args = ("-m", tiny.target, "-md", tiny.draft_copy, "--mode", "draft", "-n", 24, "--json", PROMPT)
    plain, tuned = json_result(generate(*args)), json_result(generate(*args, "--draft-lora", adapter))
    assert plain["stats"]["draft_lora"] is None and tuned["stats"]["draft_lora"] == "a.gguf"
    assert tuned["text"] == plain["text"]  # lossless: only the drafts change
    assert tuned["stats"]["acceptance_rate"] < plain["stats"]["acceptance_rate"] == 1.0


def test_the_adapter_changes_the_drafts_logits(tiny, adapter):
    with llama.Model(tiny.draft_copy) as model:
        tokens = model.vocab.tokenize(PROMPT)
        with llama.Context(model, n_ctx=64, n_threads=1) as ctx:
            plain = np.array(ctx.decode(tokens))
            lora = llama.LoraAdapter(model, adapter)
            llama.set_lora(ctx, lora)
            assert ctx.tokens == []  # a cache computed without the adapter is dropped
            changed = np.array(ctx.decode(tokens))
            llama.set_lora(ctx, None)
            back = np.array(ctx.decode(tokens))
    assert np.abs(changed - plain).max() > 0.1
    assert np.allclose(back, plain, atol=1e-4)


def test_bench_rows_name_the_adapter(tiny, adapter):
    result = invoke("bench", "-m", tiny.target, "-md", tiny.draft_copy, "--draft-lora", adapter, "--modes", "draft",
                    "-k", "2", "-n", "8", "--limit", "1", "-t", "1", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    assert {r["draft"] for r in rows if r["mode"] == "draft"} == {f"{tiny.draft_copy.name}+a.gguf"}


def test_serve_loads_the_adapter_into_its_engine(tiny, adapter, monkeypatch):
    pytest.importorskip("uvicorn", reason="the server extra is not installed")
    from specllm.commands import serve as serve_command
    from specllm.engine import Request
    from specllm.server.schemas import speculative

    seen = {}

    def fake_run_server(engine, sock, **_):
        generation = engine.generate(engine.tokenize_prompt(PROMPT, Request(max_tokens=4)), Request(max_tokens=4))
        list(generation)
        seen["speculative"] = speculative(generation.stats)

    monkeypatch.setattr(serve_command, "run_server", fake_run_server)
    result = invoke("serve", "-m", tiny.target, "-md", tiny.draft_copy, "--draft-lora", adapter, "--mode", "draft",
                    "--port", "0", "-t", "1")
    assert result.exit_code == 0, result.output
    assert seen["speculative"]["draft_lora"] == "a.gguf"


def test_the_pairs_draft_lora_applies_without_options(tiny, adapter, registry_env):
    (registry_env / "user-models.toml").write_text(f"""
[models.tiny-target]
path = "{tiny.target}"
[models.tiny-draft]
path = "{tiny.draft_copy}"
[pairs.default]
target = "tiny-target"
draft = "tiny-draft"
mode = "draft"
draft_lora = "{adapter}"
""")
    assert json_result(generate("-n", 8, "--json", PROMPT))["stats"]["draft_lora"] == "a.gguf"


# -- bad input ----------------------------------------------------------------------------------


def test_draft_lora_without_a_draft_is_a_usage_error(tiny, adapter):
    assert_clean_error(generate("-m", tiny.target, "--draft-lora", adapter, PROMPT), 2, "--draft-lora needs a draft")


def test_an_adapter_for_another_architecture_is_refused_in_one_line(tiny, tmp_path):
    other = random_adapter(tmp_path / "qwen.gguf", "qwen2")
    result = generate("-m", tiny.target, "-md", tiny.draft_copy, "--draft-lora", other, "--mode", "draft", PROMPT)
    assert_clean_error(result, 1, "qwen.gguf", "another architecture")


def test_an_adapter_for_another_model_is_refused_in_one_line(tiny, tmp_path):
    wide = random_adapter(tmp_path / "wide.gguf", "llama", n_embd=96)
    result = generate("-m", tiny.target, "-md", tiny.draft_copy, "--draft-lora", wide, "--mode", "draft", PROMPT)
    assert_clean_error(result, 1, "wide.gguf", "incorrect shape")


def test_a_missing_adapter_file_is_refused_in_one_line(tiny, tmp_path):
    result = generate("-m", tiny.target, "-md", tiny.draft_copy, "--draft-lora", tmp_path / "no.gguf", PROMPT)
    assert_clean_error(result, 1, "LoRA adapter not found")


def test_missing_torch_names_the_install_command(tiny, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n\n".join(TEXTS))
    result = invoke("tune-draft", tiny.target, tiny.draft_other, "--prompts", prompts)
    assert_clean_error(result, 1, "needs PyTorch")
    assert "pip install" in result.stderr
