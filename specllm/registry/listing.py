"""What `specllm models list` shows: the registry's models and every local model, grouped by
vocabulary (the models of one group can pair token by token).

A registry model on disk is listed with its file's facts under its registry name; one not yet
fetched with what models.toml says and nulls for what only its header could tell. Every row
also says whether the model is on disk (`cached`).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import groupby
from typing import Any, Optional

from .cache import present_path
from .local import scan_local_models
from .schema import ModelEntry, Registry
from .stores import Problem

# What every row has, in this order (`models list --json` prints these keys first).
ROW_KEYS = ("name", "source", "path", "architecture", "parameters", "quantization", "size_bytes", "vocab_id")
REGISTRY_SOURCE = "specllm"


@dataclass(frozen=True)
class VocabGroup:
    vocab_id: Optional[str]  # None: models whose vocabulary is unknown (not fetched yet)
    vocab_type: Optional[str]
    vocab_size: Optional[int]
    rows: list[dict[str, Any]]


def model_rows(registry: Registry) -> tuple[list[dict[str, Any]], list[Problem]]:
    """One JSON-ready row per model: registry models first (by registry order), then local ones."""
    scan = scan_local_models(registry)
    by_name = {model.name: model for model in scan.models}
    rows = []
    for name, entry in registry.models.items():
        model = by_name.pop(name, None)
        rows.append({**model.as_dict(), "cached": True} if model else _registry_row(entry))
    rows += [{**model.as_dict(), "cached": True} for model in scan.models if model.name in by_name]
    return rows, scan.problems


def group_by_vocabulary(rows: list[dict[str, Any]]) -> list[VocabGroup]:
    """Groups of rows sharing a vocab_id, largest group first; unknown vocabularies last."""
    def key(row: dict[str, Any]) -> str:
        return row.get("vocab_id") or ""

    groups = []
    for vocab_id, members in groupby(sorted(rows, key=key), key=key):
        members = sorted(members, key=lambda r: (-(r.get("parameters") or 0), r["name"]))
        first = members[0]
        groups.append(VocabGroup(vocab_id or None, first.get("vocab_type"), first.get("vocab_size"), members))
    return sorted(groups, key=lambda g: (g.vocab_id is None, -len(g.rows), g.rows[0]["name"]))


def _registry_row(entry: ModelEntry) -> dict[str, Any]:
    """A registry model not fetched yet (or whose file could not be read: a problem says why)."""
    present = present_path(entry)
    row: dict[str, Any] = dict.fromkeys(ROW_KEYS)
    row.update(name=entry.name, source=REGISTRY_SOURCE, path=str(present) if present else None,
               size_bytes=entry.size, cached=present is not None)  # fmt: skip
    return row
