"""Token pieces -> text for a response: UTF-8 decoded across token boundaries, cut at stop strings.

A multi-byte character can be split across tokens, and so can a stop string: text is released
only once it is whole and cannot be the start of a stop string. The stop string itself is never
emitted; once one is seen, the generation should end (`stopped`).
"""

from __future__ import annotations

import codecs
from typing import Optional, Sequence


class ResponseText:
    def __init__(self, stops: Sequence[str] = ()):
        self.stops = tuple(s for s in stops if s)  # an empty stop string would stop at once: ignored
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""  # decoded, not yet released: it may begin a stop string
        self._released: list[str] = []
        self.released_length = 0  # characters released so far
        self.stopped = False

    @property
    def text(self) -> str:
        """Everything released so far."""
        return "".join(self._released)

    @property
    def decoded_length(self) -> int:
        """Characters decoded so far, released or held back: where the next token's text begins."""
        return self.released_length + len(self._pending)

    def feed(self, piece: bytes) -> str:
        """The text that may be released after this token piece ("" while held back)."""
        if self.stopped:
            return ""
        self._pending += self._decoder.decode(piece)
        return self._release(final=False)

    def finish(self) -> str:
        """The generation ended without a stop string: release what was held back."""
        if self.stopped:
            return ""
        self._pending += self._decoder.decode(b"", final=True)
        return self._release(final=True)

    def _release(self, *, final: bool) -> str:
        # Only the pending text can hold a stop string: text that might have begun one was
        # never released.
        found = [i for i in (self._pending.find(s) for s in self.stops) if i >= 0]
        if found:
            out, self._pending, self.stopped = self._pending[: min(found)], "", True
        else:
            n_keep = 0 if final else self._stop_prefix_length()
            cut = len(self._pending) - n_keep
            out, self._pending = self._pending[:cut], self._pending[cut:]
        self._released.append(out)
        self.released_length += len(out)
        return out

    def _stop_prefix_length(self) -> int:
        """Length of the longest end of the pending text that is the start of a stop string."""
        longest = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self._pending)), longest, -1):
                if self._pending.endswith(stop[:n]):
                    longest = n
                    break
        return longest


class TokenScores:
    """The log-probabilities of a response's tokens, released with their text.

    Each token is kept with the offset where its text begins; it is released once text past
    that offset is (so a token held back as the possible start of a stop string waits with its
    text), and a token whose text lies wholly in a stop string is never released.
    """

    def __init__(self, vocab):
        self.vocab = vocab
        self._pending: list[tuple[int, object]] = []  # (text offset, TokenEvent)

    def add(self, offset: int, event) -> None:
        self._pending.append((offset, event))

    def release(self, released_length: Optional[int] = None) -> list[dict]:
        """The entries of tokens whose text begins before `released_length` (None: all)."""
        n = len(self._pending) if released_length is None else \
            next((i for i, (offset, _) in enumerate(self._pending) if offset >= released_length), len(self._pending))
        out, self._pending = self._pending[:n], self._pending[n:]
        return [self._entry(offset, event) for offset, event in out]

    def _entry(self, offset: int, event) -> dict:
        return {"token": event.piece.decode("utf-8", errors="replace"), "bytes": list(event.piece),
                "logprob": event.logprob, "offset": offset,
                "top": [(piece.decode("utf-8", errors="replace"), list(piece), logprob)
                        for piece, logprob in ((self.vocab.piece(t), lp) for t, lp in event.top_logprobs)]}
