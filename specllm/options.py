"""CLI option types shared between commands (llama.cpp-style short names), and their checks.

Precedence of settings: command-line option > environment variable (SPECLLM_*) > models.toml
(the pair's recommended settings) > the built-in defaults below.
"""

from __future__ import annotations

import math
from typing import Annotated, Optional

import typer

from .errors import UsageError

MODES = ("auto", "draft", "ngram", "none")
MAX_DRAFT = 256  # a round verifies k + 1 tokens in one batch of at most n_batch (512)
MIN_CTX = 16
MAX_CTX = 1 << 24  # llama.cpp takes n_ctx as uint32; larger values would silently wrap

# --help groups the options in these panels.
MODELS, SPECULATION, SAMPLING, IO = "Models and hardware", "Speculation", "Sampling", "Input and output"
FLAG = ""  # metavar of on/off flags: typer would print <bool> next to them

ModelOpt = Annotated[
    Optional[str],
    typer.Option("-m", "--model", help="Target GGUF: a path or a models.toml name (default: the default pair).",
                 envvar="SPECLLM_MODEL", show_default=False, metavar="GGUF", rich_help_panel=MODELS),
]
DraftModelOpt = Annotated[
    Optional[str],
    typer.Option("-md", "--draft-model", help="Draft GGUF: a path or a models.toml name.",
                 envvar="SPECLLM_DRAFT_MODEL", show_default=False, metavar="GGUF", rich_help_panel=MODELS),
]
ModeOpt = Annotated[
    Optional[str],
    typer.Option("--mode", help="auto | draft | ngram | none (plain decoding). Default: auto.",
                 envvar="SPECLLM_MODE", show_default=False, metavar="MODE", rich_help_panel=SPECULATION),
]
DraftMaxOpt = Annotated[
    Optional[int],
    typer.Option("-k", "--draft-max", show_default=False, metavar="K", rich_help_panel=SPECULATION,
                 help="Most tokens drafted per round (default 4; in auto mode the upper bound, default 64)."),
]
NgramOpt = Annotated[
    Optional[str],
    typer.Option("--ngram", help="N-gram sizes tried by the n-gram drafter, longest first (e.g. 4,3,2).",
                 show_default=False, metavar="SIZES", rich_help_panel=SPECULATION),
]
CtxSizeOpt = Annotated[
    int, typer.Option("-c", "--ctx-size", help="Target context size in tokens.", envvar="SPECLLM_CTX_SIZE",
                      metavar="N", rich_help_panel=MODELS)
]
DraftCtxSizeOpt = Annotated[
    Optional[int], typer.Option("-cd", "--draft-ctx-size", help="Draft context size (default: --ctx-size).",
                                show_default=False, metavar="N", rich_help_panel=MODELS)
]
ThreadsOpt = Annotated[
    Optional[int], typer.Option("-t", "--threads", help="CPU threads for the target (default: all cores).",
                                envvar="SPECLLM_THREADS", show_default=False, metavar="N", rich_help_panel=MODELS)
]
DraftThreadsOpt = Annotated[
    Optional[int], typer.Option("-td", "--draft-threads", help="CPU threads for the draft (default: --threads).",
                                show_default=False, metavar="N", rich_help_panel=MODELS)
]
GpuLayersOpt = Annotated[
    int, typer.Option("-ngl", "--n-gpu-layers", help="Target layers offloaded to the GPU (-1: all).",
                      envvar="SPECLLM_N_GPU_LAYERS", metavar="N", rich_help_panel=MODELS)
]
DraftGpuLayersOpt = Annotated[
    Optional[int], typer.Option("-ngld", "--draft-n-gpu-layers", show_default=False, metavar="N", rich_help_panel=MODELS,
                                help="Draft layers offloaded to the GPU (default: as -ngl).")
]
RpcOpt = Annotated[
    Optional[str],
    typer.Option("--rpc", help="llama.cpp RPC workers (`specllm rpc-server`) holding the target's layers, "
                 "comma-separated; with -ngl 0 all layers go there. The draft stays on this machine.",
                 envvar="SPECLLM_RPC", show_default=False, metavar="HOST:PORT[,..]", rich_help_panel=MODELS),
]
TempOpt = Annotated[float, typer.Option("--temp", help="Temperature; 0 = greedy (output identical to the target's).",
                                        metavar="T", rich_help_panel=SAMPLING)]
TopKOpt = Annotated[int, typer.Option("--top-k", help="Top-k filter (0: off).", metavar="K", rich_help_panel=SAMPLING)]
TopPOpt = Annotated[float, typer.Option("--top-p", help="Top-p filter (1: off).", metavar="P",
                                        rich_help_panel=SAMPLING)]
MinPOpt = Annotated[float, typer.Option("--min-p", help="Min-p filter (0: off).", metavar="P",
                                        rich_help_panel=SAMPLING)]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Random seed, for reproducible sampling.",
                                                show_default=False, metavar="N", rich_help_panel=SAMPLING)]
SamplerOpt = Annotated[Optional[str], typer.Option(
    "--sampler", help="How sampled drafts are verified: gumbel (default: one seed gives one text whatever the "
    "drafter) or rejection (min(1, p/q), the highest acceptance for model drafts).", envvar="SPECLLM_SAMPLER",
    show_default=False, metavar="NAME", rich_help_panel=SAMPLING)]
MemoryOpt = Annotated[Optional[bool], typer.Option(
    "--memory/--no-memory", help="Auto mode drafts from earlier outputs of this target: by default those of this "
    "run (a --jsonl batch); --memory keeps them on disk for later runs too (0600, bounded), --no-memory not at all.",
    envvar="SPECLLM_MEMORY", show_default=False,
    rich_help_panel=SPECULATION)]
MaxTokensOpt = Annotated[int, typer.Option("-n", "--max-tokens", help="Most tokens to generate.", metavar="N",
                                           rich_help_panel=SAMPLING)]
CrossVocabOpt = Annotated[
    bool, typer.Option("--cross-vocab", help="Allow a draft with another vocabulary (drafts go through text).",
                       metavar=FLAG, rich_help_panel=SPECULATION)
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", help="Show llama.cpp's log and tracebacks.", metavar=FLAG,
                                          rich_help_panel=IO)]


def check_positive(name: str, value: Optional[int], *, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise UsageError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def check_draft_max(k: Optional[int]) -> None:
    if k is not None and not 1 <= k <= MAX_DRAFT:
        raise UsageError(f"--draft-max must be between 1 and {MAX_DRAFT}, got {k}")


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
    from .sampling import SAMPLERS

    if sampler is not None and sampler not in SAMPLERS:
        raise UsageError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")


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
