"""Many generations at once on one engine: slots and one shared decode per round.

The engine's target context holds `engine.n_slots` sequences (--parallel); each generation
runs on one of them (its slot), and on the same sequence of the draft model's context. Each
round (`Scheduler.round`) is one `speculative.step_together` over every active generation:
every one's last token and drafts, and at most one chunk of a joining prompt, in ONE
llama_decode; then each verifies its own rows and rolls back its own sequence. Nothing in a
generation's output depends on what else is in the batch (greedy and Gumbel verification
read only its own rows), up to llama.cpp's rounding at near-ties.

The shape is llama-server's (tools/server/server-context.cpp): slots, a new request on the
free slot whose cache shares the longest prefix with its prompt, one batch built from every
slot's tokens and drafts, per-slot `seq_id` rollback. Beyond llama-server, a prompt takes the
beginning it shares with another slot's cache from that slot's cells (shared_prefix.py).
`generate --jsonl --parallel N` and `serve --parallel N` both run through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Hashable, Optional, Sequence

from .engine import Engine, Request
from .llama import common_prefix_length
from .drafting.lockstep import Lockstep
from .speculative import Generation, TokenEvent, step_together


# A free slot whose cache holds at least this share of a new prompt takes it (the prefix is
# reused); below it, a BOS or a few common tokens are not worth evicting another cache for.
# llama-server's --slot-prompt-similarity defaults to 0.1 as well.
MIN_SHARED_PREFIX = 0.1


@dataclass
class Active:
    """A generation running in a slot, with its caller's handle (a line number, a server job)."""

    slot: int
    generation: Generation
    tag: Hashable
    cached_at_start: int  # prompt tokens the slot's cache already held when it started

    @property
    def cached_tokens(self) -> int:
        """Prompt tokens not decoded for it: those its slot held, and those it took from
        another slot's cells (shared_prefix.py)."""
        return self.cached_at_start + self.generation.shared_prompt_tokens

    @property
    def finished(self) -> bool:
        return self.generation.finish_reason is not None


class Scheduler:
    """Slots of one engine; `round()` advances every active generation by one shared round.

    Single-threaded: one thread starts, runs and drops generations (the server's worker
    thread, or the --jsonl loop). `on_round(rows, seconds)` hears each shared decode's size.
    """

    def __init__(self, engine: Engine, on_round: Optional[Callable[[int, float], None]] = None):
        self.engine = engine
        self.slots: list[Optional[Active]] = [None] * engine.n_slots
        self.on_round = on_round
        # The draft model drafts for every slot at once (see drafting/lockstep.py).
        self.lockstep = Lockstep(engine.draft, engine.n_slots) if engine.draft is not None and engine.n_slots > 1 \
            else None
        self._last_used = [0] * engine.n_slots  # the start count when each slot last started
        self._n_started = 0

    @property
    def active(self) -> list[Active]:
        return [a for a in self.slots if a is not None]

    @property
    def n_free(self) -> int:
        return self.slots.count(None)

    @property
    def n_busy(self) -> int:
        return len(self.slots) - self.n_free

    def pick_slot(self, prompt: Sequence[int]) -> int:
        """The free slot whose cache shares the longest prefix with `prompt`, when it shares a
        real part of it (a follow-up request, a shared system prompt: that part is not decoded
        again); else the free slot used least recently, whose cache is least likely to serve a
        follow-up (as llama-server chooses, with its --slot-prompt-similarity)."""
        free = [i for i, a in enumerate(self.slots) if a is None]
        if not free:
            raise RuntimeError("no free slot")  # callers check n_free first
        sequences = self.engine.target.sequences
        shared = {i: common_prefix_length(sequences[i].tokens, prompt[:-1]) for i in free}
        best = max(free, key=lambda i: (shared[i], -i))
        if shared[best] >= MIN_SHARED_PREFIX * len(prompt):
            return best
        return min(free, key=lambda i: (self._last_used[i], i))

    def start(self, prompt: Sequence[int], request: Request, tag: Hashable) -> Active:
        """Start a generation in a free slot; its prompt joins the next rounds in chunks.
        Raises what Engine.generate raises (a prompt too long, a bad request)."""
        slot = self.pick_slot(prompt)
        cached = common_prefix_length(self.engine.target.sequences[slot].tokens, prompt[:-1])
        generation = self.engine.generate(prompt, request, slot)
        self._n_started += 1
        self._last_used[slot] = self._n_started
        active = self.slots[slot] = Active(slot, generation, tag, cached)
        return active

    def round(self) -> list[tuple[Active, list[TokenEvent]]]:
        """One shared round: each active generation's new events. A generation that finished in
        it (read `finished`) leaves its slot free for the next start."""
        active = self.active
        if not active:
            return []
        events = step_together([a.generation for a in active], self.on_round, self.lockstep)
        for a in active:
            if a.finished:
                self.drop(a)
        return list(zip(active, events))

    def drop(self, active: Active, reason: str = "interrupted") -> None:
        """Free its slot now (a finished generation, a client gone, a failed decode). A
        generation that had not finished ends with `reason`; its sequence keeps what it cached,
        for a next request that shares the prefix."""
        generation = active.generation
        if generation.finish_reason is None:
            generation.finish_reason = reason
        generation.end()
        if self.slots[active.slot] is active:
            self.slots[active.slot] = None

    def close(self) -> None:
        """Drop every generation and stop the drafting threads."""
        self.drop_all("interrupted")
        if self.lockstep is not None:
            self.lockstep.close()

    def drop_all(self, reason: str) -> list[Active]:
        dropped = self.active
        for a in dropped:
            self.drop(a, reason)
        return dropped
