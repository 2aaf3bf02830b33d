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
        settings = {"mode": pair.mode, "k": pair.k, "cross_vocab": pair.cross_vocab, "ngram_sizes": pair.ngram_sizes,
                    "memory": pair.memory,
                    # The pair's adapter belongs to the pair's draft: another -md does not take it.
                    "draft_lora": None if draft_model else pair.draft_lora}
        return str(target_path), draft, {key: value for key, value in settings.items() if value is not None}
    target = str(registry.resolve_model(model, progress=progress))
    draft = str(registry.resolve_model(draft_model, progress=progress)) if draft_model else None
    return target, draft, {}


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
    ngram_sizes = parse_ngram_sizes(ngram)
    endpoints = parse_endpoints(rpc)
    if endpoints and n_gpu_layers == 0:
        n_gpu_layers = -1  # --rpc is for the target's layers: -ngl 0 would keep them all here
    # Before anything is fetched: without -m the default pair brings its draft.
    check_draft_for_mode(mode, has_draft=draft_model is not None or model is None)
    if draft_lora and draft_model is None and model is not None:
        raise UsageError("--draft-lora needs a draft model (-md)")
    target, draft, pair_settings = resolve_models(model, draft_model, progress=progress)
    # A user's models.toml can say anything: its settings pass the options' checks.
    check_mode(pair_settings.get("mode"), "the pair's 'mode' in models.toml")
    check_draft_max(pair_settings.get("k"), "the pair's 'k' in models.toml")
    chosen_mode = mode or pair_settings.get("mode") or DEFAULT_MODE
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
        draft_lora=draft_lora or pair_settings.get("draft_lora"),
    )
