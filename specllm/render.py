"""How generations look: the text stream on stdout, statistics on stderr."""

from __future__ import annotations

import codecs
import sys
import time
from typing import TextIO

from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .console import silence_stdout, stderr
from .drafting.base import MODEL_SOURCE, NO_SOURCE
from .drafting.crossvocab import SOURCE as CROSS_VOCAB_SOURCE
from .stats import SpecStats

LOW_ACCEPTANCE = 0.5
MIN_DRAFTED_FOR_WARNING = 16
LIVE_REFRESH_SECONDS = 0.1
PARTIAL_ROWS_SHOWN = 3  # of an unfinished line longer than the terminal is wide, the display shows its end


class TextStream:
    """Writes token bytes to stdout as text, flushed per token.

    A multi-byte UTF-8 character can be split across tokens: an incremental decoder holds the
    first bytes back until the character is complete. A closed pipe (`| head`) ends the stream
    quietly: `closed` turns true and the caller stops generating.
    """

    def __init__(self, out: TextIO | None = None):
        self._out = out
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.closed = False
        self.ends_with_newline = True

    @property
    def out(self) -> TextIO:
        # Looked up at write time: tests and the live display swap sys.stdout.
        return self._out or sys.stdout

    def write(self, piece: bytes, final: bool = False) -> None:
        text = self._decoder.decode(piece, final=final)
        if not text or self.closed:
            return
        try:
            self.out.write(text)
            self.out.flush()
        except BrokenPipeError:
            self.closed = True
            silence_stdout()
        else:
            self.ends_with_newline = text.endswith("\n")

    def finish(self) -> None:
        self.write(b"", final=True)


class SharedScreen:
    """Stands in for stdout while stdout and the live display are the same terminal.

    rich redraws its live display below the cursor, so text written straight to the terminal
    would be drawn over. Finished lines are printed above the display instead, and the line
    still being written is shown at the top of it (`partial`) until it is finished. Once the
    display is gone (`release`), the partial line and everything after it go to stdout as
    they are: the partial line must reach the screen exactly once.
    """

    def __init__(self, console: Console):
        self._console = console
        self.partial = ""
        self._released = False

    def write(self, text: str) -> int:
        if self._released:
            sys.stdout.write(text)
            return len(text)
        *lines, self.partial = (self.partial + text).split("\n")
        if lines:
            self._console.print(Text("\n".join(lines)), soft_wrap=True)
        return len(text)

    def flush(self) -> None:
        if self._released:
            sys.stdout.flush()
        # Before that the partial line is drawn with the display.

    def release(self) -> None:
        """The display is gone: print the unfinished line where the text goes, then pass through."""
        self._released = True
        partial, self.partial = self.partial, ""
        if partial:
            sys.stdout.write(partial)
            sys.stdout.flush()


class LivePanel:
    """What the live display shows, read when rich draws it (on a refresh, and after every line
    printed above it), so that it never shows an older partial line than the screen has."""

    def __init__(self, stats: SpecStats, screen: SharedScreen | None):
        self.stats = stats
        self.screen = screen

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        partial = self.screen.partial if self.screen else ""
        # A row's worth of slack: word wrapping may need one row more than the characters do.
        yield live_view(self.stats, _tail(partial, options.max_width * (PARTIAL_ROWS_SHOWN - 1)))


class LiveDisplay:
    """The statistics, redrawn on stderr while the text streams (only when stderr is a terminal)."""

    def __init__(self, stats: SpecStats):
        self.stats = stats
        self.screen = SharedScreen(stderr) if _is_terminal(sys.stdout) else None
        # No redirection: rich would send stdout's writes to the stderr console, text and all.
        self._live = Live(LivePanel(stats, self.screen), console=stderr, transient=True, auto_refresh=False,
                          redirect_stdout=False, redirect_stderr=False)
        self._last_refresh = 0.0

    @staticmethod
    def wanted(show_stats: bool) -> bool:
        return show_stats and stderr.is_terminal

    def __enter__(self) -> "LiveDisplay":
        self._live.start()
        return self

    def refresh(self) -> None:
        """Redraw, at most every LIVE_REFRESH_SECONDS: drawing is slower than a tiny model's token."""
        now = time.monotonic()
        if now - self._last_refresh > LIVE_REFRESH_SECONDS:
            self._live.refresh()
            self._last_refresh = now

    def __exit__(self, *exc) -> None:
        self._live.stop()  # transient: erases the display, partial line included
        if self.screen:
            self.screen.release()


def _tail(text: str, limit: int) -> str:
    """The end of a long unfinished line: the display must stay shorter than the terminal, or
    rich cannot erase all of it."""
    return text if len(text) <= limit else "…" + text[-(limit - 1):]


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


# Drafters that run a model: the ones a low acceptance indicts. Lookups (ngram, suffix, memory)
# cost next to nothing to propose, and auto mode prices their bets itself.
MODEL_SOURCES = (MODEL_SOURCE, CROSS_VOCAB_SOURCE)


def acceptance_warning(stats: SpecStats) -> str | None:
    """A warning when drafting mostly failed, naming the drafter to blame and what to try instead.

    In auto mode only the draft model is judged: a low acceptance of lookups there is the policy's
    own priced bets, which stop when they do not pay."""
    if stats.mode == "auto":
        drafted, accepted = stats.drafted_by(MODEL_SOURCES)
        if drafted < MIN_DRAFTED_FOR_WARNING or accepted / drafted >= LOW_ACCEPTANCE:
            return None
        return (f"the draft model's tokens were accepted {accepted / drafted:.0%} of the time ({accepted}/{drafted}): "
                f"it diverges from the target, so its rounds waste work (`specllm drafts` finds a better draft)")
    if stats.drafted < MIN_DRAFTED_FOR_WARNING or stats.acceptance_rate >= LOW_ACCEPTANCE:
        return None
    if stats.mode == "ngram":
        return (f"acceptance {stats.acceptance_rate:.0%} is below {LOW_ACCEPTANCE:.0%}: lookups rarely match this "
                f"text, so speculation wastes work (try --mode auto, which drafts only where it pays)")
    return (f"acceptance {stats.acceptance_rate:.0%} is below {LOW_ACCEPTANCE:.0%}: the draft diverges from the "
            f"target, so speculation wastes work (try a draft of the same family, a smaller -k, or --mode auto)")


def _fmt_rate(value: float) -> str:
    return f"{value:.0%}"


def stats_table(stats: SpecStats, *, title: str | None = None) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="dim")
    table.add_column()
    if title:
        table.title = title
    table.add_row("mode", f"{stats.mode}" + (f" (k<={stats.k})" if stats.k else ""))
    if stats.draft_lora:
        table.add_row("draft lora", stats.draft_lora)
    table.add_row("tokens", f"{stats.generated} generated in {stats.rounds} rounds, {stats.tokens_per_second:.1f} tok/s"
                  f" (prompt {stats.prompt_tokens} tok, {stats.prompt_tokens_per_second:.0f} tok/s)")
    if stats.drafted or stats.mode != "none":
        acc = Text(f"{_fmt_rate(stats.acceptance_rate)}  ({stats.accepted}/{stats.drafted} drafted tokens)")
        if acceptance_warning(stats):
            acc.stylize("yellow")
        table.add_row("acceptance", acc)
        table.add_row("tokens/round", f"{stats.mean_accepted_length:.2f} (mean accepted length incl. target token),"
                      f" {stats.mean_draft_length:.2f} drafted")
        per_pos = " ".join(_fmt_rate(r) for r in stats.per_position_acceptance[:12]) or "-"
        table.add_row("per position", per_pos)
        if len(stats.rounds_by_source) > 1 or NO_SOURCE not in stats.rounds_by_source:
            shares = ", ".join(f"{src} {n / max(stats.rounds, 1):.0%}" for src, n in sorted(stats.rounds_by_source.items()))
            table.add_row("rounds by drafter", shares)
    table.add_row("time", f"target {stats.target_seconds * 1e3:.0f} ms, draft {stats.draft_seconds * 1e3:.0f} ms, "
                  f"decode {stats.decode_seconds * 1e3:.0f} ms")
    return table


def live_view(stats: SpecStats, partial_line: str = "") -> Group:
    rule = Text("─" * 40, style="dim")
    return Group(Text(partial_line), rule, stats_table(stats)) if partial_line else Group(rule, stats_table(stats))
