"""Helpers shared by test files (test files never import from each other): driving the CLI in
process and as a real process, running an engine, and the chi-square check of a distribution."""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

import numpy as np
from typer.testing import CliRunner, Result

if TYPE_CHECKING:
    from specllm.engine import Engine, Request
    from specllm.sampling import SamplingParams

# Settings a user's environment could bring in (options > SPECLLM_* > models.toml > defaults).
ENV_SETTINGS = ("SPECLLM_MODEL", "SPECLLM_DRAFT_MODEL", "SPECLLM_MODE", "SPECLLM_CTX_SIZE", "SPECLLM_THREADS",
                "SPECLLM_N_GPU_LAYERS", "SPECLLM_MODELS", "XDG_CACHE_HOME", "SPECLLM_DRAFT_LORA")
PROMPT = "the cat said that it was for you and the"

runner = CliRunner()


# -- the CLI, in this process -----------------------------------------------------------------


def invoke(*args: object, input: str | bytes | None = None) -> Result:
    """`specllm ARGS` in this process."""
    from specllm.cli import app

    return runner.invoke(app, [str(a) for a in args], input=input)


def generate(*args: object, input: str | bytes | None = None) -> Result:
    """`specllm generate ARGS` on one thread (tiny models gain nothing from more)."""
    return invoke("generate", "-t", "1", *args, input=input)


def json_result(result: Result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def assert_no_internal_error(result: Result) -> None:
    """Whatever the input, the CLI answers with its own messages: no exception escapes it and
    nothing reaches `error: internal error` (the catch-all for bugs, which also exits 1)."""
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert "internal error" not in result.stderr, result.stderr


def assert_clean_error(result: Result, exit_code: int, *fragments: str) -> None:
    """A bad input: the expected exit code, one `error:` line naming the problem, no traceback."""
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


# -- the CLI, as a real process (where a terminal, a pipe or a signal matters) ----------------


def specllm_command() -> list[str]:
    """The installed console script when there is one, else `python -m specllm`."""
    script = Path(sys.executable).parent / "specllm"
    return [str(script)] if script.exists() else [sys.executable, "-m", "specllm"]


def process_env() -> dict[str, str]:
    """This test's environment (its cache and config dirs, see conftest.py) without user settings."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_SETTINGS}
    env["COLUMNS"] = "100"
    return env


# -- the registry -------------------------------------------------------------------------------

# Where the user keeps models, as the environment said before conftest.py isolated each test
# (this module is imported first by conftest.py): real-model tests look there.
USER_DIRS = {name: os.environ.get(name) for name in ("SPECLLM_CACHE", "XDG_CACHE_HOME", "SPECLLM_MODELS",
                                                     "XDG_CONFIG_HOME")}


def _set_environ(values: dict[str, Optional[str]]) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@contextlib.contextmanager
def user_dirs() -> Iterator[None]:
    """The user's cache and registry dirs for the duration of the block."""
    saved = {name: os.environ.get(name) for name in USER_DIRS}
    _set_environ(USER_DIRS)
    try:
        yield
    finally:
        _set_environ(saved)


def cached_real_model(name: str) -> Optional[Path]:
    """A registry model's file in the user's cache, if it is there (nothing is fetched)."""
    from specllm import registry

    with user_dirs():
        return registry.present_path(registry.load_registry().model(name))


def cached_default_pair() -> Optional[tuple[Path, Path]]:
    """The default pair's target and draft files in the user's cache, if both are there."""
    from specllm import registry

    with user_dirs():
        pair = registry.load_registry().pair(registry.DEFAULT_PAIR)
    found = cached_real_model(pair.target), cached_real_model(pair.draft)
    return found if all(found) else None



def write_user_registry(registry_env: Path, text: str) -> None:
    """The user's models.toml of the `registry_env` fixture."""
    (registry_env / "user-models.toml").write_text(text)


# -- engines ------------------------------------------------------------------------------------


def run(engine: "Engine", prompt: str, request: "Request") -> tuple[list[int], object]:
    """One generation to its end: (its tokens, the generation)."""
    generation = engine.generate(engine.tokenize_prompt(prompt, request), request)
    for _ in generation:
        pass
    return generation.tokens, generation


# -- is a sampled distribution the target's? ----------------------------------------------------


def first_token_counts(engine: "Engine", prompt: str, params: "SamplingParams", n: int, vocab: int) -> np.ndarray:
    """How often each token came first in `n` seeded generations.

    Two tokens each: the first round then drafts one token, and the first token emitted is that
    draft accepted or the target's token in its place. Later drafts of a round cannot change the
    first token, so longer generations would test nothing more, at several times the cost."""
    from specllm.engine import Request

    counts = np.zeros(vocab)
    tokens = engine.tokenize_prompt(prompt, Request())
    for seed in range(n):
        generation = engine.generate(tokens, Request(max_tokens=2, params=params, seed=seed))
        counts[next(iter(generation)).token] += 1
    return counts


def target_first_token_probs(path, prompt: str, params: "SamplingParams") -> np.ndarray:
    from specllm.llama import Context, Model
    from specllm.sampling import logits_to_probs

    model = Model(path)
    with Context(model, n_ctx=256, n_threads=1) as ctx:
        logits = ctx.decode(model.vocab.tokenize(prompt))[0]
        probs = logits_to_probs(logits, params)
    model.close()
    return probs


def chi_square(counts: np.ndarray, probs: np.ndarray) -> tuple[float, int]:
    """(statistic, degrees of freedom) of observed counts against probabilities."""
    n = counts.sum()
    expected = n * probs
    big = expected >= 5  # pool the rare tokens into one bin
    observed = np.append(counts[big], counts[~big].sum())
    expected = np.append(expected[big], expected[~big].sum())
    keep = expected > 0
    chi2 = float((((observed - expected) ** 2)[keep] / expected[keep]).sum())
    return chi2, int(keep.sum()) - 1


# The chi-square distribution's 0.999 quantile by degrees of freedom: a false alarm 1 time in 1000.
CHI2_CRITICAL_P001 = {1: 10.8, 2: 13.8, 3: 16.3, 4: 18.5, 5: 20.5, 6: 22.5, 7: 24.3, 8: 26.1, 9: 27.9, 10: 29.6}


def read_pty_until_exit(proc: subprocess.Popen, fd: int, timeout: float = 60) -> bytes:
    """Everything written to the pseudo-terminal `fd` until the process exits (then waited for)."""
    data, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # Linux: EIO once the other end has closed
                break
            if not chunk:
                break
            data += chunk
        elif proc.poll() is not None:
            break
    proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    return data


# A HumanEval-like line of code: what the real-model forward checks of tune-draft compare on.
CODE_FOR_FORWARD_CHECKS = ('def has_close_elements(numbers: list[float], threshold: float) -> bool:\n'
                           '    """Check if in given list of numbers, are any two numbers closer to each other '
                           'than given threshold."""\n    for i, a in enumerate(numbers):\n')


def check_real_forward(path):
    """tune-draft's PyTorch forward of a real draft against llama.cpp on CODE_FOR_FORWARD_CHECKS
    (raises beyond correctness.py's tolerance); the check, for its argmax agreement."""
    from specllm import llama
    from specllm.tune.correctness import check_forward
    from specllm.tune.forward import DraftModel
    from specllm.tune.weights import GgufWeights

    model = DraftModel(GgufWeights(path))
    with llama.Model(path, vocab_only=True) as m:
        tokens = m.vocab.tokenize(CODE_FOR_FORWARD_CHECKS)
    return check_forward(model, path, tokens, threads=2)


def quiet_meter():
    """A ContentionMeter that judges every span quiet: for tests of what is learned from a
    timing, not of contention (sleeps and a shared CI machine would read as busy)."""
    from specllm.auto.contention import ContentionMeter

    class QuietMeter(ContentionMeter):
        def judge(self, wall: float, cpu: float) -> bool:
            return False

    return QuietMeter()
