"""Gumbel-softmax sampling (eq. 2) and the tau schedules."""
import pytest
import torch

from nas_core.search.gumbel import TauSchedule, gumbel_softmax, sample_gumbel


def _logits() -> torch.Tensor:
    return torch.randn(4, 13, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
@pytest.mark.parametrize("tau", [5.0, 1.0, 0.1])
def test_samples_are_distributions_over_the_13_candidates(hard, tau):
    noise = sample_gumbel((8, 4, 13), torch.Generator().manual_seed(0))
    w = gumbel_softmax(_logits(), noise, tau, hard)
    assert w.shape == (8, 4, 13)
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(8, 4))


def test_same_seed_gives_the_same_samples_and_another_seed_others():
    a = sample_gumbel((8, 4, 13), torch.Generator().manual_seed(7))
    b = sample_gumbel((8, 4, 13), torch.Generator().manual_seed(7))
    c = sample_gumbel((8, 4, 13), torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_noise_is_drawn_independently_for_every_image():
    noise = sample_gumbel((8, 4, 13), torch.Generator().manual_seed(0))
    w = gumbel_softmax(_logits(), noise, 1.0)
    for n in range(1, 8):
        assert not torch.allclose(w[0], w[n])


def test_pruned_candidates_get_zero_weight_and_the_rest_renormalises():
    logits = _logits()
    masked = logits.clone()
    masked[:, [2, 5, 12]] = float("-inf")
    noise = sample_gumbel((8, 4, 13), torch.Generator().manual_seed(0))
    full = gumbel_softmax(logits, noise, 2.0)
    pruned = gumbel_softmax(masked, noise, 2.0)
    assert (pruned[..., [2, 5, 12]] == 0).all()
    keep = torch.ones(13, dtype=torch.bool)
    keep[[2, 5, 12]] = False
    renormalised = full * keep / (full * keep).sum(-1, keepdim=True)
    torch.testing.assert_close(pruned, renormalised)


def test_hard_samples_are_one_hot_with_the_soft_gradient():
    logits = _logits().requires_grad_()
    noise = sample_gumbel((8, 4, 13), torch.Generator().manual_seed(0))
    hard = gumbel_softmax(logits, noise, 1.0, hard=True)
    soft = gumbel_softmax(logits, noise, 1.0)
    assert ((hard == 0) | (hard == 1)).all() and (hard.sum(-1) == 1).all()
    assert torch.equal(hard.argmax(-1), soft.argmax(-1))
    target = torch.randn(8, 4, 13, generator=torch.Generator().manual_seed(3))
    g_hard, = torch.autograd.grad((hard * target).sum(), logits)
    g_soft, = torch.autograd.grad((soft * target).sum(), logits)
    torch.testing.assert_close(g_hard, g_soft)


def test_argmax_frequencies_follow_the_softmax_of_theta():
    # the Gumbel-max trick: argmax(theta + g) is distributed as softmax(theta) (eq. 2)
    theta = torch.tensor([2.0, 1.0, 0.0, -1.0] + [-2.0] * 9)
    noise = sample_gumbel((40000, 13), torch.Generator().manual_seed(0))
    counts = torch.bincount(gumbel_softmax(theta, noise, 1.0).argmax(-1), minlength=13).double()
    torch.testing.assert_close(counts / counts.sum(), torch.softmax(theta.double(), 0), atol=0.01, rtol=0)


def test_nonpositive_tau_is_rejected():
    with pytest.raises(ValueError, match="tau must be positive"):
        gumbel_softmax(_logits(), torch.zeros(4, 13), 0.0)


def test_linear_schedule_runs_from_start_to_end_over_the_steps():
    s = TauSchedule("linear", 5.0, 1.0, None)
    taus = [s.at(step, 101, step // 10, 11) for step in range(101)]
    assert taus[0] == 5.0 and taus[-1] == pytest.approx(1.0)
    assert taus[50] == pytest.approx(3.0)
    assert all(a > b for a, b in zip(taus, taus[1:]))


def test_exponential_schedule_reaches_the_end_at_the_last_epoch():
    s = TauSchedule("exponential", 5.0, 1.0, None)
    taus = [s.at(e * 10, 100, e, 10) for e in range(10)]
    assert taus[0] == 5.0 and taus[-1] == pytest.approx(1.0)
    ratios = [b / a for a, b in zip(taus, taus[1:])]
    assert max(ratios) == pytest.approx(min(ratios))  # one constant factor per epoch


def test_fbnet_decay_multiplies_by_0956_per_epoch_and_stops_at_the_end():
    s = TauSchedule("exponential", 5.0, 1.0, decay=0.956)
    assert s.at(0, 1000, 1, 90) == pytest.approx(5.0 * 0.956)
    assert s.at(0, 1000, 10, 90) == pytest.approx(5.0 * 0.956 ** 10)
    assert s.at(0, 1000, 80, 90) == 1.0 and 5.0 * 0.956 ** 80 < 1.0

