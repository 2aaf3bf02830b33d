"""Prompts that begin alike decode their common beginning once.

Several generations on one target context (batch.py's slots) often share a prompt's beginning:
a server's clients with one system prompt, `--samples` outputs of one prompt in tune-draft's
data, the attempts of one example among its synthetic prompts. Decoding it once per sequence
costs a prefill each; instead, a sequence that lacks a prefix another sequence of the context
holds takes that sequence's cells (KVSequence.share_from: llama_memory_seq_cp, no decode).

Two rules:
- `take_shared_prefix`: before a generation prefills, it takes the longest prefix of its
  history that another sequence holds beyond its own. A draft model's sequence does the same
  when it prefills the prompt (ModelDrafter.begin, between rounds: within one, the slots draft
  on lockstep threads that each roll their own sequence back).
- `waits_for_shared_prefix` (the target's prefill queue): a joining prompt waits while a
  prompt ahead of it in the queue is decoding tokens it would share (the two would otherwise
  decode them side by side in the same rounds); once those are cached it takes them. It never
  waits on the first prompt of the queue, so the queue always moves.
"""

from __future__ import annotations

from typing import Optional, Sequence

from .llama import KVSequence, common_prefix_length


def _shares_more(held: Sequence[int], tokens: Sequence[int], n_own: int, own: list[int]) -> bool:
    """Does `held` share more than the first n_own tokens of `tokens` (those are `own`)? The
    cheap tests first, slices comparing in C: the next token, then the part before it."""
    return len(held) > n_own and held[n_own] == tokens[n_own] and held[:n_own] == own


def longest_holder(sequence: KVSequence, tokens: Sequence[int]) -> tuple[Optional[KVSequence], int]:
    """The other sequence of its context that holds the longest prefix of `tokens` beyond the
    sequence's own (which must be a prefix of `tokens`), and that prefix's length."""
    n_own = sequence.n_past
    best, longest = None, n_own
    if n_own >= len(tokens):
        return best, longest
    own = list(tokens[:n_own])
    for other in sequence.context.sequences:
        if other is sequence or not _shares_more(other.tokens, tokens, n_own, own):
            continue
        n = n_own + common_prefix_length(other.tokens[n_own:], tokens[n_own:])
        if n > longest:
            best, longest = other, n
    return best, longest


def take_shared_prefix(sequence: KVSequence, tokens: Sequence[int]) -> int:
    """Extend the sequence (holding a prefix of `tokens`) with the longest further prefix
    another sequence of its context holds, without decoding; the number of tokens taken."""
    if not sequence.context.shares_cells:
        return 0
    donor, n = longest_holder(sequence, tokens)
    if donor is None:
        return 0
    before = sequence.n_past
    sequence.share_from(donor, n)
    return n - before


def waits_for_shared_prefix(sequence: KVSequence, tokens: Sequence[int],
                            ahead: Sequence[Sequence[int]]) -> bool:
    """Should a joining prompt (its sequence holding a prefix of `tokens`) wait this round,
    because a prompt ahead of it in the queue (their histories in `ahead`) is still to decode
    tokens it would then share?"""
    n_own = sequence.n_past
    if not sequence.context.shares_cells or len(tokens) <= n_own:
        return False
    own = list(tokens[:n_own])
    return any(_shares_more(h, tokens, n_own, own) for h in ahead)
