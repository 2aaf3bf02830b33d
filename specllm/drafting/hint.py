"""The note `generate -m TARGET` gives when no draft was named or saved but local models could
draft for TARGET: which, and the command that measures whether one pays here.

It reads only the local-model scan (headers, cached by path, size and mtime): no model is loaded
and nothing is timed, so a run without a draft costs what it cost before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import SpecllmError
from ..registry.gguf_header import GGUFHeaderError
from ..registry.local import scan_local_models
from .selection import local_candidates

# Names the note spells out; more are counted.
NAMES_SHOWN = 3


def local_drafts_note(reference: str, target: Path) -> Optional[str]:
    """One line naming the local models smaller than `target` (the same vocabulary first), or None."""
    try:
        candidates, target_facts = local_candidates(target, scan_local_models().models)
    except (SpecllmError, GGUFHeaderError, OSError):  # a broken store or models.toml must not stop a run
        return None
    if target_facts is None or not target_facts.parameters:
        return None
    smaller = [c for c in candidates if c.facts.parameters and c.facts.parameters < target_facts.parameters]
    if not smaller:
        return None
    same = [c for c in smaller if c.facts.vocab_id and c.facts.vocab_id == target_facts.vocab_id]
    other = [c for c in smaller if c not in same]
    named = [c.name for c in same + other][:NAMES_SHOWN]
    more = len(smaller) - len(named)
    kinds = []
    if same:
        kinds.append(f"{len(same)} with its vocabulary")
    if other:
        kinds.append(f"{len(other)} through text (--cross-vocab)")
    return (f"no draft model: {len(smaller)} local model{'s' if len(smaller) > 1 else ''} could draft for this target "
            f"({', '.join(kinds)}: {', '.join(named)}{f' and {more} more' if more else ''}); "
            f"`specllm drafts {reference}` measures which pays here, --save keeps it")
