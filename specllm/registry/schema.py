"""models.toml: what a model or pair entry may say, and reading the shipped and user files.

A model is named in models.toml (shipped with specllm) or in the user's own registry file
(paths.user_registry_path), which adds entries or overrides keys of shipped ones. Nothing here
touches the network or the model cache: see fetch.py for that.

A pair's target and draft name any model reference: a model of the registry, a local store's
reference (`ollama:qwen2.5:0.5b`, `hf:ORG/REPO:Q4_K_M`, see stores/) or a GGUF path. The
`[local]` section names folders of GGUF files that `models list` and bare names also search:

    [local]
    paths = ["~/models", "/data/gguf"]   # relative paths are relative to the file
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from .. import paths
from ..errors import RegistryError

DEFAULT_PAIR = "default"

MODEL_KEYS = {
    "description", "file", "family", "size", "sha256",
    "path", "hf_repo", "hf_file", "hf_sha256", "pypi_parts", "pypi_version",
}  # fmt: skip
PAIR_KEYS = {"description", "target", "draft", "mode", "k", "ngram_min", "ngram_max", "cross_vocab", "memory",
             "draft_lora"}
LOCAL_KEYS = {"paths"}


@dataclass(frozen=True)
class ModelEntry:
    """One named model: what the file is (size, sha256) and where it can be had (sources)."""

    name: str
    file: str
    description: str = ""
    family: str = ""
    size: Optional[int] = None
    sha256: Optional[str] = None
    path: Optional[Path] = None
    hf_repo: Optional[str] = None
    hf_file: Optional[str] = None
    hf_sha256: Optional[str] = None
    pypi_parts: tuple[str, ...] = ()
    pypi_version: Optional[str] = None

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

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view (for --json output)."""
        data = dataclasses.asdict(self)
        data["path"] = str(self.path) if self.path else None
        data["pypi_parts"] = list(self.pypi_parts)
        return data


@dataclass(frozen=True)
class Pair:
    """A named target + draft and the settings that suit them (None: the command's default)."""

    name: str
    target: str
    draft: str
    description: str = ""
    mode: Optional[str] = None
    k: Optional[int] = None
    ngram_min: Optional[int] = None
    ngram_max: Optional[int] = None
    cross_vocab: bool = False
    memory: Optional[bool] = None  # keep earlier outputs on disk between runs (auto mode)
    draft_lora: Optional[str] = None  # a GGUF LoRA adapter for the draft (specllm tune-draft)

    @property
    def ngram_sizes(self) -> Optional[tuple[int, ...]]:
        """The n-gram lookup sizes, longest first, when the pair gives both bounds."""
        if self.ngram_min and self.ngram_max:
            return tuple(range(self.ngram_max, self.ngram_min - 1, -1))
        return None


@dataclass(frozen=True)
class Registry:
    models: Mapping[str, ModelEntry]
    pairs: Mapping[str, Pair]
    files: tuple[Path, ...]  # the registry files read, shipped first
    local_paths: tuple[Path, ...] = ()  # [local] paths: folders of GGUF files to list and search

    def model(self, name: str) -> ModelEntry:
        try:
            return self.models[name]
        except KeyError:
            raise unknown_name("model", name, self.models) from None

    def pair(self, name: str) -> Pair:
        try:
            return self.pairs[name]
        except KeyError:
            raise unknown_name("pair", name, self.pairs) from None


def unknown_name(kind: str, name: str, known: Mapping[str, Any]) -> RegistryError:
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    return RegistryError(
        f"unknown {kind} '{name}'",
        hint=hint + "`specllm models list` shows the registry; a model can also be given as a GGUF path",
    )


def load_registry(user_file: Optional[Path] = None) -> Registry:
    """The shipped registry with the user's file (`user_file`, else paths.user_registry_path()) on top."""
    shipped = paths.shipped_registry_path()
    user = user_file if user_file is not None else paths.user_registry_path()
    files = [shipped] + ([user] if user else [])
    models: dict[str, dict[str, Any]] = {}
    pairs: dict[str, dict[str, Any]] = {}
    origin: dict[tuple[str, str], Path] = {}
    local_paths: list[Path] = []
    for file in files:
        data = _read_toml(file)
        unknown_sections = set(data) - {"models", "pairs", "local"}
        if unknown_sections:
            raise RegistryError(
                f"{file}: unknown section [{sorted(unknown_sections)[0]}] (expected [models.NAME], [pairs.NAME] or [local])"
            )
        local_paths += _parse_local(data.get("local", {}), file)
        for section, merged in (("models", models), ("pairs", pairs)):
            tables = data.get(section, {})
            if not isinstance(tables, dict):
                raise RegistryError(f"{file}: '{section}' must be a table of [{section}.NAME] tables")
            for name, table in tables.items():
                where = f"{file}: {section}.{name}"
                if not isinstance(table, dict):
                    raise RegistryError(f"{where} must be a table")
                for key in ("path", "draft_lora"):
                    if key in table and isinstance(table[key], str):
                        # A relative path means relative to the file that names it.
                        table = {**table, key: str(file.parent / Path(table[key]).expanduser())}
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
    return Registry(models=model_entries, pairs=pair_entries, files=tuple(files), local_paths=tuple(local_paths))


def _parse_local(table: Any, file: Path) -> list[Path]:
    where = f"{file}: [local]"
    if not isinstance(table, dict):
        raise RegistryError(f"{where} must be a table")
    unknown = sorted(set(table) - LOCAL_KEYS)
    if unknown:
        raise RegistryError(f"{where}: unknown key '{unknown[0]}'", hint=f"known keys: {', '.join(sorted(LOCAL_KEYS))}")
    folders = _take(table, "paths", list, where) or []
    if not all(isinstance(p, str) and p for p in folders):
        raise RegistryError(f"{where}: 'paths' must be a list of folder paths")
    return [file.parent / Path(p).expanduser() for p in folders]


def is_model_reference(value: str, models: Mapping[str, ModelEntry]) -> bool:
    """A registry model, a well-formed store reference or a GGUF path (which need not exist yet)."""
    from .stores import reference_parses, stores_for_reference

    if value in models:
        return True
    if stores_for_reference(value) is not None:
        return reference_parses(value)
    return "/" in value or "\\" in value or value.lower().endswith(".gguf")


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
        if not is_model_reference(model, models):
            raise RegistryError(
                f"{where}: {role} '{model}' is not a model in the registry, a store reference or a GGUF path",
                hint="e.g. a [models.NAME] of the registry, ollama:MODEL:TAG, hf:ORG/REPO:QUANT or /path/to/model.gguf",
            )
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
        memory=_take(table, "memory", bool, where),
        draft_lora=_take(table, "draft_lora", str, where),
    )
