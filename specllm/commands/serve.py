"""`specllm serve`: the OpenAI-compatible server (specllm/server/) on one Engine."""

from __future__ import annotations

import ipaddress
import logging
import socket
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from .. import llama
from ..config import DEFAULT_CTX_SIZE, check_positive, engine_config
from ..console import FetchBars, reported_errors, stderr, warn
from ..engine import Engine, Request
from ..errors import UsageError
from ..options import (
    CrossVocabOpt, CtxSizeOpt, DraftCtxSizeOpt, DraftGpuLayersOpt, DraftLoraOpt, DraftMaxOpt, DraftModelOpt, DraftThreadsOpt,
    GpuLayersOpt, MemoryOpt, MinPOpt, ModelOpt, ModeOpt, NgramOpt, ParallelOpt, RpcOpt, SAMPLING, SamplerOpt, SeedOpt,
    TempOpt, ThreadsOpt, TopKOpt, TopPOpt, VerboseOpt,
)
from .generate import build_request
from ..server.worker import DEFAULT_QUEUE_SIZE

SERVER = "Server"
DEFAULT_HOST = "127.0.0.1"  # loopback: other machines cannot reach the models unless asked
DEFAULT_PORT = 8080  # llama-server's and llama-cpp-python's default
# On Ctrl-C, open streams get this long to end before the server stops.
SHUTDOWN_GRACE_SECONDS = 5
LOG_FORMAT = "%(levelname)s: %(message)s"
# Slots by default: a few clients are served at once (a shared decode of 4 rows costs little
# more than one on a CPU), as llama-server's default.
DEFAULT_SLOTS = 4


def serve(
    model: ModelOpt = None,
    draft_model: DraftModelOpt = None,
    draft_lora: DraftLoraOpt = None,
    mode: ModeOpt = None,
    draft_max: DraftMaxOpt = None,
    ngram: NgramOpt = None,
    ctx_size: CtxSizeOpt = DEFAULT_CTX_SIZE,
    draft_ctx_size: DraftCtxSizeOpt = None,
    threads: ThreadsOpt = None,
    draft_threads: DraftThreadsOpt = None,
    n_gpu_layers: GpuLayersOpt = 0,
    draft_n_gpu_layers: DraftGpuLayersOpt = None,
    temp: TempOpt = 0.0,
    top_k: TopKOpt = 0,
    top_p: TopPOpt = 1.0,
    min_p: MinPOpt = 0.0,
    seed: SeedOpt = None,
    sampler: SamplerOpt = None,
    memory: MemoryOpt = None,
    rpc: RpcOpt = None,
    max_tokens: Annotated[Optional[int], typer.Option(
        "-n", "--max-tokens", help="Most tokens per answer when a request sets no max_tokens (default: until the "
        "end of generation or a full context).", show_default=False, metavar="N", rich_help_panel=SAMPLING)] = None,
    cross_vocab: CrossVocabOpt = False,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (0.0.0.0: every interface).",
                                      envvar="SPECLLM_HOST", metavar="ADDR", rich_help_panel=SERVER)] = DEFAULT_HOST,
    port: Annotated[int, typer.Option("--port", help="Port to listen on (0: any free port).", envvar="SPECLLM_PORT",
                                      metavar="N", rich_help_panel=SERVER)] = DEFAULT_PORT,
    api_key: Annotated[Optional[str], typer.Option(
        "--api-key", help="Require 'Authorization: Bearer KEY' on every route but /health.", envvar="SPECLLM_API_KEY",
        show_default=False, metavar="KEY", rich_help_panel=SERVER)] = None,
    queue_size: Annotated[int, typer.Option(
        "--queue-size", help="Requests that may wait while every slot generates; more are answered 503 with "
        "Retry-After.", metavar="N", rich_help_panel=SERVER)] = DEFAULT_QUEUE_SIZE,
    parallel: ParallelOpt = DEFAULT_SLOTS,
    verbose: VerboseOpt = False,
) -> None:
    """Serve the models through an OpenAI-compatible API, with speculative decoding.

    POST /v1/chat/completions, /v1/completions; GET /v1/models, /health, /metrics (Prometheus).
    --parallel requests generate at once (slots, one shared decode per round, each slot with
    its own --ctx-size); the others wait in a bounded queue.
    The sampling options are the defaults of requests that do not set their own.
    A request may also set "mode" and "k"; every response has a "speculative" field.

    [b]Examples[/b]

      specllm serve --port 8080
      specllm serve -m target.gguf -md draft.gguf --host 0.0.0.0 --api-key "$KEY"
    """
    with reported_errors(verbose):
        llama.set_verbose(verbose)
        _import_server()  # before anything else: without the extra, say so at once
        defaults = build_request(max_tokens=max_tokens, temp=temp, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed,
                                 chat=False, ignore_eos=False, truncate=False, sampler=sampler)
        check_positive("--queue-size", queue_size, allow_zero=True)
        if not 0 <= port <= 65535:
            raise UsageError(f"--port must be between 0 and 65535, got {port}")
        api_key = api_key or None  # SPECLLM_API_KEY="" means no key
        # Bound before the models load: a taken port fails at once, not after minutes of loading.
        sock = bind_socket(host, port)
        try:
            config = engine_config(
                model=model, draft_model=draft_model, mode=mode, k=draft_max, ngram=ngram, ctx_size=ctx_size,
                draft_ctx_size=draft_ctx_size, threads=threads, draft_threads=draft_threads, n_gpu_layers=n_gpu_layers,
                draft_n_gpu_layers=draft_n_gpu_layers, cross_vocab=cross_vocab, memory=memory, rpc=rpc,
                parallel=parallel, progress=FetchBars(), draft_lora=draft_lora,
            )
            with Engine(config) as engine:
                for message in engine.warnings:
                    warn(escape(message))
                if not api_key and not is_loopback(host):
                    warn(f"listening on {escape(host)} without an API key: anyone who can reach this machine can "
                         "use the models (set --api-key or SPECLLM_API_KEY)")
                run_server(engine, sock, defaults=defaults, api_key=api_key, queue_size=queue_size, verbose=verbose)
        finally:
            sock.close()


def run_server(engine: Engine, sock: socket.socket, *, defaults: Request, api_key: Optional[str], queue_size: int,
               verbose: bool) -> None:
    """Serve on the bound socket until Ctrl-C; the engine's worker is stopped before returning."""
    uvicorn, create_app, ServerState, Server = _import_server()
    config = engine.config
    state = ServerState(engine, model_name=Path(config.target).stem, defaults=defaults, api_key=api_key,
                        queue_size=queue_size)
    try:
        host, port = sock.getsockname()[:2]
        draft = f", draft {Path(config.draft).stem}" if engine.draft_model else ""
        slots = f", {engine.n_slots} slots" if engine.n_slots > 1 else ""
        stderr.print(f"serving {state.model_name} (mode {config.mode}{draft}{slots}) on "
                     f"http://{_url_host(host)}:{port}/v1",
                     markup=False, highlight=False, soft_wrap=True)
        # No lifespan: the engine and its worker live here, outside the app.
        server = Server(state, uvicorn.Config(create_app(state), lifespan="off", log_config=log_config(verbose),
                                              timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS))
        server.run(sockets=[sock])
    finally:
        state.close()


def _import_server():
    try:
        import uvicorn

        from ..server.app import Server, ServerState, create_app
    except ModuleNotFoundError as e:
        raise UsageError(f"specllm serve needs the server extra ({e.name} is not installed)",
                         hint="pip install 'specllm[server]'") from None
    return uvicorn, create_app, ServerState, Server


SOCKET_BACKLOG = 128  # connections the kernel holds while the server starts or is busy


def bind_socket(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise UsageError(f"--host {host!r} is not an address of this machine: {e.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restarted server may reuse the port at once
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror}",
                         hint="pick another --port, or stop the program that uses it") from None
    # Listening now: a client that connects once "serving" is printed waits in the backlog
    # until the server loop accepts, instead of being refused.
    sock.listen(SOCKET_BACKLOG)
    return sock


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


class OneLineFormatter(logging.Formatter):
    """A log record on one line: an exception attached to it (uvicorn attaches some) is named,
    its traceback is not printed (--verbose prints it)."""

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None})
            record.msg = f"{record.getMessage()} ({type(error).__name__}: {error})"
            record.args = None
        return super().format(record).replace("\n", " ")


def log_config(verbose: bool) -> dict:
    """uvicorn's loggers and specllm.server's, one line per event on stderr."""
    handler = {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}
    formatter = {"format": LOG_FORMAT} if verbose else {"()": OneLineFormatter, "fmt": LOG_FORMAT}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": formatter},
        "handlers": {"stderr": handler},
        "loggers": {
            name: {"handlers": ["stderr"], "level": logging.DEBUG if verbose else logging.INFO, "propagate": False}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "specllm.server")
        },
    }
