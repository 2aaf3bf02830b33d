"""The header of a GGUF file, read without touching the weights.

A GGUF file is: magic "GGUF", a version, the number of tensors and of metadata pairs, the
metadata (key, typed value), then one info per tensor (name, shape, type, offset), then the
weights. Everything specllm needs to name and group a model is in the first two parts, a few
megabytes at most (the vocabulary is the bulk of it), so the file is mapped and only those pages
are read.

What comes back (GGUFHeader):
    metadata        scalar values and short arrays, by key
    n_elements      the sum over tensor infos of their element counts (the parameter count)
    tokens          the tokenizer.ggml.tokens array, kept as one span of the file (see TokenSpan):
                    150k token strings are walked once to find where each begins, never decoded
    token_types     tokenizer.ggml.token_type as a numpy array

Only little-endian GGUF versions 2 and 3 are read (version 1, of 2023, used 32-bit counts; no
current tool writes it, nor big-endian files).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import ModelLoadError

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
# Arrays longer than this are skipped rather than kept in `metadata` (scores, merges): names
# and grouping need the scalars, the token texts and the token types only.
MAX_KEPT_ARRAY = 64
TOKENS_KEY = "tokenizer.ggml.tokens"
TOKEN_TYPES_KEY = "tokenizer.ggml.token_type"

DEFAULT_ALIGNMENT = 32  # GGUF_DEFAULT_ALIGNMENT, when general.alignment is not given
# ggml type -> (elements per block, bytes per block), as gguf-py's GGML_QUANT_SIZES.
GGML_TYPE_SIZES = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34), 9: (32, 40),
    10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292),
    16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18), 21: (256, 110), 22: (256, 82),
    23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8), 29: (256, 56), 30: (1, 2),
    34: (256, 54), 35: (256, 66), 39: (32, 17),
}  # fmt: skip

# GGUF value types: (struct format, size) of the fixed-size ones.
_UINT8, _INT8, _UINT16, _INT16, _UINT32, _INT32, _FLOAT32, _BOOL, _STRING, _ARRAY, _UINT64, _INT64, _FLOAT64 = range(13)
_FIXED = {
    _UINT8: "<B", _INT8: "<b", _UINT16: "<H", _INT16: "<h", _UINT32: "<I", _INT32: "<i",
    _FLOAT32: "<f", _BOOL: "<?", _UINT64: "<Q", _INT64: "<q", _FLOAT64: "<d",
}  # fmt: skip
_NUMPY = {
    _UINT8: "<u1", _INT8: "<i1", _UINT16: "<u2", _INT16: "<i2", _UINT32: "<u4", _INT32: "<i4",
    _FLOAT32: "<f4", _BOOL: "<u1", _UINT64: "<u8", _INT64: "<i8", _FLOAT64: "<f8",
}  # fmt: skip
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")


class GGUFHeaderError(ModelLoadError):
    """A file named .gguf whose header cannot be read: not GGUF, truncated, or of another version."""


@dataclass(frozen=True)
class TokenSpan:
    """The token texts as they lie in the file: `data` holds each token as a u64 length and its
    bytes, back to back; token i starts at data[starts[i]:]. Hashing a prefix of the vocabulary
    is one slice of `data`, with no Python object per token."""

    data: bytes = field(repr=False)
    starts: np.ndarray = field(repr=False)  # n + 1 offsets into data; the last is len(data)

    def __len__(self) -> int:
        return len(self.starts) - 1

    def prefix(self, n: int) -> bytes:
        """The raw bytes of the first n tokens (lengths included, so the split is unambiguous)."""
        return self.data[: int(self.starts[n])]

    def text(self, i: int) -> bytes:
        start = int(self.starts[i]) + 8
        return self.data[start : int(self.starts[i + 1])]


@dataclass(frozen=True)
class GGUFHeader:
    path: Path
    version: int
    metadata: dict[str, Any]
    n_tensors: int
    n_elements: int
    tokens: Optional[TokenSpan] = None
    token_types: Optional[np.ndarray] = field(default=None, repr=False)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def arch_value(self, key: str) -> Any:
        """`{architecture}.{key}`, e.g. qwen2.context_length."""
        return self.metadata.get(f"{self.architecture}.{key}")


def read_header(path: Path) -> GGUFHeader:
    """Read a GGUF file's metadata and tensor infos; GGUFHeaderError when it is not one."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            if size == 0:
                raise GGUFHeaderError(f"{path}: empty file, not a GGUF model")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return _Reader(path, data, size).header()
    except GGUFHeaderError:
        raise
    except OSError as e:
        raise GGUFHeaderError(f"{path}: cannot read: {e.strerror or e}") from None


class _Reader:
    def __init__(self, path: Path, data: mmap.mmap, size: int):
        self.path, self.data, self.size, self.pos = path, data, size, 0

    def need(self, n: int) -> None:
        if self.pos + n > self.size:
            raise GGUFHeaderError(
                f"{self.path}: truncated GGUF file (the header needs byte {self.pos + n:,}, the file has {self.size:,})"
            )

    def u32(self) -> int:
        self.need(4)
        (value,) = _U32.unpack_from(self.data, self.pos)
        self.pos += 4
        return value

    def u64(self) -> int:
        self.need(8)
        (value,) = _U64.unpack_from(self.data, self.pos)
        self.pos += 8
        return value

    def string(self) -> str:
        n = self.u64()
        self.need(n)
        value = self.data[self.pos : self.pos + n]
        self.pos += n
        return value.decode("utf-8", "replace")

    def header(self) -> GGUFHeader:
        self.need(4)
        magic = self.data[:4]
        if magic != MAGIC:
            raise GGUFHeaderError(f"{self.path}: not a GGUF file ({_describe_start(self.data[:64])})")
        self.pos = 4
        version = self.u32()
        if version not in SUPPORTED_VERSIONS:
            raise GGUFHeaderError(f"{self.path}: GGUF version {version} is not supported (only {SUPPORTED_VERSIONS})")
        n_tensors, n_kv = self.u64(), self.u64()
        metadata: dict[str, Any] = {}
        tokens, token_types = None, None
        for _ in range(n_kv):
            key = self.string()
            kind = self.u32()
            if kind != _ARRAY:
                metadata[key] = self.scalar(kind)
                continue
            item_kind, count = self.u32(), self.u64()
            if key == TOKENS_KEY and item_kind == _STRING:
                tokens = self.string_span(count)
            elif key == TOKEN_TYPES_KEY and item_kind in _NUMPY:
                token_types = self.numbers(item_kind, count)
            elif count <= MAX_KEPT_ARRAY and item_kind != _ARRAY:
                metadata[key] = [self.scalar(item_kind) for _ in range(count)]
            else:
                self.skip_array(item_kind, count)
        infos = [self.tensor_info() for _ in range(n_tensors)]
        self.check_data_size(infos, metadata.get("general.alignment", DEFAULT_ALIGNMENT))
        n_elements = sum(elements for elements, _, _ in infos)
        return GGUFHeader(self.path, version, metadata, n_tensors, n_elements, tokens, token_types)

    def scalar(self, kind: int) -> Any:
        if kind == _STRING:
            return self.string()
        if kind not in _FIXED:
            raise GGUFHeaderError(f"{self.path}: unknown GGUF value type {kind} at byte {self.pos:,}")
        fmt = _FIXED[kind]
        n = struct.calcsize(fmt)
        self.need(n)
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += n
        return value

    def numbers(self, kind: int, count: int) -> np.ndarray:
        itemsize = np.dtype(_NUMPY[kind]).itemsize
        self.need(count * itemsize)
        values = np.frombuffer(self.data, dtype=_NUMPY[kind], count=count, offset=self.pos).copy()
        self.pos += count * itemsize
        return values

    def string_span(self, count: int) -> TokenSpan:
        """Walk `count` length-prefixed strings, recording where each starts."""
        begin = self.pos
        starts = np.empty(count + 1, dtype=np.int64)
        data, pos, end, unpack = self.data, self.pos, self.size, _U64.unpack_from
        for i in range(count):
            starts[i] = pos - begin
            if pos + 8 > end:
                self.pos = pos
                self.need(8)
            pos += 8 + unpack(data, pos)[0]
        starts[count] = pos - begin
        self.pos = begin
        self.need(pos - begin)
        self.pos = pos
        return TokenSpan(data[begin:pos], starts)

    def skip_array(self, kind: int, count: int) -> None:
        if kind in _FIXED:
            n = count * struct.calcsize(_FIXED[kind])
            self.need(n)
            self.pos += n
        elif kind == _STRING:
            data, pos, end, unpack = self.data, self.pos, self.size, _U64.unpack_from
            for _ in range(count):
                if pos + 8 > end:
                    self.pos = pos
                    self.need(8)
                pos += 8 + unpack(data, pos)[0]
            self.pos = pos
            self.need(0)
        else:  # arrays of arrays: no known model writes them, but the format allows it
            for _ in range(count):
                self.skip_array(self.u32(), self.u64()) if kind == _ARRAY else self.scalar(kind)

    def tensor_info(self) -> tuple[int, int, int]:
        """(element count, ggml type, offset in the data section) of the next tensor info."""
        self.string()  # name
        n_dims = self.u32()
        if n_dims > 8:  # GGML_MAX_DIMS is 4; more means the bytes are not a tensor info
            raise GGUFHeaderError(f"{self.path}: corrupt tensor info ({n_dims} dimensions) at byte {self.pos:,}")
        elements = 1
        for _ in range(n_dims):
            elements *= self.u64()
        return elements, self.u32(), self.u64()

    def check_data_size(self, infos: list[tuple[int, int, int]], alignment: object) -> None:
        """An interrupted download cuts the weights, not the header: the file must reach the end
        of its last tensor (or at least its start, for a type whose size is not in the table)."""
        if not infos:
            return
        align = alignment if isinstance(alignment, int) and alignment > 0 else DEFAULT_ALIGNMENT
        data_start = -(-self.pos // align) * align
        needed = max(offset + _tensor_bytes(elements, kind) for elements, kind, offset in infos)
        if data_start + needed > self.size:
            raise GGUFHeaderError(
                f"{self.path}: truncated GGUF file (its tensors need {data_start + needed:,} bytes, the file has {self.size:,})"
            )


def _tensor_bytes(elements: int, kind: int) -> int:
    block, size = GGML_TYPE_SIZES.get(kind, (1, 0))
    return elements // block * size


def _describe_start(start: bytes) -> str:
    """What a file that is not GGUF looks like: text (a Git LFS pointer, an HTML error page) or binary."""
    try:
        text = start.decode("utf-8")
    except UnicodeDecodeError:
        return f"it starts with bytes {start[:4]!r}"
    first_line = text.strip().splitlines()[0] if text.strip() else ""
    if text.startswith("version https://git-lfs"):
        return "it is a Git LFS pointer: the download fetched the pointer, not the model"
    return f"it is a text file starting {first_line[:40]!r}"
