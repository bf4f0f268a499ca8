"""Behaviour the paper fixes, pinned to its numbers (issue 20): the residual rule (Figure 2), the
Gumbel-softmax temperature (section 4.1), the pruning boundary (4.2), the loss of eq. 1 and 3 in the
search loop, and the paper's numbers in the schema defaults and in params.paper.yaml (4.1, 4.2,
5.3.1, 5.3.2). The numbers are written here as literals from the paper, so a changed default cannot
agree with itself."""
from pathlib import Path

import pytest
import torch
import yaml

from nas_core.config import Params, SearchParams, load_params
from nas_core.cost.macs import build_cost_table, cost_matrix
from nas_core.engine.schedules import build_schedule
from nas_core.search.data import search_loader
from nas_core.search.gumbel import gumbel_softmax, sample_gumbel
from nas_core.search.loop import run_search, search_config
from nas_core.search.supernet import build_supernet
from nas_core.space.blocks import Block
from nas_core.space.candidates import CANDIDATE_NAMES, Candidate
from nas_core.space.spaces import SPACES, BlockSpec
from nas_core.train.stages import stage_settings
from tests.test_schedules import lr_curve
from tests.test_supernet_fixtures import TINY, TINY_CLASSES, TinySegmentation, tiny_space  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
THETA = torch.tensor([2.0, 1.0, 0.0, -1.0] + [-2.0] * 9)


def _samples(tau: float, n: int = 40000) -> torch.Tensor:
    return gumbel_softmax(THETA, sample_gumbel((n, 13), torch.Generator().manual_seed(0)), tau)


# --- Figure 2: the residual connection ---

@pytest.mark.parametrize("c_in,c_out,stride,residual", [(16, 16, 1, True), (16, 16, 2, False), (16, 24, 1, False),
                                                        (16, 24, 2, False)])
def test_a_residual_is_used_only_at_equal_channels_and_stride_1(c_in, c_out, stride, residual):
    # Figure 2: "A residual connection is used if C_in = C_out and s = 1"
    spec = BlockSpec(0, c_in, c_out, stride)
    assert spec.residual is residual
    block = Block(Candidate.parse("k3_d1_e3_g1"), spec).eval()
    assert block(torch.randn(1, c_in, 16, 16)).shape == (1, c_out, 16 // stride, 16 // stride)


# --- section 4.1: the Gumbel-softmax relaxation and its temperature ---

@pytest.mark.parametrize("tau", [5.0, 0.5])
def test_sample_is_the_softmax_of_perturbed_logits_divided_by_tau(tau):
    noise = sample_gumbel((4, 13), torch.Generator().manual_seed(1))
    z = torch.exp((THETA + noise) / tau)  # Jang et al.'s relaxation, written out
    torch.testing.assert_close(gumbel_softmax(THETA, noise, tau), z / z.sum(-1, keepdim=True))


def test_samples_sharpen_as_tau_falls():
    taus = [50.0, 5.0, 1.0, 0.2, 0.05]
    peak = [_samples(tau, 4000).max(-1).values.mean().item() for tau in taus]
    assert all(a < b for a, b in zip(peak, peak[1:])), peak
    assert peak[0] < 1 / 13 + 0.02  # a hot sample is nearly uniform over the 13 candidates
    assert peak[-1] > 0.95  # a cold one nearly one-hot


def test_cold_samples_become_one_hot_at_the_perturbed_argmax():
    noise = sample_gumbel((4000, 13), torch.Generator().manual_seed(2))
    one_hot = torch.nn.functional.one_hot((THETA + noise).argmax(-1), 13).float()
    assert (gumbel_softmax(THETA, noise, 0.01) - one_hot).abs().mean() < 0.005


def test_cold_samples_average_to_the_softmax_of_theta_and_hot_ones_do_not():
    # as tau approaches zero the relaxation becomes the categorical distribution of eq. 2
    p = torch.softmax(THETA, 0)
    torch.testing.assert_close(_samples(0.05).mean(0), p, atol=0.01, rtol=0)
    assert (_samples(1.0).mean(0) - p).abs().max() > 0.1


def test_tau_is_annealed_from_5_to_1_over_the_search():
    # section 4.1: "annealed from 5.0 to 1.0 during our search" (the schema default, through the adapter)
    tau = search_config(Params().search).tau
    taus = [tau.at(step, 90 * 10, step // 10, 90) for step in range(90 * 10)]
    assert taus[0] == 5.0 and taus[-1] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(taus, taus[1:]))


# --- section 4.2: candidates under 0.5% are removed ---

def _block_with(probabilities: list[float]):
    net = build_supernet(TINY, TINY_CLASSES)
    block = net.blocks[0]
    with torch.no_grad():
        block.theta.copy_(torch.tensor(probabilities).log())
    return block


@pytest.mark.usefixtures("tiny_space")
def test_pruning_removes_candidates_under_half_a_percent():
    rest = (1 - 0.0049 - 0.0051) / 11
    block = _block_with([0.0049, 0.0051] + [rest] * 11)
    removed = block.prune(Params().search.prune_threshold)
    assert [name for name, _ in removed] == [CANDIDATE_NAMES[0]]
    assert block.live.tolist() == [False] + [True] * 12


@pytest.mark.usefixtures("tiny_space")
def test_pruning_keeps_a_candidate_exactly_at_the_threshold():
    # "less than 0.5%": p == threshold is not less
    block = _block_with([0.002, 0.004] + [0.994 / 11] * 11)
    at = float(torch.softmax(block.logits().detach().float(), 0)[1])
    assert [name for name, _ in block.prune(at)] == [CANDIDATE_NAMES[0]]
    assert block.live[1]


# --- eq. 1 and 3 in the search loop ---

@pytest.fixture(scope="module")
def still_theta_search(tmp_path_factory):
    """One epoch of the tiny search with theta (nearly) frozen and tau constant: recording the
    mixing weights every superblock 0 call receives."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(SPACES, "tiny", TINY)
        cost, fixed = cost_matrix(build_cost_table(TINY, (32, 64), TINY_CLASSES))
        config = search_config(SearchParams(epochs=1, alpha=0.7, tau_start=1.0, tau_end=1.0, theta_lr=1e-9,
                                            prune_threshold=0.0, log_every=100))
        torch.set_num_threads(1)  # as test_search: a tiny net on a busy machine is fastest on one thread
        torch.manual_seed(0)
        net = build_supernet(TINY, TINY_CLASSES)
        weights = []
        net.blocks[0].register_forward_pre_hook(lambda m, args: weights.append(args[1].detach().clone()))
        result = run_search(net, search_loader(TinySegmentation(16), 4), cost, config,
                            tmp_path_factory.mktemp("search"), fixed_cost=fixed, log=lambda s: None)
        return config, result, weights


def test_resource_loss_is_one_at_uniform_theta_and_the_loss_is_ce_plus_alpha_times_it(still_theta_search):
    # L_E is divided by the expected cost under uniform p, so it starts at 1 (README: alpha's scale)
    config, result, _ = still_theta_search
    row = result.curves.iloc[0]
    assert row["resource_loss"] == pytest.approx(1.0, abs=1e-4)
    assert row["total_loss"] == pytest.approx(row["ce"] + config.alpha * row["resource_loss"], rel=1e-6)


def test_every_step_draws_new_gumbel_noise(still_theta_search):
    # theta and tau do not move, so equal weights in two steps would mean the same noise
    _, _, weights = still_theta_search
    assert len(weights) == 4
    for i in range(len(weights)):
        for j in range(i):
            assert not torch.allclose(weights[i], weights[j], atol=1e-3), (i, j)


# --- the paper's numbers: schema defaults and params.paper.yaml ---

def _paper_numbers(params: Params) -> None:
    s, t = params.search, params.train
    assert (s.tau_start, s.tau_end) == (5.0, 1.0)  # 4.1: tau annealed from 5.0 to 1.0
    assert s.prune_threshold == 0.005  # 4.2: probability less than 0.5%
    assert params.sample.num_samples == 200  # 5.3.1: we sample 200 discrete architectures
    assert (t.lr, t.weight_decay) == (0.05, 1e-5)  # 5.3.2: base learning rate 0.05, weight-decay 1e-5
    # 5.3.2: "All segmentation training uses patch sizes of 768x768 pixels" (the search trains one too)
    for patch in (s.patch, t.pretrain_coco.patch, t.train_coarse.patch, t.train_fine.patch):
        assert patch.hw == (768, 768)
    assert t.train_coarse.epochs == 40  # 5.3.2: coarse annotations for 40 epochs
    fine = t.train_fine  # 5.3.2: fine for 100 epochs, cutting the learning rate by 10 at 50 and 75 epochs
    assert (fine.epochs, fine.schedule, fine.milestones, fine.gamma) == (100, "step", (50, 75), 0.1)
    # and what training applies, through the stage adapter and the schedule
    settings = stage_settings(t, "train_fine")
    curve = lr_curve(build_schedule(settings.schedule, settings.epochs, settings.milestones, settings.gamma),
                     settings.lr, settings.epochs, 1)
    assert curve == pytest.approx([0.05] * 50 + [0.005] * 25 + [0.0005] * 25)
    assert settings.weight_decay == 1e-5


def test_schema_defaults_are_the_papers_numbers():
    _paper_numbers(Params())


def test_params_paper_yaml_is_the_papers_numbers():
    _paper_numbers(load_params(ROOT / "params.paper.yaml"))


def test_params_paper_yaml_spells_the_numbers_out():
    # the file states them itself rather than inheriting whatever the schema holds
    raw = yaml.safe_load((ROOT / "params.paper.yaml").read_text())
    s, t = raw["search"], raw["train"]
    assert (s["tau_start"], s["tau_end"], s["prune_threshold"]) == (5.0, 1.0, 0.005)
    assert s["patch"] == {"height": 768, "width": 768}
    assert raw["sample"]["num_samples"] == 200
    assert (t["lr"], t["weight_decay"]) == (0.05, 1e-5)
    assert t["train_coarse"]["epochs"] == 40
    assert {k: t["train_fine"][k] for k in ("epochs", "milestones", "gamma")} == {
        "epochs": 100, "milestones": [50, 75], "gamma": 0.1}


def test_search_configs_prune_under_half_a_percent():
    assert search_config(Params().search).prune_threshold == 0.005  # 4.2, through the stage adapter
