"""The configurations compare-llama-cpp runs, the command line of each, and reading the timing
each program prints.

    name                 column    program and flags
    llama-plain          plain     llama-completion -no-cnv
    llama-draft-K        k=K       llama-speculative-simple -md DRAFT --spec-type draft-simple
                                   --spec-draft-n-max K   (K = 2, 4, 8; p_min 0: always K)
    llama-ngram-simple   ngram-s   llama-speculative-simple --spec-type ngram-simple
                                   (llama.cpp's defaults: 12-token lookup, 48-token drafts)
    llama-ngram-mod      ngram-m   llama-speculative-simple --spec-type ngram-mod
                                   (llama.cpp's defaults: 24-token match, 48-64-token drafts)
    specllm-M            M         specllm generate --mode M --json --no-stats  (M = none, ngram,
                                   auto; -md only where a draft is used)
    specllm-draft-4      k=4       specllm generate --mode draft -k 4 ...

What each number is: decode-phase tokens/s, generated tokens divided by the time after the
prompt was processed (prompt processing and model loading are excluded on both sides):
    llama-completion          `eval time = ... tokens per second` of its perf print:
                              llama_decode time only (its sampling is not in it, so this is a
                              strict reference for specllm, whose time includes sampling and Python)
    llama-speculative-simple  `decoded N tokens in X seconds, speed: Y t/s`: the whole loop
    specllm                   stats.tokens_per_second of `--json`: the whole decode loop
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from .util import Failure, first_error, last_line

DRAFT_KS = (2, 4, 8)
SPECLLM_DRAFT_K = 4
SPEC_TYPES = (("ngram-simple", "ngram-s"), ("ngram-mod", "ngram-m"))  # --spec-type values and their columns
# What issue 10 compares: llama.cpp plain, its two n-gram drafters and a draft model at k=4,
# against specllm's plain decoding and auto mode. `--configs all` runs every configuration.
DEFAULT_CONFIGS = ("llama-plain", "llama-ngram-simple", "llama-ngram-mod", "llama-draft-4", "specllm-none",
                   "specllm-auto")


@dataclass(frozen=True)
class Config:
    name: str  # e.g. llama-draft-4, specllm-auto
    program: str  # llama-completion, llama-speculative-simple or specllm
    label: str  # column header under the tool's name
    args: tuple[str, ...]  # what distinguishes it from the other configurations of its program
    uses_draft: bool = False  # loads the draft model

    @property
    def tool(self) -> str:
        return "specllm" if self.program == "specllm" else "llama.cpp"

    @property
    def llama_speculative(self) -> bool:  # a candidate for auto/best
        return self.program == "llama-speculative-simple"


def all_configs() -> list[Config]:
    configs = [Config("llama-plain", "llama-completion", "plain", ())]
    for k in DRAFT_KS:
        configs.append(Config(f"llama-draft-{k}", "llama-speculative-simple", f"k={k}",
                              ("--spec-type", "draft-simple", "--spec-draft-n-max", str(k)), uses_draft=True))
    for spec_type, label in SPEC_TYPES:
        configs.append(Config(f"llama-{spec_type}", "llama-speculative-simple", label, ("--spec-type", spec_type)))
    configs += [
        Config("specllm-none", "specllm", "none", ("--mode", "none")),
        Config("specllm-ngram", "specllm", "ngram", ("--mode", "ngram")),
        Config(f"specllm-draft-{SPECLLM_DRAFT_K}", "specllm", f"k={SPECLLM_DRAFT_K}",
               ("--mode", "draft", "-k", str(SPECLLM_DRAFT_K)), uses_draft=True),
        Config("specllm-auto", "specllm", "auto", ("--mode", "auto"), uses_draft=True),
    ]
    return configs


def chosen_configs(names: Optional[str]) -> list[Config]:
    """The configurations named (comma-separated; "all": every one), in table order."""
    configs = all_configs()
    if names is None:
        wanted = list(DEFAULT_CONFIGS)
    elif names.strip() == "all":
        return configs
    else:
        wanted = [n.strip() for n in names.split(",") if n.strip()]
    known = {c.name for c in configs}
    unknown = [n for n in wanted if n not in known]
    if unknown or not wanted:
        raise Failure(f"unknown configuration {', '.join(unknown) or '(none given)'}; known: all, "
                      f"{', '.join(sorted(known))}")
    return [c for c in configs if c.name in wanted]


@dataclass
class Settings:
    target: str  # GGUF paths, for llama.cpp
    draft: str
    specllm_models: list[str]  # -m/-md for specllm; empty = its default pair
    threads: int
    n_gpu_layers: int
    n_predict: int
    ctx_size: int
    specllm: str  # the command, split like a shell would
    bin_dir: str = ""
    prompt_format: str = "raw"  # raw, chat or both


@dataclass
class Run:
    prompt: str
    category: str
    config: str
    tokens_per_second: float
    tokens: int  # generated tokens, as the program reports them
    prompt_tokens: Optional[int]
    details: dict = field(default_factory=dict)


def write_prompt_file(path: Path, text: str) -> None:
    """The prompt for llama.cpp's -f, which drops one trailing newline of the file: one more
    keeps the text identical to what specllm reads (a chat prompt ends in a newline)."""
    path.write_text(text + "\n", encoding="utf-8")


def command(config: Config, settings: Settings, prompt_file: Path) -> list[str]:
    """The command line of one run. Both sides: the same models, threads, GPU layers, context,
    greedy decoding and -n new tokens with --ignore-eos; the prompt as text (no template applied
    by either program: a chat prompt comes already rendered)."""
    ngl = "all" if settings.n_gpu_layers < 0 else str(settings.n_gpu_layers)
    common = ["-n", str(settings.n_predict), "-c", str(settings.ctx_size), "-t", str(settings.threads),
              "--temp", "0", "--ignore-eos"]
    if config.tool == "llama.cpp":
        # The draft's threads default to the target's (-t), for decoding and for batches alike.
        draft = ["-md", settings.draft, "-ngld", ngl] if config.uses_draft else []
        # -no-cnv: a GGUF with a chat template would otherwise start an interactive chat.
        no_chat = ["-no-cnv"] if config.program == "llama-completion" else []
        return [str(Path(settings.bin_dir) / config.program), "-m", settings.target, "-f", str(prompt_file),
                *common, "-ngl", ngl, *draft, *no_chat, *config.args]
    models = settings.specllm_models
    if models and not config.uses_draft:
        models = models[:2]  # -m only
    return [*shlex.split(settings.specllm), "generate", *models, *config.args, *common,
            "-td", str(settings.threads), "-ngl", str(settings.n_gpu_layers), "-ngld", str(settings.n_gpu_layers),
            "--json", "--no-stats", "-"]


def run_config(config: Config, prompt_id: str, category: str, text: str, settings: Settings,
               prompt_file: Path) -> Run:
    """Run one configuration on one prompt (llama.cpp reads `prompt_file`, specllm stdin)."""
    cmd = command(config, settings, prompt_file)
    stdin = text.encode("utf-8") if config.tool == "specllm" else b""
    done = subprocess.run(cmd, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout = done.stdout.decode("utf-8", errors="replace")
    stderr = done.stderr.decode("utf-8", errors="replace")
    if done.returncode != 0:
        raise Failure(f"{config.name} failed on {prompt_id} (exit {done.returncode}): {first_error(stderr or stdout)}")
    # specllm's stdout is its JSON; llama.cpp's timings are log lines (stderr), its text goes to stdout.
    measured = PARSERS[config.program](stdout if config.tool == "specllm" else stdout + stderr)
    if measured is None:
        raise Failure(f"{config.name} on {prompt_id}: no timing found in its output (last line: "
                      f"{last_line(stderr or stdout)})")
    tokens_per_second, tokens, prompt_tokens, details = measured
    return Run(prompt_id, category, config.name, tokens_per_second, tokens, prompt_tokens, details)


# (tokens/s, generated tokens, prompt tokens or None, details) or None when no timing is found.
Measured = Optional[tuple[float, int, Optional[int], dict]]

NUMBER = r"([\d.]+|nan|inf|-nan)"
# common_perf_print (llama-completion) and llama_perf_context_print print the same lines.
PROMPT_EVAL = re.compile(r"prompt eval time =\s*[\d.]+ ms /\s*(\d+) tokens")
EVAL = re.compile(r"(?<!prompt )eval time =\s*([\d.]+) ms /\s*(\d+) runs\s*\(.*?" + NUMBER + r" tokens per second\)")
SAMPLING = re.compile(r"sampling time =\s*([\d.]+) ms")
ENCODED = re.compile(r"encoded\s+(\d+) tokens in")
DECODED = re.compile(r"decoded\s+(\d+) tokens in\s+([\d.]+) seconds, speed:\s*" + NUMBER + r" t/s")
SPEC_COUNTS = re.compile(r"^.*?\b(n_drafted|n_accept)\s*=\s*(\d+)", re.MULTILINE)


def parse_completion(output: str) -> Measured:
    """llama-completion: the target's eval (decode) time from its perf print."""
    match = EVAL.search(output)
    if not match:
        return None
    eval_ms, runs, rate = float(match.group(1)), int(match.group(2)), float(match.group(3))
    prompt = PROMPT_EVAL.search(output)
    sampling = SAMPLING.search(output)
    details = {"eval_ms": eval_ms}
    if sampling:
        details["sampling_ms"] = float(sampling.group(1))
    return rate, runs, int(prompt.group(1)) if prompt else None, details


def parse_speculative_simple(output: str) -> Measured:
    """llama-speculative-simple: its `decoded N tokens in X seconds, speed: Y t/s` line."""
    match = DECODED.search(output)
    if not match:
        return None
    encoded = ENCODED.search(output)
    details = {"decode_ms": float(match.group(2)) * 1e3}
    details.update({key: int(value) for key, value in SPEC_COUNTS.findall(output)})
    return float(match.group(3)), int(match.group(1)), int(encoded.group(1)) if encoded else None, details


def parse_specllm(stdout: str) -> Measured:
    """specllm generate --json: stats.tokens_per_second, the decode-phase rate."""
    for line in reversed(stdout.strip().splitlines()):
        try:
            stats = json.loads(line)["stats"]
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
        details = {key: stats[key] for key in ("decode_ms", "acceptance_rate", "mean_draft_length",
                                                "rounds_by_source") if key in stats}
        return float(stats["tokens_per_second"]), int(stats["generated"]), stats.get("prompt_tokens"), details
    return None


PARSERS: dict[str, Callable[[str], Measured]] = {
    "llama-completion": parse_completion,
    "llama-speculative-simple": parse_speculative_simple,
    "specllm": parse_specllm,
}
