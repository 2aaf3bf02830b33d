"""llama.cpp's RPC backend (issue 14): `specllm rpc-server` as a worker on loopback, `--rpc` on the
client, the worker check that keeps ggml from aborting, and the latency proxy of scripts/rpc-latency.

The worker and the clients run as real processes: a ggml abort would end the test process."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from specllm import rpc
from specllm.errors import RpcError, UsageError

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "the cat said that it was for you and the"
WORKER_START_TIMEOUT_S = 60.0
RUN_TIMEOUT_S = 120


def specllm(*args: object, env: dict | None = None, timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "specllm", *(str(a) for a in args)], capture_output=True,
                          text=True, env=env, timeout=timeout)


@pytest.fixture()
def env(tmp_path: Path) -> dict:
    """The test's own cache and config, no SPECLLM_* settings from the user's environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPECLLM_")}
    env.update(SPECLLM_CACHE=str(tmp_path / "cache"), XDG_CONFIG_HOME=str(tmp_path / "config"), COLUMNS="200",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_one_error_line(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and "GGML_ASSERT" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


class Listener:
    """A TCP server on loopback that is not an RPC worker: it answers each connection with
    `reply` (None: says nothing and keeps the connection open)."""

    def __init__(self, reply: bytes | None):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.reply = reply
        self.open: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.open.append(conn)
            if self.reply is not None:
                try:
                    conn.recv(64)
                    conn.sendall(self.reply)
                except OSError:
                    pass
                conn.close()

    def close(self) -> None:
        self.sock.close()
        for conn in self.open:
            conn.close()


# -- endpoints and the worker check, without models ------------------------------------------------


def test_endpoints_are_parsed_checked_and_deduplicated():
    assert rpc.parse_endpoints("10.0.0.2:50052, worker-b:6000,10.0.0.2:50052") == ("10.0.0.2:50052", "worker-b:6000")
    assert rpc.parse_endpoints(["a:1", "b:2,c:3"]) == ("a:1", "b:2", "c:3")
    assert rpc.parse_endpoints(None) == ()
    for bad, fragment in (("10.0.0.2", "HOST:PORT"), ("host:http", "number"), ("host:0", "between"),
                          ("[::1]:50052", "IPv6"), (",", "at least one")):
        with pytest.raises(UsageError, match=fragment):
            rpc.parse_endpoints(bad)


def test_nothing_listening_is_a_clean_error():
    with pytest.raises(RpcError, match="connection refused"):
        rpc.check_worker(f"127.0.0.1:{free_port()}")


@pytest.mark.parametrize(("reply", "fragment"), [
    (b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", "not an RPC worker"),  # a web server
    (b"", "closed the connection"),  # hangs up, as an RPC worker of another generation does
    (struct.pack("<Q", 28) + bytes([6, 1, 0, 0]) + bytes(24), "speaks protocol 6.1.0"),  # an older worker
    (None, "did not answer"),  # accepts and says nothing
])
def test_a_listener_that_is_not_a_compatible_worker_is_a_clean_error(reply, fragment):
    listener = Listener(reply)
    try:
        with pytest.raises(RpcError, match=fragment):
            rpc.check_worker(listener.endpoint, timeout=0.5)
    finally:
        listener.close()


# -- a worker on loopback ------------------------------------------------------------------------


def start_worker(log_dir: Path) -> tuple[subprocess.Popen, str]:
    """`specllm rpc-server` on a free loopback port, one thread; its endpoint once it answers."""
    port = free_port()
    log = open(log_dir / "worker.log", "w+")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "specllm", "rpc-server", "--port", str(port), "--threads", "1"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    endpoint = f"127.0.0.1:{port}"
    deadline = time.monotonic() + WORKER_START_TIMEOUT_S
    while True:
        try:
            rpc.check_worker(endpoint)
            return proc, endpoint
        except RpcError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                log.seek(0)
                pytest.fail(f"the RPC worker did not start:\n{log.read()}")
            time.sleep(0.2)


@pytest.fixture(scope="module")
def worker(tmp_path_factory) -> str:
    proc, endpoint = start_worker(tmp_path_factory.mktemp("worker"))
    yield endpoint
    proc.terminate()
    proc.wait(10)


def generate_json(tiny, env: dict, *args: object) -> dict:
    proc = specllm("generate", "-t", "1", "-m", tiny.target, "--json", "-n", 24, "--no-stats", *args, PROMPT, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_worker_answers_the_handshake_with_this_protocol(worker):
    assert rpc.check_worker(worker) == (rpc.PROTO_MAJOR, rpc.PROTO_MINOR, rpc.PROTO_PATCH)


def test_greedy_output_through_rpc_equals_local_output(tiny, env, worker):
    local = generate_json(tiny, env, "--mode", "none")
    remote = generate_json(tiny, env, "--mode", "none", "--rpc", worker)
    assert remote["tokens"] == local["tokens"] and remote["text"] == local["text"]
    # --json shows where the target's weights went: llama.cpp's RPC buffer, all layers offloaded.
    placement = remote["target_placement"]
    assert len(placement["devices"]) == 1 and placement["devices"][0].endswith(f"({worker})"), placement
    assert any(name.startswith("RPC") and mib > 0 for name, mib in placement["buffers_mib"].items()), placement
    n_layers, of = placement["offloaded_layers"].split("/")
    assert n_layers == of
    assert local["target_placement"]["devices"] == ["local"]
    assert not any(name.startswith("RPC") for name in local["target_placement"].get("buffers_mib", {}))


def test_draft_stays_local_and_speculation_through_rpc_is_lossless(tiny, env, worker):
    local = generate_json(tiny, env, "--mode", "none")
    env = {**env, "SPECLLM_RPC": worker}  # the environment variable, as a user would set it
    drafted = generate_json(tiny, env, "-md", tiny.draft_other, "--mode", "draft", "-k", 3)
    assert drafted["tokens"] == local["tokens"]
    assert drafted["stats"]["accepted"] > 0
    auto = generate_json(tiny, env, "-md", tiny.draft_copy, "--mode", "auto")
    assert auto["tokens"] == local["tokens"]


@pytest.mark.parametrize("listener_reply", ["nothing listens", b"HTTP/1.1 400 Bad Request\r\n\r\n"])
def test_generate_with_a_wrong_port_is_one_error_line(tiny, env, listener_reply):
    listener = None if isinstance(listener_reply, str) else Listener(listener_reply)
    endpoint = listener.endpoint if listener else f"127.0.0.1:{free_port()}"
    try:
        proc = specllm("generate", "-t", "1", "-m", tiny.target, "--rpc", endpoint, "-n", 4, PROMPT, env=env)
    finally:
        if listener:
            listener.close()
    assert_one_error_line(proc, endpoint)
    assert proc.stdout == ""


def test_a_worker_lost_in_the_middle_of_a_run_is_one_error_line(tiny, env, tmp_path):
    proc_worker, endpoint = start_worker(tmp_path)
    try:
        client = subprocess.Popen(
            [sys.executable, "-m", "specllm", "generate", "-t", "1", "-m", str(tiny.target), "--mode", "none",
             "--ignore-eos", "-n", "100000", "-c", "100000", "--rpc", endpoint, PROMPT],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        client.stdout.read(64)  # it generates through the worker
        proc_worker.kill()
        _, stderr = client.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        proc_worker.kill()
    assert_one_error_line(subprocess.CompletedProcess(client.args, client.returncode, "", stderr),
                          "lost the RPC worker")


def test_a_build_without_the_rpc_backend_says_how_to_rebuild():
    from specllm import devices

    assert devices.rpc_available()  # this test suite's llama-cpp-python is built with -DGGML_RPC=on
    with pytest.raises(RpcError, match="built without RPC") as refusal:
        devices._rpc_function("ggml_backend_rpc_no_such_function", devices._ADD_SERVER)
    assert "-DGGML_RPC=on" in refusal.value.hint and "--no-cache-dir" in refusal.value.hint


def test_rpc_server_off_loopback_warns_and_a_taken_port_is_one_error_line(env, worker):
    port = worker.rsplit(":", 1)[1]
    # 0.0.0.0 would expose the worker: it warns first; the worker's port is taken, so it never listens.
    proc = specllm("rpc-server", "--host", "0.0.0.0", "--port", port, env=env, timeout=60)
    assert "anyone who can reach this port" in proc.stderr
    assert_one_error_line(proc, "in use")


# -- the latency proxy of scripts/rpc-latency ----------------------------------------------------


def load_script(name: str):
    loader = importlib.machinery.SourceFileLoader(name.replace("-", "_"), str(ROOT / "scripts" / name))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


def test_latency_proxy_forwards_bytes_and_adds_the_round_trip():
    script = load_script("rpc-latency")
    echo = socket.create_server(("127.0.0.1", 0))

    def serve_echo() -> None:
        conn, _ = echo.accept()
        with conn:
            while data := conn.recv(1 << 16):
                conn.sendall(data)

    threading.Thread(target=serve_echo, daemon=True).start()
    rtt_ms = 40.0
    proxy = script.LatencyProxy(echo.getsockname(), rtt_ms)
    try:
        with socket.create_connection(("127.0.0.1", proxy.port)) as client:
            payload = os.urandom(300_000)  # several chunks: the order must be kept
            start = time.perf_counter()
            client.sendall(payload)
            received = b""
            while len(received) < len(payload):
                received += client.recv(1 << 16)
            elapsed_ms = (time.perf_counter() - start) * 1e3
        assert received == payload
        assert elapsed_ms >= rtt_ms
    finally:
        proxy.close()
        echo.close()
