"""Typed errors. Only the CLI turns them into messages and exit codes."""

from __future__ import annotations


class SpecllmError(Exception):
    """A failure a user can act on. `hint` is an optional second line."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(SpecllmError):
    """Bad options or input: the user asked for something that cannot work."""

    exit_code = 2


class ModelLoadError(SpecllmError):
    """A GGUF file is missing, unreadable, corrupt or unsupported."""


class RegistryError(SpecllmError):
    """A model name or registry file is wrong, or a model cannot be fetched."""


class IncompatibleModelsError(SpecllmError):
    """Target and draft cannot be paired (vocabulary, cache type)."""


class PromptTooLongError(UsageError):
    """The prompt does not fit in the context."""


class DecodeError(SpecllmError):
    """llama_decode failed in a way generation cannot recover from."""


class ContextFullError(SpecllmError):
    """The KV cache has no room for the next tokens. Generation ends with finish_reason "length"."""


class RpcError(SpecllmError):
    """An RPC worker cannot be used: unreachable, not an RPC server, another protocol version,
    or a llama.cpp built without RPC."""


class TuneError(SpecllmError):
    """Draft tuning cannot go on: PyTorch missing, an architecture the trainer does not know,
    a data or checkpoint file that belongs to another run."""
