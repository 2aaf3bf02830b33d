"""`specllm generate`: stream text to stdout, statistics to stderr."""

from __future__ import annotations

import collections
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from rich.markup import escape

from .. import llama
from ..config import (
    DEFAULT_CTX_SIZE, check_sampler, check_sampling, check_seed, engine_config, max_tokens_limit,
)
from ..console import EXIT_INTERRUPTED, FetchBars, reported_errors, silence_stdout, stderr, warn
from ..engine import Engine, Request, with_overrides
from ..errors import SpecllmError, UsageError
from ..options import (
    FLAG, IO, CrossVocabOpt, CtxSizeOpt, DraftCtxSizeOpt, DraftGpuLayersOpt, DraftLoraOpt, DraftMaxOpt, DraftModelOpt,
    DraftThreadsOpt, GpuLayersOpt, MaxTokensOpt, MemoryOpt, MinPOpt, ModelOpt, ModeOpt, NgramOpt, ParallelOpt, RpcOpt,
    SamplerOpt, SeedOpt, TempOpt, ThreadsOpt, TopKOpt, TopPOpt, VerboseOpt,
)
from ..render import LiveDisplay, TextStream, acceptance_warning, stats_table
from ..sampling import DEFAULT_SAMPLER, SamplingParams
from ..speculative import Generation, TokenEvent
from .common import check_text_is_utf8, decode_utf8, read_stdin_text, stdin_is_terminal, stdin_lines

# What stopped a generation early, if anything: Ctrl-C (KeyboardInterrupt) or a failure (SpecllmError).
Stop = Optional[BaseException]

def generate(
    prompt: Annotated[Optional[str], typer.Argument(
        help="The prompt. '-' reads standard input; piped input comes first, then a blank line, then PROMPT.",
        show_default=False, metavar="PROMPT")] = None,
    model: ModelOpt = None,
    draft_model: DraftModelOpt = None,
    draft_lora: DraftLoraOpt = None,
    mode: ModeOpt = None,
    draft_max: DraftMaxOpt = None,
    ngram: NgramOpt = None,
    max_tokens: MaxTokensOpt = None,
    ctx_size: CtxSizeOpt = DEFAULT_CTX_SIZE,
    draft_ctx_size: DraftCtxSizeOpt = None,
    threads: ThreadsOpt = None,
    draft_threads: DraftThreadsOpt = None,
    n_gpu_layers: GpuLayersOpt = 0,
    draft_n_gpu_layers: DraftGpuLayersOpt = None,
    rpc: RpcOpt = None,
    temp: TempOpt = 0.0,
    top_k: TopKOpt = 0,
    top_p: TopPOpt = 1.0,
    min_p: MinPOpt = 0.0,
    seed: SeedOpt = None,
    sampler: SamplerOpt = None,
    memory: MemoryOpt = None,
    ignore_eos: Annotated[bool, typer.Option("--ignore-eos", help="Never stop at end-of-generation tokens.",
                                             metavar=FLAG, rich_help_panel="Sampling")] = False,
    chat: Annotated[bool, typer.Option("--chat", help="Wrap the prompt in the model's chat template.",
                                       metavar=FLAG, rich_help_panel=IO)] = False,
    truncate: Annotated[bool, typer.Option("--truncate", help="Keep the end of a prompt too long for the context.",
                                           metavar=FLAG, rich_help_panel=IO)] = False,
    cross_vocab: CrossVocabOpt = False,
    json_: Annotated[bool, typer.Option("--json", help="Print one JSON object (text, tokens, stats) instead of "
                                        "streaming.", metavar=FLAG, rich_help_panel=IO)] = False,
    jsonl: Annotated[bool, typer.Option("--jsonl", help='Read one JSON object per stdin line ({"prompt": ...} and '
                                        "optional max_tokens, temp, top_k, top_p, min_p, seed, sampler, chat, "
                                        "ignore_eos, truncate); write one result per line.", metavar=FLAG,
                                        rich_help_panel=IO)] = False,
    no_stats: Annotated[bool, typer.Option("--no-stats", help="No statistics on stderr.", metavar=FLAG,
                                           rich_help_panel=IO)] = False,
    trace: Annotated[Optional[Path], typer.Option("--trace", help="Auto mode: write every round's predicted "
                                                  "acceptance against what the target accepted, one JSON line per "
                                                  "round (scripts/lookup-calibration calibration FILE reads it).",
                                                  metavar="FILE", rich_help_panel=IO)] = None,
    parallel: ParallelOpt = 1,
    verbose: VerboseOpt = False,
) -> None:
    """Generate text from a prompt with speculative decoding.

    The text goes to stdout as it is produced; statistics, warnings and errors go to stderr.
    Exit codes: 0 done (also when the context fills up), 1 error, 2 bad usage, 130 interrupted.

    [b]Examples[/b]

      specllm generate -m target.gguf -md draft.gguf "def fibonacci(n):"
      cat notes.txt | specllm generate -m target.gguf "Summarize these notes."
      specllm generate -m target.gguf --json -n 64 "Hello" | jq .stats
      specllm generate -m target.gguf --jsonl < prompts.jsonl > results.jsonl
      specllm generate -m target.gguf --jsonl --parallel 8 < prompts.jsonl > results.jsonl
    """
    with reported_errors(verbose):
        llama.set_verbose(verbose)
        check_output_flags(json_=json_, jsonl=jsonl, prompt=prompt, parallel=parallel)
        request = build_request(max_tokens=max_tokens, temp=temp, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed,
                                chat=chat, ignore_eos=ignore_eos, truncate=truncate, sampler=sampler)
        # The prompt is read before models are resolved: an empty one must fail before a download.
        prompt_text = None if jsonl else read_prompt(prompt)
        config = engine_config(
            model=model, draft_model=draft_model, mode=mode, k=draft_max, ngram=ngram, ctx_size=ctx_size,
            draft_ctx_size=draft_ctx_size, threads=threads, draft_threads=draft_threads, n_gpu_layers=n_gpu_layers,
            draft_n_gpu_layers=draft_n_gpu_layers, cross_vocab=cross_vocab, memory=memory, rpc=rpc,
            parallel=parallel, progress=FetchBars(), draft_lora=draft_lora,
        )
        if trace is not None and config.mode != "auto":
            raise UsageError("--trace records auto mode's rounds", hint="use --mode auto")
        with Engine(config) as engine, traced(engine, trace):
            for message in engine.warnings:
                warn(escape(message))
            show_stats = not no_stats
            if jsonl:
                run_jsonl(engine, request, show_stats=show_stats)
                return
            tokens = engine.tokenize_prompt(prompt_text, request)
            (run_json if json_ else run_stream)(engine, tokens, request, show_stats=show_stats)


@contextlib.contextmanager
def traced(engine: Engine, path: Optional[Path]):
    """Auto mode's rounds go to `path` (one JSON line each) while the body runs."""
    if path is None:
        yield
        return
    from ..auto import RoundTrace

    try:
        engine.trace = RoundTrace.to_file(path)
    except OSError as e:
        raise UsageError(f"cannot write the trace to {path}: {e.strerror or e}") from None
    try:
        yield
    finally:
        engine.trace.close()


def check_output_flags(*, json_: bool, jsonl: bool, prompt: Optional[str], parallel: int = 1) -> None:
    if parallel != 1 and not jsonl:
        raise UsageError("--parallel runs several --jsonl lines at once: add --jsonl (one prompt is one sequence)")
    if json_ and jsonl:
        raise UsageError("--json and --jsonl cannot be used together (--jsonl already writes JSON)")
    if jsonl and prompt is not None:
        raise UsageError("--jsonl reads its prompts from stdin: drop the PROMPT argument")
    if jsonl and stdin_is_terminal():
        raise UsageError("--jsonl reads JSON lines from stdin: pipe them in, e.g. < prompts.jsonl")


def build_request(*, max_tokens: Optional[int], temp: float, top_k: int, top_p: float, min_p: float, seed: Optional[int],
                  chat: bool, ignore_eos: bool, truncate: bool, sampler: Optional[str] = None) -> Request:
    max_tokens = max_tokens_limit("--max-tokens", max_tokens)
    check_sampling(temp, top_k, top_p, min_p)
    check_seed(seed)
    check_sampler(sampler)
    return Request(
        max_tokens=max_tokens,
        params=SamplingParams(temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p),
        seed=seed,
        chat=chat,
        ignore_eos=ignore_eos,
        truncate=truncate,
        sampler=sampler or DEFAULT_SAMPLER,
    )


def read_prompt(prompt: Optional[str]) -> str:
    """PROMPT, '-' (stdin), or piped stdin; with both, stdin comes first, then a blank line, then PROMPT."""
    if prompt == "-":
        text = read_stdin_text()
    elif prompt is None:
        if stdin_is_terminal():
            # Waiting for a terminal to type a prompt would look like a hang.
            raise UsageError("no prompt: give one as an argument, or pipe it on stdin ('-' reads stdin)")
        text = read_stdin_text()
    else:
        prompt = check_text_is_utf8(prompt, "the prompt argument")
        stdin_text = "" if stdin_is_terminal() else read_stdin_text()
        text = f"{stdin_text}\n\n{prompt}" if stdin_text.strip() else prompt
    if not text.strip():
        raise UsageError("the prompt is empty" if prompt not in (None, "-") else "standard input is empty: no prompt")
    return text


# -- running one generation ------------------------------------------------------------------


def drain(generation: Generation, on_event: Callable[[TokenEvent], bool] | None = None) -> Stop:
    """Run a generation to its end, or until on_event returns False (nobody reads stdout any more).

    Ctrl-C and a failing decode stop it early: what it produced is kept, and the exception comes
    back so that it is reported after the output, not instead of it.
    """
    try:
        for event in generation:
            if on_event is not None and not on_event(event):
                break
    except (KeyboardInterrupt, SpecllmError) as stop:
        return stop
    return None


def raise_stop(stop: Stop) -> None:
    """Once the output is out: Ctrl-C exits 130, a failure is reported as an error."""
    if isinstance(stop, KeyboardInterrupt):
        raise typer.Exit(EXIT_INTERRUPTED)
    if stop is not None:
        raise stop


def run_stream(engine: Engine, tokens: list[int], request: Request, *, show_stats: bool) -> None:
    generation = engine.generate(tokens, request)
    display = LiveDisplay(generation.stats) if LiveDisplay.wanted(show_stats) else None
    with display or contextlib.nullcontext():
        stream = TextStream(out=display.screen if display else None)

        def show(event: TokenEvent) -> bool:
            stream.write(event.piece)
            if display:
                display.refresh()
            return not stream.closed

        stop = drain(generation, show)
        stream.finish()
    if not stream.closed and not stream.ends_with_newline and sys.stdout.isatty():
        stream.write(b"\n")  # so that the summary or the shell prompt starts on its own line
    if show_stats:
        print_summary(generation)
    raise_stop(stop)


def print_summary(generation: Generation) -> None:
    stderr.print(stats_table(generation.stats))
    warning = acceptance_warning(generation.stats)
    if warning:
        warn(warning)


def run_json(engine: Engine, tokens: list[int], request: Request, *, show_stats: bool) -> None:
    generation = engine.generate(tokens, request)
    stop = drain(generation)
    write_json_line({**result_object(generation, stop), "target_placement": engine.target_model.placement})
    if show_stats:
        print_summary(generation)
    raise_stop(stop)


def result_object(generation: Generation, stop: Stop = None) -> dict:
    text = generation.vocab.detokenize(generation.tokens).decode("utf-8", errors="replace")
    result = {
        "text": text,
        "prompt_tokens": generation.prompt,
        "tokens": generation.tokens,
        "from_draft": generation.from_draft,
        "finish_reason": generation.finish_reason or ("interrupted" if stop else None),
        # The seed used (drawn when none was given) and how drafts were verified: enough to replay.
        "seed": generation.seed,
        "sampler": generation.sampler.kind,
        "stats": generation.stats.to_dict(),
    }
    if isinstance(stop, SpecllmError):
        result["finish_reason"] = "error"
        result["error"] = stop.message
    return result


def write_json_line(obj: dict) -> bool:
    """One JSON object on its own line; False when stdout's reader has gone (`| head`)."""
    try:
        sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        silence_stdout()
        return False
    return True


# -- --jsonl ---------------------------------------------------------------------------------


def run_jsonl(engine: Engine, request: Request, *, show_stats: bool) -> None:
    """One result line per input line, in input order; a bad line gets an error object and the
    rest go on. Up to engine.n_slots lines (--parallel) generate at once, one shared decode
    per round (batch.py); a line starts as soon as a slot is free.

    Exits 1 at the end when a line failed, 130 on Ctrl-C (the finished lines stay written, and
    the lines generating then are written as interrupted).
    """
    from ..batch import Scheduler

    scheduler = Scheduler(engine)
    out = OrderedLines(show_stats)
    start = time.perf_counter()
    lines = ((index, raw) for index, raw in enumerate(stdin_lines()) if raw.strip())
    more_lines = True
    try:
        while more_lines or scheduler.active:
            while more_lines and scheduler.n_free:
                index, raw = next(lines, (None, None))
                if index is None:
                    more_lines = False
                    break
                out.expect(index)
                try:
                    line_request, prompt = parse_jsonl_line(raw, request)
                    scheduler.start(engine.tokenize_prompt(prompt, line_request), line_request, tag=index)
                except SpecllmError as e:
                    out.put(index, {"index": index, "error": e.message})
            if scheduler.active:
                try:
                    for active, _ in scheduler.round():
                        if active.finished:
                            out.put(active.tag, {"index": active.tag, **result_object(active.generation)})
                except SpecllmError as failure:  # a decode failed: the lines in it end with it
                    for active in scheduler.drop_all("error"):
                        out.put(active.tag, {"index": active.tag, **result_object(active.generation, failure)})
            if not out.write_ready():
                scheduler.drop_all("interrupted")
                return  # nobody reads the results any more
    except KeyboardInterrupt as stop:
        for active in scheduler.drop_all("interrupted"):
            out.put(active.tag, {"index": active.tag, **result_object(active.generation, stop)})
        out.write_ready()
        raise_stop(stop)
    finally:
        scheduler.close()
    if show_stats and out.n_tokens:
        seconds = time.perf_counter() - start
        stderr.print(f"{out.n_lines} lines, {out.n_tokens} tokens in {seconds:.1f} s: "
                     f"{out.n_tokens / seconds:.1f} tok/s over the batch ({engine.n_slots} at once)", markup=False)
    if out.n_lines == 0:
        raise UsageError("standard input has no JSON lines",
                         hint='one object per line, e.g. {"prompt": "def add(a, b):"}')
    if out.n_failed:
        raise typer.Exit(1)


class OrderedLines:
    """Result lines written in input order: a line that finished early waits for the ones before it."""

    def __init__(self, show_stats: bool):
        self.show_stats = show_stats
        self.order: collections.deque[int] = collections.deque()
        self.results: dict[int, dict] = {}
        self.n_lines = self.n_failed = self.n_tokens = 0

    def expect(self, index: int) -> None:
        self.order.append(index)
        self.n_lines += 1

    def put(self, index: int, result: dict) -> None:
        self.results[index] = result
        self.n_failed += "error" in result
        self.n_tokens += len(result.get("tokens", ()))

    def write_ready(self) -> bool:
        """Write every result whose turn has come; False when stdout's reader has gone."""
        while self.order and self.order[0] in self.results:
            index = self.order.popleft()
            result = self.results.pop(index)
            if not write_json_line(result):
                return False
            if self.show_stats and "stats" in result:
                print_line_stats(index, result)
        return True


def print_line_stats(index: int, result: dict) -> None:
    s = result["stats"]
    stderr.print(f"line {index}: {s['generated']} tokens, {s['tokens_per_second']:.1f} tok/s, "
                 f"acceptance {s['acceptance_rate']:.0%}, finish {result['finish_reason']}", style="dim",
                 markup=False)


JSONL_OVERRIDES = {
    "max_tokens": int, "temp": float, "top_k": int, "top_p": float, "min_p": float, "seed": int,
    "chat": bool, "ignore_eos": bool, "truncate": bool, "sampler": str,
}


def parse_jsonl_line(raw: bytes | str, request: Request) -> tuple[Request, str]:
    """A line's request (the command line's, with the line's overrides) and its prompt."""
    line = decode_utf8(raw, "the line") if isinstance(raw, bytes) else raw
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise UsageError(f"not JSON: {e.msg} at column {e.colno}") from None
    except RecursionError:  # [[[[... nested deeper than Python's parser goes
        raise UsageError("not JSON: nested too deeply") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
        raise UsageError('each line needs a "prompt" string, e.g. {"prompt": "def add(a, b):"}')
    overrides = _overrides(obj)
    if "max_tokens" in overrides:
        overrides["max_tokens"] = max_tokens_limit("max_tokens", overrides["max_tokens"])
    line_request = with_overrides(request, overrides)
    p = line_request.params
    check_sampling(p.temperature, p.top_k, p.top_p, p.min_p)
    check_seed(line_request.seed)
    check_sampler(line_request.sampler)
    return line_request, check_text_is_utf8(obj["prompt"], "the prompt")


def _overrides(obj: dict) -> dict:
    overrides = {}
    for key, kind in JSONL_OVERRIDES.items():
        if key not in obj:
            continue
        value = obj[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise UsageError(f'"{key}" must be {kind.__name__}, got {value!r}')
        overrides[key] = value
    return overrides
