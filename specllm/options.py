"""CLI option types shared between commands (llama.cpp-style short names).

Defaults, checks and the precedence of settings (option > SPECLLM_* > models.toml > built-in)
live in config.py; the help texts here are written from its constants.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .config import AUTO_DEFAULT_K, DEFAULT_K, DEFAULT_MODE, DEFAULT_NGRAM_SIZES, MODES, format_sizes

# --help groups the options in these panels.
MODELS, SPECULATION, SAMPLING, IO = "Models and hardware", "Speculation", "Sampling", "Input and output"
FLAG = ""  # metavar of on/off flags: typer would print <bool> next to them

ModelOpt = Annotated[
    Optional[str],
    typer.Option("-m", "--model", help="Target GGUF: a path, a models.toml name, ollama:MODEL[:TAG], hf:ORG/REPO[:QUANT], "
                 "lmstudio:PUB/MODEL or a local model's name (`specllm models list`; default: the default pair).",
                 envvar="SPECLLM_MODEL", show_default=False, metavar="GGUF", rich_help_panel=MODELS),
]
DraftModelOpt = Annotated[
    Optional[str],
    typer.Option("-md", "--draft-model", help="Draft GGUF: a path, a models.toml name or a local model's name (as -m).",
                 envvar="SPECLLM_DRAFT_MODEL", show_default=False, metavar="GGUF", rich_help_panel=MODELS),
]
ModeOpt = Annotated[
    Optional[str],
    typer.Option("--mode", help=f"{' | '.join(MODES)} (none: plain decoding). Default: {DEFAULT_MODE}.",
                 envvar="SPECLLM_MODE", show_default=False, metavar="MODE", rich_help_panel=SPECULATION),
]
DraftMaxOpt = Annotated[
    Optional[int],
    typer.Option("-k", "--draft-max", show_default=False, metavar="K", rich_help_panel=SPECULATION,
                 help=f"Most tokens drafted per round (default {DEFAULT_K}; in auto mode the upper bound, "
                 f"default {AUTO_DEFAULT_K})."),
]
NgramOpt = Annotated[
    Optional[str],
    typer.Option("--ngram", help="N-gram sizes tried by the n-gram drafter, longest first "
                 f"(default {format_sizes(DEFAULT_NGRAM_SIZES)}).",
                 show_default=False, metavar="SIZES", rich_help_panel=SPECULATION),
]
CtxSizeOpt = Annotated[
    int, typer.Option("-c", "--ctx-size", help="Target context size in tokens.", envvar="SPECLLM_CTX_SIZE",
                      metavar="N", rich_help_panel=MODELS)
]
ParallelOpt = Annotated[
    int, typer.Option("-np", "--parallel", help="Sequences decoded together in one batch, each with its own "
                      "--ctx-size (the KV cache holds N x --ctx-size).", metavar="N",
                      rich_help_panel=MODELS)
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
# generate's -n: like llama.cpp's, unbounded by default (-1): a generation runs to the model's end of
# generation, bounded by the context. A fixed default cut the first answer a new user saw mid-sentence.
MaxTokensOpt = Annotated[Optional[int], typer.Option(
    "-n", "--max-tokens", help="Most tokens to generate (default: until the end of generation or a full context; "
    "-1 says the same).", show_default=False, metavar="N", rich_help_panel=SAMPLING)]
# bench's -n: every run of a sweep generates the same number of tokens, so there is a number.
BenchMaxTokensOpt = Annotated[int, typer.Option("-n", "--max-tokens", help="Tokens generated by each run.",
                                                metavar="N", rich_help_panel=SAMPLING)]
CrossVocabOpt = Annotated[
    bool, typer.Option("--cross-vocab", help="Allow a draft with another vocabulary (drafts go through text).",
                       metavar=FLAG, rich_help_panel=SPECULATION)
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", help="Show llama.cpp's log and tracebacks.", metavar=FLAG,
                                          rich_help_panel=IO)]
DraftLoraOpt = Annotated[
    Optional[str],
    typer.Option("--draft-lora", help="GGUF LoRA adapter applied to the draft (made by `specllm tune-draft`).",
                 envvar="SPECLLM_DRAFT_LORA", show_default=False, metavar="FILE", rich_help_panel=MODELS),
]
