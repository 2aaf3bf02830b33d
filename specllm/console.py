"""stderr for people, stdout for data, and the one place errors become messages and exit codes."""

from __future__ import annotations

import contextlib
import sys
import traceback
from typing import Iterator

import typer
from rich.console import Console

from .errors import SpecllmError

# Everything but the generated text goes to stderr, so pipes stay clean.
stderr = Console(stderr=True, highlight=False)

EXIT_INTERRUPTED = 130


def print_error(message: str, hint: str | None = None) -> None:
    stderr.print(f"[bold red]error:[/] {message}", markup=True, highlight=False, soft_wrap=True)
    if hint:
        stderr.print(f"[dim]hint:[/] {hint}", markup=True, highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    stderr.print(f"[yellow]warning:[/] {message}", markup=True, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def reported_errors(verbose: bool = False) -> Iterator[None]:
    """Turn specllm's typed errors into one `error: ...` line and the error's exit code.

    With --verbose the traceback is printed too, for bug reports.
    """
    try:
        yield
    except SpecllmError as e:
        if verbose:
            traceback.print_exc(file=sys.stderr)
        print_error(e.message, e.hint)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None
