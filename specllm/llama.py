"""A thin typed layer over llama.cpp's C API (`llama_cpp.llama_cpp`).

This is the only module that touches ctypes. It gives the rest of specllm three things:
`Model` (weights + vocabulary), `Vocab` (tokenize, token bytes, end-of-generation) and
`Context` (a KV cache that knows which tokens it holds: decode a batch, read logits as a
zero-copy numpy view, truncate after rejected drafts).
"""

from __future__ import annotations

import collections
import ctypes
import functools
import os
import re
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

import llama_cpp.llama_cpp as C

from .errors import ContextFullError, DecodeError, ModelLoadError

if TYPE_CHECKING:
    from .devices import Device

GGUF_MAGIC = b"GGUF"

VOCAB_TYPE_NAMES = {0: "none", 1: "spm", 2: "bpe", 3: "wpm", 4: "ugm", 5: "rwkv", 6: "plamo2"}

# llama.cpp talks a lot while loading. We keep its last lines so that a failed load can say
# why (e.g. "unknown model architecture"), and print them only with --verbose.
_log_tail: collections.deque[str] = collections.deque(maxlen=64)
_verbose = False
_backend_ready = False


# Where a load put the weights, as llama.cpp reports it ("CPU_Mapped model buffer size = 0.38 MiB",
# "offloaded 3/3 layers to GPU"): the evidence that a target really runs on its RPC workers.
_BUFFER_LINE = re.compile(r"(\S+) model buffer size =\s*([0-9.]+) MiB")
_OFFLOAD_LINE = re.compile(r"offloaded (\d+/\d+) layers")
_load_report: dict = {}


@C.llama_log_callback
def _on_llama_log(level: int, text: bytes | None, user_data: ctypes.c_void_p) -> None:
    message = text.decode("utf-8", "replace") if text else ""
    _log_tail.append(message)
    if (match := _BUFFER_LINE.search(message)) is not None:
        buffers = _load_report.setdefault("buffers_mib", {})
        buffers[match[1]] = buffers.get(match[1], 0.0) + float(match[2])
    elif (match := _OFFLOAD_LINE.search(message)) is not None:
        _load_report["offloaded_layers"] = match[1]
    if _verbose:
        sys.stderr.write(message)


def set_verbose(verbose: bool) -> None:
    """Show llama.cpp's own log on stderr (off by default)."""
    global _verbose
    _verbose = verbose
    _ensure_backend()


def _ensure_backend() -> None:
    global _backend_ready
    if not _backend_ready:
        C.llama_backend_init()
        _backend_ready = True
    # llama-cpp-python installs its own logger on import; ours replaces it.
    C.llama_log_set(_on_llama_log, ctypes.c_void_p(0))


# Lines llama.cpp logs on the way out of a failed call that only repeat the cause logged before them.
_WRAPPER_LINE = re.compile(r"(error loading model: )?failed to load model( from .*)?")
_FAILURE_WORDS = ("error", "failed", "unable", "out of memory")


def _without_prefixes(line: str) -> str:
    """'llama_model_load: error loading model: tensor ...' -> 'tensor ...'."""
    line = re.sub(r"^(\w+: )+", "", line.strip())
    return line.removeprefix("error loading model: ")


def _llama_failure_reason() -> str:
    """The cause llama.cpp logged during the last failed call: the first line that says what failed."""
    lines = [line.strip() for line in _log_tail if line.strip()]
    failures = [_without_prefixes(line) for line in lines if any(w in line.lower() for w in _FAILURE_WORDS)]
    causes = [line for line in failures if not _WRAPPER_LINE.fullmatch(line)]
    if causes or failures:
        return (causes or failures)[0]
    return _without_prefixes(lines[-1]) if lines else "llama.cpp gave no reason"


def _load_failure_hint() -> str:
    """What a user can do about the last failed load, judged from llama.cpp's log."""
    log = "\n".join(_log_tail).lower()
    if "unknown model architecture" in log:
        return f"this llama.cpp (llama-cpp-python {_llama_cpp_version()}) does not support the model's architecture"
    if "alloc" in log or "out of memory" in log:
        return "not enough memory: try fewer GPU layers (-ngl), a smaller --ctx-size, or a smaller quantization"
    if "gguf_" in log or "file bounds" in log or "corrupt" in log:
        return "the file is truncated or corrupt: download it again"
    return "run with --verbose to see llama.cpp's log"


def _llama_cpp_version() -> str:
    import llama_cpp

    return getattr(llama_cpp, "__version__", "?")


def _human_size(n_bytes: int) -> str:
    """1536 -> '1.5 KiB': file sizes in messages."""
    if n_bytes < 1024:
        return f"{n_bytes} bytes"
    size = n_bytes / 1024
    for unit in ("KiB", "MiB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def check_gguf_file(path: Path) -> None:
    """Refuse paths llama.cpp would choke on, with a message a user can act on."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ModelLoadError(f"model file not found: {path}") from None
    except (OSError, ValueError) as e:  # permissions, a name too long, a NUL byte
        raise ModelLoadError(f"cannot read model file {path}: {getattr(e, 'strerror', None) or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ModelLoadError(f"model path is a directory, not a GGUF file: {path}")
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ModelLoadError(f"cannot read model file {path}: {e.strerror or e}") from None
    if magic != GGUF_MAGIC:
        raise ModelLoadError(
            f"model file is empty: {path}" if st.st_size == 0 else f"not a GGUF file: {path}",
            hint="specllm loads llama.cpp GGUF models (convert others with llama.cpp's convert_hf_to_gguf.py)",
        )


class Vocab:
    """A model's vocabulary: text <-> token ids, special tokens."""

    def __init__(self, vocab_ptr: C.llama_vocab_p):
        self._ptr = vocab_ptr
        self.n_tokens: int = C.llama_vocab_n_tokens(vocab_ptr)
        self.type: int = C.llama_vocab_type(vocab_ptr)
        self.bos: int = C.llama_vocab_bos(vocab_ptr)
        self.eos: int = C.llama_vocab_eos(vocab_ptr)
        self.eot: int = C.llama_vocab_eot(vocab_ptr)
        self.add_bos: bool = bool(C.llama_vocab_get_add_bos(vocab_ptr))
        self._pieces: list[bytes | None] = [None] * self.n_tokens
        self._piece_buf = ctypes.create_string_buffer(256)

    @property
    def type_name(self) -> str:
        return VOCAB_TYPE_NAMES.get(self.type, str(self.type))

    def tokenize(self, text: str | bytes, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8") if isinstance(text, str) else text
        capacity = len(data) + 8
        while True:
            buf = (C.llama_token * capacity)()
            n = C.llama_tokenize(self._ptr, data, len(data), buf, capacity, add_special, parse_special)
            if n >= 0:
                return list(buf[:n])
            capacity = -n

    def piece(self, token: int) -> bytes:
        """The bytes a token stands for (control tokens rendered as their text). Cached."""
        cached = self._pieces[token]
        if cached is not None:
            return cached
        n = C.llama_token_to_piece(self._ptr, token, self._piece_buf, len(self._piece_buf), 0, True)
        if n < 0:
            self._piece_buf = ctypes.create_string_buffer(-n)
            n = C.llama_token_to_piece(self._ptr, token, self._piece_buf, len(self._piece_buf), 0, True)
        piece = self._piece_buf.raw[:n]
        self._pieces[token] = piece
        return piece

    def detokenize(self, tokens: Sequence[int]) -> bytes:
        return b"".join(self.piece(t) for t in tokens)

    def text(self, token: int) -> bytes:
        """The token's text as stored in the vocabulary (e.g. 'Ġthe'), for comparing vocabularies."""
        raw = C.llama_vocab_get_text(self._ptr, token)
        return raw if raw is not None else b""

    def is_eog(self, token: int) -> bool:
        return bool(C.llama_vocab_is_eog(self._ptr, token))

    @functools.cached_property
    def eog_ids(self) -> tuple[int, ...]:
        """Every end-of-generation id (one ctypes call per id: computed once)."""
        return tuple(t for t in range(self.n_tokens) if self.is_eog(t))


class Model:
    """GGUF weights loaded by llama.cpp. `vocab_only` loads just the vocabulary (fast, no weights).

    `rpc` lists llama.cpp RPC workers ("host:port"): the offloaded layers (-ngl) go to their
    devices instead of this machine's. `placement` says where llama.cpp put the weights.
    """

    def __init__(self, path: str | os.PathLike, *, n_gpu_layers: int = 0, vocab_only: bool = False,
                 rpc: Sequence[str] = ()):
        self.path = Path(path)
        check_gguf_file(self.path)
        _ensure_backend()
        params = C.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        params.vocab_only = vocab_only
        self.devices: tuple[Device, ...] = ()
        if rpc:
            from .devices import rpc_devices  # devices.py builds on this module

            self.devices = rpc_devices(rpc)
        if self.devices:
            # llama.cpp reads a NULL-terminated array; it must outlive the load.
            self._device_array = (ctypes.c_void_p * (len(self.devices) + 1))(*(d.handle for d in self.devices), None)
            params.devices = ctypes.cast(self._device_array, ctypes.c_void_p)
        _log_tail.clear()
        _load_report.clear()
        ptr = C.llama_model_load_from_file(str(self.path).encode(), params)
        if not ptr:
            raise ModelLoadError(
                f"cannot load {self.path.name} ({_human_size(self.path.stat().st_size)}): {_llama_failure_reason()}",
                hint=_load_failure_hint(),
            )
        self._ptr = ptr
        self.placement: dict = {"devices": [str(d) for d in self.devices] or ["local"], **_load_report}
        self.vocab = Vocab(C.llama_model_get_vocab(ptr))

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def description(self) -> str:
        buf = ctypes.create_string_buffer(256)
        n = C.llama_model_desc(self._ptr, buf, len(buf))
        return buf.value[: max(n, 0)].decode("utf-8", "replace")

    @property
    def n_params(self) -> int:
        return int(C.llama_model_n_params(self._ptr))

    @property
    def size_bytes(self) -> int:
        return int(C.llama_model_size(self._ptr))

    @property
    def n_ctx_train(self) -> int:
        return int(C.llama_model_n_ctx_train(self._ptr))

    @property
    def n_layer(self) -> int:
        return int(C.llama_model_n_layer(self._ptr))

    @property
    def has_partial_kv_removal(self) -> bool:
        """Recurrent and hybrid models keep a state that cannot be cut back to an earlier position."""
        return not (C.llama_model_is_recurrent(self._ptr) or C.llama_model_is_hybrid(self._ptr))

    def metadata(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(512)
        n = C.llama_model_meta_val_str(self._ptr, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            C.llama_model_meta_val_str(self._ptr, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace")

    def apply_chat_template(self, user_message: str) -> str:
        """Wrap one user message in the model's chat template, ready for the assistant's answer."""
        return self.render_chat([("user", user_message)])

    def render_chat(self, messages: Sequence[tuple[str, str]]) -> str:
        """(role, content) messages rendered with the model's chat template, ready for the
        assistant's answer (the server's chat requests; one user message is `--chat`)."""
        template = C.llama_model_chat_template(self._ptr, None)
        if not template:
            raise ModelLoadError(f"{self.name} has no chat template; drop --chat")
        array = (C.llama_chat_message * len(messages))()
        # The encoded strings must outlive the call: the structs only point at them.
        encoded = [(role.encode("utf-8"), content.encode("utf-8")) for role, content in messages]
        for slot, (role, content) in zip(array, encoded):
            slot.role = role
            slot.content = content
        capacity = 2 * sum(len(c) + len(r) for r, c in encoded) + 1024
        while True:
            buf = ctypes.create_string_buffer(capacity)
            n = C.llama_chat_apply_template(template, array, len(messages), True, buf, capacity)
            if n < 0:
                raise ModelLoadError(f"{self.name}: llama.cpp does not support its chat template; drop --chat")
            if n <= capacity:
                return buf.raw[:n].decode("utf-8", "replace")
            capacity = n + 1

    def close(self) -> None:
        if getattr(self, "_ptr", None):
            C.llama_model_free(self._ptr)
            self._ptr = None

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


DECODE_ERRORS = {
    1: "no free slot in the KV cache",
    2: "aborted",
    -1: "invalid batch",
}


class Context:
    """One llama.cpp context (sequence 0) that remembers which tokens its KV cache holds.

    `tokens` is the cache's content: position i holds tokens[i]. `decode` appends, `truncate`
    rolls back. The logits returned by `decode` are a view into llama.cpp's buffer, valid
    until the next `decode` on this context.
    """

    def __init__(
        self,
        model: Model,
        *,
        n_ctx: int,
        n_threads: int | None = None,
        n_threads_batch: int | None = None,
        n_batch: int = 512,
    ):
        self.model = model
        threads = n_threads or os.cpu_count() or 1
        params = C.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_seq_max = 1
        params.n_threads = threads
        params.n_threads_batch = n_threads_batch or threads
        params.no_perf = True
        _log_tail.clear()
        ptr = C.llama_init_from_model(model._ptr, params)
        if not ptr:
            raise ModelLoadError(
                f"cannot create a {n_ctx}-token context for {model.name}: {_llama_failure_reason()}",
                hint="try a smaller --ctx-size or fewer GPU layers",
            )
        self._ptr = ptr
        self._memory = C.llama_get_memory(ptr)
        # llama.cpp rounds the cache up to a multiple of 256; the size asked for is the limit kept
        # (a prompt over -c must be refused, and generation must stop at -c, as the user said).
        self.n_ctx: int = min(n_ctx, C.llama_n_ctx(ptr))
        self.n_batch: int = C.llama_n_batch(ptr)
        self.n_vocab: int = model.vocab.n_tokens
        self.tokens: list[int] = []
        # The generation whose tokens the cache holds: another one re-syncs before its next round.
        self.owner: object = None

        # One batch, allocated once and reused for every decode; numpy views over its arrays
        # let us fill it without per-token ctypes calls.
        self._batch = C.llama_batch_init(self.n_batch, 0, 1)
        self._batch_tokens = np.ctypeslib.as_array(self._batch.token, shape=(self.n_batch,))
        self._batch_pos = np.ctypeslib.as_array(self._batch.pos, shape=(self.n_batch,))
        self._batch_wants_logits = np.ctypeslib.as_array(self._batch.logits, shape=(self.n_batch,))
        np.ctypeslib.as_array(self._batch.n_seq_id, shape=(self.n_batch,))[:] = 1
        for i in range(self.n_batch):
            self._batch.seq_id[i][0] = 0

    @property
    def n_past(self) -> int:
        return len(self.tokens)

    @property
    def room(self) -> int:
        """How many more tokens fit in the cache."""
        return self.n_ctx - len(self.tokens)

    def decode(self, tokens: Sequence[int], *, all_logits: bool = False) -> np.ndarray:
        """Append `tokens` to the cache; return logits of shape (len(tokens) or 1, n_vocab).

        With all_logits, row i predicts the token after tokens[i]; otherwise the one row
        predicts the token after the last one. Inputs longer than n_batch go in chunks.
        """
        n = len(tokens)
        if n == 0:
            raise ValueError("decode needs at least one token")
        if n > self.room:
            raise ContextFullError(f"context full: {self.n_past} + {n} tokens > n_ctx {self.n_ctx}")
        if all_logits and n > self.n_batch:
            raise ValueError(f"all_logits decode of {n} tokens exceeds n_batch {self.n_batch}")
        for start in range(0, n, self.n_batch):
            chunk = tokens[start : start + self.n_batch]
            last_chunk = start + self.n_batch >= n
            self._decode_chunk(chunk, want_all=all_logits, want_last=last_chunk)
        n_rows = n if all_logits else 1
        logits_ptr = C.llama_get_logits(self._ptr)
        return np.ctypeslib.as_array(logits_ptr, shape=(n_rows, self.n_vocab))

    def _decode_chunk(self, chunk: Sequence[int], *, want_all: bool, want_last: bool) -> None:
        m = len(chunk)
        start_pos = len(self.tokens)
        self._batch.n_tokens = m
        self._batch_tokens[:m] = chunk
        self._batch_pos[:m] = np.arange(start_pos, start_pos + m, dtype=np.int32)
        self._batch_wants_logits[:m] = 1 if want_all else 0
        if want_last:
            self._batch_wants_logits[m - 1] = 1
        rc = C.llama_decode(self._ptr, self._batch)
        if rc != 0:
            # Leave the cache exactly as it was before this chunk.
            C.llama_memory_seq_rm(self._memory, 0, start_pos, -1)
            if rc == 1:
                raise ContextFullError(f"no KV slot for {m} tokens at position {start_pos}")
            reason = DECODE_ERRORS.get(rc, f"error code {rc}")
            raise DecodeError(f"llama_decode failed for {self.model.name}: {reason}")
        self.tokens.extend(chunk)

    def truncate(self, n_keep: int) -> None:
        """Forget every cached token from position n_keep on (rejected drafts)."""
        if n_keep >= len(self.tokens):
            return
        if not C.llama_memory_seq_rm(self._memory, 0, n_keep, -1):
            raise DecodeError(
                f"{self.model.name} cannot roll back its cache (recurrent or hybrid model)",
                hint="speculative decoding needs a transformer KV cache; use --mode none",
            )
        del self.tokens[n_keep:]

    def clear(self) -> None:
        C.llama_memory_clear(self._memory, True)
        self.tokens.clear()

    def _cached_length(self) -> int:
        return int(C.llama_memory_seq_pos_max(self._memory, 0)) + 1

    def in_sync(self) -> bool:
        """Does `tokens` describe llama.cpp's cache? (An interrupt between llama_decode and our
        bookkeeping can leave them apart.)"""
        return self._cached_length() == len(self.tokens)

    def resync(self) -> None:
        """Bring `tokens` and the cache back to the part both agree on (a cheap check)."""
        n_cached = self._cached_length()
        if n_cached < len(self.tokens):
            del self.tokens[n_cached:]
        elif n_cached > len(self.tokens):
            C.llama_memory_seq_rm(self._memory, 0, len(self.tokens), -1)

    def close(self) -> None:
        if getattr(self, "_ptr", None):
            C.llama_batch_free(self._batch)
            C.llama_free(self._ptr)
            self._ptr = None

    def __enter__(self) -> "Context":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


# -- LoRA adapters and quantization (specllm tune-draft, --draft-lora) ---------------------------


class LoraAdapter:
    """A GGUF LoRA adapter loaded for one model. It lives as long as the contexts that use it
    (llama.cpp also frees it with its model, so `close` is only needed to free it earlier)."""

    def __init__(self, model: Model, path: str | os.PathLike):
        self.path = Path(path)
        self.model = model
        try:
            check_gguf_file(self.path)
        except ModelLoadError as e:  # the checks speak of "model file"; here it is an adapter
            raise ModelLoadError(e.message.replace("model file", "LoRA adapter"), hint=e.hint) from None
        _log_tail.clear()
        ptr = C.llama_adapter_lora_init(model._ptr, str(self.path).encode())
        if not ptr:
            reason = _llama_failure_reason()
            if "arch mismatch" in reason:
                arch = model.metadata("general.architecture")
                reason = f"the adapter is for another architecture than the draft's ({arch})"
            raise ModelLoadError(
                f"cannot apply LoRA adapter {self.path.name} to {model.name}: {reason}",
                hint="an adapter applies only to the model it was trained for (specllm tune-draft)",
            )
        self._ptr = ptr

    @property
    def name(self) -> str:
        return self.path.name

    def metadata(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(256)
        n = C.llama_adapter_meta_val_str(self._ptr, key.encode(), buf, len(buf))
        return None if n < 0 else buf.value.decode("utf-8", "replace")

    def close(self) -> None:
        if getattr(self, "_ptr", None) and getattr(self.model, "_ptr", None):
            C.llama_adapter_lora_free(self._ptr)
        self._ptr = None


def set_lora(context: Context, adapter: LoraAdapter | None, scale: float = 1.0) -> None:
    """Apply `adapter` (None: no adapter) to every later decode of `context`. The cache must be
    empty: what it holds was computed with the old weights."""
    if context.tokens:
        context.clear()
    if adapter is None:
        rc = C.llama_set_adapters_lora(context._ptr, None, 0, None)
    else:
        adapters = (C.llama_adapter_lora_p_ctypes * 1)(adapter._ptr)
        scales = (ctypes.c_float * 1)(scale)
        rc = C.llama_set_adapters_lora(context._ptr, adapters, 1, scales)
    if rc != 0:
        raise ModelLoadError(f"llama.cpp refused the LoRA adapter for {context.model.name} (code {rc})")


def quantize_model(source: Path, destination: Path, ftype: int, *, n_threads: int | None = None) -> None:
    """Write `source` quantized to llama_ftype `ftype` (llama_model_quantize). Tensors already of
    the chosen type are copied; others are (re)quantized."""
    _ensure_backend()
    params = C.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = n_threads or 0
    params.allow_requantize = True
    _log_tail.clear()
    rc = C.llama_model_quantize(str(source).encode(), str(destination).encode(), ctypes.byref(params))
    if rc != 0:
        raise ModelLoadError(f"cannot quantize {source.name}: {_llama_failure_reason()}")


def ftype_name(ftype: int) -> str:
    """11 -> 'Q3_K - Small': llama.cpp's name of a file type."""
    name = C.llama_ftype_name(ftype)
    return name.decode() if name else str(ftype)
