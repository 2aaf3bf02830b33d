"""Prompt sets for benchmarks: plain text blocks, JSONL (`prompt`, or Spec-Bench `turns` +
`category`, optionally gzipped), and a small built-in set written for this project.

The one prompt loader of specllm bench and of the scripts (auto-vs-plain, compare-llama-cpp).
"""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from .errors import UsageError

DEFAULT_CATEGORY = "default"


@dataclass(frozen=True)
class BenchPrompt:
    text: str
    category: str = DEFAULT_CATEGORY
    # A label, not part of the prompt (equal prompts are equal whatever their ids): JSONL's
    # "task_id" (HumanEval) or "question_id" (Spec-Bench), else "<file>:<line>".
    id: str = field(default="", compare=False)


_RIVER_REPORT = """\
The council of Lowmere met on Tuesday to decide the future of the Old Mill Bridge, a stone \
footbridge built in 1842 that has been closed since floods cracked its central arch last winter. \
Engineers presented two options. Repairing the arch with matching stone would cost about 1.4 \
million and take eighteen months, because the quarry that supplied the original blocks reopened \
only for small orders. Replacing the bridge with a steel span would cost 900,000 and could be \
finished before next summer, but the heritage society argued that the town would lose the \
landmark that appears on its coat of arms. Shop owners on Mill Street reported that their trade \
has fallen by a fifth since the closure, as walkers from the station now take the road bridge \
and skip the old quarter. After three hours of debate the council voted six to three to repair \
the stone arch, to open a temporary pontoon crossing within eight weeks, and to apply for a \
regional heritage grant that could cover up to half of the cost."""

_STARTER_NOTE = """\
Our bakery keeps one sourdough starter alive for every loaf we sell. Each evening the head baker \
discards all but 200 grams of it and feeds it with 200 grams of rye flour and 200 grams of water \
at 26 degrees. The jar stays on the shelf above the proofing cabinet, where the temperature \
hardly changes. By six the next morning the starter has tripled and smells of yoghurt and green \
apples; that is when it goes into the dough. If the kitchen is cold, the feed uses warmer water \
rather than more flour, because extra flour makes the bread sour. Twice a year we dry a spoonful \
on baking paper and keep the flakes in the freezer, so that a mistake or a holiday closure never \
costs us the culture that has given our bread its taste for eleven years."""

BUILTIN_PROMPTS = (
    BenchPrompt(
        "Write a Python function `merge_intervals(intervals)` that takes a list of (start, end) pairs, "
        "merges the ones that overlap and returns them sorted by start. Give it a docstring with "
        "three doctest examples, then explain its running time in two sentences.",
        "code",
    ),
    BenchPrompt(
        "Add type hints and a docstring to this function, and rewrite the loop as a comprehension "
        "where that makes it clearer. Return the whole function.\n\n"
        "def word_counts(lines, min_length):\n"
        "    counts = {}\n"
        "    for line in lines:\n"
        "        for word in line.lower().split():\n"
        "            word = word.strip('.,;:!?')\n"
        "            if len(word) >= min_length:\n"
        "                counts[word] = counts.get(word, 0) + 1\n"
        "    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))",
        "code",
    ),
    BenchPrompt(f"{_RIVER_REPORT}\n\nSummarize the report above in three sentences for the town newsletter.",
                "summarization"),
    BenchPrompt(f"{_STARTER_NOTE}\n\nSummarize this note as a short checklist a new baker could follow.",
                "summarization"),
    BenchPrompt(
        "Write a short story, about 200 words, about a lighthouse keeper who finds a message in a "
        "bottle addressed to her, dated forty years in the future.",
        "writing",
    ),
    BenchPrompt(
        "Write a friendly letter to a neighbour asking them to water your tomato plants while you are "
        "away for two weeks. Mention where the key is, how often to water, and offer something in return.",
        "writing",
    ),
)


# `specllm drafts`' built-in set: a little of what people ask a local model, each as (prompt,
# rendered in the target's chat template?). Code completion and prose continue raw text; the
# summary, the code request and the question are chat answers.
DRAFTS_PROMPTS = (
    ("import json\n\n\ndef load_settings(path, defaults=None):\n"
     '    """Read a JSON settings file and return a dict, with `defaults` for missing keys."""\n', False),
    ("The lighthouse had been dark for eleven years when Mara climbed its stairs again. She carried", False),
    (f"{_RIVER_REPORT}\n\nSummarize the report above in three sentences for the town newsletter.", True),
    ("Write a Python function that checks whether a string is a palindrome, ignoring case, spaces and "
     "punctuation, with a short docstring.", True),
    ("What is the difference between a list and a tuple in Python, and when would you use each?", True),
)


def load_prompts(path: Path, *, default_category: str = DEFAULT_CATEGORY) -> list[BenchPrompt]:
    """Prompts from a file: JSONL (a .jsonl/.json file, or lines of JSON objects) or plain text.
    A .gz file is read decompressed. Prompts without a "category" get `default_category`."""
    try:
        data = path.read_bytes()
        if path.suffix.lower() == ".gz":
            data = gzip.decompress(data)
    except FileNotFoundError:
        raise UsageError(f"prompt file not found: {path}") from None
    except OSError as e:  # also gzip.BadGzipFile
        raise UsageError(f"cannot read prompt file {path}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{path} is not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})") from None
    suffix = path.suffixes[-2] if path.suffix.lower() == ".gz" and len(path.suffixes) > 1 else path.suffix
    jsonl = True if suffix.lower() in (".jsonl", ".json") else None
    return parse_prompts(text, source=path.name, jsonl=jsonl, default_category=default_category)


def parse_prompts(
    text: str, *, source: str = "prompts", jsonl: Optional[bool] = None, default_category: str = DEFAULT_CATEGORY
) -> list[BenchPrompt]:
    """Plain text: one prompt per block of lines, blocks separated by blank lines.
    JSONL: one object per line with a "prompt" string, or a Spec-Bench "turns" list (the first
    turn is used: later turns answer a reply the bench does not have), and an optional "category".
    `jsonl=None` guesses from the first line."""
    if jsonl is None:
        jsonl = _looks_like_jsonl(text)
    prompts = _parse_jsonl(text, source, default_category) if jsonl else _parse_blocks(text, default_category)
    if not prompts:
        raise UsageError(f"{source} holds no prompts")
    return prompts


def _looks_like_jsonl(text: str) -> bool:
    first = next((line for line in text.splitlines() if line.strip()), "")
    try:
        obj = json.loads(first)
    except ValueError:
        return False
    return isinstance(obj, dict) and ("prompt" in obj or "turns" in obj)


def _parse_blocks(text: str, category: str) -> list[BenchPrompt]:
    blocks = re.split(r"\n(?:[ \t]*\n)+", text.replace("\r\n", "\n"))
    return [BenchPrompt(block.strip("\n"), category) for block in blocks if block.strip()]


def _parse_jsonl(text: str, source: str, default_category: str) -> list[BenchPrompt]:
    prompts = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{source} line {number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UsageError(f"{where}: not JSON ({e.msg} at column {e.colno})") from None
        prompts.append(_prompt_from_object(obj, where, default_category, f"{source}:{number}"))
    return prompts


def _prompt_from_object(obj: object, where: str, default_category: str, default_id: str) -> BenchPrompt:
    if not isinstance(obj, dict):
        raise UsageError(f"{where}: expected a JSON object")
    if "prompt" in obj:
        text = obj["prompt"]
    elif "turns" in obj:
        turns = obj["turns"]
        if not isinstance(turns, list) or not turns:
            raise UsageError(f'{where}: "turns" must be a non-empty list of strings')
        text = turns[0]
    else:
        raise UsageError(f'{where}: needs a "prompt" string or a "turns" list',
                         hint='e.g. {"prompt": "def add(a, b):", "category": "code"}')
    if not isinstance(text, str) or not text.strip():
        raise UsageError(f"{where}: the prompt must be a non-empty string")
    category = obj.get("category", default_category)
    if not isinstance(category, str) or not category.strip():
        raise UsageError(f'{where}: "category" must be a non-empty string')
    prompt_id = obj.get("task_id", obj.get("question_id"))
    return BenchPrompt(text, category.strip(), default_id if prompt_id is None else str(prompt_id))


def select_prompts(
    prompts: Sequence[BenchPrompt], categories: Optional[Sequence[str]] = None, limit: Optional[int] = None
) -> list[BenchPrompt]:
    chosen = [p for p in prompts if not categories or p.category in categories]
    if not chosen:
        known = ", ".join(dict.fromkeys(p.category for p in prompts))
        raise UsageError(f"no prompt of category {', '.join(categories or ())}", hint=f"the categories are: {known}")
    return chosen[:limit] if limit is not None else chosen


def first_of_each_category(prompts: Sequence[BenchPrompt], n: Optional[int]) -> list[BenchPrompt]:
    """The first `n` prompts of each category (all of them when n is None), in file order."""
    if n is None:
        return list(prompts)
    taken: Counter = Counter()
    chosen = []
    for prompt in prompts:
        if taken[prompt.category] < n:
            taken[prompt.category] += 1
            chosen.append(prompt)
    return chosen


def file_category(path: Path) -> str:
    """A file's default category: its name before the first dot (HumanEval.jsonl.gz -> HumanEval)."""
    return path.name.split(".")[0]
