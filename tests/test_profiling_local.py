"""Latency tables on this machine (onnxruntime on CPU): export, runner, store, resume."""
import json
import re

import numpy as np
import onnxruntime as ort
import pytest
import torch

from nas_core.cost.export import export_onnx, network_unit, onnx_filename, table_units
from nas_core.cost.fidelity import uniform_architectures
from nas_core.cost.latency import (
    MeasurementStore,
    latency_table,
    measure_networks,
    measure_units,
    profile_space,
    store_path,
)
from nas_core.cost.macs import build_cost_table, read_cost_table, write_cost_table
from nas_core.cost.targets import LocalTarget, MeasurementError, MeasurementProtocol, TransientError
from nas_core.space.spaces import SPACES, SearchSpace

# 3 blocks (one residual, one stride 2, one residual), 8/16 channels, output stride 4
TINY = SearchSpace(name="tiny", stem_channels=8, groups=((8, 1, 1), (16, 2, 2)), post_encoder_channels=16,
                   decoder="lraspp", decoder_channels=8, low_level_index=0)
SIZE = (32, 64)
FAST = MeasurementProtocol(warmup=1, runs=3, min_time_s=0.0)
quiet = lambda s: None  # noqa: E731


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setitem(SPACES, "tiny", TINY)  # the table validator looks spaces up by name
    return TINY


def test_units_are_one_per_distinct_shape_that_runs_something():
    table = build_cost_table("small", (256, 512), 19)
    units = table_units(table, "small")
    keys = [u.key for u in units]
    assert len(keys) == len(set(keys))
    zero = table[(table["candidate"] == "skip") & table["residual"]]["shape_key"]
    assert set(keys) == set(table["shape_key"]) - set(zero)
    # blocks 1-3 share one shape: 13 + 12 units for the first group instead of 4 * 13
    assert len(units) < len(table) / 2


def _tiny_units():
    return table_units(build_cost_table(TINY, SIZE, 3), TINY)


@pytest.mark.parametrize("index", range(0, 40, 3), ids=lambda i: _tiny_units()[i].key.split(":")[0] + f"-{i}")
def test_exported_unit_computes_what_pytorch_computes(tiny, tmp_path, index):
    unit = _tiny_units()[index]
    export_onnx(unit, tmp_path / "u.onnx")
    torch.manual_seed(0)
    module = unit.build()
    xs = [torch.randn(*s) for s in unit.inputs]
    with torch.no_grad():
        expected = module(*xs).numpy()
    sess = ort.InferenceSession(str(tmp_path / "u.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {f"x{i}": x.numpy() for i, x in enumerate(xs)})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_local_profile_of_a_tiny_space(tiny, tmp_path):
    target = LocalTarget(FAST)
    store = MeasurementStore(store_path(tmp_path / "m", target))
    table, stats = profile_space("tiny", SIZE, 3, target, store, tmp_path / "onnx", log=quiet)
    write_cost_table(table, tmp_path / "latency_tiny.parquet")
    back = read_cost_table(tmp_path / "latency_tiny.parquet")
    base = build_cost_table(TINY, SIZE, 3)
    assert (back["macs"] == base["macs"]).all() and (back["shape_key"] == base["shape_key"]).all()
    zero = back["candidate"].eq("skip") & back["residual"]
    assert (back.loc[zero, "latency_ms"] == 0).all() and (back.loc[zero, "runs"] == 0).all()
    ran = back[~zero]
    assert (ran["latency_ms"] > 0).all() and (ran["runs"] >= 3).all()
    assert (ran["latency_p10_ms"] <= ran["latency_ms"]).all() and (ran["latency_ms"] <= ran["latency_p90_ms"]).all()
    assert stats["measured"] == len(store) == 40 and 0 <= stats["overhead"] <= 1


def test_blocks_of_one_shape_read_one_measurement_and_gaps_are_errors(tmp_path):
    base = build_cost_table("small", (64, 128), 19)
    store = MeasurementStore(tmp_path / "s.jsonl")
    units = table_units(base, "small")
    for i, u in enumerate(units):
        store.records[u.key] = {"key": u.key, "latency_ms": i + 1.0, "latency_p10_ms": i + 0.5,
                                "latency_p90_ms": i + 1.5, "runs": 7}
    table = latency_table(base, store)
    by_block = {b: t.set_index("candidate")["latency_ms"] for b, t in table[table["kind"] == "block"].groupby("block")}
    assert by_block[1].equals(by_block[3])  # blocks 1-3: one shape
    assert not by_block[0].equals(by_block[1])  # block 0 has stride 2
    del store.records[units[-1].key]
    with pytest.raises(ValueError, match=r"s\.jsonl: 1 shape\(s\) not measured"):
        latency_table(base, store)


def test_interrupted_profile_measures_only_what_is_missing(tiny, tmp_path):
    units = _tiny_units()
    target = LocalTarget(FAST)
    path = store_path(tmp_path / "m", target)

    def stop_after_five(rec, seen=[]):
        seen.append(rec["key"])
        if len(seen) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        measure_units(target, units, MeasurementStore(path), tmp_path / "onnx", on_result=stop_after_five, log=quiet)
    assert len(path.read_text().splitlines()) == 5  # each result reached the disk as it arrived
    again = []
    stats = measure_units(target, units, MeasurementStore(path), tmp_path / "onnx", on_result=again.append, log=quiet)
    assert len(again) == stats["measured"] == len(units) - 5
    keys = [json.loads(line)["key"] for line in path.read_text().splitlines()]
    assert sorted(keys) == sorted(u.key for u in units)  # no duplicate, none missing


def test_store_names_the_file_when_corrupt(tmp_path):
    (tmp_path / "s.jsonl").write_text('{"key": "a", "latency_ms": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"s\.jsonl:2"):
        MeasurementStore(tmp_path / "s.jsonl")


def test_a_model_the_runtime_rejects_fails_by_name_after_the_others(tiny, tmp_path):
    units = _tiny_units()[:3]
    target = LocalTarget(FAST)
    store = MeasurementStore(tmp_path / "s.jsonl")
    onnx = tmp_path / "onnx" / "opset17"
    measure_units(target, units[:1], store, tmp_path / "onnx", log=quiet)  # creates the cache folder
    (onnx / onnx_filename(units[1].key)).write_bytes(b"not an onnx model")
    with pytest.raises(MeasurementError, match=re.escape(units[1].key)):
        measure_units(target, units, store, tmp_path / "onnx", log=quiet)
    assert units[2].key in store  # measured although the one before it failed


def test_thread_clock_and_extended_optimisation(tiny, tmp_path):
    units = _tiny_units()[:4]
    target = LocalTarget(MeasurementProtocol(warmup=1, runs=5, clock="thread", optimization="extended"))
    store = MeasurementStore(store_path(tmp_path, target))
    measure_units(target, units, store, tmp_path / "onnx", log=quiet)
    assert all(store.records[u.key]["runs"] == 5 and store.records[u.key]["latency_ms"] > 0 for u in units)


def test_min_time_adds_runs(tiny, tmp_path):
    unit = _tiny_units()[0]
    store = MeasurementStore(tmp_path / "s.jsonl")
    target = LocalTarget(MeasurementProtocol(warmup=0, runs=2, min_time_s=0.2))
    measure_units(target, [unit], store, tmp_path / "o", log=quiet)
    rec = store.records[unit.key]
    assert rec["timed_s"] >= 0.2 and rec["runs"] > 2


def test_whole_networks_are_measured_with_the_same_protocol(tiny, tmp_path):
    archs = uniform_architectures("tiny", 2, seed=0)
    target = LocalTarget(FAST)
    store = MeasurementStore(store_path(tmp_path, target))
    ms = measure_networks(archs, SIZE, 3, target, store, tmp_path / "onnx", log=quiet)
    assert len(ms) == 2 and all(m > 0 for m in ms)
    assert network_unit(archs[0], SIZE, 3).key in store


def test_facts_of_this_machine():
    facts = LocalTarget(FAST).facts()
    assert facts["hostname"] and facts["cpu_count"] >= 1 and facts["onnxruntime"] == ort.__version__
    assert facts["nvpmodel"] is None and facts["power_mode"] is None  # not a Jetson: recorded as absent


def test_a_silent_runner_times_out(tiny, tmp_path):
    target = LocalTarget(FAST, timeout_s=0.001)
    with pytest.raises(TransientError, match="no result"):
        target.measure([], lambda r: None)


def test_interleaved_rounds_time_every_model_in_each_round(tiny, tmp_path):
    units = _tiny_units()[:5]
    target = LocalTarget(MeasurementProtocol(warmup=1, runs=6, rounds=3, min_time_s=0.0))
    store, lines = MeasurementStore(tmp_path / "s.jsonl"), []
    measure_units(target, units, store, tmp_path / "onnx", log=lines.append)
    assert [store.records[u.key]["runs"] for u in units] == [6] * 5
    assert all(store.records[u.key]["warmup_s"] > 0 for u in units)  # one warm-up run per round
    # the rounds hold every result back to the end: their progress is said meanwhile (the results then
    # come at once, with no time left to estimate)
    rounds = [ln for ln in lines if "interleaved rounds" in ln]
    assert rounds and rounds[-1].startswith("[profile] interleaved rounds 100% of 20 model steps")
    results = [ln for ln in lines if ln.startswith("[profile] ") and "/5 " in ln]
    assert len(results) == 5 and not any("left" in ln for ln in results)
    assert lines.index(rounds[-1]) < lines.index(results[0])


def test_streamed_results_say_the_time_left(tiny, tmp_path):
    units = _tiny_units()[:4]
    lines = []
    measure_units(LocalTarget(FAST), units, MeasurementStore(tmp_path / "s.jsonl"), tmp_path / "onnx",
                  log=lines.append)
    results = [ln for ln in lines if "/4 " in ln]
    assert len(results) == 4 and all(" s left" in ln or " min left" in ln for ln in results[:-1])
    assert "left" not in results[-1]


def test_a_power_mode_the_device_cannot_set_is_fatal():
    from nas_core.cost.targets import ProfileError

    with pytest.raises(ProfileError, match="nvpmodel -m 3 failed"):
        LocalTarget(MeasurementProtocol(power_mode=3)).facts()
