"""Option handling shared by the commands that load models (generate, bench)."""

from __future__ import annotations

import os
import sys
from typing import Optional

from ..engine import DEFAULT_K, DEFAULT_NGRAM_SIZES, EngineConfig
from ..errors import UsageError
from ..options import check_draft_max, check_mode, check_positive, parse_ngram_sizes


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
) -> EngineConfig:
    check_mode(mode)
    check_draft_max(k)
    check_positive("--ctx-size", ctx_size)
    check_positive("--draft-ctx-size", draft_ctx_size)
    check_positive("--threads", threads)
    check_positive("--draft-threads", draft_threads)
    ngram_sizes = parse_ngram_sizes(ngram)
    if ctx_size < 16:
        raise UsageError(f"--ctx-size {ctx_size} is too small (at least 16 tokens)")
    if mode == "draft" and not draft_model and model is not None:
        raise UsageError("--mode draft needs a draft model (-md)")
    target, draft, pair_settings = resolve_models(model, draft_model)
    if mode == "draft" and not draft:
        raise UsageError("--mode draft needs a draft model (-md)")
    return EngineConfig(
        target=target,
        draft=draft,
        mode=mode or pair_settings.get("mode") or "auto",
        k=k or pair_settings.get("k") or DEFAULT_K,
        ngram_sizes=ngram_sizes or tuple(pair_settings.get("ngram_sizes", ())) or DEFAULT_NGRAM_SIZES,
        ctx_size=ctx_size,
        draft_ctx_size=draft_ctx_size,
        threads=threads,
        draft_threads=draft_threads,
        n_gpu_layers=n_gpu_layers,
        draft_n_gpu_layers=draft_n_gpu_layers,
        cross_vocab=cross_vocab or bool(pair_settings.get("cross_vocab")),
    )


def stdin_is_terminal() -> bool:
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


def read_stdin_text() -> str:
    """All of stdin as UTF-8 text; invalid UTF-8 is a usage error, not a traceback."""
    stream = getattr(sys.stdin, "buffer", None)
    data = stream.read() if stream is not None else sys.stdin.read().encode("utf-8", "surrogateescape")
    return decode_utf8(data, "standard input")


def decode_utf8(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{where} is not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})") from None


def check_text_is_utf8(text: str, where: str) -> str:
    """argv arrives with undecodable bytes as surrogates; refuse them clearly."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogateescape")
        return decode_utf8(raw, where)
    return text


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")
