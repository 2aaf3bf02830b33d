"""Lossless: speculative output is the target's own output, greedy token for token, sampled in distribution."""

from __future__ import annotations

import pytest

from helpers import CHI2_CRITICAL_P001, chi_square, first_token_counts, target_first_token_probs
from specllm.engine import Engine, EngineConfig, Request
from specllm.sampling import SamplingParams

PROMPTS = [
    "the cat said that it was for you and the",
    "def add(a, b):\n    return a + b\n\ndef",
    "one word: when your hand is up, the other",
]
N_TOKENS = 48


def config_for(**kwargs) -> EngineConfig:
    # One thread: tiny models gain nothing from more, and spinning threads crawl on a busy CPU.
    return EngineConfig(**{"threads": 1, **kwargs})


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECLLM_CACHE", str(tmp_path / "cache"))


def run(engine: Engine, prompt: str, request: Request) -> tuple[list[int], object]:
    generation = engine.generate(engine.tokenize_prompt(prompt, request), request)
    for _ in generation:
        pass
    return generation.tokens, generation


def plain_greedy(path, prompt: str, n: int = N_TOKENS) -> list[int]:
    """The target alone, one token per decode: the reference every mode must reproduce."""
    with Engine(config_for(target=str(path), mode="none")) as engine:
        tokens, _ = run(engine, prompt, Request(max_tokens=n))
    return tokens


@pytest.fixture(scope="module")
def reference(tiny):
    return {prompt: plain_greedy(tiny.target, prompt) for prompt in PROMPTS}


@pytest.mark.parametrize("k", [1, 2, 4, 7])
@pytest.mark.parametrize("draft_name", ["draft_copy", "draft_other", "draft_padded"])
def test_model_draft_greedy_is_the_target_output(tiny, reference, draft_name, k):
    config = config_for(target=str(tiny.target), draft=str(getattr(tiny, draft_name)), mode="draft", k=k)
    with Engine(config) as engine:
        for prompt in PROMPTS:
            tokens, generation = run(engine, prompt, Request(max_tokens=N_TOKENS))
            assert tokens == reference[prompt]
            s = generation.stats
            assert 0 <= s.accepted <= s.drafted
            assert s.generated == len(tokens)


def test_a_copy_of_the_target_is_always_accepted(tiny):
    config = config_for(target=str(tiny.target), draft=str(tiny.draft_copy), mode="draft", k=4)
    with Engine(config) as engine:
        _, generation = run(engine, PROMPTS[0], Request(max_tokens=N_TOKENS))
    assert generation.stats.drafted > 0
    assert generation.stats.accepted == generation.stats.drafted
    assert generation.stats.mean_accepted_length > 4


def test_a_noisy_draft_is_sometimes_rejected(tiny):
    config = config_for(target=str(tiny.target), draft=str(tiny.draft_other), mode="draft", k=4)
    with Engine(config) as engine:
        _, generation = run(engine, PROMPTS[1], Request(max_tokens=N_TOKENS))
    assert 0 < generation.stats.accepted < generation.stats.drafted


@pytest.mark.parametrize("k", [1, 3, 8])
def test_ngram_greedy_is_the_target_output(tiny, reference, k):
    config = config_for(target=str(tiny.target), mode="ngram", k=k, ngram_sizes=(3, 2, 1))
    with Engine(config) as engine:
        drafted = 0
        for prompt in PROMPTS:
            tokens, generation = run(engine, prompt, Request(max_tokens=N_TOKENS))
            assert tokens == reference[prompt]
            drafted += generation.stats.drafted
    assert drafted > 0  # the n-gram drafter did fire


@pytest.mark.parametrize("with_draft", [True, False])
def test_auto_greedy_is_the_target_output(tiny, reference, with_draft):
    draft = str(tiny.draft_other) if with_draft else None
    with Engine(config_for(target=str(tiny.target), draft=draft, mode="auto", k=6)) as engine:
        for prompt in PROMPTS:
            tokens, _ = run(engine, prompt, Request(max_tokens=N_TOKENS))
            assert tokens == reference[prompt]


def test_max_tokens_is_exact_whatever_the_draft_length(tiny):
    config = config_for(target=str(tiny.target), draft=str(tiny.draft_copy), mode="draft", k=8)
    with Engine(config) as engine:
        for n in (1, 2, 5, 9, 17):
            tokens, generation = run(engine, PROMPTS[0], Request(max_tokens=n))
            assert len(tokens) == n and generation.finish_reason == "length"


def test_a_full_context_ends_with_length(tiny):
    config = config_for(target=str(tiny.target), draft=str(tiny.draft_copy), mode="draft", k=4, ctx_size=32)
    with Engine(config) as engine:
        n_ctx = engine.target.n_ctx  # llama.cpp rounds the size up (to 256 here)
        tokens, generation = run(engine, PROMPTS[0], Request(max_tokens=n_ctx + 100))
    assert generation.finish_reason == "length"
    # The cache holds every token but the last emitted one.
    assert len(generation.prompt) + len(tokens) == n_ctx + 1


def test_end_of_generation_inside_a_draft_ends_the_output(tmp_path):
    from tiny_models import build_tiny_model

    target = build_tiny_model(tmp_path / "eos_target.gguf", eos_rate=0.3)
    reference_tokens = plain_greedy(target, PROMPTS[0], n=200)
    assert len(reference_tokens) < 200  # this model does stop
    config = config_for(target=str(target), draft=str(target), mode="draft", k=8)
    with Engine(config) as engine:
        tokens, generation = run(engine, PROMPTS[0], Request(max_tokens=200))
    assert tokens == reference_tokens
    assert generation.finish_reason == "stop"


@pytest.mark.parametrize(
    "mode,draft_name,params",
    [
        ("draft", "draft_other", SamplingParams(temperature=1.0)),
        ("draft", "draft_other", SamplingParams(temperature=0.8, top_k=8, top_p=0.95)),
        ("ngram", None, SamplingParams(temperature=1.0)),
    ],
)
def test_sampled_first_token_has_the_target_distribution(tiny, mode, draft_name, params):
    # A prompt whose continuation repeats earlier text, so that n-gram drafts fire too.
    prompt = "the cat was up and the cat was up and the cat"
    draft = str(getattr(tiny, draft_name)) if draft_name else None
    config = config_for(target=str(tiny.target), draft=draft, mode=mode, k=4, ngram_sizes=(2, 1))
    with Engine(config) as engine:
        counts = first_token_counts(engine, prompt, params, n=1500, vocab=engine.target.n_vocab)
    probs = target_first_token_probs(tiny.target, prompt, params)
    chi2, dof = chi_square(counts, probs)
    assert dof >= 1
    assert chi2 < CHI2_CRITICAL_P001[min(dof, 10)] * (1 if dof <= 10 else dof / 10), (chi2, dof)
