"""CLI option types shared between commands (llama.cpp-style short names), and their checks.

Precedence of settings: command-line option > environment variable (SPECLLM_*) > models.toml
(the pair's recommended settings) > the built-in defaults below.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .errors import UsageError

MODES = ("auto", "draft", "ngram", "none")
MAX_DRAFT = 32

ModelOpt = Annotated[
    Optional[str],
    typer.Option("-m", "--model", help="Target GGUF: a path or a models.toml name (default: the default pair).",
                 envvar="SPECLLM_MODEL", show_default=False),
]
DraftModelOpt = Annotated[
    Optional[str],
    typer.Option("-md", "--draft-model", help="Draft GGUF: a path or a models.toml name.",
                 envvar="SPECLLM_DRAFT_MODEL", show_default=False),
]
ModeOpt = Annotated[
    Optional[str],
    typer.Option("--mode", help="auto | draft | ngram | none (plain decoding). Default: auto.",
                 envvar="SPECLLM_MODE", show_default=False),
]
DraftMaxOpt = Annotated[
    Optional[int],
    typer.Option("-k", "--draft-max", help="Most tokens drafted per round (default 4; auto mode's upper bound: 8).",
                 show_default=False),
]
NgramOpt = Annotated[
    Optional[str],
    typer.Option("--ngram", help="N-gram sizes tried by the n-gram drafter, longest first (e.g. 4,3,2).",
                 show_default=False),
]
CtxSizeOpt = Annotated[int, typer.Option("-c", "--ctx-size", help="Target context size in tokens.", envvar="SPECLLM_CTX_SIZE")]
DraftCtxSizeOpt = Annotated[
    Optional[int], typer.Option("-cd", "--draft-ctx-size", help="Draft context size (default: --ctx-size).", show_default=False)
]
ThreadsOpt = Annotated[
    Optional[int], typer.Option("-t", "--threads", help="CPU threads for the target (default: all cores).",
                                envvar="SPECLLM_THREADS", show_default=False)
]
DraftThreadsOpt = Annotated[
    Optional[int], typer.Option("-td", "--draft-threads", help="CPU threads for the draft (default: --threads).", show_default=False)
]
GpuLayersOpt = Annotated[
    int, typer.Option("-ngl", "--n-gpu-layers", help="Target layers offloaded to the GPU (-1: all).", envvar="SPECLLM_N_GPU_LAYERS")
]
DraftGpuLayersOpt = Annotated[
    Optional[int], typer.Option("-ngld", "--draft-n-gpu-layers", help="Draft layers offloaded to the GPU (default: as -ngl).",
                                show_default=False)
]
TempOpt = Annotated[float, typer.Option("--temp", help="Temperature; 0 = greedy (output identical to the target's).")]
TopKOpt = Annotated[int, typer.Option("--top-k", help="Top-k filter (0: off).")]
TopPOpt = Annotated[float, typer.Option("--top-p", help="Top-p filter (1: off).")]
MinPOpt = Annotated[float, typer.Option("--min-p", help="Min-p filter (0: off).")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Random seed, for reproducible sampling.", show_default=False)]
MaxTokensOpt = Annotated[int, typer.Option("-n", "--max-tokens", help="Most tokens to generate.")]
CrossVocabOpt = Annotated[
    bool, typer.Option("--cross-vocab", help="Allow a draft with another vocabulary (drafts go through text).")
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", help="Show llama.cpp's log and tracebacks.")]


def check_positive(name: str, value: Optional[int], *, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise UsageError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def check_draft_max(k: Optional[int]) -> None:
    if k is not None and not 1 <= k <= MAX_DRAFT:
        raise UsageError(f"--draft-max must be between 1 and {MAX_DRAFT}, got {k}")


def check_sampling(temp: float, top_k: int, top_p: float, min_p: float) -> None:
    if not temp >= 0.0:  # also catches NaN
        raise UsageError(f"--temp must be >= 0, got {temp}")
    if top_k < 0:
        raise UsageError(f"--top-k must be >= 0, got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise UsageError(f"--top-p must be in (0, 1], got {top_p}")
    if not 0.0 <= min_p <= 1.0:
        raise UsageError(f"--min-p must be in [0, 1], got {min_p}")


def check_mode(mode: Optional[str]) -> None:
    if mode is not None and mode not in MODES:
        raise UsageError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")


def parse_ngram_sizes(text: Optional[str]) -> Optional[tuple[int, ...]]:
    if text is None:
        return None
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UsageError(f"--ngram takes comma-separated sizes like 4,3,2, got {text!r}") from None
    if not sizes or min(sizes) < 1 or max(sizes) > 16:
        raise UsageError(f"--ngram sizes must be between 1 and 16, got {text!r}")
    return sizes
