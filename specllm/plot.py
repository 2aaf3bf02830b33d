"""Pictures of a bench run: a PNG (matplotlib, an optional extra) and text bars for the terminal.

Both show the overall rows: the "all" category when the prompts had several, else the only one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from rich.text import Text

from .bench import ALL_CATEGORIES, short_name
from .errors import UsageError

BAR_WIDTH = 24
MAX_LABEL = 34  # with the bar and the number, a line fits an 80-column terminal


def overall_rows(rows: Sequence[dict]) -> list[dict]:
    measured = [r for r in rows if not r.get("refused")]
    categories = {r["category"] for r in measured}
    keep = ALL_CATEGORIES if ALL_CATEGORIES in categories else next(iter(categories), None)
    return [r for r in measured if r["category"] == keep]


def series_label(row: dict) -> str:
    name = f"{row['mode']} {short_name(row['draft'])}" if row["draft"] else row["mode"]
    return f"{name} @{row['context_length']}" if row.get("context_length") else name


def _sweeps(rows: Sequence[dict]) -> dict[str, list[dict]]:
    """Rows of each k sweep (n-gram, each draft, per context length), sorted by k."""
    out: dict[str, list[dict]] = {}
    for row in rows:
        if row["mode"] in ("ngram", "draft"):
            out.setdefault(series_label(row), []).append(row)
    return {label: sorted(series, key=lambda r: r["k"]) for label, series in out.items()}


# -- PNG ----------------------------------------------------------------------------------------


def require_matplotlib() -> None:
    """Fail before a long bench, not after it, when --plot cannot be honoured."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("--plot needs matplotlib, which is not installed",
                         hint="pip install 'specllm[plot]' (or pip install matplotlib)") from None


def write_png(rows: Sequence[dict], path: Path, *, title: Optional[str] = None) -> None:
    """Acceptance rate and tokens/s against k, one line per drafter; plain decoding (and auto) as
    horizontal lines."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    rows = overall_rows(rows)
    fig, (ax_acc, ax_tps) = plt.subplots(1, 2, figsize=(11, 4.5))
    for label, series in _sweeps(rows).items():
        ks = [r["k"] for r in series]
        line, = ax_acc.plot(ks, [r["acceptance_rate"] for r in series], marker="o", label=label)
        ax_tps.plot(ks, [r["tokens_per_second"] for r in series], marker="o", label=label, color=line.get_color())
    one_length = len({r["context_length"] for r in rows}) <= 1
    for row in rows:
        # One baseline: gray; one per context length: told apart by colour.
        if row["mode"] == "none":
            ax_tps.axhline(row["tokens_per_second"], color="gray" if one_length else None, linestyle="--",
                           label=series_label(row) + " (plain)")
        elif row["mode"] == "auto":
            ax_tps.axhline(row["tokens_per_second"], color="black" if one_length else None, linestyle=":",
                           label=series_label(row))
    all_ks = sorted({r["k"] for r in rows if r["mode"] in ("ngram", "draft")})
    for ax in (ax_acc, ax_tps):
        ax.set_xlabel("k (tokens drafted per round)")
        if all_ks:
            ax.set_xticks(all_ks)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_acc.set_ylabel("acceptance rate")
    ax_acc.set_ylim(0, 1.05)
    ax_acc.set_title("acceptance")
    ax_tps.set_ylabel("tokens / s")
    ax_tps.set_ylim(bottom=0)
    ax_tps.set_title("decode speed")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror}") from None
    finally:
        plt.close(fig)


# -- terminal -----------------------------------------------------------------------------------


def _bar(value: float, top: float) -> str:
    cells = round(BAR_WIDTH * value / top) if top > 0 else 0
    return "█" * cells + "·" * (BAR_WIDTH - cells)


def terminal_plot(rows: Sequence[dict]) -> Text:
    """Text bars: tokens/s of every configuration, then acceptance of each k sweep."""
    rows = overall_rows(rows)
    out = Text()
    if not rows:
        return out
    width = max(len(_row_label(r)) for r in rows)
    top = max(r["tokens_per_second"] for r in rows)
    out.append("tokens/s\n", style="bold")
    for row in rows:
        style = "green" if row["best"] else ("dim" if row["mode"] == "none" else "")
        out.append(f"  {_row_label(row):<{width}} ")
        out.append(_bar(row["tokens_per_second"], top), style=style)
        out.append(f" {row['tokens_per_second']:7.1f}\n")
    sweeps = _sweeps(rows)
    if sweeps:
        out.append("acceptance by k\n", style="bold")
        for label, series in sweeps.items():
            out.append(f"  {_fit(label, MAX_LABEL)}\n")
            for row in series:
                out.append(f"    k={row['k']:<3} ")
                out.append(_bar(row["acceptance_rate"], 1.0), style="cyan")
                out.append(f" {row['acceptance_rate']:6.0%}\n")
    return out


def _row_label(row: dict) -> str:
    label = _fit(series_label(row), MAX_LABEL - 4 if row["mode"] in ("ngram", "draft") else MAX_LABEL)
    return f"{label} k={row['k']}" if row["mode"] in ("ngram", "draft") else label


def _fit(label: str, width: int) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"
