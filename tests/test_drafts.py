"""`specllm drafts`: replayed rounds equal real speculative runs; the command's output, --save."""

from __future__ import annotations

import json

import pytest

from specllm.config import EngineConfig
from specllm.drafting.compat import VocabSummary, check_vocabularies
from specllm.drafting.replay import Proposal, RecordedOutput, replay_fixed_k
from specllm.drafting.selection import SelectionSettings, measure_rounds, record_outputs
from specllm.engine import Engine, Request
from specllm.llama import Model
from specllm.sampling import SamplingParams
from specllm.stats import SpecStats
from helpers import PROMPT
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
        outputs = record_outputs(engine, prompts, settings, progress=lambda _: None)
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
