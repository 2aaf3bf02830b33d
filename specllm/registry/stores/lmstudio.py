"""LM Studio's model folders: <publisher>/<model>/<file>.gguf.

    downloadsFolder of ~/.lmstudio/settings.json   (the "Models Directory" a user chose)
    ~/.lmstudio/models                              (LM Studio 0.3 and later)
    $XDG_CACHE_HOME/lm-studio/models                (~/.cache/lm-studio/models, the older place)

A reference is `lmstudio:PUBLISHER/MODEL` when the folder holds one model, else
`lmstudio:PUBLISHER/MODEL/FILE`. Vision projectors (mmproj-*.gguf) sit beside the model and are
not models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from .base import Found, Problem, existing_dirs, file_stem, gguf_files, list_dir, xdg_cache_home

SOURCE = "lmstudio"
PREFIX = "lmstudio:"


def parse(text: str) -> Optional[tuple[str, str, Optional[str]]]:
    """`PUBLISHER/MODEL[/FILE]` (after the prefix) -> (publisher, model, file); None if malformed."""
    parts = text.split("/")
    if len(parts) < 2 or not all(parts):
        return None
    return parts[0], parts[1], "/".join(parts[2:]) or None


class LMStudioStore:
    source = SOURCE

    def roots(self) -> list[Path]:
        home = Path.home() / ".lmstudio"
        chosen = _chosen_folder(home / "settings.json")
        return [*chosen, home / "models", xdg_cache_home() / "lm-studio" / "models"]

    def scan(self, problems: list[Problem]) -> list[Found]:
        found = []
        for root in existing_dirs(self.roots()):
            for publisher in list_dir(root, SOURCE, problems):
                if not publisher.is_dir() or publisher.name.startswith("."):
                    continue
                for model in list_dir(Path(publisher.path), SOURCE, problems):
                    if model.is_dir():
                        found += _folder_models(Path(model.path), f"{publisher.name}/{model.name}", problems)
        return found

    def find(self, text: str) -> list[Found]:
        parsed = parse(text)
        if parsed is None:
            return []
        publisher, model, file = parsed
        for root in existing_dirs(self.roots()):
            folder = root / publisher / model
            if folder.is_dir():
                models = _folder_models(folder, f"{publisher}/{model}", [])
                return [m for m in models if m.member_is(file)] if file else models
        return []


def _chosen_folder(settings: Path) -> list[Path]:
    """The models folder set in LM Studio's settings, if any (a missing or odd file: none)."""
    try:
        folder = json.loads(settings.read_text(encoding="utf-8")).get("downloadsFolder")
    except (OSError, ValueError, AttributeError):
        return []
    return [Path(folder).expanduser()] if isinstance(folder, str) and folder else []


def _folder_models(folder: Path, key: str, problems: list[Problem]) -> list[Found]:
    files = list(gguf_files(folder, SOURCE, problems, recursive=True))
    found = []
    for path in files:
        member = path.relative_to(folder).as_posix()
        name = PREFIX + key if len(files) == 1 else f"{PREFIX}{key}/{member}"
        found.append(Found(SOURCE, name, path, aliases=(key.split("/")[1], file_stem(path)), member=member))
    return found
