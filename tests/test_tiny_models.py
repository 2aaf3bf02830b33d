"""The tiny models keep the promises the other tests rely on, checked through llama.cpp itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from specllm.llama import Context, Model
from tiny_models import BOS, EOS, IM_START, N_PADDING, SPACE, TinyModels, build_tiny_model

PROMPTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Once upon a time",
    "def add(a, b):\n    return a + b\n",
    "Hello",
]
N_GENERATE = 64
# Batched and one-token decodes differ in the last bits; a gap this wide cannot flip an argmax.
MIN_MARGIN = 0.5


@pytest.fixture(scope="module")
def target(tiny: TinyModels):
    with Model(tiny.target) as model:
        yield model


def make_context(model: Model) -> Context:
    return Context(model, n_ctx=512, n_threads=2)


def greedy(ctx: Context, prompt: list[int], n: int = N_GENERATE) -> tuple[list[int], np.ndarray]:
    """n greedy tokens, one decode per token, and the logits row each was chosen from."""
    ctx.clear()
    row = ctx.decode(prompt)[0].copy()
    tokens, rows = [], []
    for _ in range(n):
        tokens.append(int(row.argmax()))
        rows.append(row)
        if len(tokens) < n:
            row = ctx.decode(tokens[-1:])[0].copy()
    return tokens, np.array(rows)


def rows_in_batches(ctx: Context, prompt: list[int], generated: list[int], seed: int) -> np.ndarray:
    """The logits rows that predict `generated`, decoded in batches of 5 to 9 tokens."""
    rng = np.random.default_rng(seed)
    ctx.clear()
    ctx.decode(prompt[:-1])
    todo = prompt[-1:] + generated[:-1]
    rows = []
    while todo:
        size = int(rng.integers(5, 10))
        rows.extend(ctx.decode(todo[:size], all_logits=True).copy())
        todo = todo[size:]
    return np.array(rows)


def margins(rows: np.ndarray) -> np.ndarray:
    top2 = np.sort(rows, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def softmax(rows: np.ndarray) -> np.ndarray:
    p = np.exp(rows - rows.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def greedy_agreement(ctx_target: Context, ctx_draft: Context, prompt: list[int]) -> float:
    """Share of the target's greedy tokens that the draft would also choose (teacher-forced)."""
    tokens, _ = greedy(ctx_target, prompt)
    ctx_draft.clear()
    draft_rows = ctx_draft.decode(prompt + tokens[:-1], all_logits=True)[len(prompt) - 1 :]
    return float(np.mean(draft_rows.argmax(axis=1) == np.array(tokens)))


def token_texts(path: Path) -> list[bytes]:
    with Model(path, vocab_only=True) as model:
        return [model.vocab.text(i) for i in range(model.vocab.n_tokens)]


# -- files and metadata ---------------------------------------------------------------------


def test_same_arguments_give_byte_identical_files(tmp_path: Path, tiny: TinyModels):
    a = build_tiny_model(tmp_path / "a.gguf", seed=5, noise=0.05, noise_seed=3)
    b = build_tiny_model(tmp_path / "b.gguf", seed=5, noise=0.05, noise_seed=3)
    c = build_tiny_model(tmp_path / "c.gguf", seed=6, noise=0.05, noise_seed=3)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    assert tiny.draft_copy.read_bytes() == tiny.target.read_bytes()


@pytest.mark.parametrize("name", ["target", "draft_copy", "draft_other", "draft_padded", "other_vocab"])
def test_each_model_loads_as_a_small_llama(tiny: TinyModels, name: str):
    with Model(getattr(tiny, name)) as model:
        vocab = model.vocab
        assert model.metadata("general.architecture") == "llama"
        assert model.n_layer == 2
        assert model.n_ctx_train >= 2048
        assert vocab.type_name == "spm"
        assert vocab.add_bos and vocab.text(vocab.bos) == BOS.encode()
        assert vocab.text(vocab.eos) == EOS.encode()
        assert vocab.is_eog(vocab.eos) and vocab.is_eog(vocab.eot)


def test_chat_template_is_recognised_as_chatml(target: Model):
    prompt = target.apply_chat_template("hi")
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert target.vocab.tokenize(prompt)[1] == target.vocab.tokenize(IM_START, add_special=False)[0]


# -- tokenizer ------------------------------------------------------------------------------


ROUND_TRIP_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "  two  spaces\n\ttab",
    "caf\u00e9 \u2014 \U0001f600 \u4e2d",  # byte fallback, 2- to 4-byte UTF-8
]


@pytest.mark.parametrize("name", ["target", "other_vocab"])
@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_text_round_trips(tiny: TinyModels, name: str, text: str):
    with Model(getattr(tiny, name), vocab_only=True) as model:
        tokens = model.vocab.tokenize(text, add_special=False)
        assert model.vocab.detokenize(tokens) == text.encode()


def test_target_merges_common_words_into_one_token(target: Model):
    tokens = target.vocab.tokenize("I said the word", add_special=False)
    assert [target.vocab.text(t).decode() for t in tokens] == ["I", SPACE + "said", SPACE + "the", SPACE + "word"]


def test_vocabularies_relate_as_promised(tiny: TinyModels):
    target = token_texts(tiny.target)
    assert token_texts(tiny.draft_copy) == target
    assert token_texts(tiny.draft_other) == target
    padded = token_texts(tiny.draft_padded)
    assert padded[: len(target)] == target and len(padded) == len(target) + N_PADDING
    other = token_texts(tiny.other_vocab)
    n = min(len(other), len(target))
    assert sum(a != b for a, b in zip(other[:n], target[:n])) > n // 2


# -- the target's numbers -------------------------------------------------------------------


def test_greedy_argmax_is_batch_invariant_with_clear_margins(target: Model):
    with make_context(target) as ctx:
        for i, text in enumerate(PROMPTS):
            prompt = target.vocab.tokenize(text)
            tokens, rows = greedy(ctx, prompt)
            batched = rows_in_batches(ctx, prompt, tokens, seed=i)
            assert batched.argmax(axis=1).tolist() == tokens
            assert margins(rows).min() > MIN_MARGIN
            assert margins(batched).min() > MIN_MARGIN


def test_greedy_text_varies_repeats_sometimes_and_does_not_end(target: Model):
    outputs = []
    with make_context(target) as ctx:
        for text in PROMPTS:
            tokens, _ = greedy(ctx, target.vocab.tokenize(text))
            assert len(set(tokens)) >= 8
            assert not any(a == b == c for a, b, c in zip(tokens, tokens[1:], tokens[2:]))
            assert not any(target.vocab.is_eog(t) for t in tokens)
            outputs.append(tokens)

    def repeats_a_4gram(tokens: list[int]) -> bool:
        grams = [tuple(tokens[i : i + 4]) for i in range(len(tokens) - 3)]
        return len(set(grams)) < len(grams)

    # Some outputs fall into a cycle within 64 tokens: an n-gram drafter has something to find.
    assert any(repeats_a_4gram(tokens) for tokens in outputs)


def test_temperature_one_keeps_real_alternatives(target: Model):
    with make_context(target) as ctx:
        _, rows = greedy(ctx, target.vocab.tokenize(PROMPTS[0]))
    top = softmax(rows).max(axis=1)
    assert top.max() < 0.9  # not one-hot: a sampler has something to choose
    assert top.min() > 0.2  # but the greedy token stays the likely one


def test_next_token_depends_on_the_previous_token(target: Model):
    """The previous-token head works: the same current token, after different tokens, leads on
    differently. (A cache that kept a rejected draft token would change the output.)"""
    nexts = set()
    with make_context(target) as ctx:
        for word in ["of", "and", "to", "in", "is", "it", "you", "that"]:
            ctx.clear()
            prompt = target.vocab.tokenize(f" {word} the")  # BOS, word, the
            assert len(prompt) == 3
            nexts.add(int(ctx.decode(prompt)[0].argmax()))
    assert len(nexts) >= 2


def test_logits_depend_on_the_whole_context(target: Model):
    ending = target.vocab.tokenize(" of the", add_special=False)
    rows = []
    with make_context(target) as ctx:
        for text in ("Once upon a time", "Hello"):
            ctx.clear()
            rows.append(ctx.decode(target.vocab.tokenize(text) + ending)[0].copy())
    assert rows[0].argmax() == rows[1].argmax()
    assert np.abs(rows[0] - rows[1]).max() > 1e-3


# -- drafts -----------------------------------------------------------------------------------


def test_draft_copy_computes_exactly_the_targets_logits(tiny: TinyModels, target: Model):
    prompt = target.vocab.tokenize(PROMPTS[0])
    with Model(tiny.draft_copy) as draft, make_context(target) as ctx_t, make_context(draft) as ctx_d:
        logits_t = ctx_t.decode(prompt, all_logits=True)
        np.testing.assert_array_equal(logits_t, ctx_d.decode(prompt, all_logits=True))


@pytest.mark.parametrize("name", ["draft_other", "draft_padded"])
def test_noisy_drafts_agree_with_target_often_but_not_always(tiny: TinyModels, target: Model, name: str):
    with Model(getattr(tiny, name)) as draft, make_context(target) as ctx_t, make_context(draft) as ctx_d:
        agreement = np.mean([greedy_agreement(ctx_t, ctx_d, target.vocab.tokenize(text)) for text in PROMPTS])
    assert 0.4 <= agreement <= 0.8


def test_padded_draft_never_proposes_padding(tiny: TinyModels, target: Model):
    n_real = target.vocab.n_tokens
    with Model(tiny.draft_padded) as draft, make_context(draft) as ctx:
        _, rows = greedy(ctx, draft.vocab.tokenize(PROMPTS[1]))
    assert softmax(rows)[:, n_real:].max() < 1e-6


# -- variants ---------------------------------------------------------------------------------


def test_eos_rate_makes_a_model_end_soon(tmp_path: Path):
    with Model(build_tiny_model(tmp_path / "eos.gguf", eos_rate=0.3)) as model, make_context(model) as ctx:
        for text in PROMPTS:
            tokens, rows = greedy(ctx, model.vocab.tokenize(text), n=32)
            assert model.vocab.eos in tokens
            end = tokens.index(model.vocab.eos)
            assert margins(rows[: end + 1]).min() > MIN_MARGIN
    with Model(build_tiny_model(tmp_path / "eos_now.gguf", eos_rate=1.0)) as model, make_context(model) as ctx:
        assert greedy(ctx, model.vocab.tokenize(PROMPTS[0]), n=1)[0] == [model.vocab.eos]
