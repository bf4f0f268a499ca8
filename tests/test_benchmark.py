"""The final benchmark: ONNX parity with real onnxruntime, MACs equal to the foundation's, the report."""
import json

import pytest
import torch

from nas_core.cost.macs import architecture_cost, build_cost_table
from nas_core.report.benchmark import (
    BenchmarkRow,
    baseline_network,
    benchmark_network,
    export_checked,
    local_target,
    model_unit,
    network_macs,
    report_markdown,
    target_measure,
)
from nas_core.space.mobilenetv3 import VARIANTS, count_conv_macs
from nas_core.space.zoo import PUBLISHED

SIZE = (64, 128)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.mark.parametrize("name", ["squeezenas_lat_small", "squeezenas_mac_xlarge", *VARIANTS])
def test_onnx_export_matches_pytorch_within_1e_4(tmp_path, name):
    model, _, _ = baseline_network(name)
    diff = export_checked(model, tmp_path / f"{name}.onnx", SIZE, atol=1e-4)
    assert 0 <= diff <= 1e-4


def test_onnx_parity_of_the_released_weights(tmp_path, reference_dir):
    weights = reference_dir / "weights" / "squeezenas_lat_small.pth"
    model, _, label = baseline_network("squeezenas_lat_small", weights)
    assert label == "authors"
    assert export_checked(model, tmp_path / "lat_small.onnx", SIZE) <= 1e-4


def test_a_parity_failure_names_the_file(tmp_path):
    model, _, _ = baseline_network("mobilenetv3_small")
    with pytest.raises(ValueError, match=r"m\.onnx: ONNX logits differ"):
        export_checked(model, tmp_path / "m.onnx", SIZE, atol=0.0 - 1.0)


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_squeezenas_macs_are_the_foundations_cost_table_and_match_the_hooks(name):
    model, arch, _ = baseline_network(name)
    table = build_cost_table(arch.space, SIZE, 19)
    assert network_macs(model, arch, SIZE, 19) == architecture_cost(table, arch, "macs")
    assert network_macs(model, arch, SIZE, 19) == count_conv_macs(model, (1, 3, *SIZE))


def test_published_lat_small_at_full_resolution_has_the_foundations_mac_count():
    model, arch, _ = baseline_network("squeezenas_lat_small")
    table = build_cost_table("small", (1024, 2048), 19)
    assert network_macs(model, arch, (1024, 2048), 19) == architecture_cost(table, arch, "macs")


def test_benchmark_row_on_the_local_target(tmp_path):
    model, arch, label = baseline_network("squeezenas_mac_small")
    measure = target_measure(local_target(threads=1, warmup=1, runs=3))
    row = benchmark_network("squeezenas_mac_small", model, arch, label, tmp_path / "m.onnx", SIZE, measure,
                            log=lambda _: None)
    assert (tmp_path / "m.onnx").is_file() and row.runs == 3
    assert 0 < row.latency_p10_ms <= row.latency_ms <= row.latency_p90_ms
    assert row.macs == architecture_cost(build_cost_table("small", SIZE, 19), arch, "macs")
    assert row.gmacs_per_s == pytest.approx(row.macs / 1e9 / (row.latency_ms / 1e3))
    assert row.params == sum(p.numel() for p in model.parameters())
    assert row.class_miou is None and row.weights == "random"
    assert json.loads(json.dumps(row.to_dict()))["params_m"] == pytest.approx(row.params / 1e6)


@pytest.mark.parametrize("target", ["local", "profiling"])
def test_both_targets_time_the_exported_network(tmp_path, target):
    from nas_core.config import LatencyParams
    from tasks.benchmark import make_measure

    model, _, _ = baseline_network("mobilenetv3_small")
    export_checked(model, tmp_path / "m.onnx", SIZE)
    measure = make_measure(target, 1, 1, 3, LatencyParams(warmup=1, runs=3, min_time_s=0))
    result = measure(model_unit("m", model, SIZE), tmp_path / "m.onnx")
    assert result["runs"] == 3 and 0 < result["p10_ms"] <= result["median_ms"] <= result["p90_ms"]


def test_report_lists_every_network_and_the_references():
    rows = [BenchmarkRow("ours", "small: ...", "trained here", 0.4123, 50.0, 45.0, 60.0, 10, 4_000_000_000,
                         1_900_000, 1e-6),
            BenchmarkRow("mobilenetv3_large", "mobilenetv3_large (LR-ASPP head)", "random", None, 100.0, 90.0,
                         110.0, 10, 9_300_000_000, 1_500_000, 1e-6)]
    text = report_markdown(rows, "local", (1024, 2048), {"constant prediction": 0.05})
    assert "| ours | trained here | 41.23 | 50.0 [45.0, 60.0] | 4.00 | 80.0 | 1.900 |" in text
    assert "| mobilenetv3_large | random | — | 100.0 [90.0, 110.0] | 9.30 | 93.0 | 1.500 |" in text
    assert "constant prediction: class mIoU 5.00%" in text


def test_unknown_baseline_lists_the_valid_names():
    with pytest.raises(ValueError, match="mobilenetv3_large"):
        baseline_network("resnet50")
