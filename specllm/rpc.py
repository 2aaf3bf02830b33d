"""llama.cpp RPC workers, seen from Python: endpoint parsing and a handshake over a plain socket.

ggml's RPC client aborts the whole process when it cannot connect or the handshake fails, so
every endpoint is checked here first, with a timeout, and a failure becomes one RpcError line.
The handshake is ggml-rpc's own HELLO (ggml/src/ggml-rpc/ggml-rpc.cpp of the llama.cpp that
llama-cpp-python 0.3.36 vendors): the worker answers with its protocol version, which must
be one this client speaks.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass
from typing import Sequence

from .errors import RpcError, UsageError

DEFAULT_PORT = 50052  # llama.cpp's rpc-server default, so that its workers and ours interchange

# The RPC protocol of the pinned llama.cpp (ggml-rpc.h: RPC_PROTO_*_VERSION). ggml's client
# refuses a worker of another major version, or of a newer minor one; so does the check below.
PROTO_MAJOR, PROTO_MINOR, PROTO_PATCH = 7, 0, 0
MAX_SERVERS = 16  # GGML_RPC_MAX_SERVERS

# HELLO: | cmd (1 byte) = 14 | request size (uint64) | conn_caps (24 bytes, zero: plain TCP) |
# answer: | size (uint64) = 28 | major, minor, patch, padding (1 byte each) | conn_caps (24) |
_CMD_HELLO = 14
_CONN_CAPS_SIZE = 24
_HELLO_REQUEST = struct.pack("<BQ", _CMD_HELLO, _CONN_CAPS_SIZE) + bytes(_CONN_CAPS_SIZE)
_HELLO_ANSWER_SIZE = 4 + _CONN_CAPS_SIZE

# A worker on a LAN answers in milliseconds; seconds of silence mean something is wrong (a
# firewall dropping packets, a service that is not an RPC worker, or a worker busy with
# another client: rpc-server serves one client at a time).
CONNECT_TIMEOUT_S = 5.0
HANDSHAKE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_endpoint(text: str) -> Endpoint:
    """'host:port' -> Endpoint. IPv4 addresses and host names only: ggml's RPC speaks IPv4."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host or not port_text:
        raise UsageError(f"--rpc takes HOST:PORT, got {text!r}", hint=f"e.g. --rpc 192.168.1.20:{DEFAULT_PORT}")
    if ":" in host or host.startswith("["):
        raise UsageError(f"--rpc: IPv6 addresses are not supported by llama.cpp's RPC, got {text!r}")
    try:
        port = int(port_text)
    except ValueError:
        raise UsageError(f"--rpc: the port must be a number, got {text!r}") from None
    check_port(port, "--rpc")
    return Endpoint(host, port)


def parse_endpoints(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """'a:1,b:2' (or several such strings) -> ('a:1', 'b:2'), checked, without repeats."""
    if not text:
        return ()
    parts = text.split(",") if isinstance(text, str) else [p for t in text for p in t.split(",")]
    endpoints: list[str] = []
    for part in parts:
        if part.strip():
            endpoint = str(parse_endpoint(part))
            if endpoint not in endpoints:
                endpoints.append(endpoint)
    if not endpoints:
        raise UsageError("--rpc needs at least one HOST:PORT")
    if len(endpoints) > MAX_SERVERS:
        raise UsageError(f"--rpc takes at most {MAX_SERVERS} workers, got {len(endpoints)}")
    return tuple(endpoints)


def check_port(port: int, option: str) -> None:
    if not 1 <= port <= 65535:
        raise UsageError(f"{option}: the port must be between 1 and 65535, got {port}")


def resolve_ipv4(host: str) -> str:
    """The IPv4 address a host name stands for (ggml's server binds dotted IPv4 addresses only)."""
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    try:
        return socket.gethostbyname(host)
    except (OSError, UnicodeError) as e:
        raise UsageError(f"cannot resolve {host!r} to an IPv4 address: {getattr(e, 'strerror', None) or e}") from None


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(resolve_ipv4(host)).is_loopback
    except (UsageError, ValueError):
        return False


def check_worker(endpoint: str, *, timeout: float = HANDSHAKE_TIMEOUT_S) -> tuple[int, int, int]:
    """Connect, say HELLO, check the worker's protocol version, hang up. Returns the version.

    RpcError (one line and a hint) when nothing listens, the host cannot be reached, the
    service there is not an RPC worker, or it speaks another protocol version.
    """
    ep = parse_endpoint(endpoint)
    try:
        address = socket.gethostbyname(ep.host)  # as ggml's client resolves it: IPv4
    except (OSError, UnicodeError) as e:
        raise RpcError(f"RPC worker {ep}: cannot resolve {ep.host!r} ({getattr(e, 'strerror', None) or e})") from None
    try:
        sock = socket.create_connection((address, ep.port), timeout=CONNECT_TIMEOUT_S)
    except ConnectionRefusedError:
        raise RpcError(f"RPC worker {ep} is not reachable: connection refused (nothing listens on that port)",
                       hint=f"start one there with `specllm rpc-server --host HOST --port {ep.port}`") from None
    except (socket.timeout, TimeoutError):
        raise RpcError(f"RPC worker {ep} is not reachable: no answer within {CONNECT_TIMEOUT_S:.0f} s",
                       hint="check the address, and that no firewall drops the port") from None
    except OSError as e:
        raise RpcError(f"RPC worker {ep} is not reachable: {e.strerror or e}") from None
    with sock:
        sock.settimeout(timeout)
        try:
            sock.sendall(_HELLO_REQUEST)
            answer = _read_exactly(sock, 8 + _HELLO_ANSWER_SIZE)
        except (socket.timeout, TimeoutError):
            raise RpcError(f"{ep} did not answer the RPC handshake within {timeout:.0f} s",
                           hint="is it an RPC worker? A worker serves one client at a time: is another using it?"
                           ) from None
        except OSError as e:
            raise RpcError(f"{ep} broke off the RPC handshake: {e.strerror or e}",
                           hint="is it an RPC worker of this llama.cpp version?") from None
    return _check_hello_answer(ep, answer)


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    """Up to n bytes: fewer only when the peer closed the connection."""
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _check_hello_answer(ep: Endpoint, answer: bytes) -> tuple[int, int, int]:
    ours = f"{PROTO_MAJOR}.{PROTO_MINOR}.{PROTO_PATCH}"
    if not answer:
        # ggml's worker hangs up on a HELLO of another size: another protocol generation.
        raise RpcError(f"{ep} closed the connection during the RPC handshake: not an RPC worker, or one of "
                       f"another protocol version (this client speaks {ours})",
                       hint="run the same specllm / llama-cpp-python version on the worker")
    (size,) = struct.unpack_from("<Q", answer) if len(answer) >= 8 else (None,)
    if size != _HELLO_ANSWER_SIZE or len(answer) < 8 + _HELLO_ANSWER_SIZE:
        raise RpcError(f"{ep} is not an RPC worker of this protocol version (its answer to the handshake is not "
                       f"the RPC {ours} one)", hint="check the port; run the same specllm version on the worker")
    major, minor, patch = answer[8], answer[9], answer[10]
    if major != PROTO_MAJOR or minor > PROTO_MINOR:
        raise RpcError(f"RPC worker {ep} speaks protocol {major}.{minor}.{patch}, this client {ours}",
                       hint="run the same specllm / llama-cpp-python version on the worker and the client")
    return major, minor, patch
