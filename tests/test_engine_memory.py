"""Cross-request memory through the engine: outputs of earlier generations are drafted from,
the output stays the target's own, and the disk copy is opt-in, private and per target."""

from __future__ import annotations

import stat

import pytest

from specllm import paths
from specllm.engine import Engine, EngineConfig, Request

PROMPTS = ["the cat said that it was for you and the", "one word: when your hand is up, the other"]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECLLM_CACHE", str(tmp_path / "cache"))


def greedy(engine: Engine, prompt: str, **overrides):
    request = Request(max_tokens=40, **overrides)
    generation = engine.generate(engine.tokenize_prompt(prompt, request), request)
    for _ in generation:
        pass
    return generation


def test_a_repeated_request_drafts_from_memory_and_stays_exact(tiny):
    with Engine(EngineConfig(target=str(tiny.target), threads=1, mode="auto", k=16)) as engine:
        reference = greedy(engine, PROMPTS[0], mode="none").tokens
        first = greedy(engine, PROMPTS[0])
        # A different prompt that ends like the first: its output is the first one's, which
        # only the memory has seen as a continuation of this text.
        second = greedy(engine, "so " + PROMPTS[0])
        assert first.tokens == reference
        assert second.tokens == greedy(engine, "so " + PROMPTS[0], mode="none").tokens
        assert len(engine.memory) >= 2 * 40
        assert second.stats.rounds_by_source.get("memory", 0) > 0


def test_memory_off_and_on_disk(tiny):
    off = EngineConfig(target=str(tiny.target), threads=1, mode="auto", memory=False)
    with Engine(off) as engine:
        greedy(engine, PROMPTS[0])
        assert engine.memory is None
    assert not (paths.cache_dir() / "memory").exists()

    on = EngineConfig(target=str(tiny.target), threads=1, mode="auto", memory=True)
    with Engine(on) as engine:
        output = greedy(engine, PROMPTS[0]).tokens
    files = list((paths.cache_dir() / "memory").iterdir())
    assert len(files) == 1 and stat.S_IMODE(files[0].stat().st_mode) == 0o600
    with Engine(on) as engine:
        engine.make_policy(Request())  # loads auto mode's knowledge, the memory with it
        assert list(engine.memory.documents) == [output]
    # Another target never reads it.
    with Engine(EngineConfig(target=str(tiny.draft_other), threads=1, mode="auto", memory=True)) as engine:
        engine.make_policy(Request())
        assert len(engine.memory) == 0


def test_auto_mode_knows_a_chat_answer_however_the_template_got_there(tiny):
    # Lookups in chat answers are judged apart (they copy from their prompt less): --chat, the
    # server's rendered messages and a prompt rendered beforehand all end in the same header.
    with Engine(EngineConfig(target=str(tiny.target), threads=1, mode="auto")) as engine:
        raw = engine.tokenize_prompt(PROMPTS[0], Request())
        chat = engine.tokenize_prompt(PROMPTS[0], Request(chat=True))
        rendered = engine.target_model.apply_chat_template(PROMPTS[0])
        pasted = engine.tokenize_prompt(rendered, Request())
        assert [engine.make_policy(Request(), p).chat for p in (raw, chat, pasted)] == [False, True, True]
        assert engine.make_policy(Request(chat=True)).chat
