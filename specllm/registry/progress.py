"""How a fetch reports what it does: a callback object the caller passes in; fetching never prints.

The default, `SILENT`, reports nothing (library use, tests). The CLI passes one that draws rich
progress bars on stderr (specllm/commands/fetch_progress.py).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional


class Transfer:
    """One stream of bytes being downloaded, unpacked or hashed."""

    def advance(self, n_bytes: int) -> None:
        """`n_bytes` more are done."""

    def describe(self, description: str) -> None:
        """What is being done now (e.g. "part 2/6 downloading")."""


class FetchProgress:
    """Everything a fetch reports. Subclass and override what you want to show."""

    def note(self, message: str) -> None:
        """A step worth a line: what is fetched from where, or waiting for another process."""

    def warn(self, message: str) -> None:
        """Something went wrong but the fetch goes on (a source was skipped, a bad copy removed)."""

    @contextlib.contextmanager
    def transfer(self, description: str, total: Optional[int]) -> Iterator[Transfer]:
        """A byte counter from 0 to `total` (None: unknown), closed when the block ends."""
        yield Transfer()


SILENT = FetchProgress()
