"""From what a user typed (-m, -md, a pair name) to GGUF files on disk, fetching on first use."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

from ..errors import ModelLoadError
from .fetch import fetch_model
from .progress import SILENT, FetchProgress
from .schema import DEFAULT_PAIR, Pair, Registry, load_registry, unknown_name


def looks_like_path(value: str) -> bool:
    return "/" in value or "\\" in value or value.lower().endswith(".gguf")


def resolve_model(
    name_or_path: Union[str, os.PathLike], *, registry: Optional[Registry] = None,
    progress: FetchProgress = SILENT,
) -> Path:
    """The GGUF file for a registry name or a path; a named model is fetched on first use.

    A value with a path separator or a .gguf suffix is a path; otherwise a registry name; failing
    that, an existing file.
    """
    value = os.fspath(name_or_path)
    if isinstance(name_or_path, os.PathLike) or looks_like_path(value):
        path = Path(value).expanduser()
        if not path.exists():
            raise ModelLoadError(f"model file not found: {path}")
        return path
    registry = registry or load_registry()
    if value in registry.models:
        return fetch_model(registry.models[value], progress=progress)
    if Path(value).is_file():
        return Path(value)
    raise unknown_name("model", value, registry.models)


def resolve_pair(
    name: str = DEFAULT_PAIR, *, registry: Optional[Registry] = None, progress: FetchProgress = SILENT,
) -> tuple[Pair, Path, Path]:
    """A named pair and its target and draft files, fetched if needed."""
    registry = registry or load_registry()
    pair = registry.pair(name)
    target = fetch_model(registry.model(pair.target), progress=progress)
    draft = fetch_model(registry.model(pair.draft), progress=progress)
    return pair, target, draft
