"""Issue 6, inputs: every bad input gets a clear error (one `error:` line, the right exit code, no
traceback): model files, pairs, options, prompts, and random mixes of them (the fuzz test).

Each case runs the real CLI on the tiny models, in process (CliRunner) unless a real process is
the point (a memory limit, undecodable argv bytes).
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import (
    PROMPT, assert_clean_error, assert_no_internal_error, generate, json_result, process_env, specllm_command,
)
from specllm import llama
from specllm.config import MAX_CTX
from specllm.llama import Model

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
    # Without -n a generation runs to a full context: that would only make the fuzzing slower.
    args = args if "-n" in args else [*args, "-n", "8"]
    result = generate("-m", tiny.target, *args, *([] if prompt is None else [prompt]), input=stdin)
    assert result.exit_code in (0, 1, 2, 130), (args, prompt, result.output)
    # Exit 1 is also what a bug exits with ("error: internal error: ..."): that must never happen.
    assert_no_internal_error(result)
    if result.exit_code in (1, 2):
        # specllm's `error: ...`, typer's panel for an argument it cannot parse, or --jsonl's error objects
        assert "error" in result.stderr.lower() or '"error": ' in result.stdout, (args, prompt, result.output)
