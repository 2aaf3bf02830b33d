"""`specllm bench`: sweep drafters and k against plain decoding, on this machine, for these prompts."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional, Sequence

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from .. import llama
from ..bench import ALL_CATEGORIES, BenchResult, BenchSettings, result_json, run_bench, short_name, write_csv
from ..config import DEFAULT_CTX_SIZE, MAX_DRAFT, MODES, check_positive, check_sampling, check_seed, engine_config
from ..console import FetchBars, reported_errors, stderr, warn
from ..errors import UsageError
from ..prompts import BUILTIN_PROMPTS, load_prompts, select_prompts
from ..options import (
    FLAG, IO, MODELS, SAMPLING, SPECULATION, CrossVocabOpt, CtxSizeOpt, DraftLoraOpt, GpuLayersOpt, BenchMaxTokensOpt,
    ModelOpt, NgramOpt, RpcOpt, SeedOpt, TempOpt, ThreadsOpt, VerboseOpt,
)
from ..sampling import SamplingParams

TABLE_WIDTH = 150
PER_POSITION_SHOWN = 6

DraftModelsOpt = Annotated[
    Optional[list[str]],
    typer.Option("-md", "--draft-model", help="Draft GGUF (as -m: a path, a models.toml or local model name); repeat to compare several.",
                 show_default=False, metavar="GGUF", rich_help_panel=MODELS),
]


def bench(
    model: ModelOpt = None,
    draft_models: DraftModelsOpt = None,
    draft_lora: DraftLoraOpt = None,
    ks: Annotated[str, typer.Option("-k", "--k", help="Draft lengths to sweep, comma-separated.", metavar="K,K,..",
                                    rich_help_panel=SPECULATION)] = "2,3,4,5,6,7,8",
    max_tokens: BenchMaxTokensOpt = 128,
    prompts: Annotated[Optional[Path], typer.Option(
        "--prompts", help='Prompt file: text blocks separated by blank lines, or JSONL with "prompt" or Spec-Bench '
        '"turns" (first turn) and optional "category". Default: a small built-in set.', show_default=False,
        metavar="FILE", rich_help_panel=IO)] = None,
    category: Annotated[Optional[str], typer.Option(
        "--category", help="Only prompts of these categories (comma-separated).", show_default=False,
        metavar="NAMES", rich_help_panel=IO)] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="At most N prompts.", show_default=False,
                                                 metavar="N", rich_help_panel=IO)] = None,
    context_lengths: Annotated[Optional[str], typer.Option(
        "--context-lengths", help="Pad prompts to about these token lengths (e.g. 256,1024,2048); report each.",
        show_default=False, metavar="N,N,..", rich_help_panel=IO)] = None,
    modes: Annotated[str, typer.Option(
        "--modes", help="Which of none,ngram,draft,auto to run; the baseline (none) always runs.", metavar="MODES",
        rich_help_panel=SPECULATION)] = ",".join(MODES),
    temp: TempOpt = 0.0,
    seed: SeedOpt = None,
    ignore_eos: Annotated[bool, typer.Option(
        "--ignore-eos", help="Never stop at end-of-generation: every run generates -n tokens.", metavar=FLAG,
        rich_help_panel=SAMPLING)] = False,
    chat: Annotated[bool, typer.Option(
        "--chat", help="Wrap each prompt in the target's chat template, as generate --chat does (Spec-Bench "
        "questions are chat prompts). The report shows the template.", metavar=FLAG, rich_help_panel=IO)] = False,
    ngram: NgramOpt = None,
    cross_vocab: CrossVocabOpt = False,
    ctx_size: CtxSizeOpt = DEFAULT_CTX_SIZE,
    threads: ThreadsOpt = None,
    n_gpu_layers: GpuLayersOpt = 0,
    rpc: RpcOpt = None,
    json_: Annotated[bool, typer.Option("--json", help="Print one JSON document with a `rows` list.", metavar=FLAG,
                                        rich_help_panel=IO)] = False,
    csv_path: Annotated[Optional[Path], typer.Option("--csv", help="Write the rows to this CSV file.",
                                                     show_default=False, metavar="FILE", rich_help_panel=IO)] = None,
    plot_path: Annotated[Optional[Path], typer.Option(
        "--plot", help="Draw acceptance and tokens/s against k to this PNG (needs matplotlib).", show_default=False,
        metavar="FILE.png", rich_help_panel=IO)] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Measure tokens/s and acceptance of each drafter and k against plain decoding, with a cost model."""
    with reported_errors(verbose):
        llama.set_verbose(verbose)
        if plot_path is not None:
            from ..plot import require_matplotlib

            require_matplotlib()
        settings, prompt_set = _settings(
            model=model, draft_models=draft_models or [], ks=ks, max_tokens=max_tokens, prompts=prompts,
            category=category, limit=limit, context_lengths=context_lengths, modes=modes, temp=temp, seed=seed,
            ignore_eos=ignore_eos, chat=chat, ngram=ngram, cross_vocab=cross_vocab, ctx_size=ctx_size, threads=threads,
            n_gpu_layers=n_gpu_layers, rpc=rpc, draft_lora=draft_lora,
        )
        result = _run_with_progress(settings, prompt_set)
        for message in result.warnings:
            warn(escape(message))
        _report(result, json_=json_, csv_path=csv_path, plot_path=plot_path)


def _settings(*, model, draft_models, ks, max_tokens, prompts, category, limit, context_lengths, modes, temp, seed,
              ignore_eos, chat, ngram, cross_vocab, ctx_size, threads, n_gpu_layers, rpc,
              draft_lora=None) -> tuple[BenchSettings, list]:
    if max_tokens < 1:
        raise UsageError(f"--max-tokens must be >= 1, got {max_tokens}")
    check_positive("--limit", limit)
    check_sampling(temp, 0, 1.0, 0.0)
    check_seed(seed)
    k_values = parse_int_list(ks, "--k", low=1, high=MAX_DRAFT)
    lengths = parse_int_list(context_lengths, "--context-lengths", low=16, high=1 << 20) if context_lengths else ()
    mode_list = parse_modes(modes)
    prompt_set = load_prompts(prompts) if prompts is not None else list(BUILTIN_PROMPTS)
    categories = [c.strip() for c in category.split(",") if c.strip()] if category else None
    prompt_set = select_prompts(prompt_set, categories, limit)
    # Resolves registry names (fetching on first use) and checks the shared options; with no -m the
    # default pair's target, and its draft when no -md is given.
    config = engine_config(
        model=model, draft_model=draft_models[0] if draft_models else None, mode=None, k=None, ngram=ngram,
        ctx_size=ctx_size, draft_ctx_size=None, threads=threads, draft_threads=None, n_gpu_layers=n_gpu_layers,
        draft_n_gpu_layers=None, cross_vocab=cross_vocab, rpc=rpc, progress=FetchBars(), draft_lora=draft_lora,
    )
    from ..registry import resolve_model

    drafts = ([config.draft] if config.draft else []) + [str(resolve_model(d, progress=FetchBars()))
                                                         for d in draft_models[1:]]
    settings = BenchSettings(
        engine=config, drafts=tuple(drafts), ks=k_values, modes=mode_list, max_tokens=max_tokens,
        params=SamplingParams(temperature=temp), seed=seed, ignore_eos=ignore_eos, chat=chat, context_lengths=lengths,
    )
    return settings, prompt_set


def parse_int_list(text: str, option: str, *, low: int, high: int) -> tuple[int, ...]:
    """'2,4,8' -> (2, 4, 8): sorted, without repeats, each in [low, high]."""
    try:
        values = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise UsageError(f"{option} takes comma-separated whole numbers like 2,4,8, got {text!r}") from None
    if not values:
        raise UsageError(f"{option} needs at least one value")
    if values[0] < low or values[-1] > high:
        raise UsageError(f"{option} values must be between {low} and {high}, got {text!r}")
    return tuple(values)


def parse_modes(text: str) -> tuple[str, ...]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise UsageError(f"--modes takes some of {', '.join(MODES)}, got {', '.join(unknown)}")
    return tuple(m for m in MODES if m in modes or m == "none")  # the baseline always runs


def _run_with_progress(settings: BenchSettings, prompt_set: list) -> BenchResult:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=stderr, transient=True) as progress:
        task = progress.add_task("loading models", total=None)

        def update(what: str, done: int, total: int) -> None:
            progress.update(task, description=escape(what), completed=done, total=total)

        return run_bench(settings, prompt_set, update)


def _report(result: BenchResult, *, json_: bool, csv_path: Optional[Path], plot_path: Optional[Path]) -> None:
    # The tables are the result, so stdout; with --json stdout is the JSON document's.
    out = Console(stderr=json_, highlight=False)
    if not out.is_terminal:
        out.width = max(out.width, TABLE_WIDTH)  # a file or pipe gets every column in full
    out.print(header(result), soft_wrap=True)
    for table in result_tables(result):
        out.print(table)
    for name, reason in result.refused.items():
        out.print(f"[yellow]refused[/] {escape(name)}: {escape(reason)}", soft_wrap=True)
    for line in best_k_lines(result):
        out.print(line, soft_wrap=True)

    from ..plot import terminal_plot, write_png

    stderr.print(terminal_plot(result.rows))
    if csv_path is not None:
        write_csv(result.rows, csv_path)
    if plot_path is not None:
        write_png(result.rows, plot_path, title=f"{result.target}: acceptance and speed against k")
        stderr.print(f"[dim]plot written to {escape(str(plot_path))}[/]")
    if json_:
        sys.stdout.write(result_json(result) + "\n")
        sys.stdout.flush()


def header(result: BenchResult) -> Text:
    """What was run: the target and how its prompts were written (the chat template in effect)."""
    s = result.settings
    line = Text.assemble(("target ", "dim"), result.target, ("  ·  ", "dim"), f"{s.max_tokens} tokens a run",
                         ("  ·  ", "dim"), f"temperature {s.params.temperature:g}", ("  ·  prompts ", "dim"))
    if result.chat_template is None:
        line.append("as raw text (no chat template; --chat applies the target's)")
    else:
        line.append("in the chat template ")
        line.append(template_line(result.chat_template), style="cyan")
    return line


def template_line(template: str) -> str:
    """The template on one line, newlines shown as \\n; {prompt} stands for each prompt."""
    return template.replace("\\", "\\\\").replace("\n", "\\n")


def _percent(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.0%}"


def _times(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}×"


def _error(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:+.0%}"


def result_tables(result: BenchResult) -> list[Table]:
    """One table per category (and context length), the fastest configuration highlighted."""
    tables: list[Table] = []
    groups: dict[tuple, list[dict]] = {}
    for row in result.rows:
        if not row["refused"]:
            groups.setdefault((row["category"], row["context_length"]), []).append(row)
    for (category, length), rows in groups.items():
        title = "all prompts" if category == ALL_CATEGORIES else f"category {category}"
        if length:
            title += f", context ~{length} tokens"
        table = Table(title=f"{escape(title)} ({rows[0]['prompts']} prompts, {rows[0]['prompt_tokens']:.0f} prompt "
                      "tokens on average)", title_justify="left")
        for name, justify in (("mode", "left"), ("draft", "left"), ("k", "right"), ("tok/s", "right"),
                              ("speedup", "right"), ("predicted", "right"), ("error", "right"),
                              ("acceptance", "right"), ("tok/round", "right"), ("per position %", "left"),
                              ("tokens", "right")):
            table.add_column(name, justify=justify)
        for row in rows:
            per_position = " ".join(f"{100 * p:.0f}" for p in row["per_position_acceptance"][:PER_POSITION_SHOWN])
            drafts = row["mode"] != "none"
            table.add_row(
                row["mode"], escape(short_name(row["draft"])) or "-", str(row["k"]) if drafts else "-",
                f"{row['tokens_per_second']:.1f}", _times(row["speedup"]), _times(row["predicted_speedup"]),
                _error(row["prediction_error"]), _percent(row["acceptance_rate"]) if drafts else "-",
                f"{row['mean_accepted_length']:.2f}", per_position or "-", str(row["tokens"]),
                style="bold green" if row["best"] else None,
            )
        costs = result.costs.get((category, length))
        if costs is not None:
            table.caption = escape(_costs_caption(costs.to_dict()))
            table.caption_justify = "left"
        tables.append(table)
    return tables


def _costs_caption(costs: dict) -> str:
    target = ", ".join(f"{n}:{ms:.1f}" for n, ms in costs["target_ms"].items())
    drafts = ", ".join(f"{short_name(name)} {ms:.1f} ms" for name, ms in costs["draft_ms_per_token"].items())
    return (f"at ~{costs['depth']} cached tokens: target ms per decode by batch size {target}"
            + (f"; draft per token: {drafts}" if drafts else "")
            + f"; the runs' decodes took {costs['speed']:.2f}× that, and the loop {costs['overhead_ms_per_round']:.2f} ms "
            "a round. error = predicted / measured - 1")


def best_k_lines(result: BenchResult) -> Sequence[str]:
    lines = []
    for entry in result.best_k:
        where = "all prompts" if entry["category"] == ALL_CATEGORIES else entry["category"]
        if entry["context_length"]:
            where += f" @~{entry['context_length']} tokens"
        verdict = (f"k={entry['k']}, predicted {entry['predicted_speedup']:.2f}×" if entry["k"]
                   else "no drafting (speculation does not pay here)")
        lines.append(f"cost model's best k for {escape(short_name(entry['draft']))} ({escape(where)}): {verdict}")
    return lines
