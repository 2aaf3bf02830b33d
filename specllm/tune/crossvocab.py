"""Tuning a draft of another vocabulary (`tune-draft --cross-vocab`): the loss is on text.

The target's samples are token ids of the target. A draft of another family cannot read them,
and the target's top-k log-probabilities are over target tokens, which are not the draft's:
a target token's probability under the draft is a sum over every draft-token sequence whose
text starts with that token's text (the reason cross-vocabulary verification has no q either,
see drafting/crossvocab.py). So no KL here: the draft learns the target's *text*.

    target prompt + output ids --target pieces--> text --draft tokenizer--> draft ids

and the loss is the cross-entropy of the draft tokens that cover the target's output (every
draft token with at least one byte of it; a token that straddles the prompt's end is included:
the draft writes it when the history ends mid-word). The text is made exactly as the drafter
sees the history: TargetText (a leading BOS gives no text, control tokens their text), and the
draft's tokenization with parse_special and its own BOS (CrossVocabDrafter._sync).

Acceptance before and after is the replay `specllm drafts` makes for a cross-vocabulary draft
(drafting.selection.cross_vocab_rounds: CrossVocabDrafter proposals, replay.replay_fixed_k).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from .. import llama
from ..drafting.crossvocab import MAX_DRAFT_TOKENS_PER_TARGET, TargetText
from ..drafting.selection import cross_vocab_rounds
from .agreement import recorded_output
from .data import Sample


@dataclass
class TextSample:
    """A target sample re-tokenised for the draft: train on tokens[n_context:]."""

    prompt_index: int
    variant: str
    split: str
    tokens: list[int]  # the draft's tokens of prompt text + output text (its BOS first)
    n_context: int  # tokens before it are the prompt's only

    @property
    def key(self) -> tuple[int, str]:
        return self.prompt_index, self.variant

    @property
    def output(self) -> list[int]:
        """The draft tokens the loss is on (len() weighs the sample, as Sample.output does)."""
        return self.tokens[self.n_context:]


def draft_tokens_of(text: bytes, draft_vocab: llama.Vocab) -> list[int]:
    """The draft's tokens for a history text, as CrossVocabDrafter tokenises it."""
    bos = [draft_vocab.bos] if draft_vocab.add_bos and draft_vocab.bos >= 0 else []
    return bos + (draft_vocab.tokenize(text, add_special=False, parse_special=True) if text else [])


def text_sample(sample: Sample, target_vocab: llama.Vocab, draft_vocab: llama.Vocab) -> TextSample:
    text = TargetText(target_vocab)
    text.sync(sample.prompt)
    prompt_end = len(text.data)
    text.sync(sample.prompt + sample.output)
    tokens = draft_tokens_of(bytes(text.data), draft_vocab)
    n_bos = 1 if tokens and draft_vocab.add_bos and tokens[0] == draft_vocab.bos else 0
    ends = [0] * n_bos + list(itertools.accumulate(len(draft_vocab.piece(t)) for t in tokens[n_bos:]))
    # The first token that holds a byte of the output; at least 1, so that a row predicts it.
    n_context = next((i for i, end in enumerate(ends) if end > prompt_end), len(tokens))
    return TextSample(sample.prompt_index, sample.variant, sample.split, tokens, max(n_context, 1))


def text_samples(samples: Sequence[Sample], target: Path, draft: Path) -> list[TextSample]:
    with llama.Model(target, vocab_only=True) as t, llama.Model(draft, vocab_only=True) as d:
        return [text_sample(s, t.vocab, d.vocab) for s in samples]


@dataclass
class CrossVocabAcceptance:
    """What `specllm drafts` reports of a cross-vocabulary draft at one k (greedy replay)."""

    k: int
    rounds: int
    drafted: int
    accepted: int
    generated: int
    acceptance_rate: float
    tokens_per_round: float
    per_position_acceptance: list[float]

    def to_dict(self) -> dict:
        return {**self.__dict__, "match_rate": None}


def measure_cross_vocab(draft: Path, target: Path, samples: Sequence[Sample], *, k: int,
                        lora: Optional[Path] = None, threads: Optional[int] = None) -> CrossVocabAcceptance:
    """Greedy rounds of k the draft (with `lora`) would play through text on the samples'
    outputs (target ids), replayed as `specllm drafts` replays them.

    Each sample is read as agreement.recorded_output reads it (with the end-of-generation token
    that stopped it, where the data file recorded one), so both vocabularies count alike."""
    outputs = [recorded_output(s) for s in samples if s.output]
    longest = max((len(o.prompt) + len(o.tokens) for o in outputs), default=1)
    # Room for the draft's text: its tokens per target token are bounded by the drafter's limit.
    n_ctx = max(64, MAX_DRAFT_TOKENS_PER_TARGET * (longest + k + 1))
    with llama.Model(target, vocab_only=True) as target_model, llama.Model(draft) as draft_model:
        adapter = llama.LoraAdapter(draft_model, lora) if lora else None
        try:
            with llama.Context(draft_model, n_ctx=n_ctx, n_threads=threads) as ctx:
                llama.set_lora(ctx, adapter)
                stats = cross_vocab_rounds(ctx, target_model.vocab, outputs, (k,))[k].stats
        finally:
            if adapter:
                adapter.close()
    return CrossVocabAcceptance(k, stats.rounds, stats.drafted, stats.accepted, stats.generated,
                                stats.acceptance_rate, stats.mean_accepted_length, stats.per_position_acceptance)
