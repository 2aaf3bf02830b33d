"""The response objects of one request (OpenAI's shapes): whole, or as server-sent events,
with one choice per job of the request (`n` of each prompt)."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Optional

from ..errors import SpecllmError, UsageError
from ..stats import SpecStats
from . import schemas
from .guard import ApiError
from .schemas import error_body
from .worker import Job, Outcome, ShuttingDown

log = logging.getLogger("specllm.server")


def engine_error(value: object) -> ApiError:
    if isinstance(value, ShuttingDown):
        return ApiError(503, "the server is shutting down", kind="server_error")
    if isinstance(value, UsageError):
        return ApiError(400, value.message)
    if isinstance(value, SpecllmError):
        return ApiError(500, value.message, kind="server_error")
    return ApiError(500, f"internal error: {type(value).__name__}", kind="server_error")


class Reply:
    """The response objects of one request, whole or as stream chunks."""

    def __init__(self, model_name: str, body: schemas.Body, *, chat: bool):
        self.chat = chat
        self.body = body
        self.id = schemas.new_id("chatcmpl" if chat else "cmpl")
        self.created = schemas.now()
        self.model = model_name

    def _object(self, kind: str, choices: list[dict], **extra: object) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "system_fingerprint": None, "choices": choices, **extra}

    def _usage(self, outcomes: list[Outcome]) -> dict:
        # At the end: a prompt may take cells another slot decoded after it started (shared_prefix.py).
        # Each prompt counts once, as its first choice saw it; every choice's tokens count.
        firsts = outcomes[:: self.body.choices()]
        return schemas.usage(sum(o.prompt_tokens for o in firsts), sum(o.completion_tokens for o in outcomes),
                             sum(o.cached_tokens for o in firsts))

    def _logprobs(self, entries: list[dict]) -> Optional[dict]:
        """Tokens' log-probabilities (text.TokenScores' entries) as the API has them; None when
        the request did not ask."""
        if self.body.requested_logprobs() is None:
            return None
        if self.chat:
            return {"content": [{"token": e["token"], "logprob": e["logprob"], "bytes": e["bytes"],
                                 "top_logprobs": [{"token": t, "logprob": lp, "bytes": b} for t, b, lp in e["top"]]}
                                for e in entries], "refusal": None}
        return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
                "top_logprobs": [{t: lp for t, _, lp in e["top"]} for e in entries],
                "text_offset": [e["offset"] for e in entries]}

    def whole(self, answers: list[Answer]) -> dict:
        choices = []
        for index, answer in enumerate(answers):
            logprobs, finish = self._logprobs(answer.logprobs), answer.outcome.finish_reason
            if self.chat:
                choices.append({"index": index, "message": {"role": "assistant", "content": answer.text},
                                "logprobs": logprobs, "finish_reason": finish})
            else:
                choices.append({"index": index, "text": answer.text, "logprobs": logprobs, "finish_reason": finish})
        outcomes = [answer.outcome for answer in answers]
        return self._object("chat.completion" if self.chat else "text_completion", choices,
                            usage=self._usage(outcomes), speculative=schemas.speculative(pooled_stats(outcomes)))

    def chunk(self, text: Optional[str], finish_reason: Optional[str] = None, index: int = 0,
              logprobs: Optional[dict] = None, **extra: object) -> dict:
        if self.chat:
            delta = {} if text is None else {"content": text}
            choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        else:
            choice = {"index": index, "text": text or "", "logprobs": logprobs, "finish_reason": finish_reason}
        return self._object("chat.completion.chunk" if self.chat else "text_completion", [choice], **extra)

    async def events(self, jobs: list[Job], withdraw: Callable[[Job], None]) -> AsyncIterator[dict]:
        """Server-sent events: each choice's text as it is released (chunks say which choice by
        their index), a last chunk per choice with its finish reason and specllm's statistics,
        usage when stream_options asks for it, then [DONE]."""
        merged: asyncio.Queue = asyncio.Queue()
        forwarders = [asyncio.create_task(_forward(index, job, merged)) for index, job in enumerate(jobs)]
        try:
            if self.chat:
                for index in range(len(jobs)):
                    first = self.chunk("", index=index)
                    first["choices"][0]["delta"]["role"] = "assistant"
                    yield _sse(first)
            outcomes: dict[int, Outcome] = {}
            scored: dict[int, list[dict]] = {index: [] for index in range(len(jobs))}  # not yet sent
            while len(outcomes) < len(jobs):
                index, kind, value = await merged.get()
                if kind == "logprobs":
                    scored[index] += value
                elif kind == "text":
                    yield _sse(self.chunk(value, index=index, logprobs=self._logprobs(scored[index])))
                    scored[index] = []
                elif kind == "done":
                    outcomes[index] = value
                    yield _sse(self.chunk(None, value.finish_reason, index=index,
                                          logprobs=self._logprobs(scored[index]) if scored[index] else None,
                                          speculative=schemas.speculative(value.stats)))
                else:
                    error = engine_error(value)
                    (log.warning if error.status == 503 else log.error)(
                        "stream %s ended early: %s", self.id, error.message)
                    yield _sse(error_body(error.message, kind=error.kind))
                    break
            else:
                if self.body.include_usage():
                    usage = self._usage([outcomes[i] for i in range(len(jobs))])
                    yield _sse(self._object(self.chunk(None)["object"], [], usage=usage))
            yield {"data": "[DONE]"}
        finally:
            for forwarder in forwarders:
                forwarder.cancel()
            for job in jobs:
                withdraw(job)  # the client left, or the stream is over: generating or queued, it ends


async def _forward(index: int, job: Job, merged: asyncio.Queue) -> None:
    """One choice's messages into a stream's merged queue, up to its last."""
    while True:
        kind, value = await job.messages.get()
        if kind == "start":
            continue
        await merged.put((index, kind, value))
        if kind not in ("text", "logprobs"):
            return


@dataclass
class Answer:
    """One choice, whole: its text, how it ended, and its tokens' log-probabilities (entries of
    text.TokenScores; empty when the request did not ask)."""

    text: str
    outcome: Outcome
    logprobs: list[dict] = field(default_factory=list)


def pooled_stats(outcomes: list[Outcome]) -> SpecStats:
    """One choice's statistics, or every choice's pooled (a request with n > 1)."""
    if len(outcomes) == 1:
        return outcomes[0].stats
    first = outcomes[0].stats
    pooled = SpecStats(mode=first.mode, k=first.k, draft_lora=first.draft_lora)
    for outcome in outcomes:
        pooled.add(outcome.stats)
    return pooled


def _sse(obj: dict) -> dict:
    return {"data": json.dumps(obj, ensure_ascii=False)}
