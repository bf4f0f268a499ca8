"""The estimated Pareto front (cost down, mIoU up) with ties and duplicates, and the choice rules."""
import numpy as np
import pytest

from nas_core.select.pareto import RULES, best_under_budget, choose, nearest_cost, pareto_front

# index:        0    1    2    3    4    5    6    7    8
COST = np.array([1.0, 1.0, 2.0, 2.0, 2.0, 3.0, 3.0, 4.0, 0.5])
SCORE = np.array([.50, .40, .60, .60, .55, .60, .70, .65, .30])
# 0 beats its same-cost twin 1; 2 and 3 are exact duplicates: both stay; 4 loses to them at equal
# cost; 5 ties 2's score at a higher cost: dominated; 7 is costlier and worse than 6
FRONT = [True, False, True, True, False, False, True, False, True]


def brute_force_front(cost, score):
    ok = np.isfinite(cost) & ~np.isnan(score)
    out = []
    for i in range(len(cost)):
        dominated = any(ok[j] and cost[j] <= cost[i] and score[j] >= score[i] and
                        (cost[j] < cost[i] or score[j] > score[i]) for j in range(len(cost)))
        out.append(bool(ok[i] and not dominated))
    return out


def test_front_of_hand_made_points_with_ties_and_duplicates():
    assert pareto_front(COST, SCORE).tolist() == FRONT


def test_the_front_does_not_depend_on_the_order_of_the_points():
    perm = np.random.default_rng(0).permutation(len(COST))
    assert pareto_front(COST[perm], SCORE[perm]).tolist() == [FRONT[i] for i in perm]


@pytest.mark.parametrize("seed", range(6))
def test_front_matches_the_definition_on_random_points_with_many_ties(seed):
    rng = np.random.default_rng(seed)
    cost = rng.integers(0, 8, 60).astype(float)  # few distinct values: many ties and duplicates
    score = rng.integers(0, 6, 60) / 10
    cost[rng.integers(0, 60, 3)] = np.nan
    score[rng.integers(0, 60, 3)] = np.nan
    assert pareto_front(cost, score).tolist() == brute_force_front(cost, score)


def test_points_without_a_score_or_cost_are_never_on_the_front():
    front = pareto_front([1.0, np.nan, 2.0, np.inf], [np.nan, 0.9, 0.1, 0.95])
    assert front.tolist() == [False, False, True, False]


@pytest.mark.parametrize("target, expected", [
    (0.0, 8), (0.9, 0), (1.9, 2), (2.6, 6),  # 2.6: nearest front point is 6 (cost 3), not 5/7 (off the front)
    (1.5, 2),  # equidistant from 0 (cost 1) and 2/3 (cost 2): the higher score, then the lower index
    (100.0, 6),
])
def test_nearest_cost_picks_the_front_point_nearest_to_the_target(target, expected):
    assert nearest_cost(COST, SCORE, target) == expected


@pytest.mark.parametrize("budget, expected", [(0.5, 8), (1.0, 0), (2.5, 2), (3.0, 6), (10.0, 6)])
def test_best_under_budget_takes_the_best_score_within_budget(budget, expected):
    assert best_under_budget(COST, SCORE, budget) == expected


def test_best_under_budget_prefers_the_cheaper_of_equal_scores():
    assert best_under_budget([3.0, 2.0, 2.0], [0.5, 0.5, 0.5], 3.0) == 1


def test_a_budget_below_every_cost_is_an_error_that_names_the_cheapest():
    with pytest.raises(ValueError, match="no sample costs <= 0.1; the cheapest costs 0.5"):
        best_under_budget(COST, SCORE, 0.1)


@pytest.mark.parametrize("rule", RULES)
def test_choose_dispatches_to_the_rule(rule):
    expected = {"nearest_cost": nearest_cost, "best_under_budget": best_under_budget}[rule](COST, SCORE, 2.2)
    assert choose(rule, COST, SCORE, 2.2) == expected


def test_unknown_rule_and_bad_inputs_are_errors():
    with pytest.raises(ValueError, match="valid rules are: nearest_cost, best_under_budget"):
        choose("cheapest", COST, SCORE, 1.0)
    with pytest.raises(ValueError, match="equal length"):
        pareto_front([1.0, 2.0], [0.1])
    with pytest.raises(ValueError, match="no point"):
        nearest_cost([np.nan], [0.5], 1.0)
