"""Request bodies and response objects, in the shapes of OpenAI's API.

Unknown fields are ignored, as OpenAI clients expect (they send fields a server may not know).
Types are strict: "5" is not a number, true is not 1. Sampling fields a request leaves out take
the server's defaults (`specllm serve --temp ...`), as `specllm generate` would.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import replace
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..config import MAX_DRAFT, MODES
from ..engine import Request
from ..stats import SpecStats

Mode = Literal[MODES]  # type: ignore[valid-type]
SEED_LIMIT = 1 << 63  # seeds are non-negative 64-bit integers
MAX_STOP_STRINGS = 4  # as OpenAI: each stop string is searched for after every token
MAX_TOP_LOGPROBS = 20  # as OpenAI's chat API: alternatives reported per token


class Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    model: Optional[str] = None  # one model is served: any name is accepted
    max_tokens: Optional[int] = Field(None, ge=0)
    temperature: Optional[float] = Field(None, ge=0.0)
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0)
    top_k: Optional[int] = Field(None, ge=0)  # not in OpenAI's API; llama.cpp servers take it
    min_p: Optional[float] = Field(None, ge=0.0, le=1.0)
    seed: Optional[int] = Field(None, ge=0, lt=SEED_LIMIT)
    stop: Union[str, list[str], None] = None
    # Some clients send null for what they leave unset: null means the default here too.
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None
    n: Optional[int] = 1
    # specllm's own: the speculation mode and draft length of this request.
    mode: Optional[Mode] = None
    k: Optional[int] = Field(None, ge=1, le=MAX_DRAFT)

    @field_validator("temperature")
    @classmethod
    def _finite(cls, value: Optional[float]) -> Optional[float]:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: Union[str, list[str], None]) -> Union[str, list[str], None]:
        if isinstance(value, list) and len(value) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings")
        return value

    def stop_strings(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return tuple(s for s in stops if s)

    def choices(self) -> int:
        """How many choices the request asks for (`n`; null means 1)."""
        return 1 if self.n is None else self.n

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def requested_logprobs(self) -> Optional[int]:
        """Alternatives to report per token with its log-probability (None: no log-probabilities)."""
        return None

    def to_request(self, defaults: Request) -> Request:
        """The engine request: the server's defaults with this body's settings."""
        sampling = {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k, "min_p": self.min_p}
        params = replace(defaults.params, **{key: v for key, v in sampling.items() if v is not None})
        return replace(
            defaults,
            max_tokens=self.max_tokens if self.max_tokens is not None else defaults.max_tokens,
            params=params,
            seed=self.seed if self.seed is not None else defaults.seed,
            chat=False,  # chat bodies are rendered with the template before tokenizing
            truncate=False,  # a prompt too long is refused, not cut
            mode=self.mode,
            k=self.k,
            stop=self.stop_strings(),
            logprobs=self.requested_logprobs(),
        )


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: bool = False


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[TextPart], None] = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""  # an assistant turn that only called tools


class ChatBody(Body):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=0)  # OpenAI's newer name for max_tokens
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> "ChatBody":
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    def requested_logprobs(self) -> Optional[int]:
        return (self.top_logprobs or 0) if self.logprobs else None

    def to_request(self, defaults: Request) -> Request:
        request = super().to_request(defaults)
        if self.max_completion_tokens is not None:
            request = replace(request, max_tokens=self.max_completion_tokens)
        return request

    def chat_messages(self) -> list[tuple[str, str]]:
        # "developer" is OpenAI's newer name for the system role; chat templates know "system".
        return [("system" if m.role == "developer" else m.role, m.text()) for m in self.messages]


PromptField = Union[str, list[str], list[int], list[list[int]]]


class CompletionBody(Body):
    # One prompt (text or token ids), or several (texts or token-id lists): OpenAI's batch.
    prompt: PromptField
    logprobs: Optional[int] = Field(None, ge=0, le=MAX_TOP_LOGPROBS)  # alternatives per token

    def requested_logprobs(self) -> Optional[int]:
        return self.logprobs

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, value: PromptField) -> PromptField:
        if isinstance(value, list) and (not value or any(isinstance(p, list) and not p for p in value)):
            raise ValueError("the prompt is empty")
        return value

    def prompts(self) -> list[Union[str, list[int]]]:
        """Each prompt of the request: a text or token ids."""
        if isinstance(self.prompt, str) or isinstance(self.prompt[0], int):
            return [self.prompt]
        return list(self.prompt)


Body.model_rebuild()
ChatBody.model_rebuild()
CompletionBody.model_rebuild()


def validation_message(error: ValidationError) -> tuple[str, Optional[str]]:
    """One line for a client, and the offending field (OpenAI's `param`)."""
    first = error.errors(include_url=False)[0]
    loc = [str(part) for part in first.get("loc", ()) if not _is_union_branch(part)]
    param = ".".join(loc) or None
    message = first.get("msg", "invalid request").removeprefix("Value error, ")
    if first.get("type") == "missing":
        message = "is required"
    return (f"{param}: {message}" if param else message), param


def _is_union_branch(part: object) -> bool:
    # pydantic names the union member it tried, e.g. ('prompt', 'list[int]', 0): not a field.
    return isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool", "function-after"))


# -- responses ---------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        # Prompt tokens found in the KV cache (the prefix shared with the previous request).
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def speculative(stats: SpecStats) -> dict:
    """specllm's statistics of one generation (see specllm/stats.py for the definitions)."""
    return {
        "mode": stats.mode,
        "k": stats.k,
        "drafted": stats.drafted,
        "accepted": stats.accepted,
        "acceptance_rate": stats.acceptance_rate,
        "mean_accepted_length": stats.mean_accepted_length,
        "rounds": stats.rounds,
        "rounds_by_source": dict(stats.rounds_by_source),
        "tokens_per_second": stats.tokens_per_second,
        "prompt_ms": stats.prompt_seconds * 1e3,
        "decode_ms": stats.decode_seconds * 1e3,
        "draft_lora": stats.draft_lora,
    }


def error_body(message: str, *, kind: str = "invalid_request_error", param: Optional[str] = None,
               code: Optional[str] = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
