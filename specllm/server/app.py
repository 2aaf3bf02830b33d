"""The HTTP side: OpenAI's routes on Starlette.

Handlers validate and tokenize (in a thread: a long prompt takes a while), then hand the
request's jobs (one per choice: `n` of each prompt) to the engine's worker and relay their
messages (reply.py): one JSON object, or server-sent events ending with `data: [DONE]`. A
client's mistake is an ApiError (a 4xx with a message); guard.py keeps anything else from
reaching the log as a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Optional

import anyio
import uvicorn
from pydantic import BaseModel, ValidationError
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ..engine import Engine, Request
from ..errors import ModelLoadError, UsageError
from . import schemas
from .guard import CLIENT_CLOSED, ApiError, Guard, api_error_response, http_error_response
from .metrics import Metrics
from .reply import Answer, Reply, engine_error
from .schemas import ChatBody, CompletionBody
from .worker import DEFAULT_QUEUE_SIZE, EngineWorker, Job, QueueFull, ShuttingDown

log = logging.getLogger("specllm.server")

# How often a request waiting for the engine checks that its client is still there.
DISCONNECT_POLL_SECONDS = 0.1
# SSE comment lines keep idle proxies from closing a stream while a long prompt is processed.
SSE_PING_SECONDS = 15
# On shutdown, a stream gets this long to send its error event and [DONE] (Server.shutdown
# stops its generation at once; this is only the time to say so).
SSE_SHUTDOWN_GRACE_SECONDS = 2
# A request body larger than this is refused (413) before it is read whole: even a
# million-token context holds only a few MB of text.
MAX_BODY_BYTES = 32 << 20
# Choices one request may ask for (`n`). Each generates in a slot of its own, beside the others
# (their prompt is decoded once: shared_prefix.py), and a request must fit the queue whole.
MAX_CHOICES = 16


@dataclass
class ServerState:
    engine: Engine
    model_name: str
    defaults: Request  # the command line's settings; a request's fields override them
    api_key: Optional[str] = None
    queue_size: int = DEFAULT_QUEUE_SIZE
    metrics: Metrics = field(init=False)
    worker: EngineWorker = field(init=False)
    started: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        self.metrics = Metrics(lambda: {"specllm_queue_waiting": self.worker.n_waiting,
                                        "specllm_generating": self.worker.n_busy,
                                        "specllm_slots_busy": self.worker.n_busy,
                                        "specllm_slots_total": self.worker.n_slots})
        self.worker = EngineWorker(self.engine, self.metrics, queue_size=self.queue_size).start()

    def close(self) -> None:
        self.worker.close()


class Server(uvicorn.Server):
    """uvicorn's server, which stops the generations first when it shuts down (Ctrl-C): a long
    answer must not hold the exit for the graceful timeout, and its client gets a clean end
    (a 503, or an error event and [DONE]) rather than a cut connection."""

    def __init__(self, state: ServerState, config: uvicorn.Config):
        super().__init__(config)
        self.state = state

    async def shutdown(self, sockets=None) -> None:
        self.state.worker.stop()
        await super().shutdown(sockets)


def create_app(state: ServerState) -> Starlette:
    routes = [
        Route("/v1/chat/completions", partial(chat_completions, state), methods=["POST"]),
        Route("/v1/completions", partial(completions, state), methods=["POST"]),
        Route("/v1/models", partial(models, state), methods=["GET"]),
        Route("/health", partial(health, state), methods=["GET"]),
        Route("/metrics", partial(metrics, state), methods=["GET"]),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(Guard, state=state)],
        exception_handlers={ApiError: api_error_response, HTTPException: http_error_response},
    )


# -- routes --------------------------------------------------------------------------------------


async def chat_completions(state: ServerState, http: HttpRequest) -> Response:
    body = await parse_body(http, ChatBody)
    request = checked_request(state, body)
    tokens = await run_in_threadpool(chat_tokens, state.engine, body.chat_messages(), request)
    return await answer(state, http, body, request, [tokens], chat=True)


async def completions(state: ServerState, http: HttpRequest) -> Response:
    body = await parse_body(http, CompletionBody)
    prompts = body.prompts()
    request = checked_request(state, body, n_prompts=len(prompts))
    tokens = [await run_in_threadpool(prompt_tokens, state.engine, prompt, request, _prompt_param(i, len(prompts)))
              for i, prompt in enumerate(prompts)]
    return await answer(state, http, body, request, tokens, chat=False)


async def models(state: ServerState, http: HttpRequest) -> Response:
    engine = state.engine
    return JSONResponse({"object": "list", "data": [{
        "id": state.model_name, "object": "model", "created": state.started, "owned_by": "specllm",
        "specllm": {"mode": engine.mode, "k": engine.config.k, "ctx_size": engine.target.n_ctx,
                    "parallel": engine.n_slots,
                    "draft": engine.draft_model.name if engine.draft_model else None},
    }]})


async def health(state: ServerState, http: HttpRequest) -> Response:
    return JSONResponse({"status": "ok", "generating": state.worker.busy, "waiting": state.worker.n_waiting,
                         "slots_busy": state.worker.n_busy, "slots": state.worker.n_slots})


async def metrics(state: ServerState, http: HttpRequest) -> Response:
    return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4")


# -- requests ------------------------------------------------------------------------------------


async def parse_body(http: HttpRequest, schema: type[BaseModel]):
    raw = await _read_body(http)
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, bad UTF-8, [[[[... too deep
        detail = f": {e.msg} at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
        raise ApiError(400, f"the request body is not valid JSON{detail}", code="invalid_json") from None
    if not isinstance(obj, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    try:
        return schema.model_validate(obj)
    except ValidationError as e:
        message, param = schemas.validation_message(e)
        raise ApiError(400, message, param=param, code="invalid_value") from None


async def _read_body(http: HttpRequest) -> bytes:
    too_large = ApiError(413, f"the request body is larger than {MAX_BODY_BYTES >> 20} MiB", code="body_too_large")
    declared = http.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_large
    chunks, size = [], 0
    async for chunk in http.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def checked_request(state: ServerState, body: schemas.Body, n_prompts: int = 1) -> Request:
    n = body.choices()
    if not 1 <= n <= MAX_CHOICES:
        raise ApiError(400, f"n must be between 1 and {MAX_CHOICES}, got {n}", param="n", code="invalid_value")
    if n * n_prompts > state.worker.capacity:
        asked = f"{n_prompts} prompts x n={n}" if n_prompts > 1 else f"n={n}"
        raise ApiError(400, f"{asked} choices do not fit this server at once: it runs {state.worker.n_slots} "
                            f"(--parallel) and queues {state.worker.queue_size}",
                       param="prompt" if n_prompts > 1 else "n", code="invalid_value")
    request = body.to_request(state.defaults)
    if request.mode == "draft" and state.engine.draft is None:
        raise ApiError(400, "mode 'draft' needs a draft model: start the server with -md", param="mode")
    return request


def chat_tokens(engine: Engine, messages: list[tuple[str, str]], request: Request) -> list[int]:
    _check_utf8([content for _, content in messages], "messages")
    try:
        text = engine.target_model.render_chat(messages)
    except ModelLoadError:
        raise ApiError(400, "the model has no chat template llama.cpp can apply: use /v1/completions",
                       param="messages") from None
    return fitted(engine, _tokenize(engine, text, request), "messages")


def prompt_tokens(engine: Engine, prompt: str | list[int], request: Request, param: str = "prompt") -> list[int]:
    if isinstance(prompt, list):  # token ids
        n_vocab = engine.target_model.vocab.n_tokens
        if any(not 0 <= t < n_vocab for t in prompt):
            raise ApiError(400, f"{param}: token ids must be in [0, {n_vocab})", param=param)
        return fitted(engine, list(prompt), param)
    _check_utf8([prompt], param)
    return fitted(engine, _tokenize(engine, prompt, request), param)


def _prompt_param(index: int, n_prompts: int) -> str:
    """How an error names a prompt: "prompt", or "prompt.2" in a list of prompts."""
    return f"prompt.{index}" if n_prompts > 1 else "prompt"


def _check_utf8(texts: list[str], param: str) -> None:
    # JSON can carry lone surrogates ("\ud800"), which no UTF-8 tokenizer takes.
    for text in texts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ApiError(400, f"{param}: not valid Unicode (a lone surrogate at character {e.start})",
                           param=param) from None


def _tokenize(engine: Engine, text: str, request: Request) -> list[int]:
    try:
        return engine.tokenize_prompt(text, request)
    except UsageError as e:
        raise ApiError(400, e.message, param="prompt") from None


def fitted(engine: Engine, tokens: list[int], param: str) -> list[int]:
    n_ctx = engine.target.n_ctx
    if len(tokens) >= n_ctx:
        what = f"prompt {param.split('.')[1]}" if "." in param else "the prompt"
        raise ApiError(400, f"{what} has {len(tokens)} tokens but the context holds {n_ctx}, "
                            "and at least one generated token must fit (the server's --ctx-size)",
                       param=param, code="context_length_exceeded")
    return tokens


# -- answers -------------------------------------------------------------------------------------


async def answer(state: ServerState, http: HttpRequest, body: schemas.Body, request: Request,
                 prompts: list[list[int]], *, chat: bool) -> Response:
    # n choices of each prompt, in OpenAI's order: choice index = prompt index x n + i.
    jobs = [Job(tokens, choice_request(request, i)) for tokens in prompts for i in range(body.choices())]
    try:
        state.worker.submit(*jobs)
    except QueueFull:
        raise ApiError(503, f"the server is busy ({state.worker.n_waiting} requests waiting): retry later",
                       kind="server_error", code="queue_full",
                       headers={"Retry-After": str(state.worker.retry_after())}) from None
    except ShuttingDown:
        raise ApiError(503, "the server is shutting down", kind="server_error") from None
    reply = Reply(state.model_name, body, chat=chat)
    handed_over = False
    watcher = asyncio.create_task(_watch_client(state, http, jobs))
    try:
        # The first choice holds a slot: until then an error is an HTTP status (the others
        # start as slots free up; each one's "start" is skipped).
        kind, value = await jobs[0].messages.get()
        if kind == "gone":
            return Response(status_code=CLIENT_CLOSED)
        if kind == "error":
            raise engine_error(value)
        if body.stream:
            watcher.cancel()  # from here on sse-starlette watches the connection
            handed_over = True
            return EventSourceResponse(reply.events(jobs, state.worker.withdraw), ping=SSE_PING_SECONDS, sep="\n",
                                       shutdown_event=anyio.Event(), shutdown_grace_period=SSE_SHUTDOWN_GRACE_SECONDS)
        answers = []
        for job in jobs:  # they generate side by side; their messages wait in their queues
            whole = await _whole_answer(job)
            if whole is None:
                return Response(status_code=CLIENT_CLOSED)
            answers.append(whole)
        return JSONResponse(reply.whole(answers))
    finally:
        watcher.cancel()
        if not handed_over:
            for job in jobs:
                state.worker.withdraw(job)  # a no-op once the job is done


def choice_request(request: Request, index: int) -> Request:
    """Choice `index` of a request: with a seed, seed + index, so that choice 0 is the answer
    the request gets with n = 1 and each choice is reproducible; without one, each draws its own."""
    if request.seed is None or index == 0:
        return request
    return replace(request, seed=(request.seed + index) % schemas.SEED_LIMIT)


async def _whole_answer(job: Job) -> Optional[Answer]:
    """One choice, whole; None when the client went away."""
    parts, scored = [], []
    while True:
        kind, value = await job.messages.get()
        if kind == "start":
            continue
        if kind == "text":
            parts.append(value)
        elif kind == "logprobs":
            scored += value
        elif kind == "done":
            return Answer("".join(parts), value, scored)
        elif kind == "gone":
            return None
        else:
            raise engine_error(value)


async def _watch_client(state: ServerState, http: HttpRequest, jobs: list[Job]) -> None:
    """Withdraw the jobs as soon as their client disconnects, queued or generating."""
    while not await http.is_disconnected():
        await asyncio.sleep(DISCONNECT_POLL_SECONDS)
    for job in jobs:
        state.worker.withdraw(job)
        job.messages.put_nowait(("gone", None))
