"""compare-llama-cpp's results: per-category means, paired ratios, the table and the JSON document.

A category's value is the mean over its prompts; "overall" is the mean over all prompts (one
per prompt format when raw and chat prompts ran together). Ratios are taken over the prompts
that both sides of the ratio ran:
    none/plain   specllm none  / llama.cpp plain    (Python overhead of plain decoding; 1.00 = none)
    auto/none    specllm auto  / specllm none       (what auto mode gains; >= 1 means never slower)
    auto/best    specllm auto  / the fastest llama.cpp speculative configuration of that category
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Optional

from .programs import Config, Run, Settings
from .util import log

RATIOS = (  # (column, numerator, denominator; None = the best llama.cpp speculative configuration)
    ("none/plain", "specllm-none", "llama-plain"),
    ("auto/none", "specllm-auto", "specllm-none"),
    ("auto/best", "specllm-auto", None),
)


def mean(values: list[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None


def rates_by_prompt(runs: list[Run], config: str) -> dict[str, float]:
    return {r.prompt: r.tokens_per_second for r in runs if r.config == config}


def paired_ratio(runs: list[Run], numerator: str, denominator: str) -> Optional[float]:
    """mean(numerator) / mean(denominator) over the prompts both ran."""
    a, b = rates_by_prompt(runs, numerator), rates_by_prompt(runs, denominator)
    common = [p for p in a if p in b]
    top, bottom = mean([a[p] for p in common]), mean([b[p] for p in common])
    return top / bottom if top is not None and bottom else None


def overall_groups(runs: list[Run], formats: dict[str, str]) -> list[tuple[str, list[Run]]]:
    """'overall' over every run, or one per prompt format when several ran (`formats`: prompt -> format)."""
    names = list(dict.fromkeys(formats.get(r.prompt, "raw") for r in runs))
    if len(names) <= 1:
        return [("overall", runs)]
    return [(f"overall {name}", [r for r in runs if formats.get(r.prompt, "raw") == name]) for name in names]


def summarize(runs: list[Run], configs: list[Config], formats: Optional[dict[str, str]] = None) -> list[dict]:
    categories = list(dict.fromkeys(r.category for r in runs))
    groups = [(c, [r for r in runs if r.category == c]) for c in categories]
    if len(categories) > 1:
        groups += overall_groups(runs, formats or {})
    speculative = [c.name for c in configs if c.llama_speculative]
    rows = []
    for category, group in groups:
        rates = {c.name: mean(list(rates_by_prompt(group, c.name).values())) for c in configs}
        row = {"category": category, "prompts": len({r.prompt for r in group}), "tokens_per_second": rates,
               "ratios": {}}
        for column, numerator, denominator in RATIOS:
            if denominator is None:
                ratios = {s: paired_ratio(group, numerator, s) for s in speculative}
                ratios = {s: v for s, v in ratios.items() if v is not None}
                best = min(ratios, key=ratios.get) if ratios else None  # the fastest one relative to auto
                row["best_llama_speculative"] = best
                row["ratios"][column] = ratios.get(best)
            else:
                row["ratios"][column] = paired_ratio(group, numerator, denominator)
        rows.append(row)
    return rows


def prompt_token_mismatches(runs: list[Run]) -> list[str]:
    """Prompts whose token counts differ between programs: a sign the texts were not the same."""
    counts: dict[str, set[int]] = {}
    for r in runs:
        if r.prompt_tokens is not None:
            counts.setdefault(r.prompt, set()).add(int(r.prompt_tokens))
    return [f"{p} ({'/'.join(map(str, sorted(c)))})" for p, c in counts.items() if len(c) > 1]


def table(rows: list[dict], configs: list[Config]) -> str:
    ratio_columns = [c for c, numerator, denominator in RATIOS
                     if any(r["ratios"][c] is not None for r in rows)]
    groups = [("", ["category", "n"])]
    for tool in ("llama.cpp", "specllm"):
        labels = [c.label for c in configs if c.tool == tool]
        if labels:
            groups.append((tool, labels))
    if ratio_columns:
        groups.append(("ratios", ratio_columns))
    header = [label for _, labels in groups for label in labels]
    body = []
    for row in rows:
        cells = [row["category"], str(row["prompts"])]
        cells += [fmt(row["tokens_per_second"][c.name], "{:.2f}") for c in configs]
        cells += [fmt(row["ratios"][c], "{:.2f}x") for c in ratio_columns]
        body.append(cells)
    widths = [max(len(header[i]), *(len(cells[i]) for cells in body)) for i in range(len(header))]
    top, column = [], 0
    for title, labels in groups:  # the tool's name above its columns, which widen to fit it
        last = column + len(labels) - 1
        widths[last] += max(0, len(title) - (sum(widths[column:last + 1]) + 2 * (len(labels) - 1)))
        top.append(title.ljust(sum(widths[column:last + 1]) + 2 * (len(labels) - 1)))
        column = last + 1
    lines = ["  ".join(top).rstrip()]
    for cells in [header, *body]:
        lines.append("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(cells, widths))).rstrip())
    lines.insert(2, "-" * len(lines[1]))
    return "\n".join(lines)


def fmt(value: Optional[float], pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def report(runs: list[Run], configs: list[Config], settings: Settings, *, as_json: bool, version: str,
           stopped: Optional[str], formats: Optional[dict[str, str]] = None) -> str:
    """The table (or the JSON document); `stopped` says why the measurement ended early, if it did.
    Returns what goes to stdout; a warning about prompt token counts goes to stderr."""
    rows = summarize(runs, configs, formats)
    mismatches = prompt_token_mismatches(runs)
    if as_json:
        return json.dumps({"llama_cpp_python": version, "settings": asdict(settings),
                           "configs": [c.name for c in configs], "stopped": stopped,
                           "prompt_token_mismatches": mismatches, "summary": rows,
                           "runs": [asdict(r) for r in runs]}, indent=2)
    if not runs:
        return ""
    lines = [table(rows, configs), ""]
    lines.append(f"decode tokens/s, mean over prompts; {settings.n_predict} new tokens (specllm: as many as llama.cpp's "
                 f"speculative runs emitted, unless --no-equal-tokens), greedy, {settings.threads} "
                 f"threads, -ngl {settings.n_gpu_layers}; {settings.prompt_format} prompts; llama.cpp from "
                 f"llama-cpp-python {version}")
    lines.append("k=K: draft model, K tokens per round; ngram-s / ngram-m: llama.cpp's --spec-type ngram-simple / "
                 "ngram-mod")
    best = [f"{r['category']}: {r['best_llama_speculative']}" for r in rows if r.get("best_llama_speculative")]
    if best:
        lines.append("auto/best is against the fastest llama.cpp speculative configuration: " + ", ".join(best))
    if mismatches:
        log("warning: the programs saw different prompt token counts for " + ", ".join(mismatches))
    if stopped:
        lines.append(f"(stopped early by {stopped}: only what was measured before it)")
    return "\n".join(lines)
