"""From what a user typed (-m, -md, a pair name) to GGUF files on disk, fetching on first use.

The order in which a value is read, first match wins:
    1. a store reference, by its prefix: ollama:MODEL[:TAG], hf:ORG/REPO[:QUANT | /FILE],
       lmstudio:PUBLISHER/MODEL[/FILE] (see local.py; checked first, as these hold '/' too)
    2. a path: a value with a path separator or a .gguf suffix
    3. a model of the registry (models.toml), fetched on first use
    4. an existing file
    5. a bare name that matches exactly one local model (`qwen2.5-coder:1.5b`, a file name)
Anything else, or a name several local models answer to, is one RegistryError naming the
closest candidates.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

from ..errors import ModelLoadError
from .fetch import fetch_model
from .local import bare_name_matches, find_local_models, is_store_reference, only_match, resolve_reference
from .progress import SILENT, FetchProgress
from .schema import DEFAULT_PAIR, Pair, Registry, load_registry, unknown_name


def looks_like_path(value: str) -> bool:
    if is_store_reference(value):
        return False
    return "/" in value or "\\" in value or value.lower().endswith(".gguf")


def resolve_model(
    name_or_path: Union[str, os.PathLike], *, registry: Optional[Registry] = None,
    progress: FetchProgress = SILENT,
) -> Path:
    """The GGUF file for a model reference (see the module docstring); a registry model is
    fetched on first use."""
    value = os.fspath(name_or_path)
    if not isinstance(name_or_path, os.PathLike) and is_store_reference(value):
        return resolve_reference(value, registry)
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
    local, _ = find_local_models(registry)
    matches = bare_name_matches(value, local)
    if matches:
        return only_match(value, matches)
    raise unknown_name("model", value, {**registry.models, **{n: m for m in local for n in (m.name, *m.aliases)}})


def resolve_pair(
    name: str = DEFAULT_PAIR, *, registry: Optional[Registry] = None, progress: FetchProgress = SILENT,
) -> tuple[Pair, Path, Path]:
    """A named pair and its target and draft files (registry models fetched if needed, store
    references and paths found on disk)."""
    registry = registry or load_registry()
    pair = registry.pair(name)
    target = resolve_model(pair.target, registry=registry, progress=progress)
    draft = resolve_model(pair.draft, registry=registry, progress=progress)
    return pair, target, draft
