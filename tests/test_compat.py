"""The vocabulary check: pure logic on hand-made vocabularies, then `specllm check` on tiny models."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from helpers import cached_real_model, invoke
from specllm.drafting.compat import (
    MAX_SIZE_DIFFERENCE,
    VocabSummary,
    check_vocabularies,
    draft_size_warning,
    ensure_compatible,
)
from specllm.errors import IncompatibleModelsError

N = 1000  # ordinary tokens in the hand-made vocabularies


def vocab(texts: list[bytes], type_name: str = "bpe", bos: int = 0, eos: int = 1, eot: int = -1) -> VocabSummary:
    return VocabSummary(type_name=type_name, n_tokens=len(texts), bos=bos, eos=eos, eot=eot, texts=tuple(texts))


def words(n: int = N, prefix: bytes = b"w") -> list[bytes]:
    return [b"<s>", b"</s>"] + [prefix + str(i).encode() for i in range(n - 2)]


def test_identical_vocabularies_are_compatible_and_mask_nothing():
    result = check_vocabularies(vocab(words()), vocab(words()))
    assert result.compatible
    assert result.masked_ids == ()
    assert result.reason == f"the same bpe vocabulary ({N} tokens)"
    assert result.warnings == ()


def test_a_padded_draft_is_compatible_and_its_extra_ids_are_masked():
    draft = words() + [b"[PAD%d]" % i for i in range(3)]
    result = check_vocabularies(vocab(words()), vocab(draft))
    assert result.compatible
    assert result.masked_ids == (N, N + 1, N + 2)
    assert "the draft's 3 extra ids are never proposed" in result.reason


def test_a_padded_target_is_compatible_and_reports_ids_the_draft_lacks():
    target = words() + [b"[PAD%d]" % i for i in range(MAX_SIZE_DIFFERENCE)]
    result = check_vocabularies(vocab(target), vocab(words()))
    assert result.compatible
    assert result.masked_ids == ()
    assert result.target_only_ids == range(N, N + MAX_SIZE_DIFFERENCE)


def test_more_than_padding_is_incompatible_even_with_equal_shared_texts():
    target = words() + [b"extra%d" % i for i in range(MAX_SIZE_DIFFERENCE + 1)]
    result = check_vocabularies(vocab(target), vocab(words()))
    assert not result.compatible
    assert "sizes differ by 129 ids" in result.reason
    assert result.masked_ids == ()


def test_a_few_renamed_control_tokens_are_masked():
    draft = words()
    draft[0], draft[500] = b"<|begin|>", b"<|reserved_0|>"
    result = check_vocabularies(vocab(words()), vocab(draft))
    assert result.compatible
    assert result.masked_ids == (0, 500)
    assert "2 ids with different texts are never proposed" in result.reason


def test_many_differing_texts_are_incompatible_with_a_one_line_reason():
    target = vocab(words(), type_name="bpe")
    draft = vocab(words(1200, prefix=b"\xe2\x96\x81"), type_name="spm")
    result = check_vocabularies(target, draft)
    assert not result.compatible
    assert result.reason == (
        "vocabularies differ: target bpe 1000 tokens, draft spm 1200 tokens; "
        "998 of the 1000 shared ids have different texts; their sizes differ by 200 ids, more than padding (128)"
    )
    assert "\n" not in result.reason
    assert result.masked_ids == ()  # nothing to mask: the pair is refused


def test_differing_texts_beyond_one_percent_are_incompatible():
    draft = words()
    for i in range(100, 100 + N // 100 + 1):
        draft[i] = b"other%d" % i
    assert not check_vocabularies(vocab(words()), vocab(draft)).compatible


def test_same_texts_but_another_tokenizer_type_is_incompatible():
    result = check_vocabularies(vocab(words(), type_name="bpe"), vocab(words(), type_name="spm"))
    assert not result.compatible
    assert result.reason.endswith("their tokenizer types differ")


def test_different_end_tokens_are_a_warning_not_a_refusal():
    texts = words() + [b"<|im_end|>"]
    result = check_vocabularies(vocab(texts, eos=1), vocab(texts, eos=N))
    assert result.compatible
    assert result.warnings == (
        f"EOS differs: target 1 </s>, draft {N} <|im_end|> "
        "(the target's end-of-generation tokens decide; acceptance may suffer)",
    )


def test_token_label():
    summary = vocab(words())
    assert summary.token_label(1) == "1 </s>"
    assert summary.token_label(-1) == "-"


def test_draft_size_warning():
    assert draft_size_warning(1000, 100) is None
    assert "not smaller than the target" in draft_size_warning(1000, 1000)
    assert draft_size_warning(0, 100) is None


def fake_model(name: str, summary: VocabSummary, n_params: int) -> SimpleNamespace:
    """Just what ensure_compatible reads from a llama.Model."""
    vocab_ = SimpleNamespace(
        type_name=summary.type_name, n_tokens=summary.n_tokens, bos=summary.bos, eos=summary.eos,
        eot=summary.eot, add_bos=False, text=lambda i: summary.texts[i],
    )  # fmt: skip
    return SimpleNamespace(name=name, vocab=vocab_, n_params=n_params, path=Path(name))


def test_ensure_compatible_raises_with_the_reason():
    target = fake_model("target.gguf", vocab(words()), 1000)
    draft = fake_model("draft.gguf", vocab(words(prefix=b"x")), 100)
    with pytest.raises(IncompatibleModelsError, match="draft.gguf cannot draft for target.gguf: vocabularies differ"):
        ensure_compatible(target, draft)


def test_ensure_compatible_returns_a_warning_for_a_larger_draft():
    target = fake_model("target.gguf", vocab(words()), 100)
    draft = fake_model("draft.gguf", vocab(words()), 1000)
    result = ensure_compatible(target, draft)
    assert result.compatible
    assert any("not smaller than the target" in w for w in result.warnings)


# ---------------------------------------------------------------------------------------------
# `specllm check` on the tiny GGUF fixture models (tests/conftest.py)


@pytest.fixture
def run_check():
    return lambda *args: invoke("check", *args)


def test_check_accepts_a_copy_of_the_target(tiny, run_check):
    result = run_check(tiny.target, tiny.draft_copy)
    assert result.exit_code == 0, result.output
    assert "compatible" in result.stdout
    assert "vocab type" in result.stdout


def test_check_accepts_a_padded_draft(tiny, run_check):
    result = run_check(tiny.target, tiny.draft_padded, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["compatible"] is True
    assert data["masked_ids"]  # the padding ids
    assert data["draft"]["n_tokens"] > data["target"]["n_tokens"]


def test_check_refuses_another_vocabulary(tiny, run_check):
    result = run_check(tiny.target, tiny.other_vocab)
    assert result.exit_code == 1
    assert "incompatible: vocabularies differ" in result.stdout
    assert "Traceback" not in result.output

    as_json = json.loads(run_check(tiny.target, tiny.other_vocab, "--json").stdout)
    assert as_json["compatible"] is False
    assert as_json["reason"].startswith("vocabularies differ")


def test_check_of_a_missing_file_is_one_error_line(tiny, run_check, tmp_path):
    result = run_check(tiny.target, tmp_path / "absent.gguf")
    assert result.exit_code == 1
    assert "error: model file not found" in result.stderr
    assert "Traceback" not in result.output


def test_check_of_a_file_that_is_not_gguf(tiny, run_check, tmp_path):
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a model at all")
    result = run_check(tiny.target, bogus)
    assert result.exit_code == 1
    assert "error: not a GGUF file" in result.stderr


# ---------------------------------------------------------------------------------------------
# The real models, when they are in the cache (`specllm models fetch --pair default` and
# `specllm models fetch gemma-3-270m-q4_k_m`)


def cached_model(name: str) -> Path:
    path = cached_real_model(name)
    if path is None:
        pytest.skip(f"{name} is not cached (run `specllm models fetch {name}`)")
    return path


@pytest.mark.real_models
def test_real_qwen_pair_is_compatible(run_check):
    target = cached_model("qwen2.5-coder-1.5b-instruct-q4_k_m")
    result = run_check(target, cached_model("qwen2.5-coder-0.5b-instruct-q4_k_m"))
    assert result.exit_code == 0, result.output
    assert "compatible for token-level verification: the same bpe vocabulary" in result.stdout


@pytest.mark.real_models
def test_real_gemma_draft_is_refused_for_the_qwen_target(run_check):
    target = cached_model("qwen2.5-coder-1.5b-instruct-q4_k_m")
    result = run_check(target, cached_model("gemma-3-270m-q4_k_m"), "--json")
    assert result.exit_code == 1
    reason = json.loads(result.stdout)["reason"]
    assert reason.startswith("vocabularies differ: target bpe 151936 tokens, draft spm 262144 tokens")
