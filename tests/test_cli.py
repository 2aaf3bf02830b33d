"""The `specllm generate` command line (issue 2): where the prompt comes from, what goes to stdout
and stderr, --json and --jsonl. In-process through typer's CliRunner on the tiny models; through a
real process where a terminal or a pipe matters."""

from __future__ import annotations

import json
import os
import pty
import subprocess

import pytest

from helpers import PROMPT, generate, invoke, json_result, process_env, read_pty_until_exit, specllm_command
from specllm.llama import Model

STATS_FIELDS = ("mode", "k", "rounds", "drafted", "accepted", "acceptance_rate", "mean_accepted_length",
                "per_position_acceptance", "tokens_per_second", "prompt_tokens_per_second", "target_ms", "draft_ms")


# -- where the prompt comes from --------------------------------------------------------------


@pytest.fixture(scope="module")
def greedy(tiny) -> dict:
    """The target's own greedy continuation of PROMPT (plain decoding), as --json reports it."""
    return json_result(generate("-m", tiny.target, "--mode", "none", "-n", 24, "--json", PROMPT))


def test_prompt_argument_streams_the_text_to_stdout(tiny, greedy):
    result = generate("-m", tiny.target, "--mode", "none", "-n", 24, PROMPT)
    assert result.exit_code == 0, result.output
    assert result.stdout == greedy["text"]
    assert greedy["text"].strip()


def test_dash_reads_the_prompt_from_stdin(tiny, greedy):
    result = generate("-m", tiny.target, "--mode", "none", "-n", 24, "--json", "-", input=PROMPT)
    assert json_result(result)["prompt_tokens"] == greedy["prompt_tokens"]


def test_piped_stdin_is_the_prompt(tiny, greedy):
    result = generate("-m", tiny.target, "--mode", "none", "-n", 24, input=PROMPT)
    assert result.exit_code == 0, result.output
    assert result.stdout == greedy["text"]


def test_stdin_and_argument_are_joined_by_a_blank_line(tiny):
    both = json_result(generate("-m", tiny.target, "--mode", "none", "-n", 4, "--json", "and then", input="the cat"))
    joined = json_result(generate("-m", tiny.target, "--mode", "none", "-n", 4, "--json", "the cat\n\nand then"))
    assert both["prompt_tokens"] == joined["prompt_tokens"]
    vocab_model = Model(tiny.target, vocab_only=True)
    try:
        assert vocab_model.vocab.detokenize(both["prompt_tokens"]).endswith(b"the cat\n\nand then")
    finally:
        vocab_model.close()


def test_a_terminal_without_a_prompt_is_a_usage_error_not_a_hang(tiny):
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.run([*specllm_command(), "generate", "-m", str(tiny.target)], stdin=terminal,
                              capture_output=True, env=process_env(), timeout=60)
    finally:
        os.close(controller)
        os.close(terminal)
    assert proc.returncode == 2
    assert proc.stderr.decode().startswith("error: no prompt")
    assert proc.stdout == b""


# -- stdout carries only the text -------------------------------------------------------------


def test_stdout_has_only_the_text_and_stderr_the_statistics(tiny):
    result = generate("-m", tiny.target, "-md", tiny.draft_other, "--mode", "draft", "-n", 32, PROMPT)
    text = json_result(generate("-m", tiny.target, "-md", tiny.draft_other, "--mode", "draft", "-n", 32, "--json",
                                PROMPT))["text"]
    assert result.exit_code == 0, result.output
    assert result.stdout == text
    for label in ("acceptance", "tokens/round", "per position", "time"):
        assert label in result.stderr
        assert label not in result.stdout


def test_no_stats_leaves_stderr_empty(tiny):
    result = generate("-m", tiny.target, "--mode", "ngram", "-n", 16, "--no-stats", PROMPT)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip()
    assert result.stderr == ""


def test_with_stderr_on_a_terminal_the_text_still_goes_to_stdout(tiny):
    """The live display draws on stderr; the text must not be redirected into it."""
    controller, terminal = pty.openpty()
    cmd = [*specllm_command(), "generate", "-t", "1", "-m", str(tiny.target), "-md", str(tiny.draft_other),
           "--mode", "draft", "-n", "40", PROMPT]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=terminal,
                            env=process_env())
    os.close(terminal)
    try:
        screen = read_pty_until_exit(proc, controller)
    finally:
        os.close(controller)
    stdout = proc.stdout.read()
    proc.stdout.close()
    expected = json_result(generate("-m", tiny.target, "-md", tiny.draft_other, "--mode", "draft", "-n", 40,
                                    "--json", PROMPT))["text"]
    assert proc.returncode == 0
    assert stdout.decode() == expected
    assert b"acceptance" in screen


# -- --json -----------------------------------------------------------------------------------


def test_json_has_every_field_and_consistent_stats(tiny):
    out = json_result(generate("-m", tiny.target, "-md", tiny.draft_copy, "--mode", "draft", "-k", 3, "-n", 20,
                               "--json", PROMPT))
    assert set(out) >= {"text", "prompt_tokens", "tokens", "from_draft", "finish_reason", "stats"}
    assert set(out["stats"]) >= set(STATS_FIELDS)
    assert len(out["tokens"]) == len(out["from_draft"]) == 20
    assert out["finish_reason"] == "length"
    stats = out["stats"]
    assert stats["mode"] == "draft" and stats["k"] == 3
    assert 0 <= stats["accepted"] <= stats["drafted"]
    # The draft is the target's copy: every greedy draft is accepted.
    assert stats["accepted"] == stats["drafted"] > 0
    assert any(out["from_draft"])
    assert 1.0 <= stats["mean_accepted_length"] <= 4.0
    assert all(0.0 <= rate <= 1.0 for rate in stats["per_position_acceptance"])


def test_json_prints_one_object_and_stats_on_stderr(tiny):
    result = generate("-m", tiny.target, "--mode", "none", "-n", 8, "--json", PROMPT)
    assert result.exit_code == 0, result.output
    assert result.stdout.count("\n") == 1
    assert "tokens" in result.stderr


# -- --jsonl ----------------------------------------------------------------------------------


def test_jsonl_bad_line_between_good_ones(tiny, greedy):
    lines = [
        json.dumps({"prompt": PROMPT, "max_tokens": 24}),
        '{"prompt": "unterminated',
        json.dumps({"prompt": PROMPT, "max_tokens": 6}),
    ]
    result = generate("-m", tiny.target, "--mode", "none", "--jsonl", input="\n".join(lines) + "\n")
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o["index"] for o in out] == [0, 1, 2]
    assert out[0]["text"] == greedy["text"]
    assert "error" in out[1] and "not JSON" in out[1]["error"]
    assert out[2]["tokens"] == greedy["tokens"][:6]
    assert "error" not in out[0] and "error" not in out[2]


def test_jsonl_all_good_lines_exit_0_with_per_line_overrides(tiny):
    lines = [json.dumps({"prompt": "the cat", "max_tokens": 3}), "",
             json.dumps({"prompt": "the dog", "max_tokens": 5, "temp": 0.7, "seed": 1})]
    result = generate("-m", tiny.target, "--mode", "ngram", "--jsonl", input="\n".join(lines))
    assert result.exit_code == 0, result.output
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o["index"] for o in out] == [0, 2]
    assert [len(o["tokens"]) for o in out] == [3, 5]
    assert all(o["finish_reason"] == "length" for o in out)


def test_jsonl_lines_lacking_a_prompt_or_with_bad_overrides_get_error_objects(tiny):
    lines = ['["a list"]', '{"text": "no prompt"}', '{"prompt": "x", "temp": -1}', '{"prompt": "x", "max_tokens": "5"}',
             '{"prompt": "the", "max_tokens": 2}']
    result = generate("-m", tiny.target, "--mode", "none", "--jsonl", input="\n".join(lines))
    assert result.exit_code == 1
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(out) == 5
    assert all("error" in o for o in out[:4])
    assert len(out[4]["tokens"]) == 2


@pytest.mark.parametrize("mode", ["none", "ngram"])
def test_jsonl_parallel_lines_share_rounds_and_come_out_in_input_order(tiny, mode):
    prompts = ["the cat said that it was for you", "def add(a, b):", "one word: when", "she said there was",
               "import os from"]
    lines = [json.dumps({"prompt": p, "max_tokens": 4 + 5 * (i % 3)}) for i, p in enumerate(prompts)]
    lines.insert(2, '{"prompt": "unterminated')
    lines.append(json.dumps({"prompt": prompts[0], "max_tokens": 12, "temp": 0.8, "seed": 5}))
    text = "\n".join(lines) + "\n"
    alone = generate("-m", tiny.target, "--mode", mode, "--jsonl", "--no-stats", input=text)
    shared = generate("-m", tiny.target, "--mode", mode, "--jsonl", "--parallel", 3, "--no-stats", input=text)
    assert alone.exit_code == shared.exit_code == 1  # the bad line
    out_alone = [json.loads(line) for line in alone.stdout.splitlines()]
    out_shared = [json.loads(line) for line in shared.stdout.splitlines()]
    assert [o["index"] for o in out_shared] == list(range(len(lines)))
    assert "not JSON" in out_shared[2]["error"]
    assert [o.get("tokens") for o in out_shared] == [o.get("tokens") for o in out_alone]
    assert [o.get("finish_reason") for o in out_shared] == [o.get("finish_reason") for o in out_alone]


def test_jsonl_parallel_a_failed_shared_decode_fails_its_lines_and_the_rest_go_on(tiny, monkeypatch):
    from specllm.errors import DecodeError
    from specllm.llama import Context

    real, calls = Context.decode_now, []

    def failing_once(self, rows):
        calls.append(len(rows))
        if len(calls) == 6:  # a round of both first lines, after their prompts
            raise DecodeError("llama_decode failed: injected")
        return real(self, rows)

    monkeypatch.setattr(Context, "decode_now", failing_once)
    lines = [json.dumps({"prompt": p, "max_tokens": 8}) for p in ("the cat said", "def add(a, b):", "one word")]
    result = generate("-m", tiny.target, "--mode", "none", "--jsonl", "--parallel", 2, "--no-stats",
                      input="\n".join(lines) + "\n")
    assert result.exit_code == 1
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o["index"] for o in out] == [0, 1, 2]
    assert [o["finish_reason"] for o in out] == ["error", "error", "length"]
    assert "injected" in out[0]["error"] and 0 < len(out[0]["tokens"]) < 8
    assert len(out[2]["tokens"]) == 8


def test_parallel_without_jsonl_is_a_usage_error(tiny):
    result = generate("-m", tiny.target, "--parallel", 2, PROMPT)
    assert result.exit_code == 2
    assert "--jsonl" in result.output


# -- help -------------------------------------------------------------------------------------


def test_help_lists_commands_and_options():
    top = invoke("--help")
    assert top.exit_code == 0
    assert "generate" in top.stdout
    sub = invoke("generate", "--help")
    assert sub.exit_code == 0
    for option in ("--model", "--draft-model", "--draft-max", "--json", "--jsonl", "--temp", "Examples"):
        assert option in sub.stdout


def test_no_arguments_shows_the_help():
    proc = subprocess.run(specllm_command(), capture_output=True, env=process_env(), timeout=60)
    assert b"Usage" in proc.stdout + proc.stderr
    assert b"Traceback" not in proc.stderr


def test_parse_errors_print_one_error_line():
    proc = subprocess.run([*specllm_command(), "generate", "-k", "many", "hi"], capture_output=True,
                          env=process_env(), timeout=60)
    assert proc.returncode == 2
    stderr = proc.stderr.decode()
    assert stderr.startswith("error: ") and "--draft-max" in stderr.splitlines()[0]
    assert "Traceback" not in stderr
