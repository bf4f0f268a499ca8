"""The benchmark stage end to end: Prefect flow, report + DVC metrics, MLflow model flavours and registry;
and the whole retraining chain through `dvc repro` in a fresh repository."""
import json

import numpy as np
import pytest
import torch

from nas_core.data import generate_cityscapes
from nas_core.space.network import SegmentationNetwork
from nas_core.space.zoo import PUBLISHED
from nas_core.train.stages import save_payload, stage_payload
from tests.repo_copy import TINY_EXPERIMENTS, make_repo_copy, run

ARCH = PUBLISHED["squeezenas_lat_small"]


@pytest.mark.slow
def test_benchmark_flow_reports_every_network_and_registers_both_flavours(tmp_path, monkeypatch, reference_dir,
                                                                          prefect_harness):
    import mlflow
    import onnxruntime as ort

    from flows.benchmark import benchmark_flow

    monkeypatch.chdir(tmp_path)
    generate_cityscapes(tmp_path / "cityscapes", num_train=2, num_val=2, num_extra=0, size=(64, 128), seed=0)
    torch.manual_seed(3)
    ours = SegmentationNetwork(ARCH, 19)
    save_payload(tmp_path / "train/train_fine/model.pt",
                 stage_payload("train_fine", ARCH, ours, "segmentation", 19, [{"stage": "train_fine"}]))
    weights = reference_dir / "weights" / "squeezenas_lat_small.pth"
    (tmp_path / "params.yaml").write_text(
        "paths: {dataset: cityscapes, train: train, benchmark: bench}\n"
        # absolute: MLflow caches its store per URI, and another test may have used the same relative one
        f"tracking: {{mlflow_uri: 'sqlite:///{tmp_path / 'mlflow.db'}', experiment: t, registered_model: tiny}}\n"
        "benchmark: {input_size: {height: 64, width: 128}, warmup: 1, runs: 3, "
        f"baselines: [squeezenas_lat_small, mobilenetv3_small], weights: {{squeezenas_lat_small: {weights}}}}}\n")
    result = benchmark_flow("params.yaml")

    metrics = json.loads((tmp_path / "bench/metrics.json").read_text())
    assert set(metrics["networks"]) == {"ours", "squeezenas_lat_small", "mobilenetv3_small"}
    lat_small = metrics["networks"]["squeezenas_lat_small"]
    assert lat_small["weights"] == "authors" and 0 <= lat_small["class_miou"] <= 1
    assert metrics["networks"]["mobilenetv3_small"]["class_miou"] is None
    assert all(r["onnx_max_rel_diff"] <= 1e-4 and r["latency_ms"] > 0 for r in metrics["networks"].values())
    report = (tmp_path / "bench/report.md").read_text()
    tables = [block.splitlines() for block in report.split("\n\n") if block.startswith("| ")]
    assert len(tables[0]) == 2 + 3 and "constant prediction" in report  # header, rule, our network and two baselines
    # the per-class table: the dataset's 19 classes, one column per network with an mIoU (ours, the authors')
    assert len(tables[1]) == 2 + 19 and tables[1][0] == "| class | ours | squeezenas_lat_small |"
    assert tables[1][2].startswith("| road | ") and tables[1][-1].startswith("| bicycle | ")

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    assert [str(v.version) for v in client.search_model_versions("name = 'tiny'")] == ["1"]
    assert [str(v.version) for v in client.search_model_versions("name = 'tiny-onnx'")] == ["1"]
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        expected = ours.eval()(x).numpy()
    loaded = mlflow.pytorch.load_model("models:/tiny/1").eval()
    with torch.no_grad():
        assert np.array_equal(loaded(x).numpy(), expected)
    onnx_model = mlflow.onnx.load_model(result["model"]["onnx_uri"])
    session = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(got - expected).max() <= 1e-4
    # the logged model carries our network's metrics, never the baselines' (the run has both)
    info = mlflow.models.get_model_info("models:/tiny@champion")
    assert {m.key.split(".")[0] for m in mlflow.get_logged_model(info.model_id).metrics} == {"ours"}
    assert "squeezenas_lat_small.latency_ms" in client.get_run(info.run_id).data.metrics


TINY_PARAMS = """
data: {cityscapes_train: 6, cityscapes_val: 3, cityscapes_extra: 2, cityscapes_size: {height: 128, width: 256},
       coco_train: 4, coco_val: 2, coco_size: {height: 96, width: 128}, imagenet_classes: 2,
       imagenet_train_per_class: 4, imagenet_val_per_class: 2, imagenet_size: 32}
train:
  device: cpu
  threads: 1
  num_workers: 0
  pretrain_imagenet: {enabled: false}
  pretrain_coco: {epochs: 1, schedule: poly, patch: {height: 64, width: 64}, batch_size: 2}
  train_coarse: {epochs: 1, schedule: poly, patch: {height: 64, width: 64}, batch_size: 2}
  train_fine: {epochs: 6, schedule: step, milestones: [4], patch: {height: 128, width: 128}, batch_size: 2}
benchmark: {input_size: {height: 128, width: 256}, warmup: 1, runs: 3, baselines: [mobilenetv3_small], weights: {}}
"""
CHAIN = ["pretrain_imagenet", "pretrain_coco", "train_coarse", "train_fine", "benchmark"]


@pytest.mark.slow
def test_dvc_repro_runs_the_chain_in_a_fresh_repository_and_beats_the_references(tmp_path):
    import yaml

    repo = make_repo_copy(tmp_path / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in yaml.safe_load(TINY_PARAMS).items():
        params[section] = {**params.get(section, {}), **values}
    params["experiments"] = {"mac_small": TINY_EXPERIMENTS["mac_small"]}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    exp = repo / "outputs/experiments/mac_small"
    ARCH.save(exp / "samples/chosen_architecture.json")  # what the select stage writes
    (exp / "samples/select_metrics.json").write_text(json.dumps({"rule": "given by the test"}))
    run(["dvc", "repro", "--single-item", "data"], repo)
    for stage in CHAIN:  # the experiment's chain from its chosen architecture on
        run(["dvc", "repro", "--single-item", f"{stage}@mac_small"], repo)
    metrics = json.loads((repo / "outputs/benchmark/mac_small/metrics.json").read_text())
    assert metrics["choice"] == {"rule": "given by the test"}  # Table 1's row says how it was chosen
    ours = metrics["networks"]["mac_small"]["class_miou"]
    assert all(ours > ref + 0.02 for ref in metrics["references"].values()), (ours, metrics["references"])
    lineage = json.loads((exp / "train/train_fine/lineage.json").read_text())
    assert lineage[0] == {"stage": "pretrain_imagenet", "status": "skipped", "passes_on": "scratch"}
    assert lineage[1]["starts_from"] == "scratch"
    again = run(["dvc", "repro", "--single-item", "train_fine@mac_small"], repo)
    assert "didn't change, skipping" in again.stdout
