"""Synthetic training prompts written by the target itself (`tune-draft --synthetic N`).

Real prompts are few; Hong et al. (2025) find prompts a model writes itself worth 80-93% of
real ones for distillation. Each attempt j shows the target one of the real training prompts
(in turn) and asks, in its chat template, for a new prompt of the same kind, its answer begun
with the example's first word; it answers sampled at temperature 1 with its own seed, so every
attempt is another draw. A target without a chat template continues the first line of the
example instead.

Answers are cleaned (code fences dropped), and those empty or equal (up to whitespace) to a real
prompt or an earlier answer are dropped; more attempts are made until N are distinct, at most
MAX_ATTEMPTS_PER_PROMPT x N in all. Every attempt is a JSON line of the prompts file, after a
header that says how they were made, flushed as it finishes (in any order):

    {"specllm_synthetic_prompts": 1, "target": ..., "examples": "<digest>", "seed": 0, ...}
    {"attempt": 4, "text": "def count_vowels(s: str) -> int:\n    \"\"\"..."}

A rerun reads them and makes only the attempts missing, so an interrupted run keeps what it
made and the prompts are the same as an uninterrupted run's.
"""

from __future__ import annotations

import hashlib
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..engine import Engine, Request
from ..errors import ModelLoadError, TuneError
from ..sampling import SamplingParams
from .data import FORMAT_VERSION, JsonLinesWriter, read_json_lines, run_batched

MARKER = "specllm_synthetic_prompts"  # the header's key, with the format version (data.FORMAT_VERSION)
# The target's own distribution, unsharpened: the point is variety, not its most likely prompt.
TEMPERATURE = 1.0
# Room for a signature with its docstring, or a question with its context; a rambling answer is cut.
MAX_TOKENS = 160
# Duplicates and empty answers are replaced by new attempts, up to this many attempts per prompt
# wanted (a target that keeps writing the same prompt stops there, with fewer).
MAX_ATTEMPTS_PER_PROMPT = 3
# An example longer than this is cut: its kind and format show in its beginning.
EXAMPLE_CHARS = 1200
# Attempt j samples with seed (seed + SEED_OFFSET + j): apart from the data's sample seeds.
SEED_OFFSET = 1 << 20

INSTRUCTION = ("Here is an example of a prompt:\n\n{example}\n\nWrite one new prompt of the same kind and format, "
               "for a different small task. Reply with the new prompt only.")


@dataclass(frozen=True)
class SyntheticSettings:
    """What decides the attempts: a file made with other settings cannot be continued."""

    target: str
    target_bytes: int
    examples: str  # a digest of the real prompts shown as examples
    seed: int = 0
    temperature: float = TEMPERATURE
    max_tokens: int = MAX_TOKENS

    def header(self) -> dict:
        return {MARKER: FORMAT_VERSION, **asdict(self)}


def examples_digest(examples: Sequence[str]) -> str:
    return hashlib.sha256("\x00".join(examples).encode("utf-8")).hexdigest()[:16]


def read_attempts(path: Path, settings: SyntheticSettings) -> dict[int, str]:
    """The attempts in a prompts file made with `settings`."""
    attempts = {}
    for entry in read_json_lines(path, MARKER, settings.header(), "synthetic prompts file",
                                 "use the same target, prompts and --seed to continue it, or remove the file"):
        try:
            attempts[int(entry["attempt"])] = str(entry["text"])
        except (KeyError, TypeError, ValueError):
            break  # the line an interruption cut off
    return attempts


def _normal(text: str) -> str:
    return " ".join(text.split())


def clean(answer: str) -> str:
    """The prompt in an answer: without the code fences a chat model wraps code in."""
    lines = answer.strip().splitlines()
    if lines and lines[0].lstrip().startswith("```"):
        lines = lines[1:]
    if lines and lines[-1].strip().startswith("```"):
        lines = lines[:-1]
    return "\n".join(lines).strip("\n")


def distinct(attempts: dict[int, str], examples: Sequence[str], count: int) -> list[str]:
    """The first `count` attempts, in attempt order, that are not empty and equal neither a real
    prompt nor an earlier attempt (up to whitespace)."""
    seen = {_normal(e) for e in examples}
    chosen = []
    for j in sorted(attempts):
        key = _normal(attempts[j])
        if key and key not in seen:
            seen.add(key)
            chosen.append(attempts[j])
            if len(chosen) == count:
                break
    return chosen


def _chat_template(engine: Engine) -> Optional[Callable[[str], str]]:
    """The target's chat template as a function of the user's message; None without one."""
    try:
        engine.target_model.apply_chat_template("")
    except ModelLoadError:
        return None
    return engine.target_model.apply_chat_template


def _attempt(j: int, examples: Sequence[str], settings: SyntheticSettings,
             chat_template: Optional[Callable[[str], str]]) -> tuple[str, str, Request]:
    """(what the answer is appended to, the prompt text, its request) of attempt j. In the chat
    template the answer starts with the example's first word (`def`, `from`, `Write`...): a
    small chat model asked for "a prompt of the same kind" otherwise often describes a task in
    prose where the examples are code."""
    example = examples[j % len(examples)][:EXAMPLE_CHARS].strip("\n")
    request = Request(max_tokens=settings.max_tokens, params=SamplingParams(temperature=settings.temperature),
                      seed=settings.seed + SEED_OFFSET + j, mode="none")
    if chat_template is not None:
        head = example.split(maxsplit=1)[0] if example.strip() else ""
        return head, chat_template(INSTRUCTION.format(example=example)) + head, request
    first_line = example.split("\n", 1)[0]
    return first_line, first_line, request


def synthetic_prompts(engine: Engine, path: Path, examples: Sequence[str], count: int, seed: int = 0,
                      on_prompt: Callable[[str], None] = lambda text: None) -> list[str]:
    """`count` distinct prompts the target writes after the `examples` (fewer if it keeps
    repeating itself), resuming the attempts already in `path`."""
    if not examples:
        raise TuneError("--synthetic needs real training prompts to show the target as examples")
    model_path = Path(engine.config.target)
    settings = SyntheticSettings(target=model_path.name, target_bytes=model_path.stat().st_size,
                                 examples=examples_digest(examples), seed=seed)
    attempts = read_attempts(path, settings)
    writer = JsonLinesWriter(path, settings.header(), ({"attempt": j, "text": attempts[j]} for j in sorted(attempts)))
    chat_template = _chat_template(engine)
    limit, most = count, count * MAX_ATTEMPTS_PER_PROMPT
    try:
        while True:
            missing = count - len(distinct(attempts, examples, count))
            todo = [j for j in range(limit) if j not in attempts]
            if missing <= 0:
                break
            if not todo:
                if limit >= most:
                    break
                limit = min(most, limit + missing)
                continue
            heads = {}
            items = []
            # The attempts of one example run side by side: their prompt is the same, so it is
            # decoded once for all of them (shared_prefix.py) instead of once per attempt.
            for j in sorted(todo, key=lambda j: (j % len(examples), j)):
                heads[j], text, request = _attempt(j, examples, settings, chat_template)
                items.append((j, text, request))
            with closing(run_batched(engine, items)) as finished:
                for done in finished:
                    text = clean(heads[done.tag] + engine.target_model.vocab.detokenize(done.generation.tokens)
                                 .decode("utf-8", "replace"))
                    attempts[done.tag] = text
                    writer.write({"attempt": done.tag, "text": text})
                    on_prompt(text)
    finally:
        writer.close()
    return distinct(attempts, examples, count)


def default_path(data_path: Path) -> Path:
    """Next to the data file: DATA.synthetic.jsonl."""
    return data_path.with_name(data_path.name + ".synthetic.jsonl")

