"""Shared fixtures: the tiny GGUF models (built once per session), one cache and config dir for
the session, and the real-model switch. Shared helpers (not fixtures) live in helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import ENV_SETTINGS, cached_default_pair
from tiny_models import TinyModels, build_tiny_models

REAL_MODELS_SKIP_REASON = "real Qwen models not cached (run `specllm models fetch --pair default`)"


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SPECLLM_CACHE for the session: auto mode calibrates its costs once per model and
    settings, and every later test (in process or not) reads that profile instead of measuring
    again. Greedy output does not depend on the profile; tests of the cache itself use their own."""
    return tmp_path_factory.mktemp("specllm-cache")


@pytest.fixture(scope="session")
def empty_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("config")


@pytest.fixture(autouse=True)
def _isolated_env(shared_cache: Path, empty_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither the user's cache, registry and settings nor another test's files change what a test sees."""
    monkeypatch.setenv("SPECLLM_CACHE", str(shared_cache))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(empty_config))
    for name in ENV_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    # Tiny models gain nothing from threads, and spinning llama.cpp threads crawl on a busy CPU.
    # The CLI reads -t from SPECLLM_THREADS; real-model tests pass their own -t.
    monkeypatch.setenv("SPECLLM_THREADS", "1")


@pytest.fixture
def registry_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path as a fresh model cache and user registry (empty), and a pip that knows no index
    but one a test names (SPECLLM_PIP_INDEX_URL)."""
    monkeypatch.setenv("SPECLLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SPECLLM_MODELS", str(tmp_path / "user-models.toml"))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for name in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL", "PIP_NO_INDEX"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "user-models.toml").write_text("")
    return tmp_path


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    """target, draft_copy, draft_other, draft_padded, other_vocab: see tests/tiny_models.py."""
    return build_tiny_models(tmp_path_factory.mktemp("tiny_models"))


def _real_model_paths() -> tuple[Path, Path] | None:
    """The real target and draft GGUF files, if both can be found without downloading.

    SPECLLM_TEST_TARGET / SPECLLM_TEST_DRAFT name them; else the registry's default pair, when
    it is in the cache (`specllm models fetch`).
    """
    target, draft = os.environ.get("SPECLLM_TEST_TARGET"), os.environ.get("SPECLLM_TEST_DRAFT")
    if target and draft:
        paths = Path(target).expanduser(), Path(draft).expanduser()
        return paths if all(p.is_file() for p in paths) else None
    try:
        return cached_default_pair()
    except Exception:  # a broken user registry must not break the unit tests
        return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _real_model_paths() is not None:
        return
    skip = pytest.mark.skip(reason=REAL_MODELS_SKIP_REASON)
    for item in items:
        if "real_models" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def real_model_paths() -> tuple[Path, Path]:
    paths = _real_model_paths()
    if paths is None:
        pytest.skip(REAL_MODELS_SKIP_REASON)
    return paths


@pytest.fixture(scope="session")
def real_target_path(real_model_paths: tuple[Path, Path]) -> Path:
    return real_model_paths[0]


@pytest.fixture(scope="session")
def real_draft_path(real_model_paths: tuple[Path, Path]) -> Path:
    return real_model_paths[1]
