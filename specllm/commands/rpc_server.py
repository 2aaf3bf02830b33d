"""`specllm rpc-server`: lend this machine's CPU or GPUs to a target split over machines.

It runs llama.cpp's RPC server (ggml_backend_rpc_start_server) in this process, so a worker
needs only `pip install specllm`. Clients point `--rpc HOST:PORT` at it. The protocol has no
authentication: whoever reaches the port can run work and read what the worker holds.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from typing import Annotated, Optional

import typer
from rich.markup import escape

from .. import devices as backend_devices, llama, rpc
from ..config import check_positive
from ..console import reported_errors, stderr, warn
from ..errors import RpcError
from ..options import VerboseOpt


def rpc_server(
    host: Annotated[str, typer.Option("--host", help="Address to listen on (IPv4). Anything but loopback "
                                      "exposes the worker to the network: trusted networks only.",
                                      metavar="ADDR")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port to listen on.", metavar="PORT")] = rpc.DEFAULT_PORT,
    threads: Annotated[Optional[int], typer.Option("-t", "--threads", help="CPU threads (default: all cores).",
                                                   show_default=False, metavar="N")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Serve this machine's devices to `specllm generate --rpc HOST:PORT` (and llama.cpp's --rpc).

    The RPC protocol has no authentication: listen on loopback (the default) or on a trusted
    network only. One client at a time; Ctrl-C stops the worker.
    """
    with reported_errors(verbose):
        llama.set_verbose(verbose)
        rpc.check_port(port, "--port")
        check_positive("--threads", threads)
        address = rpc.resolve_ipv4(host)
        endpoint = f"{address}:{port}"
        if not rpc.is_loopback(address):
            warn(f"listening on {escape(endpoint)}: anyone who can reach this port can use this worker and read "
                 "what it holds (the RPC protocol has no authentication). Use a trusted network only.")
        check_port_free(address, port)
        devices = backend_devices.local_devices()
        n_threads = threads or os.cpu_count() or 1
        stderr.print(f"specllm rpc-server on {escape(endpoint)} (RPC protocol {rpc.PROTO_MAJOR}.{rpc.PROTO_MINOR}."
                     f"{rpc.PROTO_PATCH}), devices: {escape(', '.join(map(str, devices)))}, {n_threads} threads. "
                     "Ctrl-C stops it.", soft_wrap=True)
        try:
            backend_devices.serve_rpc(endpoint, n_threads=n_threads, devices=devices)
        except KeyboardInterrupt:
            stderr.print("rpc-server stopped")
            # ggml's server thread is still inside accept(): leave without running C++ exit
            # handlers under it.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)


def check_port_free(address: str, port: int) -> None:
    """ggml's server only prints a line and returns when it cannot bind: say why, and exit 1."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as ggml's server does
    try:
        probe.bind((address, port))
    except OSError as e:
        reason = "the port is in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
        hint = "pick another --port" if e.errno == errno.EADDRINUSE else "use an address of this machine"
        raise RpcError(f"cannot listen on {address}:{port}: {reason}", hint=hint) from None
    finally:
        probe.close()
