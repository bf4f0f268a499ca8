"""The experiment layer (the paper's six searches as data): params.yaml's `experiments`, each chain's
view of the params, the refusals that name the entry, dvc.yaml's foreach chains as DVC expands them, and
the order the Prefect parent flow runs the chains in."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from nas_core.config import ParamsError, load_params
from tests.repo_copy import stage_env

ROOT = Path(__file__).resolve().parents[1]
PAPER = ("mac_small", "mac_large", "mac_xlarge", "lat_small", "lat_large", "lat_xlarge")


def params_with(tmp_path: Path, mutate) -> Path:
    """The project's params.yaml with `mutate(dict)` applied, written to tmp_path."""
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    mutate(data)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_the_default_is_the_papers_six_searches_with_its_choice_rules():
    params = load_params(ROOT / "params.yaml")
    assert tuple(params.experiments) == PAPER
    for name, exp in params.experiments.items():
        objective, space = name.split("_")
        assert exp.space == space and exp.objective == {"mac": "macs", "lat": "latency"}[objective]
        if objective == "mac":  # nearest in MACs to the published MAC network of the space
            assert (exp.choice.rule, exp.choice.metric, exp.choice.reference) == \
                ("nearest_cost", "macs", f"squeezenas_mac_{space}")
            assert exp.cost_table == f"outputs/cost_tables/macs_{space}.parquet"
        else:  # the best mIoU at a latency no higher than the MAC experiment's network of the space
            assert (exp.choice.rule, exp.choice.metric, exp.choice.reference) == \
                ("best_under_budget", "latency_model", f"mac_{space}")
            assert exp.cost_table == f"outputs/latency/tables/latency_{space}.parquet"
            assert space in params.latency.spaces  # one latency table per space, measured once


def test_an_experiments_chain_sees_its_own_search_folders_and_model():
    params = load_params(ROOT / "params.yaml", experiment="lat_large")
    assert params.experiment == "lat_large" and params.dvc_stage("search") == "search@lat_large"
    s = params.search
    assert (s.space, s.cost_metric, s.alpha) == ("large", "latency_model", 0.5)  # the latency model over the table
    # the paper's setting: the table alone (eq. 3)
    paper = load_params(ROOT / "params.paper.yaml", experiment="lat_large")
    assert (paper.latency.model.kind, paper.search.cost_metric) == ("table", "latency_ms")
    assert paper.experiments["lat_large"].choice.metric == "latency_ms"
    assert s.cost_table == "outputs/latency/tables/latency_large.parquet"
    assert s.epochs == load_params(ROOT / "params.yaml").search.epochs  # the shared settings
    assert params.paths.search == "outputs/experiments/lat_large/search"
    assert params.paths.samples == "outputs/experiments/lat_large/samples"
    assert params.paths.train == "outputs/experiments/lat_large/train"
    assert params.paths.benchmark == "outputs/benchmark/lat_large"
    assert params.tracking.registered_model == "squeezenas-lat_large"


def test_an_experiments_search_overrides_apply_to_it_alone(tmp_path):
    path = params_with(tmp_path, lambda d: d["experiments"]["mac_xlarge"].update(search={"epochs": 7}))
    assert load_params(path, experiment="mac_xlarge").search.epochs == 7
    assert load_params(path, experiment="mac_small").search.epochs != 7


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["experiments"]["mac_large"].update(space="medium"), "experiments.mac_large.space"),
    (lambda d: d["latency"].update(spaces=["small"]),
     "experiments.lat_large: objective latency needs the latency table of space 'large'"),
    (lambda d: d["experiments"]["lat_small"].update(cost_table="outputs/latency/tables/latency_large.parquet"),
     "experiments.lat_small.cost_table: outputs/latency/tables/latency_large.parquet is not the latency table of "
     "space 'small'"),
    (lambda d: d["experiments"]["lat_small"].update(objective="macs"),
     "experiments.lat_small.cost_table: outputs/latency/tables/latency_small.parquet is a latency table"),
    (lambda d: d["experiments"]["mac_small"].update(objective="latency"),
     "experiments.mac_small.cost_table: outputs/cost_tables/macs_small.parquet is a MAC table"),
    (lambda d: d["experiments"]["lat_small"]["choice"].update(reference="mac_smal"),
     "experiments.lat_small.choice.reference: 'mac_smal' is neither a published network nor an experiment "
     "did you mean 'mac_small'?"),
    (lambda d: d["experiments"]["lat_small"]["choice"].update(reference="lat_small"),
     "experiments.lat_small.choice.reference: an experiment cannot be chosen relative to itself"),
    (lambda d: d["experiments"]["mac_small"]["choice"].update(reference="lat_small"),
     "the references form a cycle (mac_small -> lat_small -> mac_small)"),
    (lambda d: d["experiments"]["mac_small"].update(search={"epoch": 3}),
     "experiments.mac_small.search.epoch: unknown search key (did you mean 'epochs'?"),
    (lambda d: d["experiments"]["mac_small"].update(search={"alpha": 3}),
     "experiments.mac_small.search.alpha: set it on the experiment itself"),
    (lambda d: d["experiments"]["mac_small"].update(search={"epochs": "many"}),
     "experiments.mac_small.search.epochs: Input should be a valid integer"),
    (lambda d: d["experiments"].update({"Lat@1": d["experiments"]["lat_small"]}), "experiments.Lat@1"),
    (lambda d: d["experiments"]["mac_small"].pop("alpha"), "experiments.mac_small.alpha: Field required"),
    (lambda d: d.update(experiment="mac_small"), "experiment: chosen on the command line (--experiment NAME)"),
])
def test_a_bad_experiment_entry_is_refused_naming_it(tmp_path, mutate, message):
    with pytest.raises(ParamsError) as e:
        load_params(params_with(tmp_path, mutate))
    assert message in str(e.value)


def test_a_duplicate_experiment_name_is_refused_with_both_lines(tmp_path):
    text = (ROOT / "params.yaml").read_text()
    entry = text[text.index("  lat_small:\n"):text.index("  lat_large:\n")]
    path = tmp_path / "params.yaml"
    path.write_text(text + entry)
    with pytest.raises(ParamsError) as e:
        load_params(path)
    assert "experiments.lat_small: duplicate key (lines" in str(e.value)


def test_an_unknown_experiment_on_the_command_line_is_one_line_exit_2():
    proc = subprocess.run(["squeezenas", "search", "--experiment", "lat_tiny"], cwd=ROOT, env=stage_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "squeezenas search: error: --experiment lat_tiny: no such experiment in params (experiments: "
        + ", ".join(PAPER) + ")"]


def test_our_foreach_expansion_is_dvcs():
    from tasks.dvc_files import expanded_stages

    proc = subprocess.run(["dvc", "stage", "list", "--name-only"], cwd=ROOT, env=stage_env(), capture_output=True,
                          text=True, timeout=120, check=True)
    assert proc.stdout.split() == list(expanded_stages(ROOT))
    groups = ("search", "sample", "select", "pretrain_imagenet", "pretrain_coco", "train_coarse", "train_fine",
              "benchmark")
    assert list(expanded_stages(ROOT)) == ["data", "cost_tables", "latency_table",
                                           *[f"{g}@{e}" for g in groups for e in PAPER], "report"]


def upstream_stages(stage: str) -> set[str]:
    """The stages DVC runs before `stage` (its ancestors in `dvc dag`)."""
    proc = subprocess.run(["dvc", "dag", "--dot", stage], cwd=ROOT, env=stage_env(), capture_output=True,
                          text=True, timeout=120, check=True)
    return set(re.findall(r'"([^"]+)"', proc.stdout)) - {stage}


def test_the_latency_select_runs_after_its_mac_twins_and_the_report_after_every_benchmark():
    from tasks.dvc_files import stage_outputs

    assert "outputs/networks/mac_small.json" in stage_outputs("select@mac_small", ROOT)
    assert {"sample@lat_small", "select@mac_small", "latency_table"} <= set(upstream_stages("select@lat_small"))
    assert "select@mac_large" not in upstream_stages("select@lat_small")
    assert "cost_tables" in upstream_stages("select@mac_small")  # the published network's card
    assert {f"benchmark@{e}" for e in PAPER} | {f"select@{e}" for e in PAPER} <= set(upstream_stages("report"))


def test_the_parent_flow_runs_each_chain_after_the_one_its_choice_refers_to():
    from flows.pipeline import chain_order

    experiments = load_params(ROOT / "params.yaml").experiments
    reordered = {k: experiments[k] for k in ("lat_small", "lat_large", "mac_large", "mac_small", "mac_xlarge",
                                             "lat_xlarge")}
    order = chain_order(reordered)
    assert sorted(order) == sorted(PAPER)
    for space in ("small", "large", "xlarge"):
        assert order.index(f"mac_{space}") < order.index(f"lat_{space}")
