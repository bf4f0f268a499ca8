"""The search loop: reproducibility, exact kill-and-resume, pruning log, FBNet warm-up, the loss."""
import math
import re
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from nas_core.config import SearchParams, parse_params
from nas_core.cost.macs import build_cost_table, cost_matrix
from nas_core.params_file import ParamsError
from nas_core.search.data import search_loader, split_dataset
from nas_core.search.loop import SearchConfig, distribution_stats, resource_loss, run_search, search_config
from nas_core.search.supernet import build_supernet
from nas_core.space.candidates import CANDIDATE_NAMES
from nas_core.space.spaces import SPACES
from tests.test_supernet_fixtures import TINY, TINY_CLASSES, TinySegmentation, tiny_space  # noqa: F401

pytestmark = pytest.mark.usefixtures("tiny_space")
torch.set_num_threads(1)
COST, FIXED = cost_matrix(build_cost_table(TINY, (32, 64), TINY_CLASSES))
# a fast-moving theta and a threshold just under 1/13, so that pruning happens within 3 epochs
BASE = search_config(SearchParams(epochs=3, alpha=2.0, theta_lr=0.2, prune_threshold=0.07, log_every=100))


class Killed(Exception):
    pass


class KillAfter(Dataset):
    """Raises Killed on the (n+1)-th read, like a process killed in the middle of an epoch."""

    def __init__(self, dataset: Dataset, reads: int | None):
        self.dataset, self.reads = dataset, reads

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        if self.reads is not None:
            if self.reads == 0:
                raise Killed()
            self.reads -= 1
        return self.dataset[i]


def _search(tmp_path, config: SearchConfig = BASE, kill_after: int | None = None, init_seed: int = 0,
            data=None):
    torch.manual_seed(init_seed)
    net = build_supernet(TINY, TINY_CLASSES)
    data = KillAfter(data or TinySegmentation(16), kill_after)
    if config.scheme == "fbnet":
        weights, theta = split_dataset(data, 0.5, config.seed)  # 2 batches each
        train, arch = search_loader(weights, 4, config.seed), search_loader(theta, 4, config.seed)
    else:
        train, arch = search_loader(data, 4, config.seed), None
    epochs = []
    result = run_search(net, train, COST, config, tmp_path / "ckpt", arch_loader=arch, fixed_cost=FIXED,
                        on_epoch_end=lambda e, m: epochs.append(e), log=lambda s: None)
    return net, result, epochs


def _assert_same_search(a, b):
    (net_a, res_a, _), (net_b, res_b, _) = a, b
    for key, value in net_a.state_dict().items():
        assert torch.equal(value, net_b.state_dict()[key]), key
    assert res_a.history.equals(res_b.history)
    assert res_a.pruning_log.equals(res_b.pruning_log)
    assert res_a.curves.drop(columns="seconds").equals(res_b.curves.drop(columns="seconds"))


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:  # module scope: the tiny_space fixture is per test
        mp.setitem(SPACES, "tiny", TINY)
        yield _search(tmp_path_factory.mktemp("base"))


def test_same_seed_gives_the_same_theta_trajectory_and_another_seed_another(tmp_path, base_run):
    a = base_run
    _assert_same_search(a, _search(tmp_path / "b"))
    other = _search(tmp_path / "c", replace(BASE, seed=1))
    assert not torch.equal(a[0].arch_logits(), other[0].arch_logits())


@pytest.mark.parametrize("scheme, every, reads", [
    ("joint", 0, 22),  # killed in epoch 2: resumes from the end of epoch 1
    ("joint", 1, 22),  # resumes from the middle of epoch 2
    ("joint", 3, 41),  # killed in epoch 3, after the pruning at the end of epoch 2
    ("fbnet", 1, 22),  # warm-up 8 reads, weights 8, then killed in the middle of the theta phase
], ids=["epoch-checkpoint", "step-checkpoint", "after-pruning", "fbnet-theta-phase"])
def test_killed_and_resumed_search_equals_the_uninterrupted_one(tmp_path, scheme, every, reads):
    config = replace(BASE, scheme=scheme, checkpoint_every=every, warmup_epochs=1 if scheme == "fbnet" else 0)
    reference = _search(tmp_path / "ref", config)
    assert len(reference[1].pruning_log) > 0  # the resumed run must also restore a pruned supernet
    with pytest.raises(Killed):
        _search(tmp_path / "run", config, kill_after=reads)
    resumed = _search(tmp_path / "run", config, init_seed=123)  # other init: all must come from the checkpoint
    assert resumed[1].resumed_from is not None and resumed[1].resumed_from["step"] > 0
    _assert_same_search(reference, resumed)
    assert resumed[2] == [1, 2, 3]  # finished epochs are replayed to on_epoch_end


def test_a_run_with_other_settings_keeps_a_killed_runs_checkpoint_and_it_resumes(tmp_path, base_run):
    with pytest.raises(Killed):
        _search(tmp_path / "run", BASE, kill_after=22)  # killed in epoch 2, after epoch 1's checkpoint
    killed = sorted((tmp_path / "run" / "ckpt").glob("*/last.pt"))
    lines = []
    torch.manual_seed(0)
    net = build_supernet(TINY, TINY_CLASSES)
    other = run_search(net, search_loader(TinySegmentation(16), 4), COST, replace(BASE, alpha=0.0),
                       tmp_path / "run" / "ckpt", fixed_cost=FIXED, log=lines.append)
    assert other.resumed_from is None and other.checkpoint.parent.name not in {p.parent.name for p in killed}
    assert any("no checkpoint of this configuration; kept those of 1 other(s)" in line for line in lines)
    assert len(killed) == 1 and killed[0].is_file()  # the other settings wrote beside it, not over it
    resumed = _search(tmp_path / "run", BASE, init_seed=123)  # other init: all must come from the checkpoint
    assert resumed[1].resumed_from is not None and resumed[1].resumed_from["epoch"] == 1
    assert resumed[1].checkpoint == killed[0]
    _assert_same_search(resumed, base_run)


def test_a_checkpoint_in_another_configurations_folder_is_refused(tmp_path):
    _search(tmp_path / "a", replace(BASE, epochs=1))
    _search(tmp_path / "b", replace(BASE, alpha=0.0, epochs=1))
    (a,), (b,) = ((tmp_path / d / "ckpt").glob("*/last.pt") for d in "ab")
    b.replace(a)  # a file moved by hand under the wrong fingerprint
    with pytest.raises(ValueError, match=f"{a}: holds the checkpoint of another configuration"):
        _search(tmp_path / "a", replace(BASE, epochs=1))


def test_pruning_is_logged_with_its_epoch_and_matches_the_live_mask(base_run):
    net, result, _ = base_run
    log = result.pruning_log
    assert set(log.columns) == {"epoch", "block", "candidate", "probability"}
    assert (log["probability"] < BASE.prune_threshold).all()
    dead = {(int(b), CANDIDATE_NAMES[j]) for b, j in torch.nonzero(~net.live_mask()).tolist()}
    assert {(int(r.block), r.candidate) for r in log.itertuples()} == dead
    for r in log.itertuples():
        before = result.history.query("epoch == @r.epoch - 1 and block == @r.block and candidate == @r.candidate")
        after = result.history.query("epoch == @r.epoch and block == @r.block and candidate == @r.candidate")
        assert bool(before["live"].iloc[0]) and not bool(after["live"].iloc[0])
    assert result.curves["pruned"].sum() == len(log)
    assert list(result.curves["live_candidates"]) == sorted(result.curves["live_candidates"], reverse=True)


def test_history_holds_every_epoch_and_probabilities_sum_to_one(base_run):
    _, result, epochs = base_run
    h = result.history
    assert epochs == [1, 2, 3]
    assert sorted(h["epoch"].unique()) == [0, 1, 2, 3]
    assert len(h) == 4 * TINY.num_blocks * 13
    np.testing.assert_allclose(h.groupby(["epoch", "block"])["probability"].sum(), 1.0, atol=1e-6)
    assert (h.query("epoch == 0")["logit"] == 0).all()


def test_fbnet_warmup_trains_the_weights_only(tmp_path):
    config = replace(BASE, scheme="fbnet", warmup_epochs=2, prune_threshold=0.0)
    _, result, _ = _search(tmp_path, config)
    h = result.history
    assert (h.query("epoch <= 2")["logit"] == 0).all()
    assert (h.query("epoch == 3")["logit"] != 0).any()


def test_fbnet_scheme_needs_the_theta_split(tmp_path):
    config = replace(BASE, scheme="fbnet")
    with pytest.raises(ValueError, match="fbnet scheme needs arch_loader"):
        run_search(build_supernet(TINY, TINY_CLASSES), search_loader(TinySegmentation(8), 4), COST, config, tmp_path)


def test_a_large_alpha_ends_with_a_clearly_cheaper_expected_cost(tmp_path):
    free = _search(tmp_path / "a", replace(BASE, alpha=0.0, prune_threshold=0.005))[1].curves.iloc[-1]
    cheap = _search(tmp_path / "b", replace(BASE, alpha=5.0, prune_threshold=0.005))[1].curves.iloc[-1]
    assert cheap["expected_cost"] - FIXED <= 0.7 * (free["expected_cost"] - FIXED)


def test_resource_loss_gradient_moves_theta_towards_cheaper_candidates():
    theta = torch.zeros(2, 13, requires_grad=True)
    cost = torch.tensor(COST[:2], dtype=torch.float32)
    reference = float(cost.mean(1).sum())
    loss = resource_loss(torch.softmax(theta, -1), cost, reference)
    assert loss.item() == pytest.approx(1.0)  # the default reference makes L_E = 1 at uniform theta
    loss.backward()
    above = cost > cost.mean(1, keepdim=True)
    assert (theta.grad[above] > 0).all() and (theta.grad[~above] <= 0).all()


def test_distribution_stats_of_uniform_and_pruned_distributions():
    uniform = torch.full((TINY.num_blocks, 13), 1 / 13)
    s = distribution_stats(uniform, COST, FIXED)
    assert s["mean_entropy"] == pytest.approx(math.log(13))
    assert s["skip_share"] == pytest.approx(1 / 13) and s["live_candidates"] == 13 * TINY.num_blocks
    assert s["expected_cost"] == pytest.approx(FIXED + COST.mean(1).sum())
    pruned = torch.zeros(TINY.num_blocks, 13)
    pruned[:, -1] = 1.0  # all mass on skip
    s = distribution_stats(pruned, COST, FIXED)
    assert s["mean_entropy"] == 0.0 and s["skip_share"] == 1.0 and s["live_candidates"] == TINY.num_blocks
    assert s["argmax_cost"] == pytest.approx(FIXED + COST[:, -1].sum())


@pytest.mark.parametrize("settings, message", [
    ({"scheme": "darts"}, "search.scheme: Input should be 'joint' or 'fbnet'"),
    ({"prune_threshold": 0.08}, "search.prune_threshold: Input should be less than 0.0769"),
    ({"epochs": 2, "warmup_epochs": 2}, "warmup_epochs (2) must be below epochs (2)"),
    ({"alpha": -1.0}, "search.alpha: Input should be greater than or equal to 0"),
    ({"tau_schedule": "cosine"}, "search.tau_schedule: Input should be 'linear' or 'exponential'"),
    ({"tau_start": 0.0}, "search.tau_start: Input should be greater than 0"),
    ({"tau_decay": 1.5}, "search.tau_decay: Input should be less than or equal to 1"),
])
def test_bad_search_settings_are_rejected_with_the_field(settings, message):
    # the checks live in params.yaml's schema, the one place the search's config comes from
    with pytest.raises(ParamsError, match=re.escape(message)):
        parse_params({"search": settings})


def test_a_cost_matrix_of_the_wrong_shape_is_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"cost matrix must be \(6, 13\), got shape \(3, 13\)"):
        run_search(build_supernet(TINY, TINY_CLASSES), search_loader(TinySegmentation(8), 4), COST[:3], BASE, tmp_path)
    with pytest.raises(ValueError, match="cost matrix must be finite"):
        run_search(build_supernet(TINY, TINY_CLASSES), search_loader(TinySegmentation(8), 4), COST * np.nan, BASE,
                   tmp_path)


def test_straight_through_hard_samples_train_theta_too(tmp_path):
    _, result, _ = _search(tmp_path, replace(BASE, hard=True, epochs=1, prune_threshold=0.0))
    theta = result.history.query("epoch == 1")["logit"]
    assert np.isfinite(theta).all() and (theta != 0).any()


def test_the_search_draws_nothing_from_the_global_generator(tmp_path):
    # why its checkpoint holds no RNG state: Gumbel noise comes from per-step seeds, augmentation
    # from per-sample seeds, and the loader's worker seeds from the loader's own generator
    torch.manual_seed(0)
    net = build_supernet(TINY, TINY_CLASSES)
    before = torch.get_rng_state()
    run_search(net, search_loader(TinySegmentation(16), 4), COST, replace(BASE, epochs=2), tmp_path,
               fixed_cost=FIXED, log=lambda s: None)
    assert torch.equal(torch.get_rng_state(), before)
