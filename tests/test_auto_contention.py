"""Costs that cannot learn from a busy machine (issue 23): decodes timed while other processes
want the cores are neither learned nor saved, a saved shape never falls with n, and a poisoned
profile is neither used nor kept by the next run."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest
from helpers import quiet_meter

from specllm.auto import ContentionMeter, CostModel, ShapePoint
from specllm.auto.contention import MIN_QUIET_SHARE
from specllm.auto.costs import PROFILE_VERSION
from specllm.engine import Engine, EngineConfig
from specllm.llama import Context, Model
from specllm.paths import cost_profile_path

# What two auto runs beside two CPU-bound processes once saved (quiet: T(64)/T(1) is about 23).
POISONED_SHAPE = {"2": 1.9, "4": 2.7, "8": 6.0, "16": 7.6, "32": 13.0, "48": 20.0, "64": 1.28}


def quiet_costs() -> CostModel:
    costs = CostModel(t1=0.05, t1_fresh=1)
    for n, r in {2: 1.9, 4: 2.7, 8: 6.0, 16: 7.6, 32: 13.0, 48: 20.0, 64: 23.0}.items():
        costs.shape[n] = ShapePoint(r, fresh=2)
    return costs


def test_busy_decodes_teach_nothing():
    costs = quiet_costs()
    costs.observe_target(1, 0.5, busy=True)  # ten times slower: the machine was busy
    costs.observe_target(64, 0.064, busy=True)
    assert costs.t1 == 0.05 and costs.ratio(64) == 23.0 and costs.shape[64].fresh == 2
    assert costs.last_plain_round == costs.rounds - 1  # the plain round still counts as a probe
    costs.observe_draft(4, 1.0, busy=True)
    assert costs.draft_t1 == 0.0


def test_a_mostly_busy_run_saves_nothing_it_measured(tmp_path):
    path = tmp_path / "costs.json"
    quiet_costs().save(path, "key")
    costs = CostModel()
    assert costs.load(path, "key")
    costs.observe_target(1, 0.06)
    costs.observe_target(64, 0.06 * 30)
    costs.observe_target(64, 0.06 * 30)
    costs.meter.busy, costs.meter.quiet = 10, 3  # what the policy's meter counted over the run
    costs.save(path, "key")
    entry = json.loads(path.read_text())["key"]
    assert entry["shape"]["64"] == 23.0 and entry["t1_seconds"] == 0.05


def test_a_shape_that_falls_with_n_is_never_saved(tmp_path):
    path = tmp_path / "costs.json"
    costs = quiet_costs()
    costs.shape[33] = ShapePoint(12.0, fresh=2)  # a dip below T(32): noise
    costs.shape[2] = ShapePoint(0.9, fresh=2)  # below T(1): noise on a flat curve
    costs.save(path, "key")
    shape = {int(n): r for n, r in json.loads(path.read_text())["key"]["shape"].items()}
    ratios = [shape[n] for n in sorted(shape)]
    assert ratios == sorted(ratios) and ratios[0] >= 1.0
    assert shape[33] == 13.0


def write_profile(path, key: str, shape: dict, t1: float = 0.05) -> None:
    path.write_text(json.dumps({key: {"version": PROFILE_VERSION, "t1_seconds": t1, "shape": shape,
                                      "draft_t1_seconds": 0.0, "model_rate_ratio": 1.4}}))


def test_a_poisoned_profile_is_not_used_and_the_next_save_drops_it(tmp_path):
    path = tmp_path / "costs.json"
    write_profile(path, "key", POISONED_SHAPE)
    costs = CostModel()
    assert not costs.load(path, "key")
    assert costs.shape == {} and costs.model_rate_ratio is None
    # A run that measured only a few sizes: the poisoned ones are not merged in.
    costs = CostModel(t1=0.05, t1_fresh=1, shape={2: ShapePoint(1.9, fresh=2), 4: ShapePoint(2.7, fresh=2)})
    costs.save(path, "key")
    entry = json.loads(path.read_text())["key"]
    assert entry["shape"] == {"2": 1.9, "4": 2.7} and entry["model_rate_ratio"] is None
    # A run that measured nothing it may keep leaves no entry at all rather than the poison.
    write_profile(path, "key", POISONED_SHAPE)
    CostModel().save(path, "key")
    assert "key" not in json.loads(path.read_text())


def test_small_dips_of_an_older_profile_are_evened_out_on_load(tmp_path):
    path = tmp_path / "costs.json"
    write_profile(path, "key", {"2": 1.9, "16": 7.6, "17": 7.3, "32": 13.0})
    costs = CostModel()
    assert costs.load(path, "key")
    assert costs.shape[17].ratio == 7.6


def test_saved_sizes_that_contradict_this_runs_measurements_are_dropped(tmp_path):
    path = tmp_path / "costs.json"
    write_profile(path, "key", {"2": 1.9, "8": 6.0, "24": 11.0, "48": 20.0})
    costs = CostModel(t1=0.05, t1_fresh=1, shape={16: ShapePoint(12.0, fresh=2), 32: ShapePoint(18.0, fresh=2)})
    costs.save(path, "key")
    shape = json.loads(path.read_text())["key"]["shape"]
    assert "24" not in shape and shape["8"] == 6.0 and shape["48"] == 20.0


# -- a poisoned profile, end to end, on the tiny models --------------------------------------


def test_the_next_run_neither_uses_nor_keeps_a_poisoned_profile(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("SPECLLM_CACHE", str(tmp_path))
    config = EngineConfig(target=str(tiny.target), mode="auto", threads=1, k=64)
    with Engine(config) as engine:  # calibrates and saves a profile
        key = engine._profile_key
    profile = json.loads(cost_profile_path().read_text())
    profile[key]["shape"].update({"48": 20.0, "64": 1.28, "65": 1.28})
    cost_profile_path().write_text(json.dumps(profile))

    with Engine(config) as engine:
        assert engine.costs.ratio(64) >= engine.costs.ratio(48)
        assert engine.costs.ratio(64) != 1.28
    saved = json.loads(cost_profile_path().read_text()).get(key)
    if saved is not None:  # nothing is saved when every calibration decode was busy
        shape = {int(n): r for n, r in saved["shape"].items()}
        assert [shape[n] for n in sorted(shape)] == sorted(shape.values())
        assert shape.get(64) != 1.28 and shape.get(65) != 1.28


# -- contention on real decodes --------------------------------------------------------------

BURN = "import time\nend = time.time() + {seconds}\nwhile time.time() < end:\n    pass\n"


@contextmanager
def cpu_burners(count: int, seconds: float):
    """`count` processes that spin on a core each for at most `seconds`."""
    procs = [subprocess.Popen([sys.executable, "-c", BURN.format(seconds=seconds)]) for _ in range(count)]
    try:
        time.sleep(0.3)  # let them start spinning
        yield
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


def busy_share(ctx: Context, meter: ContentionMeter, tokens: list[int], seconds: float) -> float:
    """The share of decodes of `tokens` judged busy, decoding for about `seconds`."""
    busy = total = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        span = meter.start()
        ctx.decode(tokens, all_logits=True)
        wall, was_busy = meter.stop(span)
        ctx.truncate(0)
        busy += was_busy
        total += 1
    return busy / total


def test_decodes_beside_busy_processes_are_judged_busy_tiny(tiny):
    model = Model(tiny.target)
    try:
        with Context(model, n_ctx=256, n_threads=2) as ctx:
            tokens = model.vocab.tokenize("the quick brown fox jumps over the lazy dog " * 8)[:96]
            meter = ContentionMeter(threads=2)
            with cpu_burners(3, seconds=6):
                assert busy_share(ctx, meter, tokens, seconds=2.0) > 0.5
    finally:
        model.close()


@pytest.mark.real_models
def test_decodes_beside_busy_processes_are_judged_busy(real_target_path):
    model = Model(real_target_path)
    try:
        with Context(model, n_ctx=512, n_threads=2) as ctx:
            tokens = model.vocab.tokenize("def quicksort(xs):\n    if len(xs) <= 1:\n        return xs\n")[:16]
            meter = ContentionMeter(threads=2)
            with cpu_burners(3, seconds=8):
                assert busy_share(ctx, meter, [tokens[0]], seconds=2.0) > 0.5  # one-token decodes
                assert busy_share(ctx, meter, tokens, seconds=2.0) > 0.5
    finally:
        model.close()


def test_the_meter_judges_by_cpu_share():
    meter = ContentionMeter(threads=1)
    assert not meter.judge(wall=0.1, cpu=0.095)
    assert meter.judge(wall=0.1, cpu=0.1 * MIN_QUIET_SHARE * 0.9)
    assert not meter.judge(wall=0.001, cpu=0.0)  # too short to judge


def test_a_saved_draft_time_is_measured_again_at_the_start_of_a_run(tiny):
    # A saved draft time that is too high (once: a catch-up timed as drafting) would keep the
    # draft model from ever being looked at, so it would never be corrected by its rounds.
    costs = quiet_costs()
    costs.draft_t1, costs.meter = 10.0, quiet_meter()  # about the remeasure, not contention
    target, draft = Model(tiny.target), Model(tiny.draft_copy)
    try:
        with Context(target, n_ctx=256, n_threads=1) as t_ctx, Context(draft, n_ctx=256, n_threads=1) as d_ctx:
            costs.measure_speed(t_ctx, d_ctx)
    finally:
        target.close()
        draft.close()
    assert 0 < costs.draft_t1 < 1.0 and costs.draft_t1_fresh
