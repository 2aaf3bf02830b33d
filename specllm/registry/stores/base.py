"""What every store reader shares: the shape of a found model, of a problem, and folder walking.

A store reader does three things, the same way in each store:
    parse    a reference (`ollama:qwen2.5-coder:1.5b`) into its parts, or None if not its kind
    find     the model files, every one (`scan`) or those a reference names (`find`)
    name     each found file gets the reference that finds it again (`Found.name`)
Reading the header is shared (scan.py), so that every store gets the same facts and the cache.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional, Protocol

from ..model_facts import is_later_split_part, is_projector_name


@dataclass(frozen=True)
class Found:
    """A model file in a store, before its header is read."""

    source: str  # ollama, hf, llama.cpp, lmstudio, specllm, path
    name: str  # what -m takes to find it again
    path: Path  # the GGUF file (the first part of a split model)
    aliases: tuple[str, ...] = ()  # bare names that also find it (matched case-insensitively)
    quant_hint: Optional[str] = field(default=None, compare=False)  # from the file name
    member: str = field(default="", compare=False)  # the file's path inside its repo or model folder

    def member_is(self, wanted: str) -> bool:
        """Whether FILE of a `.../FILE` reference names this file (with or without .gguf, any case)."""
        wanted = wanted.lower().removesuffix(".gguf")
        candidates = (self.member.lower().removesuffix(".gguf"), self.path.name.lower().removesuffix(".gguf"))
        return wanted in candidates or wanted == file_stem(self.path).lower()


@dataclass(frozen=True)
class Problem:
    """Something in a store that could not be read: one line in `models list`, never a traceback."""

    source: str
    where: Path
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.where}: {self.message}"


class Store(Protocol):
    source: str

    def roots(self) -> list[Path]:
        """The folders this store reads, whether they exist or not."""

    def scan(self, problems: list[Problem]) -> list[Found]:
        """Every model in the store; what cannot be read is added to `problems`."""


def env_path(name: str) -> Optional[Path]:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else None


def xdg_cache_home() -> Path:
    return env_path("XDG_CACHE_HOME") or Path.home() / ".cache"


def existing_dirs(paths: Iterable[Path]) -> list[Path]:
    """The paths that are folders, each once (a store may be named twice, e.g. by env and default)."""
    seen, found = set(), []
    for path in paths:
        try:
            if path.is_dir() and path.resolve() not in seen:
                seen.add(path.resolve())
                found.append(path)
        except OSError:
            continue
    return found


def list_dir(folder: Path, source: str, problems: list[Problem]) -> list[os.DirEntry]:
    """The entries of a folder, sorted by name; an unreadable folder is a problem, not an error."""
    try:
        with os.scandir(folder) as entries:
            return sorted(entries, key=lambda e: e.name)
    except OSError as e:
        problems.append(Problem(source, folder, f"cannot read the folder: {e.strerror or e}"))
        return []


def gguf_files(
    folder: Path, source: str, problems: list[Problem], *, recursive: bool = False, max_depth: int = 8
) -> Iterator[Path]:
    """The model files of a folder: *.gguf, without vision projectors and later parts of split
    models. A symlink whose target is gone is a problem."""
    for entry in list_dir(folder, source, problems):
        path = Path(entry.path)
        if entry.is_dir():
            if recursive and max_depth > 1 and not entry.name.startswith("."):
                yield from gguf_files(path, source, problems, recursive=True, max_depth=max_depth - 1)
            continue
        name = entry.name
        if name.startswith(".") or not name.lower().endswith(".gguf") or is_projector_name(name) or is_later_split_part(name):
            continue
        if entry.is_symlink() and not path.exists():
            problems.append(Problem(source, path, f"dangling symlink (to {os.readlink(path)})"))
            continue
        yield path


def file_stem(path: Path) -> str:
    """The name of a model file without .gguf and without a split suffix."""
    name = path.name[: -len(".gguf")] if path.name.lower().endswith(".gguf") else path.name
    return name.split("-00001-of-")[0]
