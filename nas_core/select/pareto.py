"""The estimated Pareto frontier of (cost, mIoU) and the rules that choose one architecture from it
for retraining (paper section 5.3.1: comparable MACs or latency to a reference network).

Conventions, for every function here:
- cost is minimised, score (mIoU) maximised; a point with a NaN cost or score is never on the front.
- a point is dominated when another is no worse in both and strictly better in one. So of several
  points with the same cost only those with the best score can be on the front, and exact
  duplicates (same cost, same score) are all on it: neither is better than the other.
- ties in a choice are broken by the higher score, then the lower cost, then the lower index
  (the sample order, in which the argmax architecture comes first), so a choice is deterministic.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

RULES = ("nearest_cost", "best_under_budget")


def _arrays(cost, score) -> tuple[np.ndarray, np.ndarray]:
    cost = np.asarray(cost, dtype=np.float64)
    score = np.asarray(score, dtype=np.float64)
    if cost.ndim != 1 or cost.shape != score.shape:
        raise ValueError(f"cost and score must be 1-d of equal length, got {cost.shape} and {score.shape}")
    return cost, score


def pareto_front(cost, score) -> np.ndarray:
    """Boolean mask of the non-dominated points (see the module's conventions)."""
    cost, score = _arrays(cost, score)
    valid = np.isfinite(cost) & ~np.isnan(score)
    front = np.zeros(len(cost), dtype=bool)
    idx = np.flatnonzero(valid)
    # by cost ascending, score descending: a point is on the front iff its score beats every
    # point of strictly lower cost and equals the best score at its own cost
    order = idx[np.lexsort((-score[idx], cost[idx]))]
    best_before = -np.inf  # best score among strictly lower costs
    i = 0
    while i < len(order):
        j = i
        while j < len(order) and cost[order[j]] == cost[order[i]]:
            j += 1
        group = order[i:j]
        top = score[group[0]]
        if top > best_before:
            front[group[score[group] == top]] = True
            best_before = top
        i = j
    return front


def _best(eligible: np.ndarray, cost: np.ndarray, score: np.ndarray, key: np.ndarray | None = None) -> int:
    """Index among `eligible` minimising (key, -score, cost, index)."""
    primary = key[eligible] if key is not None else np.zeros(len(eligible))
    order = np.lexsort((eligible, cost[eligible], -score[eligible], primary))
    return int(eligible[order[0]])


def nearest_cost(cost, score, target: float, front: np.ndarray | None = None) -> int:
    """The front point whose cost is nearest to `target` (e.g. the cost of a reference network)."""
    cost, score = _arrays(cost, score)
    front = pareto_front(cost, score) if front is None else np.asarray(front, dtype=bool)
    eligible = np.flatnonzero(front)
    if not eligible.size:
        raise ValueError("nearest_cost: no point with a finite cost and score")
    if not np.isfinite(target):
        raise ValueError(f"nearest_cost: target must be finite, got {target}")
    return _best(eligible, cost, score, np.abs(cost - target))


def best_under_budget(cost, score, budget: float, front: np.ndarray | None = None) -> int:
    """The highest-scoring point with cost <= `budget` (always a front point)."""
    cost, score = _arrays(cost, score)
    front = pareto_front(cost, score) if front is None else np.asarray(front, dtype=bool)
    eligible = np.flatnonzero(front & (cost <= budget))
    if not eligible.size:
        cheapest = np.nanmin(cost) if np.isfinite(cost).any() else float("nan")
        raise ValueError(f"best_under_budget: no sample costs <= {budget:.6g}; the cheapest costs {cheapest:.6g}")
    return _best(eligible, cost, score)


def choose(rule: str, cost, score, target: float, front: np.ndarray | None = None,
           if_none_under: str = "fail") -> int:
    """Apply choice rule `rule` (one of RULES) with its target cost or budget. best_under_budget with
    no point under the budget fails, or with `if_none_under` 'cheapest' takes the cheapest front point."""
    if rule == "nearest_cost":
        return nearest_cost(cost, score, target, front)
    if rule == "best_under_budget":
        c = _arrays(cost, score)[0]
        if if_none_under == "cheapest" and not (c <= target).any():
            return nearest_cost(cost, score, float(np.nanmin(c)), front)
        return best_under_budget(cost, score, target, front)
    raise ValueError(f"unknown choice rule {rule!r}; valid rules are: {', '.join(RULES)}")


def reference_cost(metric: str, reference: str, space: str, input_hw: tuple[int, int], num_classes: int,
                   latency_table: str | Path) -> float:
    """The cost, in table units, of a reference network: a published one (`{space}` filled in with the
    searched space) from the analytic table at the samples' input size or from `latency_table`, or
    MobileNetV3-Small/-Large for MACs and parameters."""
    from nas_core.space.zoo import PUBLISHED

    name = reference.format(space=space)
    if name.startswith("mobilenetv3_"):
        if metric.startswith("latency"):
            raise ValueError(f"sample.choice.reference: {name} has no latency table; set sample.choice.target")
        from nas_core.space.mobilenetv3 import count_conv_macs, count_params, mobilenetv3_lraspp

        model = mobilenetv3_lraspp(name, num_classes)
        return float(count_conv_macs(model, (1, 3, *input_hw)) if metric == "macs" else count_params(model))
    if name not in PUBLISHED:
        raise ValueError(f"sample.choice.reference: unknown network {name!r}; use one of {', '.join(PUBLISHED)}, "
                         "mobilenetv3_small, mobilenetv3_large (or '{space}' in place of the space)")
    return architecture_reference_cost(metric, PUBLISHED[name], input_hw, num_classes, latency_table)


def architecture_reference_cost(metric: str, arch, input_hw: tuple[int, int], num_classes: int,
                                latency_table: str | Path) -> float:
    """The cost of `arch` in table units: analytic MACs/params at `input_hw`, from `latency_table`, or
    from the latency model fitted over it (latency_model)."""
    from nas_core.cost.macs import architecture_cost, build_cost_table, read_cost_table

    if metric == "latency_model":
        from nas_core.cost.model import model_path, read_model

        return read_model(model_path(latency_table)).predict(arch)
    if metric == "latency_ms":
        table = read_cost_table(latency_table)
    else:  # analytic and exact at the samples' input size: the same numbers as the MAC table
        table = build_cost_table(arch.space, input_hw, num_classes)
    return float(architecture_cost(table, arch, metric))
