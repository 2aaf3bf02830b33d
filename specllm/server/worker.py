"""One engine, several generations at once: a thread runs the scheduler's rounds (batch.py).

Each request is a Job. It waits in a bounded queue until a slot is free, then generates in
that slot, every slot's rows in one shared decode per round. Each job reports to the event
loop that submitted it through an asyncio queue of messages: ("start", None) once it holds a
slot (a streamed reply begins then: an error before it is still an HTTP status), then
("text", str)..., each after ("logprobs", entries) for its tokens when the request asks for
log-probabilities (text.TokenScores), then ("done", Outcome) or ("error", SpecllmError). The
Outcome's cached_tokens is the count `usage` reports: the prompt tokens the slot's cache held,
and those taken from another slot's cells while the prompt waited (shared_prefix.py). A job
whose client went away is withdrawn: dropped from the queue, or, when generating, dropped from
its slot before the next round (so its slot is free within one round).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Optional

from ..batch import Active, Scheduler
from ..engine import Engine, Request
from ..errors import SpecllmError
from ..stats import SpecStats
from .metrics import Metrics
from .text import ResponseText, TokenScores

log = logging.getLogger("specllm.server")

# Requests that may wait while every slot generates; more get 503 + Retry-After (a client is better
# told to come back than left waiting minutes).
DEFAULT_QUEUE_SIZE = 16
# Retry-After for a full queue: the expected wait, from recent requests' durations, in bounds a
# client will honour (the openai client ignores values over 60 s).
RETRY_AFTER_MIN_SECONDS, RETRY_AFTER_MAX_SECONDS = 1, 60
# Weight of the latest request in the running mean of request durations.
DURATION_SMOOTHING = 0.2


class QueueFull(Exception):
    pass


class ShuttingDown(Exception):
    pass


@dataclass
class Outcome:
    finish_reason: str  # "stop" (end of generation or a stop string), "length", or "cancelled"
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    stats: SpecStats


@dataclass
class Job:
    tokens: list[int]
    request: Request
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)
    messages: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def send(self, kind: str, value: object) -> None:
        """From the worker thread: hand a message to the submitting event loop."""
        try:
            self.loop.call_soon_threadsafe(self.messages.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed (server shutting down): nobody is listening
            self.cancelled.set()


@dataclass
class Running:
    """A job generating in a slot, and what its answer has released so far."""

    job: Job
    active: Active
    text: ResponseText
    scores: Optional[TokenScores] = None  # its tokens' log-probabilities, when the request asks
    started: float = field(default_factory=time.perf_counter)
    n_tokens: int = 0


class EngineWorker:
    def __init__(self, engine: Engine, metrics: Metrics, *, queue_size: int):
        self.engine = engine
        self.metrics = metrics
        self.queue_size = queue_size
        self.scheduler = Scheduler(engine, on_round=metrics.observe_round)
        self._waiting: deque[Job] = deque()
        self._running: dict[int, Running] = {}  # by slot; only the worker thread changes it
        self._n_busy = 0  # slots taken, as the event loop may read it (under the lock)
        self._cond = threading.Condition()
        self._closing = False
        self._mean_seconds = 1.0
        self._thread = threading.Thread(target=self._run, name="specllm-engine", daemon=True)

    def start(self) -> "EngineWorker":
        self._thread.start()
        return self

    # -- the event loop's side ----------------------------------------------------------------

    @property
    def n_slots(self) -> int:
        return self.engine.n_slots

    @property
    def capacity(self) -> int:
        """Jobs an idle server takes at once: one per slot, and queue_size waiting."""
        return self.n_slots + self.queue_size

    def submit(self, *jobs: Job) -> None:
        """Queue a request's jobs (its choices), all or none."""
        with self._cond:
            if self._closing:
                raise ShuttingDown()
            # Free slots take jobs at once; beyond them, queue_size jobs may wait.
            if len(self._waiting) + len(jobs) > self.n_slots - self._n_busy + self.queue_size:
                raise QueueFull()
            self._waiting.extend(jobs)
            self._cond.notify()

    def withdraw(self, job: Job) -> None:
        """The client went away: drop the job, or free its slot before the next round."""
        job.cancelled.set()
        with self._cond:
            if job in self._waiting:
                self._waiting.remove(job)

    @property
    def n_waiting(self) -> int:
        return len(self._waiting)

    @property
    def n_busy(self) -> int:
        return self._n_busy

    @property
    def busy(self) -> bool:
        return self._n_busy > 0

    def retry_after(self) -> int:
        # The queue drains n_slots jobs at a time.
        expected = self._mean_seconds * (len(self._waiting) / self.n_slots + 1)
        return int(min(RETRY_AFTER_MAX_SECONDS, max(RETRY_AFTER_MIN_SECONDS, expected + 0.999)))

    def stop(self) -> None:
        """Stop taking jobs, stop the running generations, tell every client the server is
        going away. Does not wait for the thread (the event loop calls it)."""
        with self._cond:
            self._closing = True
            waiting, self._waiting = list(self._waiting), deque()
            self._cond.notify_all()  # the worker ends the running generations before its next round
        for job in waiting:
            job.send("error", ShuttingDown())

    def close(self, timeout: float = 30.0) -> None:
        """stop(), then wait for the thread: after this the engine may be closed."""
        self.stop()
        self._thread.join(timeout)

    # -- the worker thread ----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._waiting and not self._running and not self._closing:
                        self._cond.wait()
                    if self._closing:
                        return
                    admitted = [self._waiting.popleft() for _ in range(min(len(self._waiting), self.scheduler.n_free))]
                    self._n_busy = self.scheduler.n_busy + len(admitted)
                for job in admitted:
                    self._start(job)
                for running in list(self._running.values()):
                    if running.job.cancelled.is_set():
                        self.scheduler.drop(running.active, "cancelled")
                        self._finish(running, "cancelled")
                if self._running:
                    self._round()
                with self._cond:
                    self._n_busy = self.scheduler.n_busy
        finally:
            for running in list(self._running.values()):
                self.scheduler.drop(running.active, "cancelled")
                self._finish(running, "cancelled")
            self.scheduler.close()

    def _start(self, job: Job) -> None:
        if job.cancelled.is_set():
            return
        try:
            active = self.scheduler.start(job.tokens, job.request, tag=id(job))
        except Exception as e:  # a bad request (SpecllmError), or a bug: an error for its client, go on
            if not isinstance(e, SpecllmError):
                log.error("internal error starting a generation: %s: %s", type(e).__name__, e)
            self.metrics.count_generation("error", prompt_tokens=len(job.tokens), completion_tokens=0, stats=None)
            job.send("error", e)
            return
        job.send("start", None)
        scores = TokenScores(self.engine.target_model.vocab) if job.request.logprobs is not None else None
        self._running[active.slot] = Running(job, active, ResponseText(job.request.stop), scores)

    def _round(self) -> None:
        try:
            results = self.scheduler.round()
        except Exception as failure:  # a decode failed: every generation in the round ends with it
            if not isinstance(failure, SpecllmError):  # a bug: one line for the log, an error for the clients
                log.error("internal error in a generation: %s: %s", type(failure).__name__, failure)
            self.scheduler.drop_all("error")
            for running in list(self._running.values()):
                self._finish(running, "error", failure)
            return
        for active, events in results:
            running = self._running[active.slot]
            text = running.text
            for event in events:
                running.n_tokens += 1
                if running.scores is not None:
                    running.scores.add(text.decoded_length, event)
                released = text.feed(event.piece)
                if released:
                    self._send_text(running, released, text.released_length)
                if text.stopped:
                    break
            if text.stopped:
                self.scheduler.drop(active, "stop")
                self._finish(running, "stop")
            elif active.finished:
                tail = text.finish()
                if tail or running.scores is not None:
                    self._send_text(running, tail, None)
                self._finish(running, "stop" if text.stopped else (active.generation.finish_reason or "stop"))

    @staticmethod
    def _send_text(running: Running, text: str, released_length: Optional[int]) -> None:
        """Released text, after the log-probabilities of its tokens (when asked for)."""
        if running.scores is not None:
            entries = running.scores.release(released_length)
            if entries:
                running.job.send("logprobs", entries)
        if text:
            running.job.send("text", text)

    def _finish(self, running: Running, finish: str, failure: Optional[BaseException] = None) -> None:
        job, generation = running.job, running.active.generation
        del self._running[running.active.slot]
        self._mean_seconds += DURATION_SMOOTHING * (time.perf_counter() - running.started - self._mean_seconds)
        self.metrics.count_generation("error" if failure else finish, prompt_tokens=len(job.tokens),
                                      completion_tokens=running.n_tokens, stats=generation.stats,
                                      slot=running.active.slot)
        if finish == "cancelled":
            why = "the server is stopping" if self._closing else "its client went away"
            log.info("generation stopped after %d tokens: %s", running.n_tokens, why)
        if failure is not None:  # the client's side logs it, with the request
            job.send("error", failure)
            return
        if finish == "cancelled" and self._closing:
            job.send("error", ShuttingDown())
            return
        job.send("done", Outcome(finish, len(job.tokens), running.n_tokens, running.active.cached_tokens,
                                 generation.stats))
