"""stderr for people, stdout for data, and the one place errors become messages and exit codes."""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from typing import Iterator, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.text import Text
from typer.exceptions import TyperException

from .errors import SpecllmError
from .registry.progress import FetchProgress, Transfer

# Everything but the generated text goes to stderr, so pipes stay clean.
stderr = Console(stderr=True, highlight=False)

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
BUG_HINT = "this is a bug in specllm: re-run with --verbose and include the traceback in a bug report"


def print_error(message: str, hint: str | None = None) -> None:
    # Plain Text, not markup: messages quote paths and user input, where '[' is not a style.
    stderr.print(Text.assemble(("error:", "bold red"), " ", message), soft_wrap=True)
    if hint:
        stderr.print(Text.assemble(("hint:", "dim"), " ", hint), soft_wrap=True)


def warn(message: str) -> None:
    """`message` is rich markup: escape (rich.markup.escape) any text that comes from outside."""
    stderr.print(f"[yellow]warning:[/] {message}", markup=True, highlight=False, soft_wrap=True)


def silence_stdout() -> None:
    """After EPIPE (`| head`), point stdout at /dev/null so later writes and Python's exit flush
    do not raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass  # not a real file (tests): nothing will flush it at exit


@contextlib.contextmanager
def reported_errors(verbose: bool = False) -> Iterator[None]:
    """Run a command body; turn whatever escapes it into one `error: ...` line and an exit code.

    SpecllmError: its message, hint and exit code. Ctrl-C: exit 130, quietly. A reader that went
    away (`| head`): exit quietly. Anything else is a bug: `error: internal error: ...`, exit 1.
    With --verbose the traceback is printed too, for bug reports; without it, never.
    """
    try:
        yield
    except (typer.Exit, typer.Abort, TyperException):
        raise  # typer's own exits and usage errors
    except SpecllmError as e:
        _print_traceback(verbose)
        print_error(e.message, e.hint)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except BrokenPipeError:
        silence_stdout()
        raise typer.Exit(0) from None
    except MemoryError:
        _print_traceback(verbose)
        print_error("out of memory", "use a smaller model, context (--ctx-size) or fewer GPU layers")
        raise typer.Exit(1) from None
    except Exception as e:
        _print_traceback(verbose)
        print_error(f"internal error: {type(e).__name__}: {e}", None if verbose else BUG_HINT)
        raise typer.Exit(1) from None


def _print_traceback(verbose: bool) -> None:
    if verbose:
        traceback.print_exc(file=sys.stderr)


class _BarTransfer(Transfer):
    def __init__(self, bar: Progress, task: object):
        self.bar, self.task = bar, task

    def advance(self, n_bytes: int) -> None:
        self.bar.advance(self.task, n_bytes)

    def describe(self, description: str) -> None:
        self.bar.update(self.task, description=escape(description))


class FetchBars(FetchProgress):
    """A model fetch shown on stderr: a line per step, a bar (bytes, speed, time left) per transfer."""

    def note(self, message: str) -> None:
        stderr.print(escape(message), soft_wrap=True)

    def warn(self, message: str) -> None:
        warn(escape(message))

    @contextlib.contextmanager
    def transfer(self, description: str, total: Optional[int]) -> Iterator[Transfer]:
        columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   TimeRemainingColumn())
        with Progress(*columns, console=stderr) as bar:
            yield _BarTransfer(bar, bar.add_task(escape(description), total=total))
