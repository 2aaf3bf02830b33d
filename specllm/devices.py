"""llama.cpp's devices and its RPC backend: GPUs and RPC workers a model's layers can go to, and
serving this machine's devices to another (`specllm rpc-server`).

Split from llama.py, which keeps models, contexts and vocabularies; this module binds the few
ggml backend-registry functions that llama_cpp does not.
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .errors import RpcError
from .llama import _ensure_backend, _llama_cpp_version
from .rpc import check_worker



REBUILD_WITH_RPC = 'CMAKE_ARGS="-DGGML_RPC=on" pip install --force-reinstall --no-cache-dir llama-cpp-python==0.3.36'
_DEV_TYPE_CPU, _DEV_TYPE_ACCEL = 0, 3  # enum ggml_backend_dev_type: CPU, GPU, IGPU, ACCEL, META


@dataclass(frozen=True)
class Device:
    """A ggml backend device: 'RPC0' with the worker's endpoint as description, 'CPU', 'CUDA0'..."""

    name: str
    description: str
    handle: int  # ggml_backend_dev_t

    def __str__(self) -> str:
        return f"{self.name} ({self.description})"


@functools.cache
def _ggml() -> ctypes.CDLL:
    """libggml with the backend-registry functions llama_cpp does not bind."""
    from llama_cpp._ggml import libggml as lib

    p, s = ctypes.c_void_p, ctypes.c_size_t
    for name, restype, argtypes in (
        ("ggml_backend_reg_by_name", p, [ctypes.c_char_p]),
        ("ggml_backend_reg_get_proc_address", p, [p, ctypes.c_char_p]),
        ("ggml_backend_reg_dev_count", s, [p]),
        ("ggml_backend_reg_dev_get", p, [p, s]),
        ("ggml_backend_dev_count", s, []),
        ("ggml_backend_dev_get", p, [s]),
        ("ggml_backend_dev_name", ctypes.c_char_p, [p]),
        ("ggml_backend_dev_description", ctypes.c_char_p, [p]),
        ("ggml_backend_dev_type", ctypes.c_int, [p]),
        ("ggml_set_abort_callback", p, [p]),
    ):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def _device(handle: int) -> Device:
    lib = _ggml()
    name = lib.ggml_backend_dev_name(handle) or b"?"
    description = lib.ggml_backend_dev_description(handle) or b""
    return Device(name.decode("utf-8", "replace"), description.decode("utf-8", "replace"), handle)


def _rpc_function(name: str, prototype):
    """A function of ggml's RPC backend, looked up through its registry entry (as llama.cpp's
    own tools do); RpcError when this llama.cpp was built without it."""
    _ensure_backend()
    lib = _ggml()
    reg = lib.ggml_backend_reg_by_name(b"RPC")
    address = lib.ggml_backend_reg_get_proc_address(reg, name.encode()) if reg else None
    if not address:
        raise RpcError(f"this llama-cpp-python {_llama_cpp_version()} was built without RPC support",
                       hint=f"rebuild it: {REBUILD_WITH_RPC}")
    return prototype(address)


def rpc_available() -> bool:
    """Whether this llama-cpp-python was built with llama.cpp's RPC backend (-DGGML_RPC=on)."""
    try:
        _rpc_function("ggml_backend_rpc_add_server", _ADD_SERVER)
    except RpcError:
        return False
    return True


_ADD_SERVER = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)
_START_SERVER = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t,
                                 ctypes.POINTER(ctypes.c_void_p))


def rpc_devices(endpoints: Sequence[str]) -> tuple[Device, ...]:
    """The devices of these RPC workers, each worker checked first (ggml aborts on a bad one)."""
    add_server = _rpc_function("ggml_backend_rpc_add_server", _ADD_SERVER)
    devices: list[Device] = []
    for endpoint in endpoints:
        check_worker(endpoint)
        _catch_ggml_aborts()
        reg = add_server(endpoint.encode())
        n_devices = _ggml().ggml_backend_reg_dev_count(reg) if reg else 0
        if n_devices == 0:
            raise RpcError(f"RPC worker {endpoint} offers no device")
        devices += [_device(_ggml().ggml_backend_reg_dev_get(reg, i)) for i in range(n_devices)]
    return tuple(devices)


# ggml's AMX matrix kernels, compiled in when the build machine's compiler sees AMX (-march=native
# on a Sapphire Rapids Xeon). Some virtual machines advertise AMX without enabling it: the first
# quantized matmul then dies with "Illegal instruction". Builds made with -mno-amx-tile
# -mno-amx-int8 -mno-amx-bf16 in CFLAGS and CXXFLAGS lack them (see README, Install).
AMX_SYMBOL = "_Z28ggml_backend_amx_buffer_typev"  # ggml_backend_amx_buffer_type()


def amx_kernels_built() -> bool:
    """Whether this llama-cpp-python's CPU backend carries ggml's AMX kernels."""
    import llama_cpp

    for lib in sorted((Path(llama_cpp.__file__).parent / "lib").glob("libggml-cpu*.so*")):
        try:
            return hasattr(ctypes.CDLL(str(lib)), AMX_SYMBOL)
        except OSError:
            continue
    return False


def local_devices() -> tuple[Device, ...]:
    """The devices a worker serves, as llama.cpp's rpc-server picks them: the GPUs, else the CPU."""
    _ensure_backend()
    lib = _ggml()
    every = [_device(lib.ggml_backend_dev_get(i)) for i in range(lib.ggml_backend_dev_count())]
    kinds = {d.handle: lib.ggml_backend_dev_type(d.handle) for d in every}
    gpus = tuple(d for d in every if kinds[d.handle] not in (_DEV_TYPE_CPU, _DEV_TYPE_ACCEL))
    return gpus or tuple(d for d in every if kinds[d.handle] == _DEV_TYPE_CPU)[:1]


def serve_rpc(endpoint: str, *, n_threads: int, devices: Sequence[Device]) -> None:
    """Run ggml's RPC server on `endpoint` (IPv4:port) in this process until Ctrl-C.

    ggml's loop never returns while it serves, so it runs in a daemon thread and this one
    waits: Ctrl-C then reaches Python. It returns only when the server could not start.
    """
    start = _rpc_function("ggml_backend_rpc_start_server", _START_SERVER)
    handles = (ctypes.c_void_p * len(devices))(*(d.handle for d in devices))
    args = (endpoint.encode(), None, n_threads, len(devices), handles)
    server = threading.Thread(target=start, args=args, name="ggml-rpc-server", daemon=True)
    server.start()
    while server.is_alive():
        server.join(0.5)
    raise RpcError(f"llama.cpp's RPC server on {endpoint} stopped (see its message above)")


_ABORT_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_char_p)


@_ABORT_CALLBACK
def _on_ggml_abort(message: bytes | None) -> None:
    # ggml calls abort() after this; a lost RPC worker must end as one error line and exit 1.
    text = re.sub(r"^\S+:\d+: ", "", (message or b"").decode("utf-8", "replace")).strip()
    if "RPC" in text:
        message, hint = f"lost the RPC worker: {text}", "check that the worker still runs, and the network; then run again"
    else:
        message, hint = f"llama.cpp aborted: {text}", "run with --verbose to see llama.cpp's log"
    sys.stderr.write(f"error: {message}\nhint: {hint}\n")
    sys.stderr.flush()
    os._exit(1)


def _catch_ggml_aborts() -> None:
    _ggml().ggml_set_abort_callback(ctypes.cast(_on_ggml_abort, ctypes.c_void_p))
