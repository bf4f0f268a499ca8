"""The latency model over the table (nas_core/cost/model.py, issue 16): what the search optimises
(its expectation under theta, and that expectation's gradient), what the fit recovers and refuses,
and the held-out networks of the fidelity check."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nas_core.config import ParamsError, load_params
from nas_core.cost.fidelity import uniform_architectures
from nas_core.cost.macs import build_cost_table
from nas_core.cost.model import (
    JUNCTIONS,
    KIND,
    RIDGES,
    CostModel,
    fit_latency_model,
    junction_sizes,
    load_cost_model,
    model_path,
    read_model,
    table_model,
    write_model,
)
from nas_core.cost.pool import fit_networks, held_out_networks, planned_units
from nas_core.search.loop import distribution_stats, resource_loss
from nas_core.space.candidates import NUM_CANDIDATES


@pytest.fixture(scope="module")
def table():
    """A latency table of the small space: MAC-proportional block costs, plus noise (no device needed)."""
    df = build_cost_table("small", (64, 128), 19)
    rng = np.random.default_rng(0)
    df["latency_ms"] = df["macs"] / 2e6 * rng.uniform(0.7, 1.3, len(df))
    return df


def _random_model(space: str, blocks: int, seed: int = 0) -> CostModel:
    rng = np.random.default_rng(seed)
    return CostModel(space, "latency_ms", 3.0, rng.uniform(0, 2, (blocks, NUM_CANDIDATES)),
                     rng.normal(0, 0.5, (blocks - 1, NUM_CANDIDATES, NUM_CANDIDATES)))


def _probs(blocks: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(blocks, NUM_CANDIDATES, generator=g, dtype=torch.float64) * 1.5, dim=-1)


def test_the_expected_cost_is_the_mean_over_sampled_architectures(table):
    model = _random_model("small", 20)
    probs = _probs(20)
    rng = np.random.default_rng(2)
    n = 200_000
    cum = probs.numpy().cumsum(axis=1)
    idx = (rng.random((n, 20, 1)) > cum[None]).sum(axis=2)  # inverse-CDF draws, each block independently
    costs = model.predict_indices(idx)
    mc, stderr = costs.mean(), costs.std() / np.sqrt(n)
    exact = float(model.expected(probs))
    assert abs(mc - exact) < 4 * stderr, (mc, exact, stderr)
    assert exact == pytest.approx(model.expected(probs.numpy()), rel=1e-12)
    # without the pairwise terms it is the paper's sum_i p_i . C_i (eq. 3)
    additive = CostModel("small", "latency_ms", 3.0, model.unary)
    assert float(additive.expected(probs)) == pytest.approx(3.0 + float((probs.numpy() * model.unary).sum()))


def test_the_gradient_of_the_expected_cost_matches_finite_differences():
    model = _random_model("small", 20, seed=3)
    theta = torch.randn(20, NUM_CANDIDATES, dtype=torch.float64, generator=torch.Generator().manual_seed(4),
                        requires_grad=True)
    model.expected(torch.softmax(theta, -1)).backward()
    eps, rng = 1e-6, np.random.default_rng(5)
    for i, j in zip(rng.integers(0, 20, 12), rng.integers(0, NUM_CANDIDATES, 12)):
        up, down = theta.detach().clone(), theta.detach().clone()
        up[i, j] += eps
        down[i, j] -= eps
        fd = (float(model.expected(torch.softmax(up, -1))) - float(model.expected(torch.softmax(down, -1)))) / (2 * eps)
        assert theta.grad[i, j].item() == pytest.approx(fd, rel=1e-5, abs=1e-9)


def test_the_search_loss_and_its_statistics_use_the_pairwise_terms():
    model = _random_model("small", 20, seed=6)
    probs = _probs(20, seed=7)
    loss = resource_loss(probs, torch.tensor(model.unary), 2.0, torch.tensor(model.pairwise))
    assert float(loss) == pytest.approx((float(model.expected(probs)) - model.fixed) / 2.0)
    stats = distribution_stats(probs, model.unary, model.fixed, model.pairwise)
    assert stats["expected_cost"] == pytest.approx(float(model.expected(probs)))
    argmax = probs.argmax(dim=1).numpy()
    assert stats["argmax_cost"] == pytest.approx(float(model.predict_indices(argmax)[0]))


def test_the_fit_recovers_a_latency_made_of_the_table_an_intercept_and_junction_terms(table):
    archs = uniform_architectures("small", 40, seed=0)
    base = table_model(table, "latency_ms")
    sizes = junction_sizes(table)
    truth = {"b0": 2.5, "b1": 0.8, "g": np.array([0.0, 1.5, -1.0, 0.4])}  # conv-conv is the baseline

    def latency(a):
        idx = base.indices(a)
        pair = 2 * KIND[idx[:-1]] + KIND[idx[1:]]
        return truth["b0"] + truth["b1"] * base.predict(a) + float((sizes * truth["g"][pair]).sum())

    measured = [latency(a) for a in archs]
    model = fit_latency_model(table, archs[:20], measured[:20], ridge=0.0)
    assert model.info["intercept_ms"] == pytest.approx(truth["b0"], rel=1e-6)
    assert model.info["table_scale"] == pytest.approx(truth["b1"], rel=1e-6)
    assert list(model.info["junction_ms_per_melement"].values()) == pytest.approx(list(truth["g"][1:]), abs=1e-6)
    assert set(model.info["junction_ms_per_melement"]) == set(JUNCTIONS)
    # the unseen networks: exactly, through the expanded unary and pairwise arrays the search uses
    assert [model.predict(a) for a in archs[20:]] == pytest.approx(measured[20:], rel=1e-9)
    # whereas the table alone cannot price them
    assert not np.allclose([base.predict(a) for a in archs[20:]], measured[20:], rtol=0.05)
    # ridge auto keeps junction terms the networks support (leave-one-out error picks the least shrinkage)
    auto = fit_latency_model(table, archs[:20], measured[:20])
    assert auto.info["ridge"] == min(RIDGES) and "ridge_loo_mape" in auto.info
    assert [auto.predict(a) for a in archs[20:]] == pytest.approx(measured[20:], rel=0.01)


def test_ridge_auto_shrinks_junction_terms_that_are_only_noise(table):
    archs = uniform_architectures("small", 16, seed=3)
    base = table_model(table, "latency_ms")
    rng = np.random.default_rng(9)
    measured = [(1.5 + 1.1 * base.predict(a)) * rng.normal(1, 0.03) for a in archs]  # affine + 3% noise
    auto = fit_latency_model(table, archs, measured)
    free = fit_latency_model(table, archs, measured, ridge=0.0)
    assert auto.info["ridge"] > min(RIDGES) and auto.info["ridge_loo_mape"] < 0.05
    assert sum(map(abs, auto.info["junction_ms_per_melement"].values())) < \
        sum(map(abs, free.info["junction_ms_per_melement"].values()))


def _params(tmp_path, overrides):
    (tmp_path / "params.yaml").write_text("{}\n")
    return load_params(tmp_path / "params.yaml", overrides)


def test_fitting_refuses_too_few_networks_and_bad_measurements(table, tmp_path):
    archs = uniform_architectures("small", 8, seed=0)
    with pytest.raises(ValueError, match="at least 8 measured networks, got 7"):
        fit_latency_model(table, archs[:7], [10.0] * 7)
    with pytest.raises(ValueError, match="finite and positive"):
        fit_latency_model(table, archs, [10.0] * 7 + [0.0])
    with pytest.raises(ValueError, match="8 architectures but 7 measurements"):
        fit_latency_model(table, archs, [10.0] * 7)
    with pytest.raises(ValueError, match="latency.model.fit_networks: the pairwise model needs at least 8"):
        _params(tmp_path, ["latency.model.fit_networks=4"])


def test_a_model_file_round_trips_and_a_broken_one_is_named(table, tmp_path):
    archs = uniform_architectures("small", 12, seed=1)
    model = fit_latency_model(table, archs, [table_model(table, "latency_ms").predict(a) * 1.2 + 1 for a in archs])
    path = model_path(tmp_path / "latency_small.parquet")
    assert path.name == "latency_small.model.json"
    write_model(model, path)
    again = load_cost_model(tmp_path / "latency_small.parquet", "latency_model")
    assert [again.predict(a) for a in archs] == pytest.approx([model.predict(a) for a in archs])
    path.write_text('{"space": "small"}')
    with pytest.raises(ValueError, match="latency_small.model.json: not a cost model"):
        read_model(path)
    with pytest.raises(ValueError, match="no latency model"):
        read_model(tmp_path / "absent.model.json")


def test_the_fitted_networks_span_dear_to_cheap_skip_heavy_ones(table):
    fit = fit_networks("small", (12, 1))
    assert fit == fit_networks("small", (12, 1)) and len({a.choices for a in fit}) == 12  # seeded, distinct
    skips = [a.choices.count("skip") / len(a.choices) for a in fit]
    assert skips[0] == 0 and skips[-1] > 0.5 and np.corrcoef(np.arange(12), skips)[0, 1] > 0.9
    base = table_model(table, "latency_ms")
    costs = [base.predict(a) for a in fit]
    uniform = [base.predict(a) for a in uniform_architectures("small", 200, seed=0)]
    assert min(costs) < np.percentile(uniform, 1) and max(costs) > np.median(uniform)


def test_the_held_out_networks_are_never_fitted_ones():
    fit = fit_networks("small", (12, 1))
    held = held_out_networks(("small", 30, 0), (12, 1))
    assert len(held) == 30 and len({a.choices for a in held}) == 30
    assert not {a.choices for a in held} & {a.choices for a in fit}
    # a fit drawn with the fidelity check's own seed: every held-out network is replaced by a fresh one
    same = held_out_networks(("small", 30, 0), (12, 0))
    assert len(same) == 30 and not {a.choices for a in same} & {a.choices for a in fit_networks("small", (12, 0))}
    plan = planned_units(["small", "large"], (64, 128), 19, ("small", 5, 0), (8, 1))
    assert len(plan["model:small"]) == 8 and len(plan["model:large"]) == 8 and len(plan["fidelity"]) == 5


def test_the_deployment_settings_are_checked_in_params(tmp_path):
    with pytest.raises(ParamsError, match="latency.fp16: replaced by latency.precision"):
        _params(tmp_path, ["latency.fp16=true"])
    with pytest.raises(ParamsError, match="int8 is TensorRT's"):
        _params(tmp_path, ["latency.backend=torch_cuda", "latency.precision=int8", "latency.clock=wall"])
    p = _params(tmp_path, ["latency.backend=trtexec", "latency.precision=best", "latency.cuda_graph=true",
                           "latency.clock=wall"])
    assert (p.latency.precision, p.latency.cuda_graph) == ("best", True)
