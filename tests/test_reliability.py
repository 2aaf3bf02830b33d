"""Issue 6: every bad input gets a clear error, every interruption keeps what was produced.

Each case runs the real CLI on the tiny models: in-process (CliRunner) where it can, in a real
process where a pipe, a signal or a memory limit is the point. llama_decode failures are injected
by wrapping the C function, since no input makes a healthy llama.cpp fail on demand.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from specllm import llama
from specllm.engine import Engine
from specllm.llama import Model
from specllm.config import MAX_CTX
from specllm.render import TextStream
from helpers import (
    PROMPT, assert_clean_error, assert_no_internal_error, generate, json_result, process_env, specllm_command,
)
from tiny_models import build_tiny_model

# -- model files ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def broken(tiny, tmp_path_factory) -> dict[str, Path]:
    """Files that are not loadable models, each broken in its own way."""
    d = tmp_path_factory.mktemp("broken")
    data = tiny.target.read_bytes()
    files = {
        "text": b"this is not a model\n",
        "empty": b"",
        "truncated_header": data[:1000],
        "truncated_tensors": data[: len(data) * 3 // 4],
        "corrupt_header": data[:8] + b"\xff" * 32 + data[40:],
    }
    paths = {name: d / f"{name}.gguf" for name in files}
    for name, content in files.items():
        paths[name].write_bytes(content)
    paths["unknown_arch"] = _write_unknown_architecture(d / "unknown_arch.gguf")
    return paths


def _write_unknown_architecture(path: Path) -> Path:
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(path, "specllm-nonesuch")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_missing_model_file(tmp_path):
    assert_clean_error(generate("-m", tmp_path / "nope.gguf", "hi"), 1, "not found", "nope.gguf")


def test_model_path_is_a_directory(tmp_path):
    assert_clean_error(generate("-m", tmp_path, "hi"), 1, "directory")


@pytest.mark.parametrize(("name", "fragment"), [
    ("text", "not a GGUF file"),
    ("empty", "empty"),
    ("truncated_header", "cannot load truncated_header.gguf"),
    ("corrupt_header", "cannot load corrupt_header.gguf"),
    ("unknown_arch", "unknown model architecture"),
])
def test_unloadable_model_files(broken, name, fragment):
    result = generate("-m", broken[name], "hi")
    assert_clean_error(result, 1, fragment)
    assert "hint: " in result.stderr


def test_truncated_tensor_data_names_the_model_and_its_size(broken):
    """What llama.cpp reports when the weights are not all there (as after a failed download)."""
    result = generate("-m", broken["truncated_tensors"], "hi")
    size_mib = broken["truncated_tensors"].stat().st_size / 2**20
    assert_clean_error(result, 1, "truncated_tensors.gguf", f"{size_mib:.1f} MiB", "file bounds")
    assert "download it again" in result.stderr


@pytest.mark.skipif(sys.platform != "linux" or llama.C.llama_supports_gpu_offload(),
                    reason="needs Linux's RLIMIT_AS; GPU runtimes reserve more address space than the limit")
def test_out_of_memory_names_the_model_and_the_size(tiny):
    """A context that does not fit in memory (here: an address-space limit) is a clear error."""
    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    proc = subprocess.run([*specllm_command(), "generate", "-t", "1", "-m", str(tiny.target), "--mode", "none",
                           "-c", str(MAX_CTX), "hi"], capture_output=True, env=process_env(),
                          preexec_fn=limit_memory, timeout=120)
    stderr = proc.stderr.decode()
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr
    first = stderr.splitlines()[0]
    assert first.startswith("error: ") and tiny.target.name in first and "allocate" in first


def test_unknown_registry_name_suggests_close_names():
    result = generate("-m", "qwen2.5-coder-1.5b-instruct", "hi")
    assert_clean_error(result, 1, "qwen2.5-coder-1.5b-instruct")
    assert "did you mean" in result.stderr


def test_a_path_with_brackets_is_printed_as_is(tmp_path):
    """Error messages are plain text, not rich markup."""
    path = tmp_path / "[/]odd[bold].gguf"
    assert_clean_error(generate("-m", path, "hi"), 1, str(path))


# -- pairing ----------------------------------------------------------------------------------


def test_draft_with_another_vocabulary_is_refused_with_one_line(tiny):
    result = generate("-m", tiny.target, "-md", tiny.other_vocab, "--mode", "draft", "hi")
    assert_clean_error(result, 1, tiny.other_vocab.name, "vocabular")


def test_auto_mode_also_refuses_another_vocabulary_unless_asked(tiny):
    result = generate("-m", tiny.target, "-md", tiny.other_vocab, "hi")
    assert_clean_error(result, 1, tiny.other_vocab.name, "vocabular")
    assert generate("-m", tiny.target, "-md", tiny.other_vocab, "--cross-vocab", "-n", "4", "hi").exit_code == 0


def test_draft_larger_than_the_target_is_a_warning(tiny):
    result = generate("-m", tiny.target, "-md", tiny.draft_padded, "--mode", "draft", "-n", 8, PROMPT)
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert any("draft" in line and "target" in line for line in warnings), result.stderr
    assert result.stdout.strip()


# -- options ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "option"), [
    (["-k", "0"], "--draft-max"),
    (["-k", "1000"], "--draft-max"),
    (["-n", "-5"], "--max-tokens"),
    (["--temp", "-1"], "--temp"),
    (["--temp", "nan"], "--temp"),
    (["--temp", "inf"], "--temp"),
    (["--top-p", "0"], "--top-p"),
    (["--top-p", "1.5"], "--top-p"),
    (["--top-k", "-1"], "--top-k"),
    (["--min-p", "2"], "--min-p"),
    (["-t", "0"], "--threads"),
    (["-t", "-3"], "--threads"),
    (["-td", "0"], "--draft-threads"),
    (["-c", "4"], "--ctx-size"),
    (["-c", str(1 << 40)], "--ctx-size"),
    (["-cd", "8"], "--draft-ctx-size"),
    (["--seed", "-1"], "--seed"),
    (["--mode", "fast"], "--mode"),
    (["--ngram", "0"], "--ngram"),
    (["--ngram", "a,b"], "--ngram"),
    (["--json", "--jsonl"], "--jsonl"),
    (["--mode", "draft"], "-md"),
])
def test_bad_options_are_usage_errors(tiny, args, option):
    assert_clean_error(generate("-m", tiny.target, *args, "hi"), 2, option)


# -- prompts ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "stdin"), [([""], None), (["  \n "], None), ([], ""), (["-"], ""), ([], "\n\n")])
def test_empty_prompt_or_empty_stdin_is_a_usage_error(tiny, args, stdin):
    assert_clean_error(generate("-m", tiny.target, *args, input=stdin), 2, "empty")


def _n_tokens(path: Path, text: str) -> list[int]:
    model = Model(path, vocab_only=True)
    try:
        return model.vocab.tokenize(text)
    finally:
        model.close()


def test_prompt_longer_than_the_context_names_both_sizes(tiny):
    prompt = "the cat said that " * 8
    n_prompt = len(_n_tokens(tiny.target, prompt))
    assert n_prompt > 16
    assert_clean_error(generate("-m", tiny.target, "--mode", "none", "-c", 16, prompt), 2, str(n_prompt), "16")


def test_truncate_keeps_the_end_of_a_long_prompt(tiny):
    prompt = "the cat said that " * 8 + "it was for you"
    out = json_result(generate("-m", tiny.target, "--mode", "none", "-c", 16, "-n", 4, "--truncate", "--json", prompt))
    full = _n_tokens(tiny.target, prompt)
    kept = out["prompt_tokens"]
    assert len(kept) + len(out["tokens"]) <= 17
    assert kept == full[-len(kept):]


def test_invalid_utf8_on_stdin(tiny):
    assert_clean_error(generate("-m", tiny.target, input=b"the \xff cat"), 2, "not valid UTF-8", "0xff")


def test_invalid_utf8_in_the_argument(tiny):
    # In process: Python hands undecodable argv bytes over as surrogates.
    assert_clean_error(generate("-m", tiny.target, "the \udcff cat"), 2, "not valid UTF-8")
    # And as a real argv.
    proc = subprocess.run([*(os.fsencode(a) for a in specllm_command()), b"generate", b"-m", os.fsencode(tiny.target),
                           b"the \xff cat"], capture_output=True, env=process_env(), timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.decode().startswith("error: the prompt argument is not valid UTF-8")


def test_jsonl_invalid_utf8_line_gets_an_error_object(tiny):
    lines = [b'{"prompt": "the cat", "max_tokens": 2}', b'{"prompt": "the \xff cat"}', b"\xfe\xfe",
             b'{"prompt": "the dog", "max_tokens": 2}']
    result = generate("-m", tiny.target, "--mode", "none", "--jsonl", input=b"\n".join(lines))
    assert result.exit_code == 1
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert ["error" in o for o in out] == [False, True, True, False]
    assert "UTF-8" in out[1]["error"]


def test_jsonl_without_lines_or_with_a_prompt_argument(tiny):
    assert_clean_error(generate("-m", tiny.target, "--jsonl", input=""), 2, "no JSON lines")
    assert_clean_error(generate("-m", tiny.target, "--jsonl", "hi", input="{}"), 2, "PROMPT")


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


# -- fuzz: no exception escapes the CLI -------------------------------------------------------

TINY_NAMES = ("target", "draft_copy", "draft_other", "draft_padded", "other_vocab")
NUMBERS = st.one_of(st.integers(-3, 40), st.sampled_from([0, 1, 2**31, -(2**40)]))
FLOATS = st.one_of(st.floats(-2, 3, allow_nan=False), st.sampled_from([math.nan, math.inf, -0.0, 1.0]))


@st.composite
def option_lists(draw) -> list[str]:
    """A random mix of generate's options, valid and not."""
    options = {
        "-k": NUMBERS, "-n": st.integers(-2, 24), "-c": st.one_of(st.integers(-1, 64), st.just(4096)),
        "-cd": st.integers(0, 64), "--temp": FLOATS, "--top-p": FLOATS, "--top-k": NUMBERS, "--min-p": FLOATS,
        "--seed": NUMBERS, "--mode": st.sampled_from(["auto", "draft", "ngram", "none", "bogus"]),
        "--ngram": st.sampled_from(["4,3,2", "1", "0", "x", "2,,3"]), "-t": st.integers(-1, 2),
        "-md": st.sampled_from([*TINY_NAMES, "missing"]),
    }
    flags = ["--json", "--jsonl", "--no-stats", "--truncate", "--chat", "--ignore-eos", "--cross-vocab"]
    chosen = draw(st.lists(st.sampled_from(sorted(options)), unique=True, max_size=6))
    args = [token for name in chosen for token in (name, str(draw(options[name])))]
    return args + draw(st.lists(st.sampled_from(flags), unique=True, max_size=3))


JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 12), FLOATS, st.text(max_size=12))


@st.composite
def jsonl_input(draw) -> bytes:
    """--jsonl input: lines of objects with a prompt and overrides of any type, now and then garbage."""
    keys = st.sampled_from(["prompt", "max_tokens", "temp", "top_k", "top_p", "min_p", "seed", "chat", "ignore_eos",
                            "truncate", "other"])
    lines = draw(st.lists(st.one_of(
        st.dictionaries(keys, st.one_of(JSON_VALUES, st.text(max_size=30)), max_size=5).map(json.dumps),
        st.fixed_dictionaries({"prompt": st.text(min_size=1, max_size=30), "max_tokens": st.integers(0, 6)}).map(
            json.dumps),
        st.binary(max_size=20).map(lambda b: b.decode("latin-1")),
    ), max_size=4))
    return "\n".join(lines).encode("utf-8", "surrogatepass")


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(args=option_lists(), prompt=st.one_of(st.none(), st.sampled_from(["-", "the \udcff cat"]), st.text(max_size=40)),
       stdin=st.one_of(st.binary(max_size=120), jsonl_input()))
def test_no_exception_escapes_the_cli(tiny, args, prompt, stdin):
    paths = {name: str(getattr(tiny, name)) for name in TINY_NAMES} | {"missing": "/nonexistent/model.gguf"}
    args = [paths.get(a, a) for a in args]
    # Without -n the default (256 tokens) would only make the fuzzing slower.
    args = args if "-n" in args else [*args, "-n", "8"]
    result = generate("-m", tiny.target, *args, *([] if prompt is None else [prompt]), input=stdin)
    assert result.exit_code in (0, 1, 2, 130), (args, prompt, result.output)
    # Exit 1 is also what a bug exits with ("error: internal error: ..."): that must never happen.
    assert_no_internal_error(result)
    if result.exit_code in (1, 2):  # specllm's `error: ...`, or typer's panel for an argument it cannot parse
        assert "error" in result.stderr.lower(), (args, prompt, result.output)
