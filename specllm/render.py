"""How generations look: the text stream on stdout, statistics on stderr."""

from __future__ import annotations

import codecs
import os
import sys
from typing import TextIO

from rich.console import Group
from rich.table import Table
from rich.text import Text

from .stats import SpecStats

LOW_ACCEPTANCE = 0.5
MIN_DRAFTED_FOR_WARNING = 16


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
        # Looked up at write time so that rich's Live can redirect stdout above its display.
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
            _silence_stdout()
        else:
            self.ends_with_newline = text.endswith("\n")

    def finish(self) -> None:
        self.write(b"", final=True)


def _silence_stdout() -> None:
    """After EPIPE, point stdout at /dev/null so Python's exit flush does not raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def acceptance_warning(stats: SpecStats) -> str | None:
    if stats.drafted >= MIN_DRAFTED_FOR_WARNING and stats.acceptance_rate < LOW_ACCEPTANCE:
        return (
            f"acceptance {stats.acceptance_rate:.0%} is below {LOW_ACCEPTANCE:.0%}: the draft diverges from the "
            "target, so speculation wastes work (try a draft of the same family, a smaller -k, or --mode auto)"
        )
    return None


def _fmt_rate(value: float) -> str:
    return f"{value:.0%}"


def stats_table(stats: SpecStats, *, title: str | None = None) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="dim")
    table.add_column()
    if title:
        table.title = title
    table.add_row("mode", f"{stats.mode}" + (f" (k<={stats.k})" if stats.k else ""))
    table.add_row("tokens", f"{stats.generated} generated in {stats.rounds} rounds, {stats.tokens_per_second:.1f} tok/s"
                  f" (prompt {stats.prompt_tokens} tok, {stats.prompt_tokens_per_second:.0f} tok/s)")
    if stats.drafted or stats.mode != "none":
        acc = Text(f"{_fmt_rate(stats.acceptance_rate)}  ({stats.accepted}/{stats.drafted} drafted tokens)")
        if stats.drafted >= MIN_DRAFTED_FOR_WARNING and stats.acceptance_rate < LOW_ACCEPTANCE:
            acc.stylize("yellow")
        table.add_row("acceptance", acc)
        table.add_row("tokens/round", f"{stats.mean_accepted_length:.2f} (mean accepted length incl. target token),"
                      f" {stats.mean_draft_length:.2f} drafted")
        per_pos = " ".join(_fmt_rate(r) for r in stats.per_position_acceptance[:12]) or "-"
        table.add_row("per position", per_pos)
        if len(stats.rounds_by_source) > 1 or "none" not in stats.rounds_by_source:
            shares = ", ".join(f"{src} {n / max(stats.rounds, 1):.0%}" for src, n in sorted(stats.rounds_by_source.items()))
            table.add_row("rounds by drafter", shares)
    table.add_row("time", f"target {stats.target_seconds * 1e3:.0f} ms, draft {stats.draft_seconds * 1e3:.0f} ms, "
                  f"decode {stats.decode_seconds * 1e3:.0f} ms")
    return table


def live_view(stats: SpecStats) -> Group:
    return Group(Text("─" * 40, style="dim"), stats_table(stats))
