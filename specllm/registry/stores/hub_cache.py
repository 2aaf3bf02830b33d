"""The Hugging Face hub cache, and llama.cpp's cache, which uses the same layout.

    $HF_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub (~/.cache/...)
    $LLAMA_CACHE, else $XDG_CACHE_HOME/llama.cpp                               (source llama.cpp)
      models--ORG--NAME/refs/main              the commit of the revision `main`
      models--ORG--NAME/snapshots/<commit>/..  the files, symlinks into blobs/
      models--ORG--NAME/blobs/<hash>

As huggingface_hub does, the revision is the one refs/main names, never a guess; only a repo
with no refs and a single snapshot is read without one. llama.cpp's older flat cache (GGUF
files directly in the folder) is read too; those files are named by their paths.

A reference is `hf:ORG/NAME` when the repo holds one model, `hf:ORG/NAME:QUANT` when the
quantization in the file names tells its models apart, else `hf:ORG/NAME/FILE`. Both caches
answer to `hf:` (llama.cpp's `-hf ORG/NAME:QUANT` downloads the same repos).
This is not registry/huggingface.py, which downloads a named model from the Hub.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..model_facts import quant_in_name
from .base import Found, Problem, env_path, existing_dirs, file_stem, gguf_files, list_dir, xdg_cache_home

PREFIX = "hf:"
REPO_FOLDER_PREFIX = "models--"


@dataclass(frozen=True)
class HubRef:
    repo: str  # ORG/NAME
    quant: Optional[str] = None
    file: Optional[str] = None

    @classmethod
    def parse(cls, text: str) -> Optional[HubRef]:
        """`ORG/NAME`, `ORG/NAME:QUANT` or `ORG/NAME/FILE` (after the `hf:` prefix); None if malformed."""
        path, _, quant = text.partition(":")
        parts = path.split("/")
        if len(parts) < 2 or not all(parts) or (text.endswith(":")):
            return None
        return cls("/".join(parts[:2]), quant or None, "/".join(parts[2:]) or None)

    @property
    def folder_name(self) -> str:
        return REPO_FOLDER_PREFIX + self.repo.replace("/", "--")


def hf_roots() -> list[Path]:
    named = env_path("HF_HUB_CACHE")
    if named:
        return [named]
    home = env_path("HF_HOME")
    return [home / "hub"] if home else [xdg_cache_home() / "huggingface" / "hub"]


def llama_cpp_roots() -> list[Path]:
    return [env_path("LLAMA_CACHE") or xdg_cache_home() / "llama.cpp"]


class HubCache:
    def __init__(self, source: str, roots) -> None:
        self.source = source
        self._roots = roots

    def roots(self) -> list[Path]:
        return self._roots()

    def scan(self, problems: list[Problem]) -> list[Found]:
        found: list[Found] = []
        for root in existing_dirs(self.roots()):
            for entry in list_dir(root, self.source, problems):
                if entry.name.startswith(REPO_FOLDER_PREFIX) and entry.is_dir():
                    repo = _repo_id(entry.name)
                    if repo:
                        found += self._repo_models(Path(entry.path), repo, problems)
            # llama.cpp's older flat layout: the files themselves, named by path.
            if self.source == "llama.cpp":
                found += [Found(self.source, str(p), p, aliases=(file_stem(p),)) for p in gguf_files(root, self.source, problems)]
        return found

    def find(self, text: str) -> list[Found]:
        """The models of the repo a reference names, narrowed to its quantization or file."""
        ref = HubRef.parse(text)
        if ref is None:
            return []
        for root in existing_dirs(self.roots()):
            for entry in list_dir(root, self.source, []):
                if entry.name.lower() == ref.folder_name.lower():
                    repo = _repo_id(entry.name) or ref.repo
                    models = self._repo_models(Path(entry.path), repo, [])
                    return [m for m in models if _matches(m, ref)]
        return []

    def _repo_models(self, folder: Path, repo: str, problems: list[Problem]) -> list[Found]:
        snapshot = _snapshot(folder, self.source, problems)
        if snapshot is None:
            return []
        files = list(gguf_files(snapshot, self.source, problems, recursive=True))
        quants = [quant_in_name(p.name) for p in files]
        counts = Counter(quants)
        found = []
        for path, quant in zip(files, quants):
            relative = path.relative_to(snapshot).as_posix()
            if len(files) == 1:
                name = f"{PREFIX}{repo}"
            elif quant and counts[quant] == 1:
                name = f"{PREFIX}{repo}:{quant}"
            else:
                name = f"{PREFIX}{repo}/{relative}"
            aliases = (repo.split("/")[1], file_stem(path))
            found.append(Found(self.source, name, path, aliases=aliases, quant_hint=quant, member=relative))
        return found


def _repo_id(folder_name: str) -> Optional[str]:
    parts = folder_name[len(REPO_FOLDER_PREFIX):].split("--", 1)
    return "/".join(parts) if len(parts) == 2 and all(parts) else None


def _snapshot(folder: Path, source: str, problems: list[Problem]) -> Optional[Path]:
    """The snapshot refs/main names; the only snapshot when there are no refs."""
    ref = folder / "refs" / "main"
    snapshots = folder / "snapshots"
    if ref.is_file():
        try:
            commit = ref.read_text(encoding="utf-8").strip()
        except OSError as e:
            problems.append(Problem(source, ref, f"cannot read: {e.strerror}"))
            return None
        snapshot = snapshots / commit
        if not snapshot.is_dir():
            problems.append(Problem(source, ref, f"names revision {commit[:12]}, which has no snapshot"))
            return None
        return snapshot
    if not snapshots.is_dir():
        return None  # a repo whose download never got as far as a snapshot
    revisions = [e for e in list_dir(snapshots, source, problems) if e.is_dir()]
    if len(revisions) == 1:
        return Path(revisions[0].path)
    if revisions:
        problems.append(Problem(source, folder, f"no refs/main and {len(revisions)} snapshots: which is current is unknown"))
    return None


def _matches(model: Found, ref: HubRef) -> bool:
    if ref.quant:
        return (model.quant_hint or "").upper() == ref.quant.upper()
    return model.member_is(ref.file) if ref.file else True
