"""One engine, one generation at a time: a thread runs the queued jobs in order.

Each job reports to the event loop that submitted it through an asyncio queue of messages:
("start", cached_prompt_tokens), then ("text", str)..., then ("done", Outcome) or
("error", SpecllmError). A job whose client went away is withdrawn: dropped from the queue,
or, when running, its generation is closed after the current round (Generation leaves the
contexts consistent for the next one).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Optional

from ..engine import Engine, Request
from ..errors import SpecllmError
from ..llama import common_prefix_length
from ..stats import SpecStats
from .metrics import Metrics, SourceTally
from .text import ResponseText

log = logging.getLogger("specllm.server")

# Requests that may wait while one generates; more get 503 + Retry-After (a client is better
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


class EngineWorker:
    def __init__(self, engine: Engine, metrics: Metrics, *, queue_size: int):
        self.engine = engine
        self.metrics = metrics
        self.queue_size = queue_size
        self._waiting: deque[Job] = deque()
        self._running: Optional[Job] = None
        self._cond = threading.Condition()
        self._closing = False
        self._mean_seconds = 1.0
        self._thread = threading.Thread(target=self._run, name="specllm-engine", daemon=True)

    def start(self) -> "EngineWorker":
        self._thread.start()
        return self

    # -- the event loop's side ----------------------------------------------------------------

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._closing:
                raise ShuttingDown()
            # queue_size jobs may wait while one runs.
            if len(self._waiting) + (self._running is not None) > self.queue_size:
                raise QueueFull()
            self._waiting.append(job)
            self._cond.notify()

    def withdraw(self, job: Job) -> None:
        """The client went away: drop the job, or stop its generation after the current round."""
        job.cancelled.set()
        with self._cond:
            if job in self._waiting:
                self._waiting.remove(job)

    @property
    def n_waiting(self) -> int:
        return len(self._waiting)

    @property
    def busy(self) -> bool:
        return self._running is not None

    def retry_after(self) -> int:
        expected = self._mean_seconds * (len(self._waiting) + 1)
        return int(min(RETRY_AFTER_MAX_SECONDS, max(RETRY_AFTER_MIN_SECONDS, expected + 0.999)))

    def stop(self) -> None:
        """Stop taking jobs, stop the running generation, tell every client the server is
        going away. Does not wait for the thread (the event loop calls it)."""
        with self._cond:
            self._closing = True
            waiting, self._waiting = list(self._waiting), deque()
            if self._running is not None:
                self._running.cancelled.set()
            self._cond.notify_all()
        for job in waiting:
            job.send("error", ShuttingDown())

    def close(self, timeout: float = 30.0) -> None:
        """stop(), then wait for the thread: after this the engine may be closed."""
        self.stop()
        self._thread.join(timeout)

    # -- the worker thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return
                job = self._running = self._waiting.popleft()
            started = time.perf_counter()
            try:
                self._run_job(job)
            except Exception as e:  # a bug: one line for the log, an error for the client, go on
                log.error("internal error in a generation: %s: %s", type(e).__name__, e)
                job.send("error", e)
            finally:
                with self._cond:
                    self._running = None
                seconds = time.perf_counter() - started
                self._mean_seconds += DURATION_SMOOTHING * (seconds - self._mean_seconds)

    def _run_job(self, job: Job) -> None:
        if job.cancelled.is_set():
            return
        cached = common_prefix_length(self.engine.target.tokens, job.tokens[:-1])
        try:
            generation = self.engine.generate(job.tokens, job.request)
        except SpecllmError as e:
            self.metrics.count_generation("error", prompt_tokens=len(job.tokens), completion_tokens=0, tally=None)
            job.send("error", e)
            return
        job.send("start", cached)
        text = ResponseText(job.request.stop)
        tally = SourceTally(generation.stats)
        events = iter(generation)
        n_tokens, finish, failure = 0, None, None
        try:
            for event in events:
                n_tokens += 1
                tally.update()
                released = text.feed(event.piece)
                if released:
                    job.send("text", released)
                if text.stopped:
                    finish = "stop"
                    break
                if job.cancelled.is_set():
                    finish = "cancelled"
                    break
        except SpecllmError as e:  # a decode failed mid-generation
            failure = e
        finally:
            events.close()  # stops the generation after the current round, contexts consistent
            tally.update()
        if failure is None and finish is None:
            tail = text.finish()
            if tail:
                job.send("text", tail)
            finish = "stop" if text.stopped else (generation.finish_reason or "stop")
        self.metrics.count_generation("error" if failure else finish, prompt_tokens=len(job.tokens),
                                      completion_tokens=n_tokens, tally=tally)
        if finish == "cancelled":
            why = "the server is stopping" if self._closing else "its client went away"
            log.info("generation stopped after %d tokens: %s", n_tokens, why)
        if failure is not None:  # the client's side logs it, with the request
            job.send("error", failure)
            return
        if finish == "cancelled" and self._closing:
            job.send("error", ShuttingDown())
            return
        job.send("done", Outcome(finish, len(job.tokens), n_tokens, cached, generation.stats))
