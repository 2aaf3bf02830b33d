"""Sampling through the real loop on the tiny models: every mode and sampler has the target's
distribution (joint law of the first three tokens), and under the Gumbel sampler one seed
gives one text whatever the mode, drafter or k."""

from __future__ import annotations

import pytest

from specllm.auto import Learned
from specllm.engine import Engine, EngineConfig, Request
from specllm.llama import Context, Model
from specllm.sampling import SamplingParams, logits_to_probs

# A prompt whose continuation repeats earlier text, so that lookup drafts fire too.
PROMPT = "the cat was up and the cat was up and the cat"
PARAMS = SamplingParams(temperature=1.0)
N_SAMPLES = 600
N_JOINT = 3
# Chi-square critical values at p = 0.001 (dof 1..30; beyond, a normal approximation).
CHI2_P001 = [10.83, 13.82, 16.27, 18.47, 20.52, 22.46, 24.32, 26.12, 27.88, 29.59, 31.26, 32.91, 34.53, 36.12,
             37.70, 39.25, 40.79, 42.31, 43.82, 45.31, 46.80, 48.27, 49.73, 51.18, 52.62, 54.05, 55.48, 56.89,
             58.30, 59.70]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECLLM_CACHE", str(tmp_path / "cache"))


def critical(dof: int) -> float:
    return CHI2_P001[dof - 1] if dof <= len(CHI2_P001) else dof + 3.09 * (2 * dof) ** 0.5


@pytest.fixture(scope="module")
def joint_reference(tiny) -> dict[tuple[int, ...], float]:
    """P(x1, x2, x3 | prompt) under the target alone, for every sequence likely enough to
    expect 5 of N_SAMPLES draws (the rest is pooled)."""
    floor = 5.0 / N_SAMPLES
    model = Model(tiny.target)
    out: dict[tuple[int, ...], float] = {}
    with Context(model, n_ctx=256, n_threads=1) as ctx:
        prompt = model.vocab.tokenize(PROMPT)

        def expand(prefix: tuple[int, ...], prob: float) -> None:
            if len(prefix) == N_JOINT:
                out[prefix] = prob
                return
            ctx.truncate(0)
            p = logits_to_probs(ctx.decode(prompt + list(prefix))[0].copy(), PARAMS)
            for token in (p * prob >= floor).nonzero()[0]:
                expand(prefix + (int(token),), prob * float(p[token]))

        expand((), 1.0)
    model.close()
    return out


def engine_for(tiny, mode: str, monkeypatch) -> Engine:
    draft = {"draft": tiny.draft_other, "auto": tiny.draft_other, "crossvocab": tiny.other_vocab}.get(mode)
    if mode == "auto":
        # Make auto mode draft with the model every round: its exactness is what is tested.
        monkeypatch.setattr(Learned, "model_rate", lambda self, plain: float("inf"))
    config = EngineConfig(
        target=str(tiny.target), draft=str(draft) if draft else None, threads=1, k=3, ngram_sizes=(2, 1),
        mode="draft" if mode == "crossvocab" else mode, cross_vocab=mode == "crossvocab",
    )
    return Engine(config)


@pytest.mark.parametrize("sampler", ["gumbel", "rejection"])
@pytest.mark.parametrize("mode", ["none", "ngram", "draft", "auto", "crossvocab"])
def test_first_tokens_have_the_target_joint_distribution(tiny, joint_reference, mode, sampler, monkeypatch):
    counts: dict[tuple[int, ...], int] = {}
    with engine_for(tiny, mode, monkeypatch) as engine:
        tokens = engine.tokenize_prompt(PROMPT, Request())
        for seed in range(N_SAMPLES):
            generation = engine.generate(tokens, Request(max_tokens=N_JOINT, params=PARAMS, seed=seed, sampler=sampler))
            for _ in generation:
                pass
            key = tuple(generation.tokens)
            counts[key] = counts.get(key, 0) + 1
        drafted = engine.learned.rounds if mode == "auto" else None
    observed = [counts.get(seq, 0) for seq in joint_reference]
    expected = [N_SAMPLES * p for p in joint_reference.values()]
    observed.append(N_SAMPLES - sum(observed))
    expected.append(N_SAMPLES - sum(expected))
    chi2 = sum((o - e) ** 2 / e for o, e in zip(observed, expected) if e > 0)
    dof = sum(e > 0 for e in expected) - 1
    assert dof >= 3 and chi2 < critical(dof), (chi2, dof)
    assert drafted is None or drafted > 0


def sampled_text(engine: Engine, seed: int, **overrides) -> list[int]:
    request = Request(max_tokens=40, params=SamplingParams(temperature=0.9), seed=seed, **overrides)
    generation = engine.generate(engine.tokenize_prompt(PROMPT, request), request)
    for _ in generation:
        pass
    return generation.tokens


def test_one_seed_gives_one_text_whatever_the_mode_drafter_and_k(tiny):
    seeds = range(4)
    with Engine(EngineConfig(target=str(tiny.target), draft=str(tiny.draft_other), threads=1, mode="auto")) as engine:
        reference = {seed: sampled_text(engine, seed, mode="none") for seed in seeds}
        assert len({tuple(t) for t in reference.values()}) == len(reference)  # the seed matters
        for mode, ks in (("ngram", (1, 3, 8)), ("draft", (1, 2, 5)), ("auto", (4, 64))):
            for k in ks:
                for seed in seeds:
                    assert sampled_text(engine, seed, mode=mode, k=k) == reference[seed], (mode, k, seed)
    for draft in (tiny.draft_copy, tiny.draft_padded):
        config = EngineConfig(target=str(tiny.target), draft=str(draft), threads=1, mode="draft", k=4)
        with Engine(config) as engine:
            for seed in seeds:
                assert sampled_text(engine, seed) == reference[seed]
    config = EngineConfig(target=str(tiny.target), draft=str(tiny.other_vocab), threads=1, mode="draft", k=3,
                          cross_vocab=True)
    with Engine(config) as engine:
        for seed in seeds:
            assert sampled_text(engine, seed) == reference[seed]


def test_the_same_command_twice_gives_the_same_text(tiny):
    config = EngineConfig(target=str(tiny.target), draft=str(tiny.draft_other), threads=1, mode="auto", k=8)
    with Engine(config) as engine:
        first = sampled_text(engine, 123)
        second = sampled_text(engine, 123)
    assert first == second


def test_a_run_without_seed_reports_the_one_it_drew(tiny):
    with Engine(EngineConfig(target=str(tiny.target), threads=1, mode="none")) as engine:
        request = Request(max_tokens=12, params=SamplingParams(temperature=0.9))
        generation = engine.generate(engine.tokenize_prompt(PROMPT, request), request)
        text = [e.token for e in generation]
        assert sampled_text(engine, generation.seed)[:12] == text
