"""The GGUF models already on this machine: every store scanned, each model named and described.

Public functions (the `models list`, `drafts` and generate's "local drafts exist" hint use them):

    scan_local_models(registry=None) -> ScanResult(models, problems)
        Every model of every store (stores/), with its header facts (model_facts.py), read once
        and then cached by (path, size, mtime) in paths.cache_dir()/local-models.json. What
        cannot be read is one line in `problems`; the other models are still listed.
    find_local_models(registry=None) -> (list[Found], problems)
        The same models without reading a header: for matching names.
    resolve_reference(text, registry=None) -> Path
        `ollama:MODEL[:TAG]`, `hf:ORG/REPO[:QUANT | /FILE]`, `lmstudio:PUBLISHER/MODEL[/FILE]` or a
        bare name that matches exactly one local model -> its GGUF file; RegistryError naming the
        closest candidates when no model or several match.
    is_store_reference(text)
        Whether `text` has a store prefix (so it is not a path even though it holds a '/').
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .. import paths
from ..errors import RegistryError
from .cache import present_path
from .gguf_header import GGUFHeaderError
from .model_facts import ModelFacts, NotAModel, read_model_facts, split_parts
from .schema import Registry, load_registry
from .stores import Found, ManifestError, Problem, all_stores, stores_for_reference

CACHE_FILE_NAME = "local-models.json"
CACHE_VERSION = 2  # bump when ModelFacts or the fingerprint changes: old entries are then re-read
MAX_CANDIDATES = 3  # names an error suggests


@dataclass(frozen=True)
class LocalModel:
    found: Found
    facts: ModelFacts

    @property
    def name(self) -> str:
        return self.found.name

    @property
    def source(self) -> str:
        return self.found.source

    @property
    def path(self) -> Path:
        return self.found.path

    def as_dict(self) -> dict[str, Any]:
        """name, source, path, then the header facts (architecture, parameters, ... vocab_id)."""
        return {"name": self.name, "source": self.source, "path": str(self.path), **self.facts.as_dict()}


@dataclass(frozen=True)
class ScanResult:
    models: list[LocalModel]
    problems: list[Problem] = field(default_factory=list)


def is_store_reference(text: str) -> bool:
    return stores_for_reference(text) is not None


def find_local_models(registry: Optional[Registry] = None) -> tuple[list[Found], list[Problem]]:
    """Every model file of every store, named, headers unread; each path once. A registry model
    already on disk goes by its registry name (source specllm)."""
    registry = registry or load_registry()
    problems: list[Problem] = []
    found: dict[Path, Found] = {}
    for name, entry in registry.models.items():
        present = present_path(entry)
        if present:
            found[present] = Found("specllm", name, present, aliases=(name,))
    for store in all_stores(registry.local_paths):
        for model in store.scan(problems):
            found.setdefault(model.path, model)
    return list(found.values()), problems


def scan_local_models(registry: Optional[Registry] = None) -> ScanResult:
    """Every local model with its header facts (cached); projectors and adapters left out, files
    that cannot be read reported in `problems`."""
    found, problems = find_local_models(registry)
    cache = _FactsCache(paths.cache_dir() / CACHE_FILE_NAME)
    models = []
    for model in found:
        try:
            facts = cache.facts(model.path)
        except NotAModel:
            continue
        except (GGUFHeaderError, OSError) as e:
            problems.append(Problem(model.source, model.path, _without_path(str(e), model.path)))
            continue
        models.append(LocalModel(model, facts))
    cache.save(keep={m.path for m in found})
    return ScanResult(models, problems)


def resolve_reference(text: str, registry: Optional[Registry] = None) -> Path:
    """The GGUF file of a store reference or of a bare local name (see the module docstring)."""
    prefixed = stores_for_reference(text)
    if prefixed is not None:
        stores, rest = prefixed
        matches: list[Found] = []
        for store in stores:  # the first store that has it (the hub cache before llama.cpp's)
            try:
                matches = store.find(rest)
            except ManifestError as e:
                raise RegistryError(f"'{text}': {e}") from None
            if matches:
                break
        if not matches:
            problems: list[Problem] = []
            known = [m.name for store in stores for m in store.scan(problems)]
            raise _no_match(text, known, where=f"in the {' or '.join(s.source for s in stores)} store")
    else:
        found, _ = find_local_models(registry)
        matches = bare_name_matches(text, found)
        if not matches:
            raise _no_match(text, [n for m in found for n in (m.name, *m.aliases)], where="among the local models")
    return only_match(text, matches)


def only_match(text: str, matches: list[Found]) -> Path:
    """The file of the one model `text` found (copies of one file count once); RegistryError naming
    them when there are several."""
    if len({os.path.realpath(m.path) for m in matches}) > 1:
        names = ", ".join(m.name for m in matches[:MAX_CANDIDATES + 2])
        raise RegistryError(f"'{text}' names {len(matches)} local models: {names}", hint="give one of these names")
    return matches[0].path


def bare_name_matches(text: str, found: list[Found]) -> list[Found]:
    """The models whose name (with or without its store prefix) or an alias is `text`, any case."""
    wanted = text.lower()
    return [m for m in found if wanted in {a.lower() for a in (m.name, m.name.split(":", 1)[-1], *m.aliases)}]


def _no_match(text: str, known: list[str], *, where: str) -> RegistryError:
    close = difflib.get_close_matches(text, list(dict.fromkeys(known)), n=MAX_CANDIDATES, cutoff=0.4)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    return RegistryError(f"no model '{text}' {where}", hint=hint + "`specllm models list` shows the local models")




def _without_path(message: str, path: Path) -> str:
    # Header errors start with the path; a problem line shows the path once.
    return message[len(str(path)) + 2:] if message.startswith(f"{path}: ") else message


class _FactsCache:
    """ModelFacts (or why a file is not a model) by path, valid while every part's size and mtime hold."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self.changed = False
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
            ok = isinstance(data, dict) and data.get("version") == CACHE_VERSION and isinstance(data.get("entries"), dict)
            self.entries: dict[str, Any] = data["entries"] if ok else {}
        except (OSError, ValueError):
            self.entries = {}  # no cache yet, or a damaged one: it is rebuilt

    def facts(self, path: Path) -> ModelFacts:
        signature = _signature(path)
        entry = self.entries.get(str(path))
        if entry is None or entry.get("signature") != signature:
            entry = {"signature": signature, **_read(path)}
            self.entries[str(path)] = entry
            self.changed = True
        if "not_a_model" in entry:
            raise NotAModel(entry["not_a_model"])
        if "error" in entry:
            raise GGUFHeaderError(entry["error"])
        return ModelFacts.from_dict(entry["facts"])

    def save(self, keep: set[Path]) -> None:
        kept = {key: value for key, value in self.entries.items() if Path(key) in keep}
        if not self.changed and len(kept) == len(self.entries):
            return
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            partial = self.file.with_suffix(f".{os.getpid()}.tmp")
            partial.write_text(json.dumps({"version": CACHE_VERSION, "entries": kept}), encoding="utf-8")
            os.replace(partial, self.file)
        except OSError:
            pass  # a read-only cache only costs the next scan its speed


def _signature(path: Path) -> list[list[int]]:
    signature = []
    for part in split_parts(path):
        try:
            stat = part.stat()
        except OSError:
            continue  # a missing part: read_model_facts reports it
        signature.append([stat.st_size, stat.st_mtime_ns])
    return signature


def _read(path: Path) -> dict[str, Any]:
    try:
        return {"facts": read_model_facts(path).as_dict()}
    except NotAModel as e:
        return {"not_a_model": str(e)}
    except GGUFHeaderError as e:
        return {"error": e.message}
