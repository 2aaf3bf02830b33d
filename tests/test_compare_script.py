"""scripts/compare-llama-cpp and scripts/build-llama-cpp without running llama.cpp: argument
parsing, command lines, the build steps (with a stand-in cmake), reading canned program output,
and the report."""

from __future__ import annotations

import gzip
import importlib.machinery
import importlib.util
import json
import os
import stat
import sys
from pathlib import Path

import pytest

from helpers import generate, json_result

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
sys.path.insert(0, str(SCRIPTS))

from llamacpp_tools import build, programs, report  # noqa: E402
from llamacpp_tools.util import Failure  # noqa: E402


def load_script(name: str):
    loader = importlib.machinery.SourceFileLoader(name.replace("-", "_"), str(SCRIPTS / name))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[loader.name] = module  # dataclasses look their module up there
    loader.exec_module(module)
    return module


compare = load_script("compare-llama-cpp")

# What the programs print (trimmed to the lines the parsers read, as this llama.cpp prints them).
COMPLETION_OUTPUT = """\
common_perf_print:    sampling time =       4.21 ms
common_perf_print:    samplers time =       1.90 ms /   160 tokens
common_perf_print:        load time =     512.33 ms
common_perf_print: prompt eval time =     301.18 ms /    32 tokens (    9.41 ms per token,   106.25 tokens per second)
common_perf_print:        eval time =    8456.07 ms /    95 runs   (   89.01 ms per token,    11.23 tokens per second)
common_perf_print:       total time =    8790.84 ms /   127 tokens
"""
SPECULATIVE_OUTPUT = """\
encoded   32 tokens in    0.412 seconds, speed:   77.670 t/s
decoded  131 tokens in    4.409 seconds, speed:   29.712 t/s

n_draft   = 64
n_predict = 131
n_drafted = 163
n_accept  = 163
accept    = 100.000%
"""


def test_the_parsers_read_each_programs_timing():
    assert programs.parse_completion(COMPLETION_OUTPUT) == (11.23, 95, 32, {"eval_ms": 8456.07, "sampling_ms": 4.21})
    rate, tokens, prompt_tokens, details = programs.parse_speculative_simple(SPECULATIVE_OUTPUT)
    assert (rate, tokens, prompt_tokens) == (29.712, 131, 32)
    assert details == {"decode_ms": pytest.approx(4409.0), "n_drafted": 163, "n_accept": 163}
    specllm = json.dumps({"text": "x", "stats": {"tokens_per_second": 18.6, "generated": 96, "decode_ms": 5161.0,
                                                 "acceptance_rate": 1.0}})
    assert programs.parse_specllm("noise\n" + specllm + "\n") == (18.6, 96, None, {"decode_ms": 5161.0,
                                                                                   "acceptance_rate": 1.0})
    for parser in programs.PARSERS.values():
        assert parser("llama_model_load: error loading model") is None


def settings(**overrides) -> programs.Settings:
    values = dict(target="/m/t.gguf", draft="/m/d.gguf", specllm_models=[], threads=2, n_gpu_layers=0,
                  n_predict=96, ctx_size=4096, specllm="specllm", bin_dir="/b")
    return programs.Settings(**{**values, **overrides})


def test_command_lines_give_both_sides_the_same_settings(tmp_path):
    configs = {c.name: c for c in programs.all_configs()}
    prompt = tmp_path / "p.txt"
    plain = programs.command(configs["llama-plain"], settings(), prompt)
    assert plain[:5] == ["/b/llama-completion", "-m", "/m/t.gguf", "-f", str(prompt)]
    assert "-no-cnv" in plain and "-md" not in plain
    draft = programs.command(configs["llama-draft-4"], settings(n_gpu_layers=-1), prompt)
    assert draft[0] == "/b/llama-speculative-simple"
    assert draft[-4:] == ["--spec-type", "draft-simple", "--spec-draft-n-max", "4"]
    assert draft[draft.index("-md") + 1] == "/m/d.gguf" and draft[draft.index("-ngl") + 1] == "all"
    for spec_type in ("ngram-simple", "ngram-mod"):
        ngram = programs.command(configs[f"llama-{spec_type}"], settings(), prompt)
        assert ngram[-2:] == ["--spec-type", spec_type] and "-md" not in ngram
    auto = programs.command(configs["specllm-auto"], settings(specllm_models=["-m", "t", "-md", "d"]), prompt)
    assert auto[:7] == ["specllm", "generate", "-m", "t", "-md", "d", "--mode"]
    assert auto[-3:] == ["--json", "--no-stats", "-"]
    none = programs.command(configs["specllm-none"], settings(specllm_models=["-m", "t", "-md", "d"]), prompt)
    assert "-md" not in none[:6]
    for command in (plain, draft, auto):  # greedy, -n tokens past any end of generation, same threads
        assert command[command.index("-n") + 1] == "96" and command[command.index("-t") + 1] == "2"
        assert command[command.index("--temp") + 1] == "0" and "--ignore-eos" in command


def test_the_prompt_file_survives_llama_cpps_dropped_newline(tmp_path):
    path = tmp_path / "prompt.txt"
    chat = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    programs.write_prompt_file(path, chat)
    read = path.read_text(encoding="utf-8")
    assert read.removesuffix("\n") == chat  # what `-f` keeps: the file less one trailing newline


def test_configurations_default_all_and_unknown():
    assert [c.name for c in programs.chosen_configs(None)] == [
        "llama-plain", "llama-draft-4", "llama-ngram-simple", "llama-ngram-mod", "specllm-none", "specllm-auto"]
    assert len(programs.chosen_configs("all")) == len(programs.all_configs())
    assert [c.name for c in programs.chosen_configs("specllm-auto, llama-plain")] == ["llama-plain", "specllm-auto"]
    with pytest.raises(Failure, match="unknown configuration nope"):
        programs.chosen_configs("nope")


def test_arguments():
    args = compare.parse_args(["--prompts", "a.jsonl", "--chat"])
    assert args.prompt_format == "chat" and args.prompts == ["a.jsonl"] and args.configs is None
    assert compare.parse_args(["--prompts", "a", "--prompt-format", "both"]).prompt_format == "both"
    assert compare.parse_args(["--prompts", "a"]).prompt_format == "raw"
    for bad in (["--prompts", "a", "--chat", "--prompt-format", "raw"], ["--prompts", "a", "-m", "t.gguf"],
                ["--prompts", "a", "--limit", "0"], [], ["--prompts", "a", "--prompt-format", "html"]):
        with pytest.raises(SystemExit) as exited:
            compare.parse_args(bad)
        assert exited.value.code == 2


def test_prompts_come_from_specllms_loader_first_n_of_each_category(tmp_path):
    lines = [{"task_id": f"HumanEval/{i}", "prompt": f"def f{i}():"} for i in range(3)]
    lines += [{"question_id": 81 + i, "category": "writing", "turns": [f"Write {i}.", "more"]} for i in range(3)]
    path = tmp_path / "HumanEval.jsonl.gz"
    path.write_bytes(gzip.compress("\n".join(json.dumps(line) for line in lines).encode()))
    prompts = compare.load_prompts([str(path)], limit=2)
    assert [(p.id, p.category, p.text) for p in prompts] == [
        ("HumanEval/0", "HumanEval", "def f0():"), ("HumanEval/1", "HumanEval", "def f1():"),
        ("81", "writing", "Write 0."), ("82", "writing", "Write 1.")]
    (tmp_path / "bad.jsonl").write_text('{"nothing": 1}\n')
    with pytest.raises(Failure, match="bad.jsonl line 1"):
        compare.load_prompts([str(tmp_path / "bad.jsonl")], None)


def test_chat_prompts_are_the_text_specllm_generate_chat_reads(tiny):
    """Rendered once by the script, then given raw: the same tokens as `generate --chat`."""
    raw = [compare.Prompt("p1", "code", "def add(a, b):"), compare.Prompt("p2", "writing", "the cat said")]
    both = compare.with_format(raw, "both", str(tiny.target))
    assert [(p.id, p.category, p.format) for p in both] == [
        ("p1 raw", "code raw", "raw"), ("p2 raw", "writing raw", "raw"),
        ("p1 chat", "code chat", "chat"), ("p2 chat", "writing chat", "chat")]
    chat = both[2]
    assert chat.text.startswith("<|im_start|>user\ndef add(a, b):") and chat.text.endswith("assistant\n")
    via_chat = json_result(generate("-m", tiny.target, "--mode", "none", "-n", 1, "--json", "--chat", "def add(a, b):"))
    via_text = json_result(generate("-m", tiny.target, "--mode", "none", "-n", 1, "--json", "-", input=chat.text))
    assert via_text["prompt_tokens"] == via_chat["prompt_tokens"]
    assert [p.text for p in compare.with_format(raw, "raw", str(tiny.target))] == ["def add(a, b):", "the cat said"]


def run(prompt: str, category: str, config: str, rate: float, prompt_tokens: int = 10) -> programs.Run:
    return programs.Run(prompt, category, config, rate, 96, prompt_tokens)


def test_summary_means_ratios_and_table():
    configs = programs.chosen_configs(None)
    runs = [
        run("a", "code", "llama-plain", 10.0), run("a", "code", "llama-ngram-mod", 30.0),
        run("a", "code", "llama-draft-4", 12.0), run("a", "code", "specllm-none", 9.0),
        run("a", "code", "specllm-auto", 18.0, prompt_tokens=11),
        run("b", "writing", "llama-plain", 10.0), run("b", "writing", "specllm-none", 10.0),
        run("b", "writing", "specllm-auto", 10.0),
    ]
    rows = report.summarize(runs, configs)
    by_category = {row["category"]: row for row in rows}
    assert list(by_category) == ["code", "writing", "overall"]
    code = by_category["code"]
    assert code["ratios"]["none/plain"] == pytest.approx(0.9)
    assert code["ratios"]["auto/none"] == pytest.approx(2.0)
    assert code["best_llama_speculative"] == "llama-ngram-mod" and code["ratios"]["auto/best"] == pytest.approx(0.6)
    assert by_category["writing"]["ratios"]["auto/best"] is None
    assert by_category["overall"]["tokens_per_second"]["llama-plain"] == pytest.approx(10.0)
    assert report.prompt_token_mismatches(runs) == ["a (10/11)"]
    text = report.table(rows, configs)
    lines = text.splitlines()
    assert lines[0].split() == ["llama.cpp", "specllm", "ratios"]
    assert lines[1].split()[:4] == ["category", "n", "plain", "k=4"] and set(lines[2]) == {"-"}
    assert lines[3].split()[0] == "code" and "0.60x" in lines[3]
    document = json.loads(report.report(runs, configs, settings(), as_json=True, version="0.3.36", stopped=None))
    assert document["summary"] == rows and len(document["runs"]) == len(runs)


def test_raw_and_chat_sets_get_an_overall_row_each():
    configs = programs.chosen_configs("llama-plain,specllm-none")
    runs = [run("a raw", "code raw", "llama-plain", 10.0), run("a chat", "code chat", "llama-plain", 20.0),
            run("a raw", "code raw", "specllm-none", 9.0), run("a chat", "code chat", "specllm-none", 18.0)]
    rows = report.summarize(runs, configs, {"a raw": "raw", "a chat": "chat"})
    assert [row["category"] for row in rows] == ["code raw", "code chat", "overall raw", "overall chat"]
    assert rows[3]["tokens_per_second"]["llama-plain"] == 20.0


# -- building llama.cpp -----------------------------------------------------------------------


def test_the_build_uses_the_pinned_sdist():
    assert build.pinned_version() == "0.3.36"
    command = build.sdist_download_command("0.3.36", Path("/d"))
    assert command[1:] == ["-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-python",
                           "llama-cpp-python==0.3.36", "-d", "/d"]


def test_the_cache_dir_is_specllms(monkeypatch, tmp_path):
    monkeypatch.delenv("SPECLLM_LLAMA_CPP_CACHE", raising=False)
    monkeypatch.setenv("SPECLLM_CACHE", str(tmp_path))
    assert build.default_cache_dir("0.3.36") == tmp_path / "llama.cpp-0.3.36"
    monkeypatch.setenv("SPECLLM_LLAMA_CPP_CACHE", str(tmp_path / "elsewhere"))
    assert build.default_cache_dir("0.3.36") == tmp_path / "elsewhere"


FAKE_CMAKE = """#!/bin/sh
echo "$@" >> "{log}"
if [ "$1" = "--build" ]; then
    mkdir -p "$2/bin" && touch "$2/bin/llama-completion" "$2/bin/llama-speculative-simple"
fi
"""


def test_the_build_configures_once_and_builds_only_the_two_programs(tmp_path, monkeypatch):
    bin_path, calls = tmp_path / "fakebin", tmp_path / "cmake-calls.txt"
    bin_path.mkdir()
    cmake = bin_path / "cmake"
    cmake.write_text(FAKE_CMAKE.format(log=calls))
    cmake.chmod(cmake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CMAKE_ARGS", "-DGGML_CUDA=on")
    source = tmp_path / "llama_cpp_python-0.3.36" / "vendor" / "llama.cpp"
    source.mkdir(parents=True)
    (source / "CMakeLists.txt").write_text("")
    assert build.llama_cpp_source(tmp_path, "0.3.36") == source  # unpacked already: nothing downloaded
    first = build.build_llama_cpp(source, tmp_path, jobs=3)
    second = build.build_llama_cpp(source, tmp_path, jobs=3)
    assert first == second and (first / "llama-speculative-simple").is_file()
    configure, build_one, build_two = calls.read_text().splitlines()
    assert configure.startswith(f"-S {source} -B {first.parent}") and configure.endswith("-DGGML_CUDA=on")
    assert "-DCMAKE_BUILD_TYPE=Release" in configure and "-DBUILD_SHARED_LIBS=OFF" in configure
    assert build_one == build_two == (f"--build {first.parent} --config Release --parallel 3 --target "
                                      "llama-completion llama-speculative-simple")


def test_a_failed_build_names_the_compilers_error(tmp_path, monkeypatch):
    bin_path = tmp_path / "fakebin"
    bin_path.mkdir()
    cmake = bin_path / "cmake"
    cmake.write_text("#!/bin/sh\necho 'make[2]: stuff'\necho 'foo.cpp:1: error: nope'\nexit 2\n")
    cmake.chmod(cmake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_path}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(Failure, match="configuring llama.cpp failed .exit 2.: foo.cpp:1: error: nope"):
        build.build_llama_cpp(tmp_path, tmp_path, jobs=1)


def test_a_run_of_specllm_configurations_end_to_end(tiny, tmp_path, capsys):
    """Everything but llama.cpp: models, prompts in both formats, the runs, the JSON report."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "the cat said that", "category": "writing", "question_id": 7}) + "\n")
    code = compare.main(["--prompts", str(prompts), "-m", str(tiny.target), "-md", str(tiny.draft_copy), "-t", "1",
                         "-n", "8", "-c", "256", "--configs", "specllm-none,specllm-auto", "--prompt-format", "both",
                         "--specllm", f"{sys.executable} -m specllm", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    document = json.loads(out)
    assert sorted((r["prompt"], r["config"], r["tokens"]) for r in document["runs"]) == [
        ("7 chat", "specllm-auto", 8), ("7 chat", "specllm-none", 8),
        ("7 raw", "specllm-auto", 8), ("7 raw", "specllm-none", 8)]
    assert document["prompt_token_mismatches"] == []
    assert [row["category"] for row in document["summary"]] == ["writing raw", "writing chat", "overall raw",
                                                                "overall chat"]
    assert document["settings"]["prompt_format"] == "both"
