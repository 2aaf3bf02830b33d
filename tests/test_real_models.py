"""Lossless on the real Qwen2.5-Coder pair: every emitted token is the target's own greedy choice.

llama.cpp is not batch-invariant (a position's logits move by up to ~0.7 between a one-token
decode and a batched one on this model), so the independent re-read of prompt + output checks
each token against the argmax with a tolerance, and requires almost all to be exact.
"""

from __future__ import annotations

import numpy as np
import pytest

from specllm.engine import Engine, EngineConfig, Request
from specllm.llama import Context, Model
from specllm.noise import GumbelNoise
from specllm.sampling import SamplingParams

pytestmark = pytest.mark.real_models

PROMPTS = [
    "def is_palindrome(s: str) -> bool:\n",
    "Summarize: The mitochondria is the powerhouse of the cell. It produces ATP through respiration. "
    "Cells with more energy needs have more mitochondria.\nSummary:",
]
N_TOKENS = 40
BATCH_NOISE = 1.0  # logit tolerance for a batched re-read


def reread_logits(target_path, prompt: list[int], generated: list[int]) -> np.ndarray:
    """The target's logits for every generated position, from one independent batched decode."""
    model = Model(target_path)
    with Context(model, n_ctx=1024) as ctx:
        ctx.decode(prompt[:-1])
        rows = ctx.decode(prompt[-1:] + generated[:-1], all_logits=True).copy()
    model.close()
    return rows


@pytest.mark.parametrize("mode", ["draft", "ngram", "auto"])
def test_every_token_is_the_targets_greedy_choice(real_target_path, real_draft_path, mode):
    config = EngineConfig(target=str(real_target_path), draft=str(real_draft_path), mode=mode, k=4, ctx_size=1024)
    with Engine(config) as engine:
        for text in PROMPTS:
            request = Request(max_tokens=N_TOKENS)
            prompt = engine.tokenize_prompt(text, request)
            generation = engine.generate(prompt, request)
            for _ in generation:
                pass
            tokens, stats = generation.tokens, generation.stats
            assert 0 <= stats.accepted <= stats.drafted
            rows = reread_logits(real_target_path, prompt, tokens)
            chosen = rows[np.arange(len(tokens)), tokens]
            assert np.all(chosen >= rows.max(axis=1) - BATCH_NOISE)
            exact = np.mean(rows.argmax(axis=1) == np.array(tokens))
            assert exact >= 0.9, f"only {exact:.0%} exact argmax matches"


def test_sampled_tokens_are_the_gumbel_max_choice_in_every_mode(real_target_path, real_draft_path):
    """--temp 0.8 --seed S: each token is argmax(logits / T + g) on an independent re-read, with
    g recomputed from the noise formula, and the modes agree until a near-tie."""
    params, seed = SamplingParams(temperature=0.8), 7
    config = EngineConfig(target=str(real_target_path), draft=str(real_draft_path), mode="auto", k=4, ctx_size=1024)
    texts = {}
    with Engine(config) as engine:
        prompt = engine.tokenize_prompt(PROMPTS[1], Request())
        for mode in ("none", "ngram", "draft", "auto"):
            request = Request(max_tokens=N_TOKENS, params=params, seed=seed, mode=mode)
            generation = engine.generate(prompt, request)
            for _ in generation:
                pass
            texts[mode] = generation.tokens
    tokens = texts["none"]
    rows = reread_logits(real_target_path, prompt, tokens).astype(np.float64)
    noise = GumbelNoise(seed)
    n_vocab = rows.shape[1]
    scores = np.stack([rows[t] / params.temperature + noise.values(t, np.arange(n_vocab), n_vocab)
                       for t in range(len(tokens))])
    chosen = scores[np.arange(len(tokens)), tokens]
    assert np.all(chosen >= scores.max(axis=1) - BATCH_NOISE / params.temperature)
    assert np.mean(scores.argmax(axis=1) == np.array(tokens)) >= 0.9
    for mode, other in texts.items():
        same = next((i for i, (a, b) in enumerate(zip(tokens, other)) if a != b), len(tokens))
        if same < len(tokens):  # only at a near-tie of the perturbed scores
            top2 = np.sort(scores[same])[-2:]
            assert top2[1] - top2[0] < BATCH_NOISE / params.temperature, mode
