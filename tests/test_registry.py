"""The model registry: reading models.toml files, and from a name or path to a file (no fetching)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import write_user_registry
from specllm import paths, registry
from specllm.errors import ModelLoadError, RegistryError


def test_shipped_registry_names_the_default_pair(registry_env):
    known = registry.load_registry()
    pair = known.pair(registry.DEFAULT_PAIR)
    for name in (pair.target, pair.draft):
        entry = known.model(name)
        assert entry.family == "qwen2.5"
        assert entry.size and entry.sha256 and entry.pypi_parts
    assert known.pair("qwen-gemma").cross_vocab
    assert known.files == (paths.shipped_registry_path(), registry_env / "user-models.toml")


def test_user_file_adds_models_and_overrides_keys(registry_env):
    (registry_env / "weights").mkdir()
    write_user_registry(
        registry_env,
        """
[models."qwen2.5-coder-0.5b-instruct-q4_k_m"]
family = "mine"

[models.local-model]
path = "weights/local.gguf"

[pairs.mine]
target = "qwen2.5-coder-1.5b-instruct-q4_k_m"
draft = "local-model"
k = 8
""",
    )
    known = registry.load_registry()
    overridden = known.model("qwen2.5-coder-0.5b-instruct-q4_k_m")
    assert overridden.family == "mine"
    assert overridden.sha256 == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"  # kept
    local = known.model("local-model")
    assert local.path == registry_env / "weights" / "local.gguf"  # relative to the user file
    assert local.file == "local.gguf"
    assert known.pair("mine").k == 8
    assert "default" in known.pairs


def test_user_config_dir_is_read_when_no_env(registry_env, monkeypatch):
    monkeypatch.delenv("SPECLLM_MODELS")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(registry_env / "config"))
    (registry_env / "config" / "specllm").mkdir(parents=True)
    (registry_env / "config" / "specllm" / "models.toml").write_text('[models.extra]\npath = "/nowhere/extra.gguf"\n')
    assert "extra" in registry.load_registry().models


def test_missing_specllm_models_file_is_an_error(registry_env, monkeypatch):
    monkeypatch.setenv("SPECLLM_MODELS", str(registry_env / "absent.toml"))
    with pytest.raises(RegistryError, match="absent.toml"):
        registry.load_registry()


@pytest.mark.parametrize(
    "text, message",
    [
        ("[models.x]\nfile = 'x.gguf'\npath = '/a/x.gguf'\nsha = 'ab'\n", "unknown key 'sha'"),
        ("[models.x]\npath = '/a/x.gguf'\nsha256 = 'abc'\n", "64 hex digits"),
        ("[models.x]\nfile = 'x.gguf'\n", "no source"),
        ("[models.x]\npath = '/a/x.gguf'\nsize = 'big'\n", "'size' must be a int"),
        ("[models.'a/b']\npath = '/a/x.gguf'\n", "must not"),
        ("[pairs.p]\ntarget = 'nope'\ndraft = 'gemma-3-270m-q4_k_m'\n", "target 'nope' is not a model"),
        ("[pairs.p]\ntarget = 'gemma-3-270m-q4_k_m'\ndraft = 'gemma-3-270m-q4_k_m'\nk = true\n", "'k' must be a int"),
        ("[models.x\n", "not valid TOML"),
        ("[stuff]\n", "unknown section"),
    ],
)
def test_bad_user_registry_is_refused_naming_the_file(registry_env, text, message):
    write_user_registry(registry_env, text)
    with pytest.raises(RegistryError, match=message) as caught:
        registry.load_registry()
    assert "user-models.toml" in caught.value.message


# ---------------------------------------------------------------------------------------------
# Names and paths


def test_a_path_is_returned_as_is(registry_env):
    gguf = registry_env / "some.gguf"
    gguf.write_bytes(b"GGUF")
    assert registry.resolve_model(str(gguf)) == gguf
    assert registry.resolve_model(gguf) == gguf


def test_a_missing_path_is_a_load_error(registry_env):
    with pytest.raises(ModelLoadError, match="not found"):
        registry.resolve_model(str(registry_env / "missing.gguf"))
    with pytest.raises(ModelLoadError):
        registry.resolve_model("dir/missing")


def test_an_unknown_name_suggests_close_names(registry_env):
    with pytest.raises(RegistryError, match="unknown model 'qwen2.5-coder-0.5b'") as caught:
        registry.resolve_model("qwen2.5-coder-0.5b")
    assert "qwen2.5-coder-0.5b-instruct-q4_k_m" in caught.value.hint
    with pytest.raises(RegistryError, match="unknown pair"):
        registry.load_registry().pair("defualt")


def test_a_name_with_a_local_path_uses_it_without_fetching(registry_env):
    local = registry_env / "mine.gguf"
    local.write_bytes(b"GGUF" + bytes(60))
    write_user_registry(registry_env, f'[models.mine]\npath = "{local}"\nsize = 64\n')
    assert registry.resolve_model("mine") == local
    assert not (registry_env / "cache").exists()


def test_a_local_path_of_the_wrong_size_is_not_used(registry_env):
    local = registry_env / "mine.gguf"
    local.write_bytes(b"GGUF")
    write_user_registry(registry_env, f'[models.mine]\npath = "{local}"\nsize = 64\n')
    with pytest.raises(RegistryError, match="is not 64 bytes"):
        registry.resolve_model("mine")


def test_a_name_that_is_an_existing_file_in_the_current_dir(registry_env, monkeypatch):
    monkeypatch.chdir(registry_env)
    (registry_env / "plainfile").write_bytes(b"GGUF")
    assert registry.resolve_model("plainfile") == Path("plainfile")



# ---------------------------------------------------------------------------------------------
# Where files live (paths.py)


def test_specllm_cache_wins_over_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("SPECLLM_CACHE", str(tmp_path / "mine"))
    assert paths.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("SPECLLM_CACHE")
    assert paths.cache_dir() == tmp_path / "xdg" / "specllm"
    monkeypatch.setenv("XDG_CACHE_HOME", "")  # empty counts as unset
    assert paths.cache_dir() == Path.home() / ".cache" / "specllm"


def test_everything_cached_lives_under_one_directory(monkeypatch, tmp_path):
    monkeypatch.delenv("SPECLLM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    root = tmp_path / "specllm"
    assert paths.models_dir().parent == paths.cost_profile_path().parent == paths.llama_cpp_dir("1.0").parent == root
