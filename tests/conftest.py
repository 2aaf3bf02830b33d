"""Shared fixtures: the tiny GGUF models (built once per session) and the real-model switch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tiny_models import TinyModels, build_tiny_models

# Tiny models gain nothing from threads, and spinning llama.cpp threads crawl on a busy CPU.
# The CLI reads -t from SPECLLM_THREADS; real-model tests pass their own -t.
os.environ.setdefault("SPECLLM_THREADS", "1")

REAL_MODELS_SKIP_REASON = "real Qwen models not cached (run `specllm models fetch --pair default`)"


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
    from specllm import models

    try:
        registry = models.load_registry()
        pair = registry.pair(models.DEFAULT_PAIR)
        found = models.present_path(registry.model(pair.target)), models.present_path(registry.model(pair.draft))
    except Exception:  # a broken user registry must not break the unit tests
        return None
    return found if all(found) else None


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
