"""Several sequences draft with one draft model in one decode per draft token.

Each slot's drafter decodes on its own sequence of the draft model's context, one token at a
time, deciding as it goes (a drafted token, the model's confidence, whether one more is worth
it). Run one after another, N slots drafting k tokens cost N x k small draft decodes. Here the
slots plan their rounds on threads instead, and `Lockstep` merges their decodes: a thread that
decodes waits until every other planning thread is waiting too (or done), then one of them
decodes all the waiting rows in ONE llama_decode and hands each thread its logits. N slots
then cost about k draft decodes of N rows: llama.cpp's batched drafting, without turning the
drafters inside out.

Only one thread at a time runs Python (the GIL) and a merged decode starts only when every
planning thread is blocked in it, so no thread reads logits that a decode overwrites. The
context's other C calls (rollback) take its lock: ctypes releases the GIL around them.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

import numpy as np

from ..llama import Context, Rows

T = TypeVar("T")


class _Waiting:
    __slots__ = ("rows", "logits", "error", "done")

    def __init__(self, rows: Sequence[Rows]):
        self.rows = rows
        self.logits: list[np.ndarray | None] = []
        self.error: BaseException | None = None
        self.done = False


class Lockstep:
    """Runs tasks on threads; their decodes on `context` go in merged batches."""

    def __init__(self, context: Context, max_threads: int):
        self.context = context
        self.max_threads = max_threads
        self._pool = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="specllm-draft")
        self._cond = threading.Condition()
        self._members = threading.local()
        self._running = 0  # tasks not finished
        self._waiting: list[_Waiting] = []
        self.decodes = 0  # merged decodes so far (tests and statistics)

    def run(self, tasks: Sequence[Callable[[], T]]) -> list[T]:
        """Each task's result, in order; a task's exception is raised here (after all ended)."""
        # Every task needs its own thread: a task queued behind a waiting one would never come.
        if len(tasks) > self.max_threads:
            raise ValueError(f"{len(tasks)} tasks for {self.max_threads} threads")
        with self._cond:
            self._running = len(tasks)
        self.context.lockstep = self
        try:
            futures = [self._pool.submit(self._member, task) for task in tasks]
            return [f.result() for f in futures]
        finally:
            self.context.lockstep = None

    def is_member(self) -> bool:
        return getattr(self._members, "active", False)

    def decode(self, rows: Sequence[Rows]) -> list[np.ndarray | None]:
        """Context.decode_rows for a task's thread: wait for the merged decode, return this
        thread's part of its logits."""
        waiting = _Waiting(rows)
        with self._cond:
            self._waiting.append(waiting)
            self._decode_if_all_wait()
            while not waiting.done:
                self._cond.wait()
        if waiting.error is not None:
            raise waiting.error
        return waiting.logits

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def _member(self, task: Callable[[], T]) -> T:
        self._members.active = True
        try:
            return task()
        finally:
            self._members.active = False
            with self._cond:
                self._running -= 1
                self._decode_if_all_wait()

    def _decode_if_all_wait(self) -> None:
        """With the condition held: once every running task waits for a decode, do them all."""
        if not self._waiting or len(self._waiting) < self._running:
            return
        batch, self._waiting = self._waiting, []
        for group in _fitting(batch, self.context.n_batch):
            try:
                with self.context.lock:
                    logits = self.context.decode_now([r for w in group for r in w.rows])
                self.decodes += 1
            except Exception as error:  # each thread raises it (a drafter then drafts nothing)
                for w in group:
                    w.error = error
                continue
            # Another group's decode would overwrite the buffer these views point into.
            copy = len(group) < len(batch)
            start = 0
            for w in group:
                part = logits[start : start + len(w.rows)]
                w.logits = [x.copy() if copy and x is not None else x for x in part]
                start += len(w.rows)
        for w in batch:
            w.done = True
        self._cond.notify_all()


def _fitting(batch: list[_Waiting], n_batch: int) -> list[list[_Waiting]]:
    """The waiting decodes in groups of at most n_batch rows (each one's rows kept together)."""
    groups: list[list[_Waiting]] = [[]]
    rows = 0
    for w in batch:
        n = sum(len(r.tokens) for r in w.rows)
        if groups[-1] and rows + n > n_batch:
            groups.append([])
            rows = 0
        groups[-1].append(w)
        rows += n
    return groups
