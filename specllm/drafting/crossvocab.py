"""Drafting with a model of another vocabulary: the draft reads and writes text, the target verifies tokens.

Token-level drafting hands the draft's ids to the target, so both must share a vocabulary
(compat.py). A model of another family (Gemma drafting for Qwen) can still help through text:

    target history (ids) --target pieces--> text --draft tokenizer--> the draft's ids
    draft model proposes ids --draft pieces--> draft text --target tokenizer--> proposed target ids

Both conversions are kept incremental. `TargetText` appends the pieces of new target tokens to
a byte string. The draft's tokenization of that text is kept as a stable prefix: each round only
the text from a few draft tokens before the change is re-tokenised, so the draft's KV cache keeps
everything before it and decodes only the new tokens (it is never re-prefilled).

Boundaries. The target's tokenizer may merge the draft text with the end of the history
("▁th" + "ere" is "▁there"): a tail of the history text is re-tokenised together with the draft
text, and the draft is used only when a token boundary falls exactly where the history ends.
The last target token of the draft text is dropped (the draft text may end mid-word, where more
text would change that token), and so are incomplete or invalid UTF-8 bytes at its end. The
draft text is tokenised with parse_special=False, so text never becomes a control token.

Verification is unchanged: the proposed tokens are point masses (probs=None). Greedy: a token
stands when it is the target's argmax. Sampling: a token x stands with probability p(x), else
the target samples from p without x, which is the target's own distribution p whatever the
draft proposed. Rejection sampling with min(1, p/q) is not available: q would have to be the
draft's probability of each *target* token, a sum over every draft-token sequence whose text
starts with that token's text (see README, "Drafts with another vocabulary").
"""

from __future__ import annotations

import bisect
import itertools
from typing import Sequence

import numpy as np

from .base import NO_DRAFT, CatchUp, Draft, KeepDrafting, decode_catch_up, unseen_tokens
from ..llama import Context, Vocab, common_prefix_length
from ..sampling import DraftChooser, greedy, logits_to_probs, sample, top_probability

SOURCE = "xvocab"
# Draft tokens re-tokenised before the point where the text changed: new text can merge with
# the last few tokens ("▁the" + "re" -> "▁there"); a word rarely spans more than three.
BACKOFF_DRAFT_TOKENS = 3
# History tokens re-tokenised together with the draft text to see whether the boundary holds.
TAIL_TARGET_TOKENS = 3
# Drafting stops after this many draft tokens per wanted target token: pieces of both
# vocabularies are about as long, but the draft's can be shorter (byte tokens, rare words).
MAX_DRAFT_TOKENS_PER_TARGET = 2


def valid_utf8_length(data: bytes) -> int:
    """Length of the longest prefix of `data` that is complete, valid UTF-8."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start
    return len(data)


def incomplete_utf8_tail(data: bytes | bytearray) -> int:
    """How many bytes at the end of `data` start a UTF-8 character that is not complete yet."""
    for n in range(1, min(3, len(data)) + 1):
        byte = data[-n]
        if byte & 0xC0 == 0x80:  # a continuation byte: the lead byte is further back
            continue
        if byte < 0xC0:  # ASCII
            return 0
        expected = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
        return n if expected > n else 0
    return 0


def continuation_tokens(vocab: Vocab, tail: bytes, text: bytes) -> tuple[list[int], list[int]] | None:
    """The target's tokens for `text` written right after a history ending in `tail`.

    Returns (tokens, end of each token in `text`), or None when no token boundary falls where
    the history ends: the target would have tokenised the history differently had it meant
    this text, so no token of it starts at the boundary. Special-token text stays plain text.
    """
    tokens = vocab.tokenize(tail + text, add_special=False, parse_special=False)
    # Walk back from the end until the tokens cover exactly `text` (prefix-agnostic, so a
    # tokenizer that adds a leading space to `tail` does not matter).
    covered, start = 0, len(tokens)
    while start > 0 and covered < len(text):
        start -= 1
        covered += len(vocab.piece(tokens[start]))
    continuation = tokens[start:]
    if covered != len(text) or vocab.detokenize(continuation) != text:
        return None
    ends = list(itertools.accumulate(len(vocab.piece(t)) for t in continuation))
    return continuation, ends


def proposable_tokens(
    vocab: Vocab, tail: bytes, text: bytes, *, complete: bool = False
) -> tuple[list[int], list[int]] | None:
    """The target tokens a draft `text` lets us propose after a history ending in `tail`.

    Bytes of an unfinished (or invalid) UTF-8 character at the end are cut, and the last token
    is dropped unless the text is `complete` (the draft ended it): more text could still change
    it ("▁wa" may be the start of "▁was"). None when the text merges with the history.
    """
    n_valid = valid_utf8_length(text)
    found = continuation_tokens(vocab, tail, text[:n_valid])
    if found is None:
        return None
    tokens, ends = found
    if not complete or n_valid < len(text):
        tokens, ends = tokens[:-1], ends[:-1]
    return tokens, ends


class TargetText:
    """The target's token history as bytes, extended incrementally.

    A BOS token at the start contributes no text (the draft adds its own BOS); every other
    token contributes its piece, control tokens as their text ("<|im_start|>").
    """

    def __init__(self, vocab: Vocab):
        self.vocab = vocab
        self.tokens: list[int] = []
        self.starts: list[int] = []  # where each token's bytes start in `data`
        self.data = bytearray()

    def sync(self, history: Sequence[int]) -> int:
        """Make the text that of `history`; return the first byte offset that changed."""
        n = len(self.tokens)
        # Usually the history only grew: one C-level list compare instead of a Python loop.
        keep = n if history[:n] == self.tokens else common_prefix_length(self.tokens, history)
        changed_at = self.starts[keep] if keep < n else len(self.data)
        del self.tokens[keep:], self.starts[keep:], self.data[changed_at:]
        for i in range(keep, len(history)):
            token = history[i]
            self.tokens.append(token)
            self.starts.append(len(self.data))
            if not (i == 0 and token == self.vocab.bos):
                self.data += self.vocab.piece(token)
        return changed_at

    def tail(self, n_tokens: int) -> bytes:
        """The text of (about) the last n_tokens tokens, starting at a character boundary."""
        i = max(len(self.tokens) - n_tokens, 0)
        # A token that starts inside a character (byte-level pieces) is no place to cut.
        while i > 0 and self.starts[i] < len(self.data) and self.data[self.starts[i]] & 0xC0 == 0x80:
            i -= 1
        return bytes(self.data[self.starts[i] :]) if i < len(self.starts) else b""


class CrossVocabDrafter:
    """A draft model of another vocabulary, on its own llama.cpp context; drafts go through text.

    Drafts up to about k target tokens: the draft model continues the text (greedily, or
    sampled from its own filtered distribution at temperature > 0) until its text holds k + 1
    target tokens, the last of which is dropped. Each proposed token carries a confidence: the
    draft's probability of the text that completes it, given the text before it.
    """

    name = SOURCE

    def __init__(self, context: Context, target_vocab: Vocab):
        self.context = context
        self.target_vocab = target_vocab
        self.draft_vocab = context.model.vocab
        self.text = TargetText(target_vocab)
        # The draft's tokenization of the text (up to its last complete character): ids and
        # the end offset of each in text.data.
        # Tokens from index n_stable on have no known byte ends (a tokenization that did not
        # reproduce its text) and are always re-tokenised.
        self.n_fixed = 1 if self.draft_vocab.add_bos and self.draft_vocab.bos >= 0 else 0
        self.draft_tokens: list[int] = [self.draft_vocab.bos] * self.n_fixed
        self.draft_ends: list[int] = [0] * self.n_fixed
        self.n_stable = self.n_fixed
        self.catch_up = CatchUp()  # the last propose's (auto mode prices drafting without it)

    def begin(self, prompt: Sequence[int]) -> None:
        """Prefill the draft's cache with the prompt's text, all but its last token."""
        self._sync(prompt)
        ctx = self.context
        tokens = self.draft_tokens[:-1]
        if len(tokens) > ctx.n_ctx:
            return  # too long for the draft's context: propose() will not draft either
        ctx.truncate(common_prefix_length(ctx.tokens, tokens))
        if len(tokens) > ctx.n_past:
            ctx.decode(tokens[ctx.n_past :])

    def _sync(self, history: Sequence[int]) -> None:
        changed_at = self.text.sync(history)
        complete = len(self.text.data) - incomplete_utf8_tail(self.text.data)
        self._retokenize(min(changed_at, complete), complete)

    def _retokenize(self, changed_at: int, end: int) -> None:
        """Make draft_tokens a tokenization of text.data[:end], re-tokenising only near the change."""
        tokens, ends = self.draft_tokens, self.draft_ends
        all_stable = self.n_stable == len(tokens)
        covered = ends[-1] if ends else 0
        if all_stable and covered == end and changed_at >= end:
            return  # nothing new
        keep = bisect.bisect_right(ends, changed_at, 0, self.n_stable)
        if keep < self.n_stable or all_stable:
            keep -= BACKOFF_DRAFT_TOKENS
        keep = max(keep, self.n_fixed)
        start = ends[keep - 1] if keep else 0
        del tokens[keep:], ends[keep:]
        chunk = bytes(self.text.data[start:end])
        new = self.draft_vocab.tokenize(chunk, add_special=False, parse_special=True) if chunk else []
        tokens.extend(new)
        if self.draft_vocab.detokenize(new) == chunk:
            ends.extend(start + n for n in itertools.accumulate(len(self.draft_vocab.piece(t)) for t in new))
            self.n_stable = len(tokens)
        else:
            # Invalid UTF-8 from the target, or a tokenizer that adds text: the tokens still
            # give the draft its context, but where they end in the text is unknown.
            ends.extend([start] * len(new))
            self.n_stable = keep

    def unseen(self, history: Sequence[int]) -> int:
        """Draft tokens of the history's text a propose would first have to catch up on (auto
        mode prices a look with them)."""
        self._sync(history)
        return unseen_tokens(self.context, self.draft_tokens)

    def propose(
        self, history: Sequence[int], k: int, choose: DraftChooser, keep_drafting: KeepDrafting | None = None
    ) -> Draft:
        found = self.propose_lengths(history, (k,), choose, keep_drafting).get(k)
        return found[0] if found else NO_DRAFT

    def propose_lengths(
        self, history: Sequence[int], lengths: Sequence[int], choose: DraftChooser,
        keep_drafting: KeepDrafting | None = None,
    ) -> dict[int, tuple[Draft, int]]:
        """For each k in `lengths`, (the draft `propose(history, k)` returns, the draft-model
        decodes it took), from one pass of the draft model; a k that drafts nothing is left out.

        Drafting for k stops at the first draft token after which the text holds k target
        tokens, merges with the history, or reaches the draft-token limit of k. A pass for a
        larger k goes through the same draft tokens first, so every shorter draft is read off
        on the way (`specllm drafts` replays all its k at once). With the rejection sampler the
        draws are those of the largest k.
        """
        self.catch_up = CatchUp()
        lengths = sorted({k for k in lengths if k > 0})
        if not lengths:
            return {}
        self._sync(history)
        if incomplete_utf8_tail(self.text.data):
            return {}  # the target is inside a character: only it can finish that
        if not self.draft_tokens:
            return {}  # no text yet, and no BOS to start from
        ctx = self.context
        room = ctx.n_ctx - len(self.draft_tokens)
        pending = [k for k in lengths if MAX_DRAFT_TOKENS_PER_TARGET * (k + 1) <= room]
        if not pending:
            return {}
        logits = self._catch_up()
        tail = self.text.tail(TAIL_TARGET_TOKENS)
        want_confidence = keep_drafting is not None or choose.kind == "rejection"

        text = bytearray()
        draft_ends: list[int] = []  # end of each draft token's piece in `text`
        draft_probs: list[float] = []
        found: tuple[list[int], list[int]] | None = ([], [])
        # k -> (target tokens and their ends when drafting for k stopped, draft tokens by then, decodes)
        stopped: dict[int, tuple[tuple[list[int], list[int]] | None, int, int]] = {}
        decodes = 1  # the catch-up, then one per draft token that is not the last

        def stop(ks: Sequence[int]) -> None:
            for k in ks:
                stopped[k] = (found, len(draft_ends), decodes)

        for i in range(MAX_DRAFT_TOKENS_PER_TARGET * (pending[-1] + 1)):
            token, prob = self._choose(logits, choose, want_confidence)
            if self.draft_vocab.is_eog(token):
                # The draft ended its text: its last target token is whole.
                found = proposable_tokens(self.target_vocab, tail, bytes(text), complete=True)
                break
            text += self.draft_vocab.piece(token)
            draft_ends.append(len(text))
            draft_probs.append(prob)
            if len(text) - valid_utf8_length(bytes(text)) > 3:
                break  # invalid UTF-8, not just an unfinished character: more text will not help
            found = proposable_tokens(self.target_vocab, tail, bytes(text))
            done = [k for k in pending
                    if found is None or len(found[0]) >= k or i == MAX_DRAFT_TOKENS_PER_TARGET * (k + 1) - 1]
            stop(done)
            pending = [k for k in pending if k not in stopped]
            if not pending:
                break
            if keep_drafting is not None and not keep_drafting(i, prob):
                break
            logits = ctx.decode([token])[0]
            decodes += 1
        stop(pending)
        return {k: (draft, n_decodes) for k, (at, n_draft, n_decodes) in stopped.items()
                if (draft := _as_draft(at, k, draft_ends[:n_draft], draft_probs[:n_draft])) is not None}

    def _catch_up(self) -> np.ndarray:
        """Bring the draft's cache to draft_tokens; the logits after the last one."""
        ctx, tokens = self.context, self.draft_tokens
        ctx.resync()
        # Keep the common prefix (the draft's own accepted tokens included), but always decode
        # at least the last token: its logits are where drafting starts.
        ctx.truncate(min(common_prefix_length(ctx.tokens, tokens), len(tokens) - 1))
        # The text the draft has not seen is decoded, and timed, apart from the last token whose
        # logits start drafting, as for ModelDrafter.
        self.catch_up = decode_catch_up(ctx, tokens[ctx.n_past : -1])
        return ctx.decode(tokens[-1:])[0]

    def _choose(self, logits: np.ndarray, choose: DraftChooser, want_confidence: bool) -> tuple[int, float]:
        """(draft token, the draft's probability of it).

        The draft's ids are not the target's, so Gumbel noise keyed by target ids would mean
        nothing here: outside the rejection sampler the draft writes its most likely text (its
        tokens are verified as point masses, exact whatever they are)."""
        if choose.kind != "rejection":
            token = greedy(logits)
            # The softmax costs a pass over the vocabulary: only when someone listens.
            return token, top_probability(logits, token) if want_confidence else 1.0
        q = logits_to_probs(logits, choose.sampler.params)
        token = sample(q, choose.sampler.rng_draft)
        return token, float(q[token])


def _as_draft(found: tuple[list[int], list[int]] | None, k: int, draft_ends: list[int],
              draft_probs: list[float]) -> Draft | None:
    """The draft of the first k target tokens found (None: nothing to propose)."""
    if found is None:
        return None  # the draft's text merges with the history's last token
    tokens, ends = found[0][:k], found[1][:k]
    if not tokens:
        return None
    return Draft(tokens=tokens, probs=None, source=SOURCE,
                 confidence=_target_token_confidence(ends, draft_ends, draft_probs))


def _target_token_confidence(target_ends: list[int], draft_ends: list[int], draft_probs: list[float]) -> list[float]:
    """Per target token, the draft's probability of the draft tokens that start inside it.

    The product over target tokens 1..j is then the draft's probability of all the draft
    tokens needed to write tokens 1..j, so each factor is a conditional, like a draft token's
    probability in a same-vocabulary draft.
    """
    confidence, i, start = [], 0, 0
    for end in target_ends:
        c = 1.0
        while i < len(draft_probs) and start < end:
            c *= draft_probs[i]
            start = draft_ends[i]
            i += 1
        confidence.append(c)
    return confidence
