"""Option handling shared by the commands that load models (generate, bench)."""

from __future__ import annotations

import io
import os
import sys
from typing import BinaryIO, Iterator, Optional

from ..engine import DEFAULT_NGRAM_SIZES, EngineConfig, default_k
from ..errors import UsageError
from ..rpc import parse_endpoints
from ..options import check_ctx_size, check_draft_max, check_mode, check_positive, parse_ngram_sizes


def resolve_models(model: Optional[str], draft_model: Optional[str]) -> tuple[str, Optional[str], dict]:
    """Paths of the target and draft, fetching registry models on first use.

    No -m at all means the registry's default pair; its recommended settings come back as
    the third value (lowest precedence, below options and environment variables).
    """
    from .. import models

    if model is None:
        pair, target_path, draft_path = models.resolve_pair()
        draft = str(models.resolve_model(draft_model)) if draft_model else str(draft_path)
        settings = {"mode": pair.mode, "k": pair.k, "cross_vocab": pair.cross_vocab}
        if pair.ngram_min and pair.ngram_max:
            settings["ngram_sizes"] = tuple(range(pair.ngram_max, pair.ngram_min - 1, -1))
        return str(target_path), draft, settings
    target = str(models.resolve_model(model))
    draft = str(models.resolve_model(draft_model)) if draft_model else None
    return target, draft, {}


def engine_config(
    *,
    model: Optional[str],
    draft_model: Optional[str],
    mode: Optional[str],
    k: Optional[int],
    ngram: Optional[str],
    ctx_size: int,
    draft_ctx_size: Optional[int],
    threads: Optional[int],
    draft_threads: Optional[int],
    n_gpu_layers: int,
    draft_n_gpu_layers: Optional[int],
    cross_vocab: bool = False,
    memory: Optional[bool] = None,
    rpc: Optional[str] = None,
) -> EngineConfig:
    check_mode(mode)
    check_draft_max(k)
    check_ctx_size("--ctx-size", ctx_size)
    check_ctx_size("--draft-ctx-size", draft_ctx_size)
    check_positive("--threads", threads)
    check_positive("--draft-threads", draft_threads)
    ngram_sizes = parse_ngram_sizes(ngram)
    endpoints = parse_endpoints(rpc)
    if endpoints and n_gpu_layers == 0:
        n_gpu_layers = -1  # --rpc is for the target's layers: -ngl 0 would keep them all here
    if mode == "draft" and not draft_model and model is not None:
        raise UsageError("--mode draft needs a draft model (-md)")
    target, draft, pair_settings = resolve_models(model, draft_model)
    if mode == "draft" and not draft:
        raise UsageError("--mode draft needs a draft model (-md)")
    chosen_mode = mode or pair_settings.get("mode") or "auto"
    return EngineConfig(
        target=target,
        draft=draft,
        mode=chosen_mode,
        k=k or pair_settings.get("k") or default_k(chosen_mode),
        ngram_sizes=ngram_sizes or tuple(pair_settings.get("ngram_sizes", ())) or DEFAULT_NGRAM_SIZES,
        ctx_size=ctx_size,
        draft_ctx_size=draft_ctx_size,
        threads=threads,
        draft_threads=draft_threads,
        n_gpu_layers=n_gpu_layers,
        draft_n_gpu_layers=draft_n_gpu_layers,
        cross_vocab=cross_vocab or bool(pair_settings.get("cross_vocab")),
        memory=memory if memory is not None else pair_settings.get("memory"),
        rpc=endpoints,
    )


def stdin_is_terminal() -> bool:
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):  # no stdin at all, or a closed one
        return False


def _stdin_binary() -> BinaryIO:
    # Bytes, not text: invalid UTF-8 must become a clear error, not a decoding traceback.
    stream = getattr(sys.stdin, "buffer", None)
    return stream if stream is not None else io.BytesIO(sys.stdin.read().encode("utf-8", "surrogateescape"))


def read_stdin_text() -> str:
    """All of stdin as UTF-8 text; invalid UTF-8 is a usage error, not a traceback."""
    return decode_utf8(_stdin_binary().read(), "standard input")


def stdin_lines() -> Iterator[bytes]:
    """stdin line by line, undecoded (one bad line must not stop the others)."""
    yield from _stdin_binary()


def decode_utf8(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{where} is not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})") from None


def check_text_is_utf8(text: str, where: str) -> str:
    """Text that could not be written as UTF-8 (argv's undecodable bytes arrive as surrogates, JSON
    can hold lone surrogates) is refused clearly."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            raw = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError as e:
            raise UsageError(f"{where} is not valid UTF-8 (a lone surrogate at character {e.start})") from None
        return decode_utf8(raw, where)
    return text


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")
