"""The scripts' one error type and their log helpers (stderr; stdout is for the report)."""

from __future__ import annotations

import importlib.util
import sys


class Failure(Exception):
    """A problem reported as one `error: ...` line (exit code 1)."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def first_error(text: str) -> str:
    """The first line that says error (the compiler's or cmake's message, not make's summary)."""
    return next((ln.strip() for ln in text.splitlines() if "error" in ln.lower()), last_line(text))


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def require_specllm() -> None:
    """The scripts read prompts and paths through the specllm package: say so if it is missing."""
    if importlib.util.find_spec("specllm") is None:
        raise Failure(f"the specllm package is not importable by {sys.executable}: run this script with the "
                      "Python that specllm is installed in (e.g. .venv/bin/python scripts/...)")
