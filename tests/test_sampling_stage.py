"""The `sample` and `select` stages through Prefect (thread and Dask runners) and MLflow: resumable
evaluation, costs from every available table, the choice, its fronts and pictures."""
import json
import shutil

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from nas_core.cost.fidelity import uniform_architectures
from nas_core.cost.macs import architecture_cost, build_cost_table, write_cost_table
from nas_core.cost.model import fit_latency_model, model_path, write_model
from nas_core.data import CityscapesSegmentation, generate_cityscapes
from nas_core.engine.evaluate import evaluate_segmentation
from nas_core.search.supernet import extract_network
from nas_core.select.pareto import best_under_budget, nearest_cost, pareto_front
from nas_core.space.spaces import Architecture
from nas_core.space.zoo import PUBLISHED
from tests.test_sampling_fixtures import IMAGE_SIZE, searched_supernet, write_search_outputs

PARAMS = """\
paths: {{dataset: cityscapes, search: search, cost_tables: cost_tables, latency: latency, samples: samples}}
tracking: {{mlflow_uri: '{uri}', experiment: {experiment}}}
sample: {{num_samples: 6, workers: 2, batch_size: 2, device: cpu}}
"""


@pytest.fixture(scope="module")
def prefect_harness(prefect_harness, tmp_path_factory):
    """The session's Prefect test server (conftest.py), and one MLflow sqlite store for the module (creating one
    costs seconds); each workdir logs to its own experiment."""
    global MLFLOW_URI
    MLFLOW_URI = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    yield


MLFLOW_URI = ""


def stage_runs(root, stage):
    mlflow.set_tracking_uri(MLFLOW_URI)
    return [r for r in mlflow.search_runs(experiment_names=[root.name], output_format="list")
            if r.data.tags["squeezenas.stage"] == stage]


def make_workdir(root):
    """Search outputs, a 3-image val set and the MAC table, laid out as params.yaml says."""
    supernet = searched_supernet()
    (root / "search").mkdir(parents=True)
    write_search_outputs(root / "search", supernet)
    generate_cityscapes(root / "cityscapes", 2, 3, 0, IMAGE_SIZE, 0)
    write_cost_table(build_cost_table("small"), root / "cost_tables" / "macs_small.parquet")
    (root / "params.yaml").write_text(PARAMS.format(uri=MLFLOW_URI, experiment=root.name))
    return supernet


@pytest.fixture(scope="module")
def sampled(tmp_path_factory, prefect_harness):
    """One sample run shared by the select tests: (workdir, supernet, metrics)."""
    from flows.sample import sample_flow

    root = tmp_path_factory.mktemp("stage")
    supernet = make_workdir(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        metrics = sample_flow("params.yaml")
    return root, supernet, metrics


def read(root):
    return pd.read_parquet(root / "samples" / "samples.parquet")


def test_sample_writes_distinct_evaluated_architectures_with_costs(sampled):
    root, supernet, metrics = sampled
    df = read(root)
    assert len(df) == 6 and df["choices"].is_unique and df["sample"].tolist() == list(range(6))
    assert df["is_argmax"].tolist() == [True] + [False] * 5
    assert df["choices"][0] == ",".join(supernet.argmax_architecture().choices)
    table = build_cost_table("small")
    for _, row in df.iterrows():
        arch = Architecture("small", row["choices"].split(","))
        assert row["macs"] == architecture_cost(table, arch, "macs")
        assert row["params"] == architecture_cost(table, arch, "params")
    assert "latency_ms" not in df  # no latency table in this workdir: recorded as missing
    assert metrics["evaluated"] == 6 and metrics["reused"] == 0 and metrics["cost_kinds"] == ["macs", "params"]
    assert metrics["draws"] == 5 + metrics["duplicates"]
    assert json.loads((root / "samples" / "sample_metrics.json").read_text())["samples"] == 6

    # the estimate is the real output of the extracted network on the same val images
    val = CityscapesSegmentation(root / "cityscapes", "val")
    batches = [(torch.stack([val[i][0] for i in idx]), torch.stack([val[i][1] for i in idx])) for idx in ([0, 1], [2])]
    arch = Architecture("small", df["choices"][3].split(","))
    assert df["class_miou"][3] == evaluate_segmentation(extract_network(supernet, arch).eval(), batches)["class_miou"]

    run = stage_runs(root, "sample")[0]
    assert run.data.params["num_samples"] == "6" and run.data.metrics["samples"] == 6
    assert {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "samples")} >= \
        {"samples/samples.parquet", "samples/sample_metrics.json"}


def test_a_rerun_after_a_partial_run_evaluates_only_the_rest(tmp_path, prefect_harness, monkeypatch):
    from flows.sample import sample_flow

    make_workdir(tmp_path)
    monkeypatch.chdir(tmp_path)
    sample_flow("params.yaml")
    full = read(tmp_path)
    log = tmp_path / "samples" / "partial_evaluations.jsonl"
    # a killed run leaves whole rows only (the log is rewritten atomically after each evaluation)
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:2]) + "\n")
    metrics = sample_flow("params.yaml")
    assert metrics["evaluated"] == 4 and metrics["reused"] == 2
    pd.testing.assert_frame_equal(read(tmp_path).drop(columns=["seconds", "pid", "device"]),
                                  full.drop(columns=["seconds", "pid", "device"]))
    # more samples of the same seed: the first 6 are the same architectures, only 3 are new
    metrics = sample_flow("params.yaml", ("sample.num_samples=9",))
    assert metrics["evaluated"] == 3 and metrics["reused"] == 6
    assert read(tmp_path)["choices"][:6].tolist() == full["choices"].tolist()
    # another seed draws other architectures, but those already evaluated are reused (no recalibration)
    logged = set(read(tmp_path)["choices"])
    metrics = sample_flow("params.yaml", ("sample.seed=5",))
    reused = set(read(tmp_path)["choices"]) & logged
    assert metrics["reused"] == len(reused) >= 1 and full["choices"][0] in reused  # the argmax at least
    # another evaluation setting invalidates the log: everything is evaluated again
    metrics = sample_flow("params.yaml", ("sample.val_images=2",))
    assert metrics["evaluated"] == 6 and read(tmp_path)["images"].eq(2).all()


def test_sampling_another_supernet_keeps_the_current_supernets_evaluations(tmp_path, prefect_harness, monkeypatch):
    from flows.sample import sample_flow
    from tasks.sample import read_log

    make_workdir(tmp_path)
    monkeypatch.chdir(tmp_path)
    first = sample_flow("params.yaml")
    rows = read_log(tmp_path / "samples" / "partial_evaluations.jsonl")
    assert first["evaluated"] == 6 and len({r["fingerprint"] for r in rows}) == 1
    keep = (tmp_path / "search").rename(tmp_path / "search_first")
    keep.with_name("search").mkdir()
    write_search_outputs(tmp_path / "search", searched_supernet(seed=1))  # another search's supernet
    assert sample_flow("params.yaml")["evaluated"] == 6
    log = read_log(tmp_path / "samples" / "partial_evaluations.jsonl")
    assert len(log) == 12 and log[:6] == rows  # appended: the first supernet's rows are untouched
    shutil.rmtree(tmp_path / "search")
    keep.rename(tmp_path / "search")  # back to the first supernet: nothing to evaluate again
    again = sample_flow("params.yaml")
    assert again["evaluated"] == 0 and again["reused"] == 6
    assert dict(zip(read(tmp_path)["choices"], read(tmp_path)["class_miou"])) == \
        {r["choices"]: r["class_miou"] for r in rows}


def test_select_chooses_from_the_front_and_writes_the_pictures(sampled, monkeypatch):
    from flows.sample import select_flow

    root, _, _ = sampled
    monkeypatch.chdir(root)
    result = select_flow("params.yaml")
    df = read(root)
    target = architecture_cost(build_cost_table("small"), PUBLISHED["squeezenas_mac_small"], "macs")
    expected = nearest_cost(df["macs"], df["class_miou"], target)
    chosen = Architecture.load(root / "samples" / "chosen_architecture.json")
    assert chosen.choices == tuple(df["choices"][expected].split(",")) and result["chosen_sample"] == expected
    for kind in ("macs", "params"):
        front = pd.read_csv(root / "samples" / "fronts" / f"front_{kind}.csv")
        expected_front = df[pareto_front(df[kind], df["class_miou"])].sort_values(kind)
        assert front["sample"].tolist() == expected_front["sample"].tolist()
        assert list(front.columns) == ["sample", "cost", "class_miou", "choices"]
        assert (root / "samples" / "plots" / f"pareto_{kind}.png").stat().st_size > 0
    assert (root / "samples" / "plots" / "architecture.png").stat().st_size > 0
    saved = json.loads((root / "samples" / "select_metrics.json").read_text())
    assert saved["target"] == target and saved["target_label"] == "squeezenas_mac_small"

    run = stage_runs(root, "select")[0]
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "select")}
    assert {"select/chosen_architecture.json", "select/architecture.png", "select/front_macs.csv"} <= arts
    assert run.data.tags["squeezenas.chosen"] == ",".join(chosen.choices)


def test_select_under_a_budget(sampled, monkeypatch):
    from flows.sample import select_flow

    root, _, _ = sampled
    monkeypatch.chdir(root)
    df = read(root)
    budget = float(np.median(df["params"]))
    result = select_flow("params.yaml", ("sample.choice.rule=best_under_budget", "sample.choice.metric=params",
                                         f"sample.choice.target={budget}"))
    assert result["chosen_sample"] == best_under_budget(df["params"], df["class_miou"], budget)
    with pytest.raises(ValueError, match="no sample costs <= 1"):
        select_flow("params.yaml", ("sample.choice.rule=best_under_budget", "sample.choice.target=1"))
    with pytest.raises(ValueError, match="sample.choice.metric: .* has no 'latency_ms' costs"):
        select_flow("params.yaml", ("sample.choice.metric=latency_ms", "sample.choice.target=5"))


def test_a_latency_table_adds_latency_costs_and_a_latency_choice(tmp_path, prefect_harness, monkeypatch):
    from flows.sample import sample_flow, select_flow

    make_workdir(tmp_path)
    table = build_cost_table("small")
    table["latency_ms"] = table["macs"] / 1e8 + np.where(table["candidate"] == "skip", 0.0, 0.3)
    table_path = tmp_path / "latency" / "tables" / "latency_small.parquet"
    write_cost_table(table, table_path)
    # the latency model beside the table (the latency_table stage fits it on measured networks)
    fit = uniform_architectures("small", 12, seed=1)
    model = fit_latency_model(table, fit, [1.3 * architecture_cost(table, a, "latency_ms") + 2 for a in fit])
    write_model(model, model_path(table_path))
    monkeypatch.chdir(tmp_path)
    metrics = sample_flow("params.yaml", ("sample.num_samples=4",))
    assert metrics["cost_kinds"] == ["latency_model", "latency_ms", "macs", "params"]
    df = read(tmp_path)
    arch = Architecture("small", df["choices"][1].split(","))
    assert df["latency_ms"][1] == pytest.approx(architecture_cost(table, arch, "latency_ms"))
    assert df["latency_model"][1] == pytest.approx(model.predict(arch))
    assert df["latency_model"][1] == pytest.approx(1.3 * df["latency_ms"][1] + 2, rel=1e-6)
    by_model = select_flow("params.yaml", ("sample.choice.metric=latency_model",
                                           "sample.choice.reference=squeezenas_lat_{space}"))
    assert by_model["target"] == pytest.approx(model.predict(PUBLISHED["squeezenas_lat_small"]))
    result = select_flow("params.yaml", ("sample.choice.metric=latency_ms",
                                         "sample.choice.reference=squeezenas_lat_{space}"))
    target = architecture_cost(table, PUBLISHED["squeezenas_lat_small"], "latency_ms")
    assert result["target"] == pytest.approx(target)
    assert result["chosen_sample"] == nearest_cost(df["latency_ms"], df["class_miou"], target)
    assert (tmp_path / "samples" / "fronts" / "front_latency_ms.csv").is_file()


@pytest.mark.slow
def test_dask_runner_gives_the_thread_runners_results(tmp_path, prefect_harness, monkeypatch):
    pytest.importorskip("prefect_dask")
    from flows.sample import sample_flow

    make_workdir(tmp_path)
    monkeypatch.chdir(tmp_path)
    sample_flow("params.yaml", ("sample.num_samples=3",))
    threads = read(tmp_path)
    (tmp_path / "samples" / "partial_evaluations.jsonl").unlink()
    metrics = sample_flow("params.yaml", ("sample.num_samples=3", "sample.runner=dask"))
    dask = read(tmp_path)
    assert metrics["evaluated"] == 3
    assert dask["class_miou"].tolist() == threads["class_miou"].tolist()
    assert dask["pid"].nunique() >= 1 and not set(dask["pid"]) & set(threads["pid"])  # other processes


def test_dask_without_prefect_dask_is_a_clear_error():
    from flows.sample import make_task_runner
    from nas_core.config import SampleParams

    try:
        import prefect_dask  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="sample.runner: 'dask' needs prefect-dask"):
            make_task_runner(SampleParams(runner="dask"))
    else:
        assert type(make_task_runner(SampleParams(runner="dask"))).__name__ == "DaskTaskRunner"


def test_reference_targets_name_their_network_and_refuse_what_they_cannot_cost():
    from nas_core.space.mobilenetv3 import count_conv_macs, mobilenetv3_lraspp
    from tasks.sample import resolve_target_task

    resolve = resolve_target_task.fn
    macs, label = resolve("macs", "mobilenetv3_small", None, "large", (256, 512), 19, "latency")
    assert label == "mobilenetv3_small"
    assert macs == count_conv_macs(mobilenetv3_lraspp("mobilenetv3_small", 19), (1, 3, 256, 512))
    value, label = resolve("params", "squeezenas_lat_{space}", None, "large", (256, 512), 19, "latency")
    assert label == "squeezenas_lat_large"
    assert value == architecture_cost(build_cost_table("large", (256, 512)), PUBLISHED[label], "params")
    assert resolve("latency_ms", None, 12.5, "small", (256, 512), 19, "latency") == (12.5, "target 12.5")
    with pytest.raises(ValueError, match="mobilenetv3_large has no latency table; set sample.choice.target"):
        resolve("latency_ms", "mobilenetv3_large", None, "small", (256, 512), 19, "latency")
    with pytest.raises(FileNotFoundError, match="tables/latency_small.parquet"):
        resolve("latency_ms", "squeezenas_lat_{space}", None, "small", (256, 512), 19, "nowhere")
