"""Fidelity metrics (nn-Meter's definitions plus Kendall tau), sampling and the scatter plot."""
import math

import numpy as np
import pytest

from nas_core.cost.fidelity import fidelity_metrics, predicted_latencies, scatter_plot, uniform_architectures
from nas_core.cost.macs import build_cost_table
from nas_core.space.candidates import CANDIDATE_NAMES
from nas_core.space.spaces import SPACES


def test_metrics_by_hand():
    measured = [10.0, 20.0, 40.0, 80.0]
    predicted = [11.0, 18.0, 40.0, 100.0]  # +10%, -10%, 0, +25%
    m = fidelity_metrics(predicted, measured)
    assert m["n"] == 4
    assert m["mape"] == pytest.approx((0.1 + 0.1 + 0 + 0.25) / 4)
    assert m["rmse_ms"] == pytest.approx(math.sqrt((1 + 4 + 0 + 400) / 4))
    assert m["rmspe"] == pytest.approx(math.sqrt((0.01 + 0.01 + 0 + 0.0625) / 4))
    assert m["within_10pct"] == pytest.approx(0.75)  # +-10% exactly counts as within
    assert m["kendall_tau"] == pytest.approx(1.0)  # same order
    assert m["mean_bias"] == pytest.approx((0.1 - 0.1 + 0 + 0.25) / 4)


def test_kendall_tau_counts_swapped_pairs():
    # one discordant pair out of six: tau = (5 - 1) / 6
    assert fidelity_metrics([1, 2, 4, 3], [1, 2, 3, 4])["kendall_tau"] == pytest.approx(4 / 6)
    assert fidelity_metrics([4, 3, 2, 1], [1, 2, 3, 4])["kendall_tau"] == pytest.approx(-1.0)


@pytest.mark.parametrize("predicted,measured", [([1.0], [1.0]), ([1, 2], [1, 2, 3]), ([1, 2], [1, 0])])
def test_bad_inputs_are_rejected(predicted, measured):
    with pytest.raises(ValueError):
        fidelity_metrics(predicted, measured)


@pytest.mark.parametrize("space", sorted(SPACES))
def test_sampling_is_seeded_and_covers_the_candidates(space):
    a = uniform_architectures(space, 40, seed=3)
    assert a == uniform_architectures(space, 40, seed=3)
    assert a != uniform_architectures(space, 40, seed=4)
    assert {c for arch in a for c in arch.choices} == set(CANDIDATE_NAMES)
    assert all(len(arch.choices) == SPACES[space].num_blocks for arch in a)


def test_prediction_is_the_sum_of_rows_plus_fixed_parts():
    table = build_cost_table("small", (256, 512), 19)
    table["latency_ms"] = np.arange(len(table), dtype=float)
    arch = uniform_architectures("small", 1, seed=0)[0]
    fixed = table.loc[table["kind"] == "fixed", "latency_ms"].sum()
    rows = sum(table.loc[(table["block"] == i) & (table["candidate"] == c), "latency_ms"].item()
               for i, c in enumerate(arch.choices))
    assert predicted_latencies(table, [arch]) == [pytest.approx(fixed + rows)]


def test_scatter_plot_is_a_png(tmp_path):
    rng = np.random.default_rng(0)
    measured = rng.uniform(5, 10, 30)
    scatter_plot(measured * rng.uniform(0.95, 1.05, 30), measured, tmp_path / "f.png", "test")
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["f.png"]  # no temporary file left


def test_placeholder_plot_when_the_check_is_skipped(tmp_path):
    from nas_core.cost.fidelity import placeholder_plot

    placeholder_plot(tmp_path / "f.png", "skipped")
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
