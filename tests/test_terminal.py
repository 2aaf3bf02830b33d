"""What a person sees in a terminal: `specllm generate` with its live panel, run in a pseudo-terminal
and drawn by a terminal emulator (pyte), so that the tests check the screen, not the bytes.

The live panel draws on stderr while the text goes to stdout; both reach one screen. Each line
of text must be on it exactly once when the run ends, the unfinished last line included, with
the panel gone and the summary below the text.
"""

from __future__ import annotations

import fcntl
import io
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from rich.console import Console

from helpers import read_pty_until_exit
from specllm.render import PARTIAL_ROWS_SHOWN, LivePanel, SharedScreen, acceptance_warning
from specllm.stats import SpecStats

pyte = pytest.importorskip("pyte", reason="the terminal tests need pyte (pip install 'specllm[test]')")

COLUMNS, ROWS = 100, 60
PROMPT = "the cat said that it was for you and the"
LIVE_RULE = "─" * 40  # drawn by the live panel only, not by the final summary
# Settings a user's environment could bring in, and variables that change how rich sees a terminal.
DROPPED_ENV = ("SPECLLM_MODEL", "SPECLLM_DRAFT_MODEL", "SPECLLM_MODE", "SPECLLM_CTX_SIZE", "SPECLLM_N_GPU_LAYERS",
               "SPECLLM_MODELS", "FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS", "LINES")


def environment(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
    env.update(SPECLLM_CACHE=str(tmp_path / "cache"), XDG_CONFIG_HOME=str(tmp_path / "config"),
               TERM="xterm-256color")
    return env


def generate_command(tiny, *args: str) -> list[str]:
    return [sys.executable, "-m", "specllm", "generate", "-t", "1", "-m", str(tiny.target), "--temp", "0", *args,
            PROMPT]


def run_in_terminal(command: list[str], env: dict[str, str], timeout: float = 120) -> tuple[int, str, list[str]]:
    """(exit code, everything written, the screen's lines at the end) of a command whose stdin,
    stdout and stderr are one COLUMNS x ROWS terminal."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
    proc = subprocess.Popen(command, stdin=terminal, stdout=terminal, stderr=terminal, env=env,
                            start_new_session=True)
    os.close(terminal)
    try:
        data = read_pty_until_exit(proc, controller, timeout)
        code = proc.returncode
    finally:
        os.close(controller)
    screen = pyte.Screen(COLUMNS, ROWS)
    pyte.ByteStream(screen).feed(data)
    lines = [line.rstrip() for line in screen.display]
    while lines and not lines[-1]:
        lines.pop()
    return code, data.decode("utf-8", "replace"), lines


def screen_lines(text: str) -> list[str]:
    """How `text` fills a COLUMNS-wide terminal: a line per row, long lines wrapped."""
    rows = []
    for line in text.split("\n"):
        rows += [line[i:i + COLUMNS] for i in range(0, len(line), COLUMNS)] or [""]
    return [row.rstrip() for row in rows]


def piped_text(tiny, tmp_path: Path, *args: str) -> str:
    """The same generation's text, with stdout a pipe: what the screen must show."""
    proc = subprocess.run(generate_command(tiny, *args, "--no-stats"), capture_output=True,
                          env=environment(tmp_path), timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()


def check_screen(tiny, tmp_path: Path, *args: str) -> str:
    text = piped_text(tiny, tmp_path, *args)
    code, written, lines = run_in_terminal(generate_command(tiny, *args), environment(tmp_path))
    assert code == 0, written
    assert LIVE_RULE in written  # the live panel was drawn (and must be gone now)
    assert not any(LIVE_RULE in line for line in lines), "\n".join(lines)

    expected = screen_lines(text.rstrip("\n"))
    # The text once (after any warnings about the models), then the summary right below it.
    starts = [i for i in range(len(lines)) if lines[i:i + len(expected)] == expected]
    assert len(starts) == 1, "\n".join(lines)
    end = starts[0] + len(expected)
    assert end < len(lines) and lines[end].split()[:1] == ["mode"], "\n".join(lines)
    assert sum("generated in" in line for line in lines) == 1
    return text


def test_an_unfinished_last_line_is_on_the_screen_once(tiny, tmp_path):
    """The issue's glitch: generation stopped by -n in mid-line showed that line twice
    (`In thisIn this`) just above the summary."""
    text = check_screen(tiny, tmp_path, "-md", str(tiny.draft_copy), "--mode", "draft", "-n", "20")
    assert text.strip() and not text.endswith("\n")  # the case under test: output ends mid-line


def test_many_lines_and_plain_decoding_show_each_line_once(tiny, tmp_path):
    text = check_screen(tiny, tmp_path, "--mode", "none", "-n", "120")
    assert text.strip()


# -- the pieces, without a terminal ---------------------------------------------------------------


def test_the_screen_prints_finished_lines_above_the_panel_and_the_rest_once_released(capsys):
    console = Console(file=io.StringIO(), width=COLUMNS, force_terminal=True, color_system=None)
    screen = SharedScreen(console)
    screen.write("first line\nsecond")
    screen.write(" half")
    assert console.file.getvalue() == "first line\n" and screen.partial == "second half"
    screen.release()
    screen.write("\n")  # what generate writes after the panel closes, so the summary starts a line
    assert capsys.readouterr().out == "second half\n"
    assert screen.partial == "" and console.file.getvalue() == "first line\n"


def test_the_panel_shows_the_end_of_a_long_unfinished_line():
    """rich can erase only what fits on the screen: the panel stays a few rows high."""
    def panel_rows(partial: str) -> list[str]:
        screen = SharedScreen(Console(file=io.StringIO()))
        screen.write(partial)
        console = Console(file=io.StringIO(), width=40, force_terminal=True, color_system=None)
        console.print(LivePanel(SpecStats(mode="ngram", k=4), screen))
        return console.file.getvalue().splitlines()

    without, short, long = panel_rows(""), panel_rows("def add("), panel_rows("word " * 400)
    assert short[0] == "def add(" and len(short) == len(without) + 1
    assert long[0].startswith("…") and long[-len(without):] == without
    assert len(long) - len(without) <= PARTIAL_ROWS_SHOWN


def _stats(mode: str, *rounds: tuple[str, int, int, int]) -> SpecStats:
    stats = SpecStats(mode=mode, k=8)
    for shape in rounds:
        stats.record_round(*shape)
    return stats


def test_the_low_acceptance_warning_blames_the_drafter_that_drafted():
    # Auto mode: weak lookups are its own priced bets (no warning); a weak draft model is named.
    lookups_only = _stats("auto", *[("suffix", 8, 1, 2)] * 4)
    assert acceptance_warning(lookups_only) is None
    weak_model = _stats("auto", *[("suffix", 8, 8, 9)] * 4, *[("model", 4, 1, 2)] * 5)
    warning = acceptance_warning(weak_model)
    assert "draft model" in warning and "5/20" in warning and "--mode auto" not in warning
    good_model = _stats("auto", *[("suffix", 8, 0, 1)] * 4, *[("model", 4, 3, 4)] * 5)
    assert acceptance_warning(good_model) is None
    # Lookup mode: the lookups are to blame, and auto mode is the remedy; draft mode: the model.
    assert "lookups rarely match" in acceptance_warning(_stats("ngram", *[("ngram", 8, 1, 2)] * 4))
    assert "draft diverges" in acceptance_warning(_stats("draft", *[("model", 8, 1, 2)] * 4))
    assert acceptance_warning(_stats("draft", *[("model", 8, 7, 8)] * 4)) is None
