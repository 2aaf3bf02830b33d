"""Settings: the checks every setting passes, and their precedence. One home for both.

Precedence, highest first (each command applies it the same way):

    1. the command-line option
    2. its SPECLLM_* environment variable (typer reads it: see `envvar=` in options.py)
    3. the pair's settings in models.toml, when no -m is given (the default pair is used then)
    4. the built-in defaults below (DEFAULT_K, AUTO_DEFAULT_K, DEFAULT_NGRAM_SIZES,
       DEFAULT_CTX_SIZE) and the limits

Each rule is written once, here; the commands, the scripts and the help text (options.py) use
these names rather than repeating a number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .errors import UsageError
from .registry import SILENT, FetchProgress
from .rpc import parse_endpoints
from .sampling import SAMPLERS

MODES = ("auto", "draft", "ngram", "none")
DEFAULT_MODE = "auto"
MAX_DRAFT = 256  # a round verifies k + 1 tokens in one batch of at most n_batch (512)
NGRAM_SIZE_RANGE = (1, 16)  # an n-gram longer than 16 tokens almost never recurs
MIN_CTX = 16
MAX_CTX = 1 << 24  # llama.cpp takes n_ctx as uint32; larger values would silently wrap

DEFAULT_K = 4
# Auto mode's -k is only an upper bound: it picks each round's length itself. Long drafts pay
# when the output copies a passage (summaries, RAG, edits, repetition): a perfect draft of 63
# tokens verifies at 4.2x plain speed on a 2-core CPU, more on a GPU.
AUTO_DEFAULT_K = 64


def default_k(mode: str) -> int:
    return AUTO_DEFAULT_K if mode == "auto" else DEFAULT_K


DEFAULT_NGRAM_SIZES = (4, 3, 2)  # --mode ngram: a 4-token match first; 2 still finds short copies
DEFAULT_CTX_SIZE = 4096  # room for a long prompt and its answer on a small machine's memory


@dataclass(frozen=True)
class EngineConfig:
    """What the engine loads and how it speculates: every setting resolved and checked."""

    target: str  # resolved path
    draft: Optional[str] = None  # resolved path
    mode: str = "auto"
    k: int = DEFAULT_K
    ngram_sizes: tuple[int, ...] = DEFAULT_NGRAM_SIZES
    ctx_size: int = DEFAULT_CTX_SIZE
    draft_ctx_size: Optional[int] = None
    threads: Optional[int] = None
    draft_threads: Optional[int] = None
    n_gpu_layers: int = 0
    draft_n_gpu_layers: Optional[int] = None
    cross_vocab: bool = False
    # Earlier outputs auto mode drafts from: None keeps them for this process (a --jsonl batch,
    # a server), True also on disk between runs, False not at all.
    memory: Optional[bool] = None
    rpc: tuple[str, ...] = ()  # llama.cpp RPC workers ("host:port") holding the target's layers
    # Sequences decoded together (--parallel): --jsonl lines or server slots. Each holds ctx_size
    # tokens; the KV cache holds parallel x ctx_size (see llama.Context).
    parallel: int = 1
    draft_lora: Optional[str] = None  # a GGUF LoRA adapter applied to the draft (specllm tune-draft)




# -- checks (each raises UsageError naming the option) -----------------------------------------


def check_positive(name: str, value: Optional[int], *, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise UsageError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def check_draft_max(k: Optional[int], name: str = "--draft-max") -> None:
    if k is not None and not 1 <= k <= MAX_DRAFT:
        raise UsageError(f"{name} must be between 1 and {MAX_DRAFT}, got {k}")


# Most sequences in one context: every round decodes at least one row per sequence in one batch
# of at most n_batch (512) rows, and llama.cpp allows 256 sequences.
MAX_PARALLEL = 256


def check_parallel(name: str, parallel: int) -> None:
    if not 1 <= parallel <= MAX_PARALLEL:
        raise UsageError(f"{name} must be between 1 and {MAX_PARALLEL}, got {parallel}")


def check_ctx_size(name: str, n_ctx: Optional[int]) -> None:
    if n_ctx is not None and not MIN_CTX <= n_ctx <= MAX_CTX:
        raise UsageError(f"{name} must be between {MIN_CTX} and {MAX_CTX} tokens, got {n_ctx}")


def check_sampling(temp: float, top_k: int, top_p: float, min_p: float) -> None:
    # `not x >= 0` rather than `x < 0`: NaN fails every comparison and must be refused too.
    if not (temp >= 0.0 and math.isfinite(temp)):
        raise UsageError(f"--temp must be a finite number >= 0, got {temp}")
    if top_k < 0:
        raise UsageError(f"--top-k must be >= 0, got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise UsageError(f"--top-p must be in (0, 1], got {top_p}")
    if not 0.0 <= min_p <= 1.0:
        raise UsageError(f"--min-p must be in [0, 1], got {min_p}")


# -n -1, as in llama.cpp: no limit but the end of generation and the context.
UNLIMITED_TOKENS = -1


def max_tokens_limit(name: str, value: Optional[int]) -> Optional[int]:
    """A -n value as a limit: None (unlimited) for None or -1, else a count >= 0."""
    if value is None or value == UNLIMITED_TOKENS:
        return None
    if value < 0:
        raise UsageError(f"{name} must be >= 0, or -1 for no limit, got {value}")
    return value


def check_seed(seed: Optional[int]) -> None:
    if seed is not None and seed < 0:
        raise UsageError(f"--seed must be >= 0, got {seed}", hint="leave --seed out for a random seed")


def check_sampler(sampler: Optional[str]) -> None:
    if sampler is not None and sampler not in SAMPLERS:
        raise UsageError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")


def check_mode(mode: Optional[str], name: str = "--mode") -> None:
    if mode is not None and mode not in MODES:
        raise UsageError(f"{name} must be one of {', '.join(MODES)}, got {mode!r}")


def check_draft_for_mode(mode: Optional[str], has_draft: bool) -> None:
    if mode == "draft" and not has_draft:
        raise UsageError("--mode draft needs a draft model (-md)")


def parse_ngram_sizes(text: Optional[str]) -> Optional[tuple[int, ...]]:
    if text is None:
        return None
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UsageError(f"--ngram takes comma-separated sizes like {format_sizes(DEFAULT_NGRAM_SIZES)}, "
                         f"got {text!r}") from None
    low, high = NGRAM_SIZE_RANGE
    if not sizes or min(sizes) < low or max(sizes) > high:
        raise UsageError(f"--ngram sizes must be between {low} and {high}, got {text!r}")
    return sizes


def format_sizes(sizes: tuple[int, ...]) -> str:
    return ",".join(str(n) for n in sizes)


# -- from options to an engine configuration ---------------------------------------------------


def resolve_models(
    model: Optional[str], draft_model: Optional[str], *, progress: FetchProgress = SILENT
) -> tuple[str, Optional[str], dict]:
    """Paths of the target and draft, fetching registry models on first use.

    No -m at all means the registry's default pair; its recommended settings come back as
    the third value (precedence 3: below options and environment variables).
    """
    from . import registry

    if model is None:
        pair, target_path, draft_path = registry.resolve_pair(progress=progress)
        draft = str(registry.resolve_model(draft_model, progress=progress)) if draft_model else str(draft_path)
        return str(target_path), draft, pair_settings(pair, draft_given=draft_model is not None)
    target = registry.resolve_model(model, progress=progress)
    if draft_model is None:
        saved = _saved_pair(model, target, progress)
        if saved is not None:
            return str(target), saved[0], saved[1]
    draft = str(registry.resolve_model(draft_model, progress=progress)) if draft_model else None
    return str(target), draft, {}


def pair_settings(pair, *, draft_given: bool = False) -> dict:
    """A pair's settings that it gives (precedence 3). The pair's adapter belongs to the pair's
    draft: another -md does not take it."""
    settings = {"mode": pair.mode, "k": pair.k, "cross_vocab": pair.cross_vocab, "ngram_sizes": pair.ngram_sizes,
                "memory": pair.memory, "draft_lora": None if draft_given else pair.draft_lora}
    return {key: value for key, value in settings.items() if value is not None}


def _saved_pair(model: str, target, progress: FetchProgress) -> Optional[tuple[str, dict]]:
    """-m without -md: the draft `specllm drafts --save` chose for this target, if it saved one."""
    from . import registry
    from .errors import SpecllmError
    from .saved_pairs import saved_pair_for

    try:
        known = registry.load_registry()
    except SpecllmError:  # a broken models.toml must not stop a run given by path
        return None
    pair = saved_pair_for(model, target, known)
    if pair is None:
        return None
    progress.note(f"draft {pair.draft}, saved for this target by `specllm drafts --save` (pair {pair.name}; -md overrides)")
    try:
        draft = registry.resolve_model(pair.draft, progress=progress)
    except SpecllmError as e:
        e.hint = f"the pair {pair.name} in your models.toml names it: run `specllm drafts --save` again, or pass -md"
        raise
    return str(draft), pair_settings(pair)


def engine_config(
    *,
    model: Optional[str],
    draft_model: Optional[str],
    mode: Optional[str],
    k: Optional[int],
    ngram: Optional[str],
    ctx_size: int,
    draft_ctx_size: Optional[int],
    threads: Optional[int],
    draft_threads: Optional[int],
    n_gpu_layers: int,
    draft_n_gpu_layers: Optional[int],
    cross_vocab: bool = False,
    memory: Optional[bool] = None,
    rpc: Optional[str] = None,
    parallel: int = 1,
    progress: FetchProgress = SILENT,
    draft_lora: Optional[str] = None,
) -> EngineConfig:
    """Check the options, resolve the models (fetching them on first use) and apply the precedence."""
    check_mode(mode)
    check_draft_max(k)
    check_ctx_size("--ctx-size", ctx_size)
    check_ctx_size("--draft-ctx-size", draft_ctx_size)
    check_positive("--threads", threads)
    check_positive("--draft-threads", draft_threads)
    check_parallel("--parallel", parallel)
    ngram_sizes = parse_ngram_sizes(ngram)
    endpoints = parse_endpoints(rpc)
    if endpoints and n_gpu_layers == 0:
        n_gpu_layers = -1  # --rpc is for the target's layers: -ngl 0 would keep them all here
    # Before anything is fetched: without -m the default pair brings its draft, and with -m a
    # pair saved by `specllm drafts --save` may (checked again once the models are resolved).
    from .saved_pairs import has_saved_pairs

    check_draft_for_mode(mode, has_draft=draft_model is not None or model is None
                         or (mode == "draft" and has_saved_pairs()))
    target, draft, pair_settings = resolve_models(model, draft_model, progress=progress)
    check_draft_for_mode(mode, has_draft=draft is not None)
    # A user's models.toml can say anything: its settings pass the options' checks.
    check_mode(pair_settings.get("mode"), "the pair's 'mode' in models.toml")
    check_draft_max(pair_settings.get("k"), "the pair's 'k' in models.toml")
    if draft_lora and draft is None:
        raise UsageError("--draft-lora needs a draft model (-md)")
    chosen_mode = mode or pair_settings.get("mode") or DEFAULT_MODE
    if model is not None and draft is None and chosen_mode == "auto":
        from .drafting.hint import local_drafts_note

        note = local_drafts_note(model, Path(target))
        if note:
            progress.note(note)
    return EngineConfig(
        target=target,
        draft=draft,
        mode=chosen_mode,
        k=k or pair_settings.get("k") or default_k(chosen_mode),
        ngram_sizes=ngram_sizes or pair_settings.get("ngram_sizes") or DEFAULT_NGRAM_SIZES,
        ctx_size=ctx_size,
        draft_ctx_size=draft_ctx_size,
        threads=threads,
        draft_threads=draft_threads,
        n_gpu_layers=n_gpu_layers,
        draft_n_gpu_layers=draft_n_gpu_layers,
        cross_vocab=cross_vocab or bool(pair_settings.get("cross_vocab")),
        memory=memory if memory is not None else pair_settings.get("memory"),
        rpc=endpoints,
        parallel=parallel,
        draft_lora=draft_lora or pair_settings.get("draft_lora"),
    )
