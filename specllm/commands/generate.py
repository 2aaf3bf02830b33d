"""`specllm generate`: stream text to stdout, statistics to stderr."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from typing import Annotated, Optional

import typer
from rich.live import Live

from .. import llama
from ..console import EXIT_INTERRUPTED, reported_errors, stderr, warn
from ..engine import Engine, Request, with_overrides
from ..errors import SpecllmError, UsageError
from ..options import (
    CrossVocabOpt, CtxSizeOpt, DraftCtxSizeOpt, DraftGpuLayersOpt, DraftMaxOpt, DraftModelOpt, DraftThreadsOpt,
    GpuLayersOpt, MaxTokensOpt, MinPOpt, ModelOpt, ModeOpt, NgramOpt, SeedOpt, TempOpt, ThreadsOpt, TopKOpt,
    TopPOpt, VerboseOpt, check_positive, check_sampling,
)
from ..render import TextStream, acceptance_warning, live_view, stats_table
from ..sampling import SamplingParams
from ..speculative import Generation
from .common import check_text_is_utf8, engine_config, read_stdin_text, stdin_is_terminal

LIVE_REFRESH_SECONDS = 0.1


def generate(
    prompt: Annotated[Optional[str], typer.Argument(help="The prompt; '-' or piped stdin reads standard input.",
                                                    show_default=False)] = None,
    model: ModelOpt = None,
    draft_model: DraftModelOpt = None,
    mode: ModeOpt = None,
    draft_max: DraftMaxOpt = None,
    ngram: NgramOpt = None,
    max_tokens: MaxTokensOpt = 256,
    ctx_size: CtxSizeOpt = 4096,
    draft_ctx_size: DraftCtxSizeOpt = None,
    threads: ThreadsOpt = None,
    draft_threads: DraftThreadsOpt = None,
    n_gpu_layers: GpuLayersOpt = 0,
    draft_n_gpu_layers: DraftGpuLayersOpt = None,
    temp: TempOpt = 0.0,
    top_k: TopKOpt = 0,
    top_p: TopPOpt = 1.0,
    min_p: MinPOpt = 0.0,
    seed: SeedOpt = None,
    chat: Annotated[bool, typer.Option("--chat", help="Wrap the prompt in the model's chat template.")] = False,
    ignore_eos: Annotated[bool, typer.Option("--ignore-eos", help="Never stop at end-of-generation tokens.")] = False,
    truncate: Annotated[bool, typer.Option("--truncate", help="Keep the end of a prompt too long for the context.")] = False,
    cross_vocab: CrossVocabOpt = False,
    json_: Annotated[bool, typer.Option("--json", help="Print one JSON object (text, tokens, stats) instead of streaming.")] = False,
    jsonl: Annotated[bool, typer.Option("--jsonl", help="Read one JSON object per stdin line, write one result per line.")] = False,
    no_stats: Annotated[bool, typer.Option("--no-stats", help="No statistics on stderr.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Generate text from a prompt with speculative decoding."""
    with reported_errors(verbose):
        llama.set_verbose(verbose)
        if json_ and jsonl:
            raise UsageError("--json and --jsonl cannot be used together (--jsonl already writes JSON)")
        if max_tokens < 0:
            raise UsageError(f"--max-tokens must be >= 0, got {max_tokens}")
        check_sampling(temp, top_k, top_p, min_p)
        request = Request(
            max_tokens=max_tokens,
            params=SamplingParams(temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p),
            seed=seed,
            chat=chat,
            ignore_eos=ignore_eos,
            truncate=truncate,
        )
        prompt_text = None if jsonl else read_prompt(prompt)
        config = engine_config(
            model=model, draft_model=draft_model, mode=mode, k=draft_max, ngram=ngram, ctx_size=ctx_size,
            draft_ctx_size=draft_ctx_size, threads=threads, draft_threads=draft_threads, n_gpu_layers=n_gpu_layers,
            draft_n_gpu_layers=draft_n_gpu_layers, cross_vocab=cross_vocab,
        )
        with Engine(config) as engine:
            for message in engine.warnings:
                warn(message)
            if jsonl:
                failures = run_jsonl(engine, request, show_stats=not no_stats)
                if failures:
                    raise typer.Exit(1)
                return
            tokens = engine.tokenize_prompt(prompt_text, request)
            if json_:
                run_json(engine, tokens, request, show_stats=not no_stats)
            else:
                run_stream(engine, tokens, request, show_stats=not no_stats)


def read_prompt(prompt: Optional[str]) -> str:
    """PROMPT, '-' (stdin), or piped stdin; with both, stdin comes first, then a blank line, then PROMPT."""
    if prompt == "-":
        return read_stdin_text()
    piped = not stdin_is_terminal()
    stdin_text = read_stdin_text() if piped else ""
    if prompt is None:
        if not piped:
            raise UsageError("no prompt: give one as an argument, or pipe it on stdin ('-' reads stdin)")
        return stdin_text
    prompt = check_text_is_utf8(prompt, "the prompt argument")
    return f"{stdin_text}\n\n{prompt}" if stdin_text.strip() else prompt


def run_stream(engine: Engine, tokens: list[int], request: Request, *, show_stats: bool) -> None:
    generation = engine.generate(tokens, request)
    stream = TextStream()
    live = (
        Live(console=stderr, transient=True, auto_refresh=False, redirect_stdout=True, redirect_stderr=False)
        if show_stats and stderr.is_terminal
        else contextlib.nullcontext()
    )
    interrupted = False
    try:
        with live:
            last_refresh = 0.0
            for event in generation:
                stream.write(event.piece)
                if stream.closed:
                    break
                now = time.monotonic()
                if live is not None and isinstance(live, Live) and now - last_refresh > LIVE_REFRESH_SECONDS:
                    live.update(live_view(generation.stats), refresh=True)
                    last_refresh = now
    except KeyboardInterrupt:
        interrupted = True
    stream.finish()
    if not stream.closed and sys.stdout.isatty() and not stream.ends_with_newline:
        stream.write(b"\n")
    if show_stats:
        print_summary(generation)
    if interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)


def print_summary(generation: Generation) -> None:
    stderr.print(stats_table(generation.stats, title=None))
    warning = acceptance_warning(generation.stats)
    if warning:
        warn(warning)


def result_object(generation: Generation) -> dict:
    text = generation.vocab.detokenize(generation.tokens).decode("utf-8", errors="replace")
    return {
        "text": text,
        "prompt_tokens": generation.prompt,
        "tokens": generation.tokens,
        "from_draft": generation.from_draft,
        "finish_reason": generation.finish_reason,
        "stats": generation.stats.to_dict(),
    }


def _consume(generation: Generation) -> bool:
    """Run a generation to its end; True if Ctrl-C stopped it (what it produced is kept)."""
    try:
        for _ in generation:
            pass
    except KeyboardInterrupt:
        return True
    return False


def run_json(engine: Engine, tokens: list[int], request: Request, *, show_stats: bool) -> None:
    generation = engine.generate(tokens, request)
    interrupted = _consume(generation)
    write_json_line(result_object(generation))
    if show_stats:
        print_summary(generation)
    if interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)


def write_json_line(obj: dict) -> None:
    try:
        sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        TextStream(sys.stdout).closed = True


def run_jsonl(engine: Engine, request: Request, *, show_stats: bool) -> int:
    """One result line per input line; a bad line gets an error object and the rest go on."""
    failures = 0
    for index, raw in enumerate(sys.stdin.buffer if hasattr(sys.stdin, "buffer") else sys.stdin):
        line = raw.decode("utf-8", errors="strict") if isinstance(raw, bytes) else raw
        if not line.strip():
            continue
        try:
            line_request, prompt = parse_jsonl_line(line, request)
            tokens = engine.tokenize_prompt(prompt, line_request)
            generation = engine.generate(tokens, line_request)
        except (SpecllmError, UnicodeDecodeError, ValueError) as e:
            failures += 1
            message = e.message if isinstance(e, SpecllmError) else str(e)
            write_json_line({"index": index, "error": message})
            continue
        interrupted = _consume(generation)
        write_json_line({"index": index, **result_object(generation)})
        if show_stats:
            s = generation.stats
            stderr.print(f"[dim]line {index}: {s.generated} tokens, {s.tokens_per_second:.1f} tok/s, "
                         f"acceptance {s.acceptance_rate:.0%}, finish {generation.finish_reason}[/]")
        if interrupted:
            raise typer.Exit(EXIT_INTERRUPTED)
    return failures


JSONL_OVERRIDES = {
    "max_tokens": int, "temp": float, "top_k": int, "top_p": float, "min_p": float, "seed": int,
    "chat": bool, "ignore_eos": bool, "truncate": bool,
}


def parse_jsonl_line(line: str, request: Request) -> tuple[Request, str]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise UsageError(f"not JSON: {e.msg} at column {e.colno}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
        raise UsageError('each line needs a "prompt" string, e.g. {"prompt": "def add(a, b):"}')
    overrides = {}
    for key, kind in JSONL_OVERRIDES.items():
        if key in obj:
            value = obj[key]
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise UsageError(f'"{key}" must be {kind.__name__}, got {value!r}')
            overrides[key] = value
    line_request = with_overrides(request, overrides)
    p = line_request.params
    check_sampling(p.temperature, p.top_k, p.top_p, p.min_p)
    check_positive("max_tokens", line_request.max_tokens, allow_zero=True)
    return line_request, obj["prompt"]
