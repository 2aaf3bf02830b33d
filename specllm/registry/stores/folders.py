"""Plain folders of GGUF files: specllm's own model cache and the folders a user names.

    specllm     paths.models_dir(): what `specllm models fetch` downloaded
    path        $SPECLLM_MODEL_PATH (folders separated by ':', ';' on Windows) and the user's
                models.toml:  [local]  paths = ["~/models", "/data/gguf"]

A model here is named by its path (what -m always took); its file name without .gguf also
finds it when no other local model has that name. Subfolders are read down to MAX_DEPTH, so
that a folder of folders (one per model) works without listing each.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ... import paths
from .base import Found, Problem, file_stem, gguf_files

MAX_DEPTH = 3  # deep enough for models/<family>/<model>/, shallow enough not to walk a whole disk


class FolderStore:
    def __init__(self, source: str, folders: Sequence[Path]) -> None:
        self.source = source
        self.folders = list(folders)

    def roots(self) -> list[Path]:
        return self.folders

    def scan(self, problems: list[Problem]) -> list[Found]:
        found = []
        for root in self.folders:
            if not root.exists() and not root.is_symlink():
                if self.source == "path":  # a folder the user named on purpose
                    problems.append(Problem(self.source, root, "no such folder"))
                continue
            for path in gguf_files(root, self.source, problems, recursive=True, max_depth=MAX_DEPTH):
                found.append(Found(self.source, str(path), path, aliases=(file_stem(path),)))
        return found


def specllm_cache() -> FolderStore:
    return FolderStore("specllm", [paths.models_dir()])


def user_folders(configured: Sequence[Path] = ()) -> FolderStore:
    """$SPECLLM_MODEL_PATH's folders, then those models.toml's [local] paths names."""
    named = [Path(p).expanduser() for p in os.environ.get("SPECLLM_MODEL_PATH", "").split(os.pathsep) if p]
    unique = list(dict.fromkeys([*named, *configured]))
    return FolderStore("path", unique)
