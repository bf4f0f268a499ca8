"""trtexec output parsing on the outputs of four TensorRT generations and two failures."""
import json
import math
from pathlib import Path

import pytest

from nas_core.cost.trtexec import TrtexecError, compute_times, parse_summary, parse_trtexec, parse_version

FIXTURES = Path(__file__).parent / "fixtures" / "trtexec"
RUNS = ("trt7.1.3_xavier", "trt8.2.1_xavier", "trt8.5.2_xavier", "trt10.3.0_orin")
VERSIONS = {"trt7.1.3_xavier": None, "trt8.2.1_xavier": (8, 2, 1), "trt8.5.2_xavier": (8, 5, 2),
            "trt10.3.0_orin": (10, 3, 0)}
FAILURES = ("trt8.5.2_parse_failure", "trt7.1.3_build_failure")


def _read(name: str, suffix: str) -> str:
    return (FIXTURES / f"{name}{suffix}").read_text()


def _median(xs: list[float]) -> float:
    s, n = sorted(xs), len(xs)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


@pytest.mark.parametrize("name", RUNS)
def test_version_comes_from_the_status_line(name):
    assert parse_version(_read(name, ".log")) == VERSIONS[name]


@pytest.mark.parametrize("name", RUNS)
def test_export_times_drop_warmup_and_agree_with_the_summary(name):
    log, times = _read(name, ".log"), _read(name, "_times.json")
    timed = compute_times(times, log, warmup_ms=200)
    assert len(timed) == 200  # the log says "Timing trace has 200 queries"
    summary = parse_summary(log)
    # trtexec prints 6 significant digits; the median of the kept queries is its median
    assert _median(timed) == pytest.approx(summary["median"], rel=1e-5)
    assert min(timed) == pytest.approx(summary["min"], rel=1e-5)


@pytest.mark.parametrize("name", ("trt7.1.3_xavier", "trt8.2.1_xavier"))
def test_old_versions_write_warmup_queries_that_would_bias_the_median(name):
    entries = json.loads(_read(name, "_times.json"))
    everything = [e["computeMs"] for e in entries]
    assert len(everything) > 200
    assert _median(everything) > 1.005 * parse_summary(_read(name, ".log"))["median"]


@pytest.mark.parametrize("name", ("trt7.1.3_xavier", "trt8.2.1_xavier"))
def test_without_query_counts_warmup_is_dropped_by_start_time(name):
    log = "\n".join(line for line in _read(name, ".log").splitlines()
                    if "Warmup completed" not in line and "Timing trace has" not in line)
    timed = compute_times(_read(name, "_times.json"), log, warmup_ms=200)
    assert len(timed) == 200


@pytest.mark.parametrize("name", RUNS)
def test_parse_prefers_the_json_trace(name):
    t = parse_trtexec(_read(name, ".log"), _read(name, "_times.json"), warmup_ms=200)
    assert t.source == "export_times" and t.runs == 200 and t.version == VERSIONS[name]
    assert t.p10_ms < t.median_ms < t.p90_ms


@pytest.mark.parametrize("name", RUNS)
def test_parse_falls_back_to_the_text_summary(name):
    log = _read(name, ".log")
    t = parse_trtexec(log, None)
    assert t.source == "summary" and t.median_ms == parse_summary(log)["median"]
    assert math.isnan(t.p10_ms)
    # only 8.5+ prints the 90th percentile
    assert math.isnan(t.p90_ms) == (VERSIONS[name] is None or VERSIONS[name] < (8, 5, 0))


@pytest.mark.parametrize("name,expected", [
    ("trt7.1.3_xavier", {"median": 1.0614, "p99": 1.08315}),
    ("trt8.2.1_xavier", {"median": 0.971586, "p99": 0.991217}),
    ("trt8.5.2_xavier", {"median": 0.883536, "p90": 0.894669, "p95": 0.897129, "p99": 0.902585}),
    ("trt10.3.0_orin", {"median": 0.415588, "p90": 0.419769, "p95": 0.422515, "p99": 0.424788}),
])
def test_summary_of_each_version(name, expected):
    stats = parse_summary(_read(name, ".log"))
    for key, value in expected.items():
        assert stats[key] == pytest.approx(value, rel=1e-5)


@pytest.mark.parametrize("name", FAILURES)
def test_failure_raises_with_the_error_lines(name):
    log = _read(name, ".log")
    with pytest.raises(TrtexecError, match="FAILED") as e:
        parse_trtexec(log, None, returncode=1)
    assert "[E]" in str(e.value)


def test_nonzero_exit_status_fails_even_with_a_summary():
    with pytest.raises(TrtexecError, match="exit status 137"):
        parse_trtexec(_read("trt8.5.2_xavier", ".log"), None, returncode=137)


def test_truncated_trace_is_an_error():
    with pytest.raises(TrtexecError, match="computeMs"):
        parse_trtexec(_read("trt8.5.2_xavier", ".log"), '[{"startComputeMs": 1.0}]')


def _fake_trtexec(tmp_path, fixture: str, rc: int = 0) -> Path:
    """A stand-in for the trtexec binary (no TensorRT on CPU machines): it records its arguments,
    prints a fixture log and writes the fixture trace where --exportTimes asks."""
    import sys

    script = tmp_path / "trtexec"
    times = FIXTURES / f"{fixture}_times.json"
    script.write_text(f"""#!{sys.executable}
import json, shutil, sys
args = sys.argv[1:]
with open({str(tmp_path / 'calls.jsonl')!r}, "a") as f:
    f.write(json.dumps(args) + "\\n")
out = [a.split("=", 1)[1] for a in args if a.startswith("--exportTimes=")]
if {rc} == 0 and out:
    shutil.copy({str(times)!r}, out[0])
sys.stdout.write(open({str(FIXTURES / (fixture + '.log'))!r}).read())
sys.exit({rc})
""")
    script.chmod(0o755)
    return script


@pytest.mark.parametrize("fixture", ("trt8.2.1_xavier", "trt10.3.0_orin"))
def test_runner_drives_trtexec_and_the_target_parses_it(tmp_path, fixture):
    from nas_core.cost.export import table_units
    from nas_core.cost.latency import MeasurementStore, measure_units
    from nas_core.cost.macs import build_cost_table
    from nas_core.cost.targets import LocalTarget, MeasurementProtocol

    fake = _fake_trtexec(tmp_path, fixture)
    units = table_units(build_cost_table("small", (64, 128), 19), "small")[:2]
    target = LocalTarget(MeasurementProtocol(backend="trtexec", trtexec=str(fake), runs=200, min_time_s=2.5,
                                             precision="fp16", cuda_graph=True))
    store = MeasurementStore(tmp_path / "s.jsonl")
    measure_units(target, units, store, tmp_path / "onnx", log=lambda s: None)
    expected = parse_trtexec(_read(fixture, ".log"), _read(fixture, "_times.json"))
    for u in units:
        rec = store.records[u.key]
        assert rec["latency_ms"] == pytest.approx(expected.median_ms) and rec["runs"] == 200
        assert rec["source"] == "export_times"
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert len(calls) == 2
    assert {"--warmUp=200", "--iterations=200", "--duration=3", "--fp16", "--useCudaGraph", "--noDataTransfers",
            "--useSpinWait"} <= set(calls[0])
    assert Path(next(a for a in calls[0] if a.startswith("--onnx=")).split("=", 1)[1]).is_file()


def test_a_failing_trtexec_fails_the_model_by_name(tmp_path):
    from nas_core.cost.export import table_units
    from nas_core.cost.latency import MeasurementStore, measure_units
    from nas_core.cost.macs import build_cost_table
    from nas_core.cost.targets import LocalTarget, MeasurementError, MeasurementProtocol

    fake = _fake_trtexec(tmp_path, "trt8.5.2_parse_failure", rc=1)
    unit = table_units(build_cost_table("small", (64, 128), 19), "small")[0]
    target = LocalTarget(MeasurementProtocol(backend="trtexec", trtexec=str(fake)))
    with pytest.raises(MeasurementError, match="Failed to parse onnx file"):
        measure_units(target, [unit], MeasurementStore(tmp_path / "s.jsonl"), tmp_path / "onnx", log=lambda s: None)


@pytest.mark.parametrize("precision,flags", [("fp32", []), ("fp16", ["--fp16"]), ("int8", ["--int8"]),
                                             ("best", ["--best"])])
@pytest.mark.parametrize("graph", (True, False))
def test_the_trtexec_command_line_carries_the_precision_and_the_deployment_flags(precision, flags, graph):
    from dataclasses import replace

    from nas_core.cost.runner import trtexec_command
    from nas_core.cost.targets import MeasurementProtocol

    protocol = replace(MeasurementProtocol(backend="trtexec", runs=100, min_time_s=1.2), precision=precision,
                       cuda_graph=graph, spin_wait=not graph)
    cmd = trtexec_command(protocol.manifest(), "/tmp/m.onnx", "/tmp/t.json")
    precision_flags = [a for a in cmd if a in ("--fp16", "--int8", "--best")]
    assert precision_flags == flags
    assert ("--useCudaGraph" in cmd) is graph and ("--useSpinWait" in cmd) is (not graph)
    assert "--noDataTransfers" in cmd and "--onnx=/tmp/m.onnx" in cmd and "--exportTimes=/tmp/t.json" in cmd
    with pytest.raises(ValueError, match="precision must be one of fp32, fp16, int8, best"):
        trtexec_command({**protocol.manifest(), "precision": "fp8"}, "/tmp/m.onnx", "/tmp/t.json")
