"""Settings: checks and precedence (option > SPECLLM_* > the pair in models.toml > built-in), on a
user registry whose default pair is made of the tiny models."""

from __future__ import annotations

import pytest

from helpers import generate, invoke, json_result, write_user_registry
from specllm import config
from specllm.errors import UsageError


@pytest.fixture
def tiny_pair(tiny, registry_env):
    """The default pair replaced by the tiny target and a copy of it, with settings of its own."""
    write_user_registry(registry_env, f"""
[models.tiny-target]
path = "{tiny.target}"

[models.tiny-draft]
path = "{tiny.draft_copy}"

[pairs.default]
target = "tiny-target"
draft = "tiny-draft"
mode = "ngram"
k = 5
ngram_min = 2
ngram_max = 3
""")
    return tiny


def options(**given) -> dict:
    return {"model": None, "draft_model": None, "mode": None, "k": None, "ngram": None,
            "ctx_size": config.DEFAULT_CTX_SIZE, "draft_ctx_size": None, "threads": 1, "draft_threads": None,
            "n_gpu_layers": 0, "draft_n_gpu_layers": None, **given}


def test_without_m_the_pairs_models_and_settings_apply(tiny_pair):
    engine = config.engine_config(**options())
    assert (engine.target, engine.draft) == (str(tiny_pair.target), str(tiny_pair.draft_copy))
    assert (engine.mode, engine.k, engine.ngram_sizes) == ("ngram", 5, (3, 2))


def test_options_win_over_the_pair(tiny_pair):
    engine = config.engine_config(**options(mode="auto", k=7, ngram="4"))
    assert (engine.mode, engine.k, engine.ngram_sizes) == ("auto", 7, (4,))


def test_with_m_the_pair_is_not_used_and_defaults_apply(tiny_pair):
    engine = config.engine_config(**options(model=str(tiny_pair.target)))
    assert engine.draft is None
    assert (engine.mode, engine.k, engine.ngram_sizes) == (
        config.DEFAULT_MODE, config.default_k(config.DEFAULT_MODE), config.DEFAULT_NGRAM_SIZES)


def test_draft_mode_without_a_draft_is_refused_before_anything_is_resolved(registry_env):
    with pytest.raises(UsageError, match="needs a draft model"):
        config.engine_config(**options(model=str(registry_env / "not-there.gguf"), mode="draft"))


def test_a_pairs_settings_pass_the_options_checks(tiny_pair, registry_env):
    text = (registry_env / "user-models.toml").read_text()
    write_user_registry(registry_env, text.replace('mode = "ngram"', 'mode = "fast"'))
    with pytest.raises(UsageError, match="the pair's 'mode' in models.toml must be one of"):
        config.engine_config(**options())


def test_precedence_through_the_command_line(tiny_pair, monkeypatch):
    def mode_of(*args: str) -> str:
        return json_result(generate("-n", 2, "--json", *args, "the cat"))["stats"]["mode"]

    assert mode_of() == "ngram"  # the pair
    monkeypatch.setenv("SPECLLM_MODE", "none")
    assert mode_of() == "none"  # the environment over the pair
    assert mode_of("--mode", "draft") == "draft"  # the option over both


def test_help_texts_are_written_from_the_defaults():
    text = " ".join(invoke("generate", "--help").stdout.replace("│", " ").split())  # without rich's panel borders
    assert f"default {config.DEFAULT_K}; in auto mode the upper bound, default {config.AUTO_DEFAULT_K}" in text
    assert f"Default: {config.DEFAULT_MODE}" in text
