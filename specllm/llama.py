"""A thin typed layer over llama.cpp's C API (`llama_cpp.llama_cpp`).

This is the only module that touches ctypes. It gives the rest of specllm three things:
`Model` (weights + vocabulary), `Vocab` (tokenize, token bytes, end-of-generation) and
`Context` (a KV cache that knows which tokens it holds: decode a batch, read logits as a
zero-copy numpy view, truncate after rejected drafts; several sequences in one cache, decoded
together in one batch).
"""

from __future__ import annotations

import collections
import ctypes
import functools
import os
import re
import stat
import sys
import threading
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
    def n_swa(self) -> int:
        """The sliding-window size of its attention (0: every layer attends to the whole context)."""
        return int(C.llama_model_n_swa(self._ptr))

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


# Several sequences share one KV buffer (see Context). The other way, one stream per sequence,
# attends over each sequence's own cells only (cheaper with many long sequences) but splits a
# batch whose sequences carry different numbers of rows into several passes. Which pays for a
# given model and machine is a measurement (README, "Many sequences in one batch").
UNIFIED_KV = True


class Context:
    """One llama.cpp context whose KV cache holds `n_seq` sequences, each with the tokens it holds.

    With n_seq = 1 (the default) the context is its sequence 0: `tokens` is the cache's content
    (position i holds tokens[i]), `decode` appends, `truncate` rolls back. With several
    sequences, `sequence(i)` is sequence i with the same methods, and `decode_rows` decodes rows
    of several sequences in ONE llama_decode (the shared batch of specllm/batch.py).

    Room: each sequence may hold n_ctx tokens (--ctx-size), and the cache holds n_seq x n_ctx in
    one unified buffer. A request thus has the same room whatever the number of slots (its
    output cannot change with --parallel), and a sequence that fills its share never takes
    another's. (llama-server instead divides -c between its slots.) The buffer is unified
    because llama.cpp then decodes a batch whose sequences carry different numbers of rows
    (one has 5 drafts, another none) in one ubatch; separate per-sequence streams split it
    into equal-length ubatches.

    The logits returned by a decode are a view into llama.cpp's buffer, valid until the next
    decode on this context.
    """

    def __init__(
        self,
        model: Model,
        *,
        n_ctx: int,
        n_threads: int | None = None,
        n_threads_batch: int | None = None,
        n_batch: int = 512,
        n_seq: int = 1,
    ):
        if n_seq < 1:
            raise ValueError("a context needs at least one sequence")
        self.model = model
        threads = n_threads or os.cpu_count() or 1
        params = C.llama_context_default_params()
        params.n_ctx = n_ctx * n_seq
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_seq_max = n_seq
        params.kv_unified = n_seq > 1 and UNIFIED_KV
        params.n_threads = threads
        params.n_threads_batch = n_threads_batch or threads
        params.no_perf = True
        _log_tail.clear()
        ptr = C.llama_init_from_model(model._ptr, params)
        if not ptr:
            raise ModelLoadError(
                f"cannot create a {n_ctx * n_seq}-token context for {model.name}: {_llama_failure_reason()}",
                hint="try a smaller --ctx-size, fewer --parallel sequences or fewer GPU layers",
            )
        self._ptr = ptr
        self._memory = C.llama_get_memory(ptr)
        # llama.cpp rounds the cache up to a multiple of 256; the size asked for is the limit kept
        # (a prompt over -c must be refused, and generation must stop at -c, as the user said).
        self.n_ctx: int = min(n_ctx, C.llama_n_ctx(ptr) // n_seq)
        self.n_batch: int = C.llama_n_batch(ptr)
        self.n_vocab: int = model.vocab.n_tokens
        self.sequences: list[KVSequence] = [KVSequence(self, seq_id) for seq_id in range(n_seq)]
        # Sequences share the cells of a common prefix (KVSequence.share_from) only in the unified
        # cache (across separate streams llama.cpp copies whole streams) and without a sliding
        # window (a donor past the window has dropped cells that the prefix's next positions
        # still attend to).
        self.shares_cells: bool = bool(params.kv_unified) and model.n_swa == 0
        self._batch = _Batch(self.n_batch)
        # Drafters on several threads (drafting/lockstep.py) call into this context: one C call
        # at a time (ctypes releases the GIL, and llama.cpp's cache is not thread-safe).
        self.lock = threading.Lock()
        self.lockstep = None  # a Lockstep merging its threads' decodes, while one runs

    @property
    def n_seq(self) -> int:
        return len(self.sequences)

    def sequence(self, seq_id: int) -> "KVSequence":
        return self.sequences[seq_id]

    # -- sequence 0: the single-sequence API ---------------------------------------------------

    @property
    def tokens(self) -> list[int]:
        return self.sequences[0].tokens

    @property
    def owner(self) -> object:
        return self.sequences[0].owner

    @owner.setter
    def owner(self, generation: object) -> None:
        self.sequences[0].owner = generation

    @property
    def n_past(self) -> int:
        return self.sequences[0].n_past

    @property
    def room(self) -> int:
        return self.sequences[0].room

    def decode(self, tokens: Sequence[int], *, all_logits: bool = False) -> np.ndarray:
        return self.sequences[0].decode(tokens, all_logits=all_logits)

    def truncate(self, n_keep: int) -> None:
        self.sequences[0].truncate(n_keep)

    def in_sync(self) -> bool:
        return self.sequences[0].in_sync()

    def resync(self) -> None:
        self.sequences[0].resync()

    def clear(self) -> None:
        """Forget every sequence."""
        C.llama_memory_clear(self._memory, True)
        for sequence in self.sequences:
            sequence.tokens.clear()

    # -- the shared batch ----------------------------------------------------------------------

    def decode_rows(self, rows: Sequence["Rows"]) -> list[np.ndarray | None]:
        """Append each Rows' tokens to its sequence, all in ONE llama_decode; return each one's
        logits: (len(tokens), n_vocab) for logits="all", (1, n_vocab) for "last", None for "none".

        The batch must fit n_batch. On failure every sequence is left as it was. While a
        Lockstep runs several drafters on this context, its threads' rows are merged with each
        other's into one decode (drafting/lockstep.py).
        """
        self.check_room(rows)
        lockstep = self.lockstep
        if lockstep is not None and lockstep.is_member():
            return lockstep.decode(rows)
        with self.lock:
            return self.decode_now(rows)

    def check_room(self, rows: Sequence["Rows"]) -> None:
        for r in rows:
            if len(r.tokens) > r.sequence.room:
                raise ContextFullError(
                    f"context full: {r.sequence.n_past} + {len(r.tokens)} tokens > n_ctx {self.n_ctx}")

    def decode_now(self, rows: Sequence["Rows"]) -> list[np.ndarray | None]:
        """decode_rows without a Lockstep (the caller holds `lock`)."""
        n = sum(len(r.tokens) for r in rows)
        if n == 0:
            raise ValueError("decode needs at least one token")
        if n > self.n_batch:
            raise ValueError(f"a batch of {n} tokens exceeds n_batch {self.n_batch}")
        batch, i = self._batch, 0
        for r in rows:
            m, start = len(r.tokens), r.sequence.n_past
            batch.token[i : i + m] = r.tokens
            batch.pos[i : i + m] = np.arange(start, start + m, dtype=np.int32)
            batch.seq[i : i + m] = r.sequence.seq_id
            batch.logits[i : i + m] = r.logits == "all"
            if r.logits == "last":
                batch.logits[i + m - 1] = 1
            i += m
        batch.struct.n_tokens = n
        rc = C.llama_decode(self._ptr, batch.struct)
        if rc != 0:
            # Leave every cache exactly as it was before this batch.
            for r in rows:
                C.llama_memory_seq_rm(self._memory, r.sequence.seq_id, r.sequence.n_past, -1)
            if rc == 1:
                raise ContextFullError(f"no KV slot for a batch of {n} tokens")
            reason = DECODE_ERRORS.get(rc, f"error code {rc}")
            raise DecodeError(f"llama_decode failed for {self.model.name}: {reason}")
        outputs = []  # each Rows' number of logits rows
        for r in rows:
            r.sequence.tokens.extend(r.tokens)
            outputs.append(len(r.tokens) if r.logits == "all" else int(r.logits == "last"))
        logits = np.ctypeslib.as_array(C.llama_get_logits(self._ptr), shape=(sum(outputs), self.n_vocab))
        out: list[np.ndarray | None] = []
        row = 0
        for n_rows in outputs:
            out.append(logits[row : row + n_rows] if n_rows else None)
            row += n_rows
        return out

    def close(self) -> None:
        if getattr(self, "_ptr", None):
            C.llama_free(self._ptr)
            self._ptr = None

    def __enter__(self) -> "Context":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Rows:
    """Tokens to append to one sequence in a shared decode, and which logits to return."""

    __slots__ = ("sequence", "tokens", "logits")

    def __init__(self, sequence: "KVSequence", tokens: Sequence[int], logits: str = "all"):
        self.sequence = sequence
        self.tokens = tokens
        self.logits = logits  # "all", "last" or "none"


class KVSequence:
    """One sequence of a context's KV cache and the tokens it holds: position i holds tokens[i].

    `owner` is the generation whose tokens the sequence holds: another one re-syncs before its
    next round.
    """

    def __init__(self, context: Context, seq_id: int):
        self.context = context
        self.seq_id = seq_id
        self.tokens: list[int] = []
        self.owner: object = None

    @property
    def model(self) -> Model:
        return self.context.model

    @property
    def n_ctx(self) -> int:
        return self.context.n_ctx

    @property
    def n_batch(self) -> int:
        return self.context.n_batch

    @property
    def n_vocab(self) -> int:
        return self.context.n_vocab

    @property
    def n_past(self) -> int:
        return len(self.tokens)

    @property
    def room(self) -> int:
        """How many more tokens fit in this sequence's share of the cache."""
        return self.context.n_ctx - len(self.tokens)

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
        logits = None
        for start in range(0, n, self.n_batch):
            chunk = tokens[start : start + self.n_batch]
            last_chunk = start + self.n_batch >= n
            want = "all" if all_logits else ("last" if last_chunk else "none")
            logits = self.context.decode_rows([Rows(self, chunk, want)])[0]
        return logits

    def truncate(self, n_keep: int) -> None:
        """Forget every cached token from position n_keep on (rejected drafts). Only this
        sequence's cells go: the other sequences keep theirs."""
        if n_keep >= len(self.tokens):
            return
        with self.context.lock:
            removed = C.llama_memory_seq_rm(self.context._memory, self.seq_id, n_keep, -1)
        if not removed:
            raise DecodeError(
                f"{self.model.name} cannot roll back its cache (recurrent or hybrid model)",
                hint="speculative decoding needs a transformer KV cache; use --mode none",
            )
        del self.tokens[n_keep:]

    def share_from(self, donor: "KVSequence", n: int) -> None:
        """Hold the donor's tokens up to position n without decoding them: llama.cpp tags the
        donor's cells of positions n_past..n-1 with this sequence too (llama_memory_seq_cp in
        the unified cache: no copy, the cells are shared until either sequence drops them).
        This sequence must hold the donor's first n_past tokens."""
        if not self.context.shares_cells or donor.context is not self.context:
            raise ValueError("these sequences cannot share cells")
        if donor.tokens[: self.n_past] != self.tokens or n > len(donor.tokens):
            raise ValueError("the donor does not hold this sequence's tokens and the ones to share")
        if n <= self.n_past:
            return
        with self.context.lock:
            C.llama_memory_seq_cp(self.context._memory, donor.seq_id, self.seq_id, self.n_past, n)
        self.tokens.extend(donor.tokens[self.n_past : n])

    def clear(self) -> None:
        with self.context.lock:
            C.llama_memory_seq_rm(self.context._memory, self.seq_id, -1, -1)
        self.tokens.clear()

    def cached_length(self) -> int:
        """What llama.cpp holds for this sequence (its last position + 1)."""
        with self.context.lock:
            return int(C.llama_memory_seq_pos_max(self.context._memory, self.seq_id)) + 1

    def in_sync(self) -> bool:
        """Does `tokens` describe llama.cpp's cache? (An interrupt between llama_decode and our
        bookkeeping can leave them apart.)"""
        return self.cached_length() == len(self.tokens)

    def resync(self) -> None:
        """Bring `tokens` and the cache back to the part both agree on (a cheap check)."""
        n_cached = self.cached_length()
        if n_cached < len(self.tokens):
            del self.tokens[n_cached:]
        elif n_cached > len(self.tokens):
            with self.context.lock:
                C.llama_memory_seq_rm(self.context._memory, self.seq_id, len(self.tokens), -1)


class _Batch:
    """A llama_batch over numpy arrays, allocated once per context: a decode fills it with
    slice assignments, not per-token ctypes calls (the loop's own time counts on a GPU)."""

    def __init__(self, capacity: int):
        self.token = np.zeros(capacity, dtype=np.int32)
        self.pos = np.zeros(capacity, dtype=np.int32)
        self.seq = np.zeros(capacity, dtype=np.int32)  # each row's one sequence id
        self.n_seq_id = np.ones(capacity, dtype=np.int32)
        self.logits = np.zeros(capacity, dtype=np.int8)
        seq_id_p = ctypes.POINTER(C.llama_seq_id)
        base = self.seq.ctypes.data
        self._seq_ptrs = (seq_id_p * capacity)(*(ctypes.cast(base + 4 * i, seq_id_p) for i in range(capacity)))
        self.struct = C.llama_batch(
            n_tokens=0,
            token=self.token.ctypes.data_as(ctypes.POINTER(C.llama_token)),
            embd=None,
            pos=self.pos.ctypes.data_as(ctypes.POINTER(C.llama_pos)),
            n_seq_id=self.n_seq_id.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)),
            seq_id=self._seq_ptrs,
            logits=self.logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8)),
        )


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
