"""Prompts for a bench run: token ids through the engine, optionally padded to a context length."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from ..engine import Engine, Request
from ..prompts import BUILTIN_PROMPTS, BenchPrompt

SEPARATOR = "\n\n"  # between the filler and the prompt


@dataclass(frozen=True)
class PreparedPrompt:
    tokens: list[int]
    category: str
    context_length: Optional[int]  # the length it was padded to; None without --context-lengths


def pad_to_length(engine: Engine, text: str, length: int, filler: str, request: Request) -> Optional[list[int]]:
    """The prompt with filler text in front, about `length` tokens; None when it is longer already.

    The filler goes before the prompt (inside the chat message with --chat), so that the
    question the model answers stays the same and only the context in front of it grows.
    """
    tokens = engine.tokenize_prompt(text, request)
    if len(tokens) > length:
        return None
    vocab = engine.target_model.vocab
    missing = length - len(tokens) - len(vocab.tokenize(SEPARATOR, add_special=False))
    if missing <= 0:
        return tokens
    filler_ids = vocab.tokenize(filler, add_special=False, parse_special=False)
    if not filler_ids:
        return tokens
    filler_ids = filler_ids * (1 + missing // len(filler_ids))
    padding = vocab.detokenize(filler_ids[:missing]).decode("utf-8", errors="ignore")
    return engine.tokenize_prompt(padding + SEPARATOR + text, request)


def filler_for(prompt: BenchPrompt, prompts: Sequence[BenchPrompt]) -> str:
    """Natural text of the same kind as the prompts (the set's others, then the built-in ones),
    rather than noise, which would make acceptance at long contexts unrepresentative."""
    texts = [p.text for p in (*prompts, *BUILTIN_PROMPTS) if p.text != prompt.text]
    return "\n\n".join(dict.fromkeys(texts))
