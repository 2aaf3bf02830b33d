"""Issue 6, during generation: every interruption keeps what was produced. A full context, an end
of generation inside a draft, characters split across tokens, failing decodes, Ctrl-C, and a
reader that goes away.

llama_decode failures are injected by wrapping the C function, since no input makes a healthy
llama.cpp fail on demand; pipes and signals are exercised on real processes.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from helpers import PROMPT, assert_clean_error, assert_no_internal_error, generate, json_result, process_env, \
    specllm_command
from specllm import llama
from specllm.engine import Engine
from specllm.render import TextStream
from tiny_models import build_tiny_model

# -- during generation ------------------------------------------------------------------------


def test_context_filling_up_ends_with_length_and_exit_0(tiny):
    out = json_result(generate("-m", tiny.target, "--mode", "ngram", "-c", 16, "-n", 100, "--json", "the cat"))
    assert out["finish_reason"] == "length"
    assert out["tokens"] and out["text"].strip()
    assert len(out["prompt_tokens"]) + len(out["tokens"]) <= 17  # the last token is never decoded
    assert out["stats"]["generated"] == len(out["tokens"])
    stream = generate("-m", tiny.target, "--mode", "ngram", "-c", 16, "-n", 100, "the cat")
    assert stream.exit_code == 0
    assert stream.stdout == out["text"]
    assert "tokens" in stream.stderr


@pytest.fixture(scope="module")
def ends_early(tmp_path_factory) -> Path:
    """A tiny model whose greedy walk reaches EOS within a few tokens from many prompts."""
    return build_tiny_model(tmp_path_factory.mktemp("eos") / "eos.gguf", eos_rate=0.3)


def test_end_of_generation_inside_a_draft_ends_the_output_there(ends_early):
    prompts = ["the cat", "of and to", "you that", "he was", "it is in", "we can"]
    cut_inside_a_draft = 0
    for prompt in prompts:
        plain = json_result(generate("-m", ends_early, "--mode", "none", "-n", 40, "--json", prompt))
        drafted = json_result(generate("-m", ends_early, "-md", ends_early, "--mode", "draft", "-k", 4, "-n", 40,
                                       "--json", prompt))
        assert drafted["tokens"] == plain["tokens"]
        assert drafted["finish_reason"] == plain["finish_reason"]
        # The draft is the target itself, so every drafted token is accepted: a drafted token that
        # was not emitted is an EOS that ended the output.
        if drafted["finish_reason"] == "stop" and drafted["stats"]["drafted"] > sum(drafted["from_draft"]):
            cut_inside_a_draft += 1
    assert cut_inside_a_draft > 0


@pytest.mark.parametrize("pieces", [
    [b"\xe2\x82", b"\xac"],  # the euro sign, split 2 + 1
    [b"\xf0", b"\x9f", b"\x98", b"\x80"],  # an emoji, one byte per token
    [b"a\xc3", b"\xa9b"],
])
def test_a_character_split_across_tokens_prints_whole(pieces):
    out = io.StringIO()
    stream = TextStream(out)
    written = []
    for piece in pieces:
        stream.write(piece)
        written.append(out.getvalue())
    stream.finish()
    assert out.getvalue() == b"".join(pieces).decode("utf-8")
    assert all("\ufffd" not in text for text in written)


def test_an_unfinished_character_at_the_end_is_replaced_not_dropped():
    out = io.StringIO()
    stream = TextStream(out)
    stream.write(b"ok \xe2\x82")
    stream.finish()
    assert out.getvalue() == "ok \ufffd"


@pytest.fixture
def decode_fails(monkeypatch):
    """Make the `n`th llama_decode call (0: the prompt) return `code`, once."""
    def install(code: int, n: int) -> None:
        real = llama.C.llama_decode
        calls = itertools.count()
        monkeypatch.setattr(llama.C, "llama_decode", lambda ctx, batch: code if next(calls) == n else real(ctx, batch))
    return install


@pytest.mark.parametrize(("code", "reason"), [(2, "aborted"), (-3, "error code -3")])
def test_decode_failure_keeps_the_text_and_reports_the_code(tiny, decode_fails, code, reason):
    decode_fails(code, 5)
    result = generate("-m", tiny.target, "--mode", "none", "-n", 20, PROMPT)
    assert_clean_error(result, 1, "llama_decode failed", reason)
    assert len(result.stdout.split()) >= 3  # the tokens from the decodes before the failure
    assert "tokens" in result.stderr  # the summary comes before the error


def test_decode_failure_in_json_mode_is_an_error_result(tiny, decode_fails):
    decode_fails(2, 5)
    result = generate("-m", tiny.target, "--mode", "none", "-n", 20, "--json", PROMPT)
    assert result.exit_code == 1
    out = json.loads(result.stdout)
    assert out["finish_reason"] == "error" and "aborted" in out["error"]
    assert len(out["tokens"]) == 4


def test_decode_failure_fails_only_its_jsonl_line(tiny, decode_fails):
    decode_fails(2, 3)
    lines = [json.dumps({"prompt": PROMPT, "max_tokens": 8}), json.dumps({"prompt": PROMPT, "max_tokens": 8})]
    result = generate("-m", tiny.target, "--mode", "none", "--jsonl", input="\n".join(lines))
    assert result.exit_code == 1
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    assert "aborted" in first["error"]
    assert "error" not in second and len(second["tokens"]) == 8


def test_no_kv_slot_ends_the_generation_like_a_full_context(tiny, decode_fails):
    decode_fails(1, 5)
    out = json_result(generate("-m", tiny.target, "--mode", "none", "-n", 20, "--json", PROMPT))
    assert out["finish_reason"] == "length" and len(out["tokens"]) == 4


def test_ctrl_c_while_loading_exits_130_quietly(tiny, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(llama, "Model", interrupted)
    result = generate("-m", tiny.target, "hi")
    assert result.exit_code == 130
    assert result.stdout == "" and "Traceback" not in result.output


def test_an_unexpected_exception_is_an_internal_error_line(tiny, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("something specllm did not expect")

    monkeypatch.setattr(Engine, "generate", broken)
    result = generate("-m", tiny.target, "hi")
    assert_clean_error(result, 1, "internal error", "RuntimeError", "did not expect")
    with pytest.raises(AssertionError):  # what the fuzz test (test_bad_input.py) would report
        assert_no_internal_error(result)
    assert "--verbose" in result.stderr
    verbose = generate("-m", tiny.target, "--verbose", "hi")
    assert verbose.exit_code == 1
    assert "Traceback" in verbose.stderr and "error: internal error" in verbose.stderr


# -- real processes: pipes and signals --------------------------------------------------------


@pytest.mark.parametrize("output", ["stream", "--json", "--jsonl"])
def test_stdout_closed_early_exits_quietly(tiny, output):
    args = ["generate", "-t", "1", "-m", str(tiny.target), "--mode", "none", "--ignore-eos", "-n", "3000"]
    stdin = None
    if output == "--jsonl":
        args.append("--jsonl")
        stdin = "".join(json.dumps({"prompt": PROMPT, "max_tokens": 100}) + "\n" for _ in range(100)).encode()
    elif output == "--json":
        args += ["--json", PROMPT]
    else:
        args.append(PROMPT)
    producer = subprocess.Popen([*specllm_command(), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=process_env())
    head = subprocess.Popen(["head", "-c", "10"], stdin=producer.stdout, stdout=subprocess.PIPE)
    producer.stdout.close()  # head holds the only reading end now
    if stdin is not None:
        producer.stdin.write(stdin)
    producer.stdin.close()
    first_bytes, _ = head.communicate(timeout=120)
    stderr = producer.stderr.read().decode()
    producer.stderr.close()
    assert producer.wait(timeout=120) == 0, stderr
    assert len(first_bytes) == 10
    assert "Traceback" not in stderr and "Broken pipe" not in stderr and "BrokenPipeError" not in stderr


def _interrupt_after_output(cmd: list[str], stdin: bytes = b"", wait_for: bytes = b"") -> tuple:
    """Start cmd, wait for its first output (up to `wait_for` when given), send SIGINT; (rc, stdout, stderr)."""
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=process_env())
    try:
        proc.stdin.write(stdin)
        proc.stdin.close()
        proc.stdin = None  # written and closed: communicate() must not flush it again
        seen = os.read(proc.stdout.fileno(), 1)
        while wait_for and wait_for not in seen:
            chunk = os.read(proc.stdout.fileno(), 4096)
            assert chunk, "the process ended before the expected output"
            seen += chunk
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        rest, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, seen + rest, stderr.decode()


def test_ctrl_c_mid_stream_keeps_the_text_prints_stats_and_exits_130(tiny):
    beginning = json_result(generate("-m", tiny.target, "--mode", "none", "-n", 8, "--json", PROMPT))["text"]
    cmd = [*specllm_command(), "generate", "-t", "1", "-m", str(tiny.target), "--mode", "none", "--ignore-eos",
           "-c", "65536", "-n", "60000", PROMPT]
    rc, stdout, stderr = _interrupt_after_output(cmd)
    assert rc == 130, stderr
    assert stdout.decode().startswith(beginning)
    assert "generated" in stderr  # the statistics summary
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr


def test_ctrl_c_in_jsonl_mode_keeps_the_finished_lines(tiny):
    lines = [{"prompt": PROMPT, "max_tokens": 5},
             {"prompt": PROMPT, "max_tokens": 60000, "ignore_eos": True},
             {"prompt": PROMPT, "max_tokens": 5}]
    stdin = "".join(json.dumps(line) + "\n" for line in lines).encode()
    cmd = [*specllm_command(), "generate", "-t", "1", "-m", str(tiny.target), "--mode", "none", "-c", "65536",
           "--jsonl"]
    rc, stdout, stderr = _interrupt_after_output(cmd, stdin=stdin, wait_for=b"\n")
    assert rc == 130, stderr
    out = [json.loads(line) for line in stdout.decode().splitlines()]
    assert out[0]["index"] == 0 and len(out[0]["tokens"]) == 5
    assert all(o["index"] != 2 for o in out)  # nothing after the interrupted line
    assert "Traceback" not in stderr
