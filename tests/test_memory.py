"""Memory of earlier outputs: eviction, matching across outputs, persistence (pure Python)."""

from __future__ import annotations

import json
import os
import stat

import pytest

from specllm.drafting.memory import (
    FILE_FORMAT,
    FILE_VERSION,
    OutputMemory,
    memory_path,
)


def docs_matched(memory: OutputMemory, text: list[int]) -> int:
    matcher = memory.matcher()
    matcher.feed(text)
    return matcher.match_length


def test_outputs_are_documents_and_matches_stay_inside_one():
    memory = OutputMemory(max_tokens=100)
    memory.add([1, 2, 3])
    memory.add([4, 5, 6])
    assert len(memory) == 6 and list(memory.documents) == [[1, 2, 3], [4, 5, 6]]
    matcher = memory.matcher()
    matcher.feed([9, 2, 3, 4])
    assert matcher.match_length == 1  # "4": "3 4" spans two outputs
    assert matcher.draft(5).tokens == [5, 6]
    memory.add([])  # nothing to remember
    assert memory.index.n_documents == 2


def test_oldest_outputs_leave_first_and_the_index_follows():
    memory = OutputMemory(max_tokens=100)
    outputs = [[1000 * i + j for j in range(30)] for i in range(5)]
    for out in outputs[:3]:
        memory.add(out)
    assert len(memory) == 90
    generation = memory.index.generation
    memory.add(outputs[3])  # 120 > 100: evict down to 75 - 30, rebuild
    assert list(memory.documents) == outputs[2:4] and len(memory) == 60
    assert memory.index.generation == generation + 1 and len(memory.index) == 60
    assert docs_matched(memory, outputs[1][:5]) == 0  # forgotten
    assert docs_matched(memory, outputs[2][:5]) == 5
    memory.add(outputs[4])  # 90: fits, no rebuild
    assert memory.index.generation == generation + 1 and len(memory) == 90


def test_rebuilds_are_amortized():
    memory = OutputMemory(max_tokens=1000)
    for i in range(200):
        memory.add(list(range(i * 10, i * 10 + 10)))
    # Each rebuild frees a quarter of the budget: at most one per 250 added tokens.
    assert memory.index.generation <= 2000 // 250
    assert len(memory) <= 1000


def test_an_output_longer_than_the_budget_keeps_its_end():
    memory = OutputMemory(max_tokens=10)
    memory.add([1, 2, 3])
    memory.add(list(range(100, 125)))
    assert list(memory.documents) == [list(range(115, 125))] and len(memory) == 10


def test_foreign_token_ids_are_not_remembered():
    memory = OutputMemory(max_tokens=100, n_vocab=50)
    memory.add([1, 2, 60])
    memory.add([-1, 2])
    assert len(memory) == 0


def test_a_live_matcher_follows_eviction():
    memory = OutputMemory(max_tokens=40)
    memory.add(list(range(10, 30)))
    matcher = memory.matcher()
    matcher.feed([5, 11, 12])
    assert matcher.draft(3).tokens == [13, 14, 15]
    memory.add(list(range(100, 130)))  # evicts the first output and rebuilds the index
    assert matcher.draft(3).tokens == []
    matcher.feed([100, 101])
    assert matcher.draft(3).tokens == [102, 103, 104]


def test_save_load_round_trip_with_mode_0600(tmp_path):
    memory = OutputMemory(max_tokens=100, model_key="qwen-7b", n_vocab=200)
    memory.add([1, 2, 3, 4])
    memory.add([5, 6, 7])
    path = memory_path(tmp_path / "cache", "qwen-7b")
    memory.save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sorted(os.listdir(path.parent)) == [path.name]  # no temporary file left
    loaded = OutputMemory.load(path, "qwen-7b", max_tokens=100, n_vocab=200)
    assert list(loaded.documents) == [[1, 2, 3, 4], [5, 6, 7]]
    assert docs_matched(loaded, [9, 2, 3]) == 2
    memory.add([8, 9])
    memory.save(path)  # replaces the file
    assert len(OutputMemory.load(path, "qwen-7b", max_tokens=100, n_vocab=200)) == 9
    # A smaller budget keeps the newest outputs.
    assert list(OutputMemory.load(path, "qwen-7b", max_tokens=4, n_vocab=200).documents) == [[8, 9]]


def test_memory_path_is_per_model(tmp_path):
    a, b = memory_path(tmp_path, "model-a"), memory_path(tmp_path, "model-b")
    assert a != b and a == memory_path(tmp_path, "model-a")
    assert a.parent.parent == tmp_path and a.suffix == ".json"
    assert "model-a" not in a.name


def _write(path, content: bytes | str | object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    else:
        path.write_text(json.dumps(content))


def _payload(**changes):
    payload = {"format": FILE_FORMAT, "version": FILE_VERSION, "model_key": "m", "n_vocab": 100,
               "documents": [[1, 2, 3]]}
    payload.update(changes)
    return payload


@pytest.mark.parametrize(
    "content",
    [
        b"\x00\xff\xfe garbage",
        '{"format": "specllm-output-memory", "version": 1, "documents": [[1, 2',  # truncated
        "[1, 2, 3]",
        "null",
        "[" * 100_000 + "]" * 100_000,  # nesting too deep for the parser
        _payload(version=FILE_VERSION + 1),
        _payload(format="something-else"),
        _payload(model_key="another model"),
        _payload(n_vocab=50_000),
        _payload(documents=[[1, 2, 300]]),  # beyond the vocabulary
        _payload(documents=[[1, -2]]),
        _payload(documents=[[1, True]]),
        _payload(documents=[[1, 2.5]]),
        _payload(documents=[[1, "2"]]),
        _payload(documents=[1, 2]),
        _payload(documents={"a": [1]}),
    ],
)
def test_a_corrupt_or_foreign_file_is_ignored(tmp_path, content):
    path = tmp_path / "memory.json"
    _write(path, content)
    memory = OutputMemory.load(path, "m", max_tokens=100, n_vocab=100)
    assert len(memory) == 0 and not memory.documents
    memory.add([1, 2, 3])  # and the memory works
    assert docs_matched(memory, [1, 2]) == 2


def test_a_valid_file_loads(tmp_path):
    path = tmp_path / "memory.json"
    _write(path, _payload())
    assert list(OutputMemory.load(path, "m", max_tokens=100, n_vocab=100).documents) == [[1, 2, 3]]


def test_missing_oversized_or_unreadable_files_are_ignored(tmp_path):
    assert len(OutputMemory.load(tmp_path / "nothing.json", "m")) == 0
    assert len(OutputMemory.load(tmp_path, "m")) == 0  # a directory
    big = tmp_path / "big.json"
    _write(big, _payload(documents=[list(range(90))] * 50))
    assert len(OutputMemory.load(big, "m", max_tokens=100, n_vocab=100)) == 0


def test_save_into_a_fresh_cache_dir_is_private(tmp_path):
    path = memory_path(tmp_path / "new", "k")
    OutputMemory(model_key="k").save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(OutputMemory.load(path, "k")) == 0
