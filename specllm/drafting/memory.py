"""Memory of earlier outputs of one target model, for drafting across requests.

An answer often repeats a passage of an earlier answer (the same code fixed again, the same
boilerplate); `OutputMemory` indexes earlier outputs (one document each) in a `SuffixIndex`,
and a `SuffixMatcher` follows the current generation against it. Its size is bounded in
tokens: the oldest outputs leave first. It can persist in a file per target model
(`memory_path`), written with mode 0600 and replaced atomically; a file that cannot be read,
is from another version, model or vocabulary is ignored, never an error: drafts only change
speed, never output.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections import deque
from pathlib import Path
from typing import Iterable, Sequence

from .suffix import SuffixIndex, SuffixMatcher

# Tokens kept: a few dozen answers; their index takes about 30 MB and 0.3 s to rebuild.
MEMORY_TOKENS = 65536
# Evicting drops the oldest outputs down to this share of the budget, so that the index is
# rebuilt at most once per (1 - EVICT_TO) x MEMORY_TOKENS added tokens: amortized O(1) per token.
EVICT_TO = 0.75
FILE_FORMAT = "specllm-output-memory"
FILE_VERSION = 1
# A file bigger than this many bytes per budgeted token is not ours (a JSON token id takes <= 8).
MAX_FILE_BYTES_PER_TOKEN = 16
MAX_TOKEN_ID = 2**31 - 1  # llama.cpp token ids are int32


def memory_path(cache_dir: str | os.PathLike, model_key: str) -> Path:
    """The memory file for a target model, named by a hash of its key (a path or a name)."""
    digest = hashlib.sha256(model_key.encode("utf-8")).hexdigest()[:32]
    return Path(cache_dir) / "memory" / f"{digest}.json"


class OutputMemory:
    def __init__(self, max_tokens: int = MEMORY_TOKENS, model_key: str = "", n_vocab: int | None = None):
        if max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        self.max_tokens = max_tokens
        self.model_key = model_key
        self.n_vocab = n_vocab  # token ids at or above it are never kept (a foreign vocabulary)
        self.documents: deque[list[int]] = deque()
        self.n_tokens = 0
        self.index = SuffixIndex()

    def __len__(self) -> int:
        return self.n_tokens

    def matcher(self) -> SuffixMatcher:
        return SuffixMatcher(self.index)

    def add(self, tokens: Sequence[int] | Iterable[int]) -> None:
        """Remember one output (its last max_tokens tokens)."""
        document = [int(t) for t in tokens][-self.max_tokens :]
        if not document or not self._valid(document):
            return
        if self.n_tokens + len(document) > self.max_tokens:
            room = int(self.max_tokens * EVICT_TO) - len(document)
            while self.documents and self.n_tokens > room:
                self.n_tokens -= len(self.documents.popleft())
            self._rebuild()
        self.documents.append(document)
        self.n_tokens += len(document)
        self._index(document)

    def _valid(self, document: list[int]) -> bool:
        top = MAX_TOKEN_ID if self.n_vocab is None else self.n_vocab - 1
        return all(0 <= t <= top for t in document)

    def _index(self, document: list[int]) -> None:
        self.index.end_document()
        self.index.extend(document)

    def _rebuild(self) -> None:
        self.index.clear()
        for document in self.documents:
            self._index(document)

    # -- persistence --------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write the memory to `path` (mode 0600) through a temporary file and an atomic rename."""
        path = Path(path)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        payload = {
            "format": FILE_FORMAT,
            "version": FILE_VERSION,
            "model_key": self.model_key,
            "n_vocab": self.n_vocab,
            "documents": list(self.documents),
        }
        data = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        model_key: str = "",
        *,
        max_tokens: int = MEMORY_TOKENS,
        n_vocab: int | None = None,
    ) -> "OutputMemory":
        """The memory saved at `path`, or an empty one if the file is missing, unreadable,
        corrupt, of another version, model or vocabulary. Never raises for the file's sake."""
        memory = cls(max_tokens, model_key, n_vocab)
        documents = _read_documents(Path(path), model_key, max_tokens, n_vocab)
        kept: list[list[int]] = []
        total = 0
        for document in reversed(documents):  # the newest outputs first, within the budget
            if total + len(document) > max_tokens:
                break
            kept.append(document)
            total += len(document)
        for document in reversed(kept):
            memory.add(document)
        return memory


def _read_documents(path: Path, model_key: str, max_tokens: int, n_vocab: int | None) -> list[list[int]]:
    try:
        if path.stat().st_size > MAX_FILE_BYTES_PER_TOKEN * max_tokens + 4096:
            return []
        payload = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):  # missing, unreadable, not JSON (UnicodeError is a ValueError)
        return []
    if not (
        isinstance(payload, dict)
        and payload.get("format") == FILE_FORMAT
        and payload.get("version") == FILE_VERSION
        and payload.get("model_key") == model_key
        and payload.get("n_vocab") == n_vocab
        and isinstance(payload.get("documents"), list)
    ):
        return []
    top = MAX_TOKEN_ID if n_vocab is None else n_vocab - 1
    documents = payload["documents"]
    for document in documents:
        if not isinstance(document, list) or not all(
            type(t) is int and 0 <= t <= top for t in document  # bool is an int subclass: excluded
        ):
            return []
    return documents
