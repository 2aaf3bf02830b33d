"""The draft `specllm drafts --save` chose for a target, kept in the user's models.toml.

`drafts --save` writes one pair table per target, named `drafts-for-<target>`:

    [pairs."drafts-for-qwen2.5-coder-1.5b-instruct-q4_k_m"]
    target = "qwen2.5-coder-1.5b-instruct-q4_k_m"
    draft = "hf:Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF:Q4_K_M"
    mode = "draft"
    k = 4

Target and draft are model references as `-m` takes them (a registry name, a store reference or
a GGUF path). A later --save for the same target replaces that table and nothing else in the
file: the user's own entries, comments and layout stay as they were. `generate -m TARGET`
without -md then uses the pair whose target is TARGET, or names the same file
(`saved_pair_for`, called by config.resolve_models).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Optional

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from . import paths
from .errors import RegistryError, SpecllmError
from .registry import Pair, Registry, is_store_reference, load_registry, looks_like_path, present_path, resolve_model
from .registry.schema import is_model_reference

PAIR_PREFIX = "drafts-for-"


def saved_pair_name(target: str) -> str:
    """`drafts-for-` and the target reference with every character a table name may not hold
    replaced (a path stands for its file's stem)."""
    if looks_like_path(target):
        target = Path(target).name.removesuffix(".gguf")
    return PAIR_PREFIX + (re.sub(r"[^A-Za-z0-9._:-]+", "-", target).strip("-") or "model")


def user_registry_file() -> Path:
    """The user's models.toml ($SPECLLM_MODELS, else the config dir's), existing or not."""
    return paths.user_registry_path() or paths.config_dir() / paths.REGISTRY_FILE_NAME


def save_pair(target: str, draft: str, *, mode: str, k: int, cross_vocab: bool,
              file: Optional[Path] = None, draft_lora: Optional[Path] = None) -> tuple[Path, str]:
    """Write (or replace) the saved pair of `target`; (the file, the pair's name)."""
    name = saved_pair_name(target)
    lines = [
        f"# The draft `specllm drafts --save` measured best for {target}; the next --save replaces this table.",
        f"[pairs.{_quote(name)}]",
        f"target = {_quote(target)}",
        f"draft = {_quote(draft)}",
        f"mode = {_quote(mode)}",
        f"k = {int(k)}",
    ]
    if cross_vocab:
        lines.append("cross_vocab = true")
    if draft_lora is not None:
        lines.append(f"draft_lora = {_quote(str(Path(draft_lora).resolve()))}")
    file = file or user_registry_file()
    _write_table(file, name, "\n".join(lines) + "\n")
    return file, name


def remove_saved_pair(target: str, file: Optional[Path] = None) -> Optional[Path]:
    """Remove the saved pair of `target`, if there is one; the file it was in."""
    file = file or paths.user_registry_path()
    if file is None or not file.is_file():
        return None
    return file if _write_table(file, saved_pair_name(target), "") else None


def has_saved_pairs() -> bool:
    """Whether the registry holds any pair `drafts --save` wrote (False when it cannot be read)."""
    try:
        return any(name.startswith(PAIR_PREFIX) for name in load_registry().pairs)
    except SpecllmError:
        return False


def saved_pair_for(model: str, target_file: Path, registry: Registry) -> Optional[Pair]:
    """The pair `drafts --save` wrote for the model -m names (by reference, or its file), if any.
    Nothing is fetched: a saved target not on this machine matches nothing."""
    saved = [pair for name, pair in registry.pairs.items() if name.startswith(PAIR_PREFIX)]
    for pair in saved:
        if pair.target == model:
            return pair
    for pair in saved:
        found = _present_file(pair.target, registry)
        if found is not None and _same_file(found, target_file):
            return pair
    return None


def pair_adapters(target_file: Path) -> list[tuple[Path, Path]]:
    """(draft file, LoRA adapter) of every pair in models.toml whose target is `target_file` and
    whose draft, present here, has a draft_lora (`specllm drafts` measures the draft with it)."""
    try:
        registry = load_registry()
    except SpecllmError:  # a broken models.toml must not stop a run given by path
        return []
    found = []
    for pair in registry.pairs.values():
        if not pair.draft_lora:
            continue
        target, draft = _present_file(pair.target, registry), _present_file(pair.draft, registry)
        if target is not None and draft is not None and _same_file(target, target_file):
            found.append((draft, Path(pair.draft_lora)))
    return found


def pair_reference(reference: str, path: Path) -> str:
    """What a saved pair names a model by: the reference the user gave when a pair may hold it (a
    registry name, a store reference, a path), else the file's absolute path (a bare local name)."""
    if is_model_reference(reference, load_registry().models):
        return reference
    return str(Path(path).resolve())


def _present_file(reference: str, registry: Registry) -> Optional[Path]:
    if reference in registry.models:
        return present_path(registry.models[reference])
    if not (is_store_reference(reference) or looks_like_path(reference)):
        return None
    try:
        return resolve_model(reference, registry=registry)
    except SpecllmError:
        return None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _quote(text: str) -> str:
    # A JSON string without \\u escapes of non-ASCII text is a TOML basic string.
    return json.dumps(text, ensure_ascii=False)


def _write_table(file: Path, name: str, block: str) -> bool:
    """Put `block` in place of the table `name` written before (its comment line included), or
    at the end; "" removes it. False when there was nothing to remove."""
    try:
        text = file.read_text(encoding="utf-8") if file.exists() else ""
    except (OSError, UnicodeDecodeError) as e:
        raise RegistryError(f"cannot read {file}: {getattr(e, 'strerror', None) or e}") from None
    lines = text.splitlines(keepends=True)
    header = re.compile(r"^\s*\[\s*pairs\s*\.\s*(\"" + re.escape(name) + r"\"|" + re.escape(name) + r")\s*\]\s*(#.*)?$")
    start = next((i for i, line in enumerate(lines) if header.match(line.rstrip("\n"))), None)
    if start is None:
        if not block:
            return False
        separator = "" if not text or text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
        new_text = text + separator + block
    else:
        end = start + 1
        while end < len(lines) and lines[end].strip() and not lines[end].lstrip().startswith("["):
            end += 1
        if start > 0 and lines[start - 1].startswith("# The draft `specllm drafts --save`"):
            start -= 1
        new_text = "".join(lines[:start]) + block + "".join(lines[end:])
    try:
        tomllib.loads(new_text)
    except tomllib.TOMLDecodeError as e:
        raise RegistryError(f"{file}: not valid TOML, left as it was: {e}",
                            hint="mend the file (or move it away), then run --save again") from None
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        partial = file.with_name(f".{file.name}.{os.getpid()}.tmp")
        partial.write_text(new_text, encoding="utf-8")
        os.replace(partial, file)
    except OSError as e:
        raise RegistryError(f"cannot write {file}: {e.strerror or e}") from None
    return True
