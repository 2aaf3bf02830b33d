"""Input handling shared by the commands: reading stdin, and refusing text that is not UTF-8."""

from __future__ import annotations

import io
import sys
from typing import BinaryIO, Iterator

from ..errors import UsageError


def stdin_is_terminal() -> bool:
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):  # no stdin at all, or a closed one
        return False


def _stdin_binary() -> BinaryIO:
    # Bytes, not text: invalid UTF-8 must become a clear error, not a decoding traceback.
    stream = getattr(sys.stdin, "buffer", None)
    return stream if stream is not None else io.BytesIO(sys.stdin.read().encode("utf-8", "surrogateescape"))


def read_stdin_text() -> str:
    """All of stdin as UTF-8 text; invalid UTF-8 is a usage error, not a traceback."""
    return decode_utf8(_stdin_binary().read(), "standard input")


def stdin_lines() -> Iterator[bytes]:
    """stdin line by line, undecoded (one bad line must not stop the others)."""
    yield from _stdin_binary()


def decode_utf8(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{where} is not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})") from None


def check_text_is_utf8(text: str, where: str) -> str:
    """Text that could not be written as UTF-8 (argv's undecodable bytes arrive as surrogates, JSON
    can hold lone surrogates) is refused clearly."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            raw = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError as e:
            raise UsageError(f"{where} is not valid UTF-8 (a lone surrogate at character {e.start})") from None
        return decode_utf8(raw, where)
    return text
