"""Drafts from a model of another vocabulary: text sync, token boundaries, and lossless output."""

from __future__ import annotations

import pytest

from specllm.drafting.crossvocab import (
    BACKOFF_DRAFT_TOKENS,
    MAX_DRAFT_TOKENS_PER_TARGET,
    CrossVocabDrafter,
    TargetText,
    _target_token_confidence,
    continuation_tokens,
    incomplete_utf8_tail,
    proposable_tokens,
    valid_utf8_length,
)
from specllm.engine import Engine, EngineConfig, Request
from specllm.errors import IncompatibleModelsError
from specllm.llama import Model
from specllm.sampling import DraftChooser, Sampler, SamplingParams
from helpers import CHI2_CRITICAL_P001, chi_square, first_token_counts, run, target_first_token_probs
from tiny_models import ENGLISH_WORDS, build_tiny_model, make_vocab

PROMPTS = [
    "the cat said that it was for you and the",
    "def add(a, b):\n    return a + b\n\ndef",
    "one word: when your hand is up, the other",
]
N_TOKENS = 48
# Drafting choices at output position 0, greedy (cross-vocabulary drafts are point masses).
CHOOSE = DraftChooser(Sampler(SamplingParams()), 0)


@pytest.fixture(scope="module")
def twin(tiny, tmp_path_factory):
    """The target's model with its vocabulary's ids reordered (byte tokens first): another
    vocabulary to the compatibility check, but the same pieces, so it writes the target's text."""
    path = tmp_path_factory.mktemp("twin") / "twin.gguf"
    return build_tiny_model(path, vocab=make_vocab(ENGLISH_WORDS, bytes_first=True))


@pytest.fixture(scope="module")
def target_vocab(tiny):
    model = Model(tiny.target, vocab_only=True)
    yield model.vocab
    model.close()


def pieces(vocab, tokens) -> list[bytes]:
    return [vocab.piece(t) for t in tokens]


@pytest.fixture(scope="module")
def reference(tiny):
    with Engine(EngineConfig(target=str(tiny.target), mode="none")) as engine:
        return {p: run(engine, p, Request(max_tokens=N_TOKENS))[0] for p in PROMPTS}


def cross_vocab_engine(tiny, draft, *, k: int = 4, mode: str = "draft") -> Engine:
    return Engine(EngineConfig(target=str(tiny.target), draft=str(draft), mode=mode, k=k, cross_vocab=True))


# -- UTF-8 and token boundaries (the target's real tokenizer, no model weights) ----------------


def test_utf8_helpers_find_unfinished_and_invalid_characters():
    e_acute, euro = "é".encode(), "€".encode()
    assert valid_utf8_length(b"abc" + euro) == 6
    assert valid_utf8_length(b"abc" + euro[:2]) == 3
    assert valid_utf8_length(b"ab\xffcd") == 2
    assert incomplete_utf8_tail(b"abc" + euro[:1]) == 1
    assert incomplete_utf8_tail(b"abc" + euro[:2]) == 2
    assert incomplete_utf8_tail(b"abc" + euro) == 0
    assert incomplete_utf8_tail(b"abc" + e_acute) == 0
    assert incomplete_utf8_tail(b"") == 0


def test_a_draft_text_ending_mid_word_loses_its_last_token(target_vocab):
    tokens, ends = proposable_tokens(target_vocab, b" said", b" that it wa")
    assert pieces(target_vocab, tokens) == [b" that", b" it"]  # " wa" may yet become " was"
    assert ends == [5, 8]


def test_a_draft_text_ending_mid_character_proposes_no_part_of_it(target_vocab):
    text = b" that it " + "é".encode()[:1]
    tokens, _ = proposable_tokens(target_vocab, b" said", text)
    assert pieces(target_vocab, tokens) == [b" that", b" it"]
    assert all(0x80 > piece[-1] for piece in pieces(target_vocab, tokens))


def test_a_text_the_draft_ended_keeps_its_last_token(target_vocab):
    tokens, _ = proposable_tokens(target_vocab, b" said", b" that it was", complete=True)
    assert pieces(target_vocab, tokens) == [b" that", b" it", b" was"]


def test_a_draft_text_that_merges_with_the_history_is_not_proposed(target_vocab):
    history = target_vocab.tokenize("the cat said th", add_special=False)
    assert pieces(target_vocab, history)[-1] == b" th"
    # " th" + "at" is the token " that": no target token starts where the history ends.
    assert continuation_tokens(target_vocab, b" said th", b"at it was") is None
    assert proposable_tokens(target_vocab, b" said th", b"at it was") is None


def test_special_token_text_in_a_draft_stays_plain_text(target_vocab):
    assert target_vocab.eos in target_vocab.tokenize(" </s> the", add_special=False, parse_special=True)
    tokens, _ = proposable_tokens(target_vocab, b" said", b" </s> the was", complete=True)
    assert target_vocab.eos not in tokens
    assert target_vocab.detokenize(tokens) == b" </s> the was"


def test_target_text_grows_incrementally_and_resyncs_on_a_new_history(target_vocab):
    text = TargetText(target_vocab)
    history = target_vocab.tokenize("the cat said", add_special=True)
    assert history[0] == target_vocab.bos
    assert text.sync(history) == 0
    assert bytes(text.data) == b"the cat said"  # BOS brings no text
    assert text.sync(history + target_vocab.tokenize(" that", add_special=False)) == len(b"the cat said")
    assert bytes(text.data) == b"the cat said that"
    changed = text.sync(history[:3])
    assert changed == len(target_vocab.detokenize(history[1:3]))
    assert bytes(text.data) == target_vocab.detokenize(history[1:3])


def test_target_text_tail_starts_at_a_character_boundary(target_vocab):
    e_acute = target_vocab.tokenize("é", add_special=False)
    assert len(e_acute) == 2  # byte fallback: one token per byte
    text = TargetText(target_vocab)
    text.sync(target_vocab.tokenize(" said", add_special=False) + e_acute)
    assert text.tail(1) == "é".encode()
    assert text.tail(3) == " said".encode() + "é".encode()


def test_confidence_of_a_target_token_is_the_probability_of_the_draft_tokens_starting_in_it():
    # Draft pieces " th" | "at" | " it" | " w"  (ends 3, 5, 8, 10); target tokens " that" | " it".
    assert _target_token_confidence([5, 8], [3, 5, 8, 10], [0.5, 0.8, 0.9, 0.4]) == pytest.approx([0.4, 0.9])
    # One draft piece covering two target tokens counts for the first one.
    assert _target_token_confidence([3, 6], [6], [0.7]) == pytest.approx([0.7, 1.0])


# -- the drafter on tiny models -------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3, 7])
@pytest.mark.parametrize("draft_name", ["other_vocab", "twin"])
def test_cross_vocab_greedy_is_the_target_output(tiny, twin, reference, draft_name, k):
    draft = twin if draft_name == "twin" else tiny.other_vocab
    with cross_vocab_engine(tiny, draft, k=k) as engine:
        for prompt in PROMPTS:
            tokens, generation = run(engine, prompt, Request(max_tokens=N_TOKENS))
            assert tokens == reference[prompt]
            s = generation.stats
            assert 0 <= s.accepted <= s.drafted
            assert set(s.rounds_by_source) <= {"xvocab", "none"}


def test_a_draft_that_writes_the_targets_text_is_accepted(tiny, twin):
    with cross_vocab_engine(tiny, twin, k=4) as engine:
        _, generation = run(engine, PROMPTS[0], Request(max_tokens=N_TOKENS))
    s = generation.stats
    assert s.drafted > 0
    assert s.accepted == s.drafted
    assert s.mean_accepted_length > 3


def test_another_vocabulary_is_refused_without_cross_vocab(tiny):
    config = EngineConfig(target=str(tiny.target), draft=str(tiny.other_vocab), mode="draft", k=4)
    with pytest.raises(IncompatibleModelsError) as refusal:
        Engine(config)
    assert "--cross-vocab" in refusal.value.hint


def test_auto_mode_drafts_through_text_and_stays_lossless(tiny, twin, reference):
    config = EngineConfig(target=str(tiny.target), draft=str(twin), mode="auto", k=6, cross_vocab=True)
    with Engine(config) as engine:
        assert isinstance(engine.make_policy(Request()).model, CrossVocabDrafter)
        for prompt in PROMPTS:
            tokens, _ = run(engine, prompt, Request(max_tokens=N_TOKENS))
            assert tokens == reference[prompt]


@pytest.mark.parametrize("draft_name", ["other_vocab", "twin"])
def test_the_drafts_cache_is_extended_not_re_prefilled(tiny, twin, monkeypatch, draft_name):
    draft = twin if draft_name == "twin" else tiny.other_vocab
    k = 4
    prompt = " ".join(PROMPTS) + " and the cat said that it was for you, and " * 4
    with cross_vocab_engine(tiny, draft, k=k) as engine:
        decoded: list[int] = []
        real_decode = engine.draft.sequence(0).decode  # what the drafter (and Context.decode) calls

        def counting_decode(tokens, **kwargs):
            decoded.append(len(tokens))
            return real_decode(tokens, **kwargs)

        monkeypatch.setattr(engine.draft.sequence(0), "decode", counting_decode)
        request = Request(max_tokens=N_TOKENS)
        generation = engine.generate(engine.tokenize_prompt(prompt, request), request)
        drafter = generation.policy.drafter
        for _ in generation:
            pass
        history_text = engine.target_model.vocab.detokenize(generation.history[1:])
        draft_text = drafter.draft_vocab.detokenize(drafter.draft_tokens[drafter.n_fixed :])

    prefill, later = decoded[0], decoded[1:]
    # Each round decodes the new text (and the few re-tokenised tokens before it) plus the
    # drafted tokens, never the prompt again.
    per_round = BACKOFF_DRAFT_TOKENS + 1 + MAX_DRAFT_TOKENS_PER_TARGET * (k + 1) * 2
    assert max(later) <= per_round < prefill
    assert sum(later) <= generation.stats.rounds * per_round
    # The draft's tokens spell the target's text exactly.
    assert draft_text == bytes(drafter.text.data)
    # ... which is the target's history as of the last round.
    assert history_text.startswith(bytes(drafter.text.data))
    assert len(drafter.text.data) > len(history_text) - 64


def test_no_draft_while_the_target_is_inside_a_character(tiny, twin):
    with cross_vocab_engine(tiny, twin, k=4) as engine:
        vocab = engine.target_model.vocab
        drafter = engine.make_policy(Request()).drafter
        history = vocab.tokenize("the cat said é", add_special=True)
        assert vocab.piece(history[-1]) == "é".encode()[1:]
        drafter.begin(history[:-1])
        assert drafter.propose(history[:-1], 4, CHOOSE).tokens == []
        assert len(drafter.propose(history, 4, CHOOSE).tokens) > 0


def test_drafts_carry_a_confidence_per_target_token(tiny, twin):
    with cross_vocab_engine(tiny, twin, k=4) as engine:
        drafter = engine.make_policy(Request()).drafter
        history = engine.tokenize_prompt(PROMPTS[0], Request())
        drafter.begin(history)
        asked: list[tuple[int, float]] = []
        draft = drafter.propose(history, 4, CHOOSE, keep_drafting=lambda i, c: asked.append((i, c)) or True)
    assert draft.source == "xvocab" and draft.probs is None
    assert len(draft.confidence) == len(draft.tokens) == 4
    assert all(0.0 < c <= 1.0 for c in draft.confidence)
    assert asked and all(0.0 < c <= 1.0 for _, c in asked)


def test_sampled_first_token_has_the_target_distribution(tiny, twin):
    # Drafts are point masses: accepted with p(x), else the target samples from p without x.
    # The draft samples from its own filtered distribution; the target's p is filtered alike.
    params = SamplingParams(temperature=0.8, top_k=8)
    prompt = "the cat was up and the cat was up and the cat"
    with cross_vocab_engine(tiny, twin, k=4) as engine:
        counts = first_token_counts(engine, prompt, params, n=1500, vocab=engine.target.n_vocab)
    probs = target_first_token_probs(tiny.target, prompt, params)
    chi2, dof = chi_square(counts, probs)
    assert dof >= 1
    assert chi2 < CHI2_CRITICAL_P001[min(dof, 10)] * (1 if dof <= 10 else dof / 10), (chi2, dof)


def test_a_cross_vocab_drafter_reports_the_text_it_caught_up_on_apart_from_its_drafts(tiny, twin):
    # As for a model of the target's vocabulary (auto mode prices a draft token without it):
    # after plain rounds the first propose decodes their text, a propose right after only its own.
    with cross_vocab_engine(tiny, twin, k=4) as engine:
        drafter = engine.make_policy(Request()).drafter
        history = engine.tokenize_prompt(PROMPTS[0], Request())
        drafter.begin(history[:3])
        unseen = drafter.unseen(history)
        assert unseen > 0
        draft = drafter.propose(history, 4, CHOOSE)
        assert drafter.catch_up.tokens == unseen and drafter.catch_up.seconds > 0
        assert draft.tokens
        after = history + draft.tokens
        assert drafter.unseen(after) <= len(draft.tokens) + 2
        drafter.propose(after, 4, CHOOSE)
        assert drafter.catch_up.tokens <= len(draft.tokens) + 2
