"""`specllm drafts`: replayed rounds equal real speculative runs; the command's output, --save."""

from __future__ import annotations

import json
import shutil

import pytest

from specllm.config import EngineConfig
from specllm.drafting.compat import VocabSummary, check_vocabularies
from specllm.drafting.replay import Proposal, RecordedOutput, replay_fixed_k
from specllm.drafting.selection import LOOKUP_KS, MODEL_KS, Prompt, SelectionSettings, measure_rounds, record_outputs
from specllm.engine import Engine, Request
from specllm.llama import Model
from specllm.sampling import SamplingParams
from specllm.stats import SpecStats
from helpers import PROMPT, assert_clean_error, assert_no_internal_error, generate, invoke, json_result
from store_layouts import clean_store_env
from test_tune_data import random_adapter
from tiny_models import DRAFT_NOISE, ENGLISH_WORDS, build_tiny_model, make_vocab

N_TOKENS = 40
ENGLISH_PROMPTS = [
    PROMPT,
    "def add(a, b):\n    return a + b\n\ndef",
    "one word: when your hand is up, the other",
]
KS = (1, 2, 4, 7)
BUDGET = 7  # max_tokens where the EOG target's answers end on EOG, and one runs out of tokens


def real_rounds(target, draft, prompts, k, *, cross_vocab=False, max_tokens=N_TOKENS) -> SpecStats:
    """What `generate --mode draft -k K --temp 0` does on each prompt, pooled."""
    pooled = SpecStats(mode="draft", k=k)
    config = EngineConfig(target=str(target), draft=str(draft), mode="draft", k=k, cross_vocab=cross_vocab, threads=1)
    request = Request(max_tokens=max_tokens, params=SamplingParams(temperature=0.0))
    with Engine(config) as engine:
        for prompt in prompts:
            generation = engine.generate(engine.tokenize_prompt(prompt, request), request)
            for _ in generation:
                pass
            pooled.add(generation.stats)
    return pooled


def replayed_rounds(target, draft, prompts, ks, max_tokens=N_TOKENS):
    settings = SelectionSettings(max_tokens=max_tokens, threads=1, model_ks=ks)
    with Engine(EngineConfig(target=str(target), mode="none", threads=1)) as engine:
        outputs = record_outputs(engine, [Prompt(p) for p in prompts], settings, progress=lambda _: None)
        with Model(draft) as draft_model:
            verdict = check_vocabularies(VocabSummary.from_model(engine.target_model), VocabSummary.from_model(draft_model))
            rounds, t_draft = measure_rounds(draft_model, engine.target_model, verdict, outputs, settings)
    assert t_draft > 0
    return outputs, rounds


def assert_same_rounds(replayed: SpecStats, real: SpecStats) -> None:
    assert replayed.round_shapes == real.round_shapes
    assert replayed.mean_accepted_length == real.mean_accepted_length
    assert replayed.per_position_acceptance == real.per_position_acceptance


@pytest.mark.parametrize("draft_name", ["draft_copy", "draft_other", "draft_padded"])
def test_teacher_forced_rounds_equal_a_real_greedy_speculative_run(tiny, draft_name):
    draft = getattr(tiny, draft_name)
    _, rounds = replayed_rounds(tiny.target, draft, ENGLISH_PROMPTS, KS)
    for k in KS:
        assert_same_rounds(rounds[k].stats, real_rounds(tiny.target, draft, ENGLISH_PROMPTS, k))
    if draft_name == "draft_copy":
        assert rounds[4].stats.per_position_acceptance == [1.0] * 4
    else:
        assert 0 < rounds[4].stats.acceptance_rate < 1


def test_replay_ends_on_eog_and_max_tokens_as_the_loop_does(tmp_path):
    """A target that ends its answers (EOG drafted and accepted, or the target's own), and a
    budget that cuts the last rounds short. A draft that writes EOG after its first mistake
    stops drafting early in a real run, which teacher forcing cannot see: what is accepted (and
    so tokens per round) is still exact, the drafted count of such a round is not."""
    target = build_tiny_model(tmp_path / "eos_target.gguf", eos_rate=0.3)  # answers of 2-8 tokens
    noisy = build_tiny_model(tmp_path / "eos_draft.gguf", eos_rate=0.3, noise=DRAFT_NOISE, noise_seed=1)
    for draft in (target, noisy):
        outputs, rounds = replayed_rounds(target, draft, ENGLISH_PROMPTS, KS, max_tokens=BUDGET)
        assert any(o.end_token is not None for o in outputs), "no prompt ended on EOG: pick other prompts"
        assert any(len(o.tokens) == BUDGET for o in outputs), "no prompt ran out of tokens: raise max_tokens"
        for k in KS:
            replayed, real = rounds[k].stats, real_rounds(target, draft, ENGLISH_PROMPTS, k, max_tokens=BUDGET)
            if draft == target:
                assert_same_rounds(replayed, real)
            assert (replayed.rounds, replayed.generated, replayed.accepted_at) == (real.rounds, real.generated, real.accepted_at)
            assert replayed.mean_accepted_length == real.mean_accepted_length


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    """The target's model with its vocabulary's ids reordered: another vocabulary to the
    compatibility check, the same text, so cross-vocabulary drafts are often accepted."""
    return build_tiny_model(tmp_path_factory.mktemp("twin") / "twin.gguf", vocab=make_vocab(ENGLISH_WORDS, bytes_first=True))


@pytest.mark.parametrize("draft_name", ["twin", "other_vocab"])
def test_cross_vocab_replay_equals_a_real_cross_vocab_run(tiny, twin, draft_name):
    draft = twin if draft_name == "twin" else tiny.other_vocab
    _, rounds = replayed_rounds(tiny.target, draft, ENGLISH_PROMPTS, KS)
    for k in KS:
        assert_same_rounds(rounds[k].stats, real_rounds(tiny.target, draft, ENGLISH_PROMPTS, k, cross_vocab=True))
    if draft_name == "twin":
        assert rounds[4].stats.acceptance_rate > 0.3


def test_replay_drafts_at_most_the_tokens_left():
    """Pure replay: a perfect proposer, a budget of 5 tokens and k = 4: one round of 4 drafts
    emits 5 tokens; with a budget of 6 the second round has room for no draft."""
    y = [10, 11, 12, 13, 14, 15]

    def perfect(n, lengths):
        return {j: Proposal(tuple(y[n:n + j]), "model") for j in lengths}

    never_eog = lambda token: False  # noqa: E731
    five = replay_fixed_k(RecordedOutput([1], y[:5], None, 5), (4,), perfect, never_eog)[4].stats
    assert five.round_shapes == {("model", 4, 4, 5): 1}
    six = replay_fixed_k(RecordedOutput([1], y, None, 6), (4,), perfect, never_eog)[4].stats
    assert six.round_shapes == {("model", 4, 4, 5): 1, ("none", 0, 0, 1): 1}


# -- the command -------------------------------------------------------------------------------


@pytest.fixture
def local_models(tiny, tmp_path, monkeypatch):
    """A HOME with no store, and a SPECLLM_MODEL_PATH folder: the padded-vocabulary model as the
    target (the largest), smaller drafts of its vocabulary and of another, and a copy of the target."""
    clean_store_env(monkeypatch, tmp_path / "home")
    folder = tmp_path / "models"
    folder.mkdir()
    for name, source in (("big.gguf", tiny.draft_padded), ("big-copy.gguf", tiny.draft_padded),
                         ("small.gguf", tiny.draft_other), ("other.gguf", tiny.other_vocab)):
        shutil.copyfile(source, folder / name)
    monkeypatch.setenv("SPECLLM_MODEL_PATH", str(folder))
    monkeypatch.setenv("SPECLLM_MODELS", str(tmp_path / "user-models.toml"))
    (tmp_path / "user-models.toml").write_text(USER_TOML)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ENGLISH_PROMPTS[:2]))
    return folder, prompts, tmp_path / "user-models.toml"


USER_TOML = """# my own settings
[models.mine]
path = "/nowhere/mine.gguf"

[pairs.keep-me]
target = "mine"
draft = "mine"
"""


def drafts_json(*args):
    result = invoke("drafts", *args, "-n", 24, "-t", 1, "--json")
    assert_no_internal_error(result)
    return json_result(result)


def test_drafts_json_ranks_every_local_model_and_the_lookup(local_models):
    folder, prompts, _ = local_models
    data = drafts_json(folder / "big.gguf", "--prompts", prompts)
    rows = {row["draft"]: row for row in data["rows"]}
    assert set(rows) == {"lookup", *(str(folder / n) for n in ("big-copy.gguf", "small.gguf", "other.gguf"))}
    assert rows[str(folder / "small.gguf")]["relation"] == "same vocabulary"
    assert rows[str(folder / "other.gguf")]["relation"] == "cross-vocabulary"
    copy = rows[str(folder / "big-copy.gguf")]
    assert copy["skipped"].startswith("not smaller than the target") and copy["per_k"] == []
    assert copy["relation"] == "same vocabulary"  # from the headers' vocabulary ids
    small = rows[str(folder / "small.gguf")]
    assert (small["layers"], small["hidden_size"], small["heads"], small["vocab_size"]) == (2, 64, 4, 482)
    assert 0 < small["size_ratio"] < 1
    for name in ("lookup", str(folder / "small.gguf"), str(folder / "other.gguf")):
        row = rows[name]
        ks = [p["k"] for p in row["per_k"]]
        assert ks == (list(LOOKUP_KS) if name == "lookup" else list(MODEL_KS))
        best = max(row["per_k"], key=lambda p: p["predicted_speedup"])
        assert (row["best_k"], row["predicted_speedup"]) == (best["k"], best["predicted_speedup"])
        assert row["predicted_tokens_per_round"] == best["predicted_tokens_per_round"] >= 1
        assert len(row["acceptance_by_position"]) == row["best_k"]
    speedups = [row["predicted_speedup"] for row in data["rows"] if row["skipped"] is None]
    assert speedups == sorted(speedups, reverse=True)
    assert data["prompts"] == 2 and data["recommended"]["command"].startswith("specllm generate -m ")


def test_drafts_table_and_progress(local_models, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    folder, prompts, _ = local_models
    result = invoke("drafts", folder / "big.gguf", "--prompts", prompts, "-n", 16, "-t", 1)
    assert result.exit_code == 0, result.output
    assert "same vocab" in result.stdout and "cross-vocab" in result.stdout and "2/64/4" in result.stdout
    assert "recommended: specllm generate -m" in result.stdout
    assert "prompt 2/2" in result.stderr and "prompt 2/2" not in result.stdout


def test_saved_pair_is_used_by_generate_and_replaced_alone(local_models):
    from specllm.saved_pairs import remove_saved_pair, save_pair

    folder, _, user_toml = local_models
    target, draft = str(folder / "big.gguf"), str(folder / "small.gguf")
    save_pair(target, draft, mode="draft", k=3, cross_vocab=False)
    stats = json_result(generate("-m", target, "--json", "-n", 12, PROMPT))["stats"]
    assert stats["mode"] == "draft" and stats["k"] == 3 and stats["rounds_by_source"].get("model")
    assert json_result(generate("-m", target, "--mode", "draft", "-k", 2, "--json", "-n", 4, PROMPT))["stats"]["k"] == 2
    # The same file by another reference finds the pair too; -md overrides it.
    linked = folder.parent / "linked.gguf"
    linked.symlink_to(folder / "big.gguf")
    assert json_result(generate("-m", linked, "--json", "-n", 4, PROMPT))["stats"]["mode"] == "draft"
    other = json_result(generate("-m", target, "-md", folder / "other.gguf", "--cross-vocab", "--json", "-n", 4, PROMPT))
    assert "model" not in other["stats"]["rounds_by_source"]
    # A second save replaces its table and nothing else.
    save_pair(target, str(folder / "other.gguf"), mode="draft", k=2, cross_vocab=True)
    text = user_toml.read_text()
    assert text.startswith(USER_TOML) and text.count("[pairs.") == 2 and "small.gguf" not in text
    stats = json_result(generate("-m", target, "--json", "-n", 8, PROMPT))["stats"]
    assert stats["k"] == 2 and "xvocab" in stats["rounds_by_source"]
    assert remove_saved_pair(target) == user_toml and user_toml.read_text().rstrip() == USER_TOML.rstrip()
    assert json_result(generate("-m", target, "--json", "-n", 4, PROMPT))["stats"]["mode"] == "auto"
    assert_clean_error(generate("-m", target, "--mode", "draft", PROMPT), 2, "--mode draft needs a draft model")


def test_drafts_save_writes_what_it_recommends(local_models):
    folder, prompts, user_toml = local_models
    data = drafts_json(folder / "big.gguf", "--prompts", prompts, "--save")
    best = data["rows"][0]
    text = user_toml.read_text()
    assert text.startswith(USER_TOML)
    if data["recommended"]["draft"] in (None, "lookup"):
        assert "drafts-for-" not in text
    else:
        assert f'draft = "{best["draft"]}"' in text and f"k = {best['best_k']}" in text


def test_save_writes_the_recommended_model_pair_and_a_lookup_win_removes_it(local_models):
    """The --save wiring on a measured selection: a model draft is saved (through text: with
    --cross-vocab) and used by generate; when the lookup drafter wins the saved pair goes."""
    from specllm.commands.drafts import _save, recommendation
    from specllm.drafting.selection import CROSS_VOCAB, LOOKUP, DraftRow, KPrediction, Selection

    folder, _, user_toml = local_models
    target = str(folder / "big.gguf")

    def selection(*rows):
        return Selection(target=folder / "big.gguf", target_facts=None, rows=list(rows), n_prompts=1,
                         generated_tokens=10, target_ms={1: 1.0})

    other = DraftRow(str(folder / "other.gguf"), CROSS_VOCAB, folder / "other.gguf",
                     per_k=[KPrediction(2, 2.5, 1.3, (0.8, 0.7)), KPrediction(3, 2.6, 1.2, (0.8, 0.7, 0.1))])
    lookup = DraftRow("lookup", LOOKUP, per_k=[KPrediction(4, 1.5, 1.1, (0.5,) * 4)])
    chosen = selection(other, lookup)
    assert recommendation(target, chosen)[0] == f"specllm generate -m {target} -md {folder / 'other.gguf'} --mode draft -k 2 --cross-vocab"
    _save(target, chosen)
    assert 'cross_vocab = true' in user_toml.read_text() and "k = 2" in user_toml.read_text()
    stats = json_result(generate("-m", target, "--json", "-n", 8, PROMPT))["stats"]
    assert stats["mode"] == "draft" and stats["k"] == 2 and "xvocab" in stats["rounds_by_source"]
    _save(target, selection(lookup))
    assert user_toml.read_text().rstrip() == USER_TOML.rstrip()


def test_draft_lora_measures_the_drafts_with_the_adapter_and_names_it(local_models, tmp_path):
    """--draft-lora adds a row per draft of the adapter's architecture; a pair of models.toml
    with a draft_lora for the target adds its draft with that adapter, without the option."""
    folder, prompts, user_toml = local_models
    adapter = random_adapter(tmp_path / "a.gguf", "llama")
    pair_adapter = random_adapter(tmp_path / "pair.gguf", "llama", scale=0.2)
    with user_toml.open("a") as f:
        f.write(f'\n[pairs.tuned]\ntarget = "{folder / "big.gguf"}"\ndraft = "{folder / "small.gguf"}"\n'
                f'draft_lora = "{pair_adapter}"\n')
    data = drafts_json(folder / "big.gguf", "--prompts", prompts, "--draft-lora", adapter)
    small = {row["draft_lora"]: row for row in data["rows"] if row["draft"] == str(folder / "small.gguf")}
    assert set(small) == {None, str(adapter), str(pair_adapter)}
    assert all(row["skipped"] is None for row in small.values())
    assert small[str(adapter)]["per_k"] != small[None]["per_k"]  # the adapter changed what the draft proposes
    other = {row["draft_lora"] for row in data["rows"] if row["draft"] == str(folder / "other.gguf")}
    assert other == {None, str(adapter)}  # the pair's adapter is for its own draft only
    assert {row["draft_lora"] for row in data["rows"] if row["draft"] == "lookup"} == {None}


def test_a_recommended_draft_with_an_adapter_is_run_and_saved_with_it(local_models, tmp_path, capsys, monkeypatch):
    from specllm.commands.drafts import _save, recommendation, render
    from specllm.drafting.selection import SAME_VOCAB, DraftRow, KPrediction, Selection

    folder, _, user_toml = local_models
    adapter = random_adapter(tmp_path / "a.gguf", "llama")
    target = str(folder / "big.gguf")
    tuned = DraftRow(str(folder / "small.gguf"), SAME_VOCAB, folder / "small.gguf", lora=adapter,
                     per_k=[KPrediction(2, 2.5, 1.3, (0.8, 0.7))])
    chosen = Selection(target=folder / "big.gguf", target_facts=None, rows=[tuned], n_prompts=1, generated_tokens=10,
                       target_ms={1: 1.0})
    command, why = recommendation(target, chosen)
    assert f"--draft-lora {adapter}" in command and "a.gguf" in why
    monkeypatch.setenv("COLUMNS", "200")
    render(target, chosen)
    assert "+ lora a.gguf" in capsys.readouterr().out
    _save(target, chosen)
    assert f'draft_lora = "{adapter}"' in user_toml.read_text()
    assert json_result(generate("-m", target, "--json", "-n", 8, PROMPT))["stats"]["draft_lora"] == "a.gguf"


@pytest.mark.parametrize("adapter, fragment", [("missing", "LoRA adapter not found"),
                                               ("qwen2", "no local draft has the architecture")])
def test_a_draft_lora_no_draft_can_take_is_one_error_line(local_models, tmp_path, adapter, fragment):
    folder, prompts, _ = local_models
    path = tmp_path / "no.gguf" if adapter == "missing" else random_adapter(tmp_path / "q.gguf", adapter)
    assert_clean_error(invoke("drafts", folder / "big.gguf", "--prompts", prompts, "--draft-lora", path), 1, fragment)


@pytest.mark.parametrize("args, code, fragment", [
    (["/nowhere/model.gguf"], 1, "model file not found"),
    (["TARGET", "-n", "0"], 2, "--max-tokens must be > 0"),
    (["TARGET", "--prompts", "/nowhere/prompts.txt"], 2, "prompt file not found"),
    (["no-such-model-anywhere"], 1, "no-such-model-anywhere"),
])
def test_bad_input_is_one_error_line(local_models, args, code, fragment):
    folder, _, _ = local_models
    args = [str(folder / "big.gguf") if a == "TARGET" else a for a in args]
    assert_clean_error(invoke("drafts", *args), code, fragment)


@pytest.mark.real_models
def test_k4_prediction_matches_a_real_draft_run_on_the_real_models(real_target_path, real_draft_path):
    """On the real Qwen pair llama.cpp is not batch-invariant (a teacher-forced row may pick
    another token than a one-token decode where two logits nearly tie, and the speculative
    output may leave the plain one), so the prediction is checked within 10%, not exactly."""
    prompts = ["def fibonacci(n):\n", "The three most useful things to know about Python lists are"]
    _, rounds = replayed_rounds(real_target_path, real_draft_path, prompts, (4,), max_tokens=48)
    real = real_rounds(real_target_path, real_draft_path, prompts, 4, max_tokens=48)
    predicted, measured = rounds[4].stats.mean_accepted_length, real.mean_accepted_length
    assert abs(predicted / measured - 1) <= 0.10, (predicted, measured)


def test_the_built_in_prompts_raw_and_chat(local_models):
    folder, _, _ = local_models
    data = drafts_json(folder / "big.gguf")
    assert data["prompts"] == 5 and data["generated_tokens"] > 0
