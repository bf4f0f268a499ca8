"""The supernet: superblocks of the 13 candidates, theta by ownership, pruning, one-path evaluation."""
import copy

import pytest
import torch

from nas_core.search.supernet import build_supernet, extract_network
from nas_core.space.blocks import build_candidate
from nas_core.space.candidates import CANDIDATE_NAMES, CANDIDATES
from nas_core.space.decoders import lraspp_pool_geometry
from nas_core.space.spaces import SPACES, Architecture
from tests.test_supernet_fixtures import TINY, TINY_CLASSES, tiny_space  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("tiny_space")
torch.set_num_threads(1)


def _net(seed: int = 0):
    torch.manual_seed(seed)
    return build_supernet(TINY, TINY_CLASSES)


def _x(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 64, generator=torch.Generator().manual_seed(seed))


def _random_arch(seed: int) -> Architecture:
    g = torch.Generator().manual_seed(seed)
    indices = torch.randint(0, 13, (TINY.num_blocks,), generator=g)
    return Architecture("tiny", [CANDIDATE_NAMES[int(j)] for j in indices])


def test_forward_gives_logits_of_the_input_size():
    out = _net()(_x(3), tau=5.0, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, TINY_CLASSES, 32, 64)


def test_theta_starts_uniform_and_probabilities_sum_to_one():
    net = _net()
    assert net.arch_logits().shape == (TINY.num_blocks, 13)
    torch.testing.assert_close(net.probabilities(), torch.full((TINY.num_blocks, 13), 1 / 13))
    with torch.no_grad():
        for p in net.arch_parameters():
            p.normal_()
    torch.testing.assert_close(net.probabilities().sum(-1), torch.ones(TINY.num_blocks))


def test_arch_and_weight_parameters_partition_the_parameters_by_ownership():
    net = _net()
    arch, weights = net.arch_parameters(), net.weight_parameters()
    assert arch == [block.theta for block in net.blocks]
    ids = {id(p) for p in arch} | {id(p) for p in weights}
    assert len(ids) == len(arch) + len(weights) == len(list(net.parameters()))


@pytest.mark.parametrize("spec", TINY.blocks, ids=lambda s: f"block{s.index}-{s.c_in}to{s.c_out}-s{s.stride}")
def test_superblock_holds_the_candidate_modules_of_build_candidate(spec):
    block = _net().blocks[spec.index]
    for cand in CANDIDATES:
        expected = build_candidate(cand, spec)
        if expected is None:  # skip under a residual contributes zero: no module
            assert cand.name not in block.ops and spec.residual
        else:
            assert type(block.ops[cand.name]) is type(expected)


@pytest.mark.parametrize("seed", range(3))
def test_one_hot_weights_and_forward_architecture_equal_the_extracted_static_network(seed):
    net = _net(seed).eval()
    arch = _random_arch(seed)
    x = _x()
    one_hot = torch.zeros(2, TINY.num_blocks, 13)
    one_hot[:, torch.arange(TINY.num_blocks), [CANDIDATE_NAMES.index(c) for c in arch.choices]] = 1
    static = extract_network(net, arch).eval()
    with torch.no_grad():
        expected = static(x)
        torch.testing.assert_close(net.forward_architecture(x, arch), expected)
        torch.testing.assert_close(net.forward_weights(x, one_hot), expected, rtol=1e-5, atol=1e-5)


def test_extracted_network_state_maps_onto_the_supernet_candidates():
    net = _net()
    arch = Architecture("tiny", ["k5_d1_e6_g1"] + ["k3_d2_e1_g2"] * 5)
    static = extract_network(net, arch)
    for i, name in enumerate(arch.choices):
        for key, value in static.blocks[i].op.state_dict().items():
            assert torch.equal(value, net.blocks[i].ops[name].state_dict()[key])
    assert static.decoder.state_dict().keys() == net.decoder.state_dict().keys()


def test_same_generator_seed_gives_the_same_output_and_another_seed_another():
    net, x = _net().eval(), _x()
    a = net(x, 1.0, torch.Generator().manual_seed(3))
    b = net(x, 1.0, torch.Generator().manual_seed(3))
    c = net(x, 1.0, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_weights_are_sampled_per_image():
    w = _net().sample_weights(4, 1.0, torch.Generator().manual_seed(0))
    assert w.shape == (4, TINY.num_blocks, 13)
    assert not torch.allclose(w[0], w[1])


def _skewed(net) -> None:
    with torch.no_grad():
        for i, theta in enumerate(net.arch_parameters()):
            theta.copy_(torch.linspace(-6, 2, 13).roll(i))


def test_pruning_removes_exactly_the_candidates_under_the_threshold():
    net = _net()
    _skewed(net)
    before = net.probabilities().detach()
    n_params = sum(p.numel() for p in net.parameters())
    removed = net.prune(0.005)
    expected = {(i, CANDIDATE_NAMES[j]) for i, j in torch.nonzero(before < 0.005).tolist()}
    assert {(b, n) for b, n, _ in removed} == expected and expected
    for b, n, p in removed:
        assert p == pytest.approx(before[b, CANDIDATE_NAMES.index(n)].item())
        assert n not in net.blocks[b].ops
    assert torch.equal(net.live_mask(), before >= 0.005)
    after = net.probabilities()
    assert (after[before < 0.005] == 0).all()
    torch.testing.assert_close(after, before * (before >= 0.005) / (before * (before >= 0.005)).sum(-1, keepdim=True))
    assert sum(p.numel() for p in net.parameters()) < n_params
    assert net.prune(0.005) == []


def test_pruned_supernet_equals_the_unpruned_one_with_renormalised_mass():
    net = _net().eval()
    _skewed(net)
    pruned = copy.deepcopy(net)
    assert pruned.prune(0.005)
    live = pruned.live_mask()
    x = _x()
    with torch.no_grad():
        full = net.sample_weights(2, 1.5, torch.Generator().manual_seed(9))
        renormalised = full * live / (full * live).sum(-1, keepdim=True)
        expected = net.forward_weights(x, renormalised)
        got = pruned(x, 1.5, torch.Generator().manual_seed(9))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_a_pruned_candidate_cannot_be_evaluated_or_revived():
    net = _net()
    _skewed(net)
    net.prune(0.005)
    b, j = torch.nonzero(~net.live_mask()).tolist()[0]
    arch = Architecture("tiny", [CANDIDATE_NAMES[j] if i == b else "k3_d1_e1_g1" for i in range(TINY.num_blocks)])
    with pytest.raises(ValueError, match=f"block {b}: candidate '{CANDIDATE_NAMES[j]}' was pruned"):
        net.forward_architecture(_x(), arch)
    with pytest.raises(ValueError, match=f"block {b}: a pruned candidate cannot be revived"):
        net.set_live_mask(torch.ones(TINY.num_blocks, 13, dtype=torch.bool))


def test_pruning_every_candidate_of_a_block_is_refused():
    net = _net()
    with pytest.raises(ValueError, match="block 0: pruning would remove every candidate"):
        net.blocks[0].set_live(torch.zeros(13, dtype=torch.bool))


def test_pruned_state_loads_into_a_supernet_pruned_to_the_same_mask():
    net = _net(1)
    _skewed(net)
    net.prune(0.005)
    fresh = _net(2)
    fresh.set_live_mask(net.live_mask())
    fresh.load_state_dict(net.state_dict())
    x = _x()
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x, 1.0, torch.Generator().manual_seed(0)),
                           net.eval()(x, 1.0, torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("space", sorted(SPACES))
def test_supernet_runs_at_the_papers_768_patch(space):
    # the LR-ASPP pool's published kernel (49) does not fit a 48x48 map: the foundation clamps it
    with torch.device("meta"):
        net = build_supernet(space)
        out = net(torch.empty(2, 3, 768, 768), 5.0, torch.Generator().manual_seed(0))
    assert out.shape == (2, 19, 768, 768)
    assert lraspp_pool_geometry(48, 48)[0] == (48, 48)


@pytest.mark.slow
def test_small_supernet_trains_a_step_at_768x768():
    torch.manual_seed(0)
    net = build_supernet("small")
    x = torch.randn(1, 3, 768, 768)
    out = net(x, 5.0, torch.Generator().manual_seed(0))
    loss = torch.nn.functional.cross_entropy(out, torch.randint(0, 19, (1, 768, 768)))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.arch_parameters())
