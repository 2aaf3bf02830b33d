"""The local model stores, each a reader of one shape (see base.py): parse -> find -> name.

    ollama.py      Ollama's manifests and blobs                         ollama:MODEL[:TAG]
    hub_cache.py   the Hugging Face hub cache and llama.cpp's cache     hf:ORG/REPO[:QUANT | /FILE]
    lmstudio.py    LM Studio's publisher/model folders                  lmstudio:PUBLISHER/MODEL[/FILE]
    folders.py     specllm's model cache and the user's folders         a path
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from . import hub_cache, lmstudio, ollama
from .base import Found, Problem, Store
from .folders import specllm_cache, user_folders
from .hub_cache import HubCache
from .lmstudio import LMStudioStore
from .ollama import ManifestError, OllamaStore

# Reference prefixes and the stores that answer to each (hf: is answered by both hub caches).
PREFIXES = {"ollama": ollama.PREFIX, "hf": hub_cache.PREFIX, "lmstudio": lmstudio.PREFIX}


def all_stores(user_paths: Sequence[Path] = ()) -> list[Store]:
    """Every store, in the order a listing shows them."""
    return [
        specllm_cache(),
        user_folders(user_paths),
        OllamaStore(),
        HubCache("hf", hub_cache.hf_roots),
        HubCache("llama.cpp", hub_cache.llama_cpp_roots),
        LMStudioStore(),
    ]


def stores_for_reference(text: str) -> tuple[list[Store], str] | None:
    """The stores a prefixed reference is for, and the reference without its prefix; None when
    `text` has no store prefix."""
    lowered = text.lower()
    if lowered.startswith(ollama.PREFIX):
        return [OllamaStore()], text[len(ollama.PREFIX):]
    if lowered.startswith(hub_cache.PREFIX):
        return [HubCache("hf", hub_cache.hf_roots), HubCache("llama.cpp", hub_cache.llama_cpp_roots)], text[len(hub_cache.PREFIX):]
    if lowered.startswith(lmstudio.PREFIX):
        return [LMStudioStore()], text[len(lmstudio.PREFIX):]
    return None


def reference_parses(text: str) -> bool:
    """Whether a prefixed reference is well formed (models.toml pairs check this before any scan)."""
    lowered = text.lower()
    if lowered.startswith(ollama.PREFIX):
        return ollama.OllamaRef.parse(text[len(ollama.PREFIX):]) is not None
    if lowered.startswith(hub_cache.PREFIX):
        return hub_cache.HubRef.parse(text[len(hub_cache.PREFIX):]) is not None
    if lowered.startswith(lmstudio.PREFIX):
        return lmstudio.parse(text[len(lmstudio.PREFIX):]) is not None
    return False


__all__ = ["Found", "ManifestError", "PREFIXES", "Problem", "Store", "all_stores", "reference_parses", "stores_for_reference"]
