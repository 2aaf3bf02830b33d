"""The target's token mirror (`Context.tokens`) never drifts from llama.cpp's cache for long:
a cache changed behind its back, or two generations stepping on one context, still give the
target's own greedy output."""

from __future__ import annotations

import llama_cpp.llama_cpp as C
import pytest

from specllm.engine import Engine, EngineConfig, Request

PROMPTS = ["the cat said that it was for you and the", "one word: when your hand is up, the other"]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECLLM_CACHE", str(tmp_path / "cache"))


def greedy(engine: Engine, prompt: str, n: int = 30, **overrides) -> list[int]:
    request = Request(max_tokens=n, **overrides)
    generation = engine.generate(engine.tokenize_prompt(prompt, request), request)
    return [event.token for event in generation]


def test_a_cache_changed_behind_the_mirror_is_detected_and_resynced(tiny):
    with Engine(EngineConfig(target=str(tiny.target), draft=str(tiny.draft_copy), threads=1, mode="draft", k=3)) as engine:
        reference = greedy(engine, PROMPTS[0], mode="none")
        request = Request(max_tokens=30)
        generation = engine.generate(engine.tokenize_prompt(PROMPTS[0], request), request)
        tokens = []
        for i, event in enumerate(generation):
            tokens.append(event.token)
            if i == 10:
                # As if an interrupt hit between llama_decode and the bookkeeping: the cache
                # lost its last 3 positions and the mirror does not know.
                ctx = engine.target
                C.llama_memory_seq_rm(C.llama_get_memory(ctx._ptr), 0, ctx.n_past - 3, -1)
                assert not ctx.in_sync()
        assert tokens == reference
        assert engine.target.in_sync()


def test_two_generations_stepping_on_one_context(tiny):
    with Engine(EngineConfig(target=str(tiny.target), threads=1, mode="ngram", k=4, ngram_sizes=(2, 1))) as engine:
        references = [greedy(engine, p, mode="none") for p in PROMPTS]
        request = Request(max_tokens=30)
        runs = [iter(engine.generate(engine.tokenize_prompt(p, request), request)) for p in PROMPTS]
        outputs: list[list[int]] = [[], []]
        alive = [True, True]
        while any(alive):
            for i, run in enumerate(runs):
                if alive[i]:
                    event = next(run, None)
                    if event is None:
                        alive[i] = False
                    else:
                        outputs[i].append(event.token)
        assert outputs == references
