"""The fused superblock (issue 19) computes what the plain one computes, with the same parameters and state.

Tolerances (the two compute the same sums in other orders, so only rounding differs). A tensor `a` of the fused
supernet matches its plain counterpart `b` within `rel` when max|a - b| <= rel * max|b|; errors against a reference
are relative L2 (||a - ref|| / ||ref||, all parameter gradients as one vector).
- float64 (the math): logits, the gradient of every parameter, of the input and of the mixing weights, and every
  running statistic after the step within FP64 (num_batches_tracked and the live mask exactly).
- float32: logits and running statistics within FP32; the gradients' error against the float64 result at most
  FLOAT32 times the plain supernet's (training-mode BatchNorm on the tests' tiny maps leaves the plain float32
  gradients up to ~1% off float64, so no tolerance against them could be tight).
- CPU autocast to bfloat16 (8-bit mantissa): against the float32 result, the fused supernet's relative L2 error
  (logits; all parameter gradients as one vector; input gradient; mixing weights' gradient) is at most AUTOCAST
  times the plain supernet's; in eval mode, fused and plain bfloat16 also agree within BF16 (relative L2).
"""
import copy
from dataclasses import replace

import pytest
import torch
from torch import nn

from nas_core.config import SearchParams, parse_params
from nas_core.cost.macs import build_cost_table, cost_matrix
from nas_core.params_file import ParamsError
from nas_core.search import fused as fusion
from nas_core.search.data import search_loader
from nas_core.search.loop import run_search
from nas_core.search.supernet import build_supernet, extract_network, resolve_fused
from nas_core.space.candidates import CANDIDATE_NAMES
from nas_core.space.spaces import SPACES, Architecture
from tests.test_search import BASE
from tests.test_supernet_fixtures import TINY, TINY_CLASSES, TinySegmentation, tiny_space  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("tiny_space")
torch.set_num_threads(1)
FP64, FP32, FLOAT32, BF16, AUTOCAST = 1e-9, 1e-4, 2.0, 0.1, 1.5
SPACE_NAMES = ["tiny", "small", "large", "xlarge"]
# large and xlarge take 10-30 s a case on the 2-core machine: run in CI (slow)
SPACE_PARAMS = [pytest.param(s, marks=pytest.mark.slow) if s in ("large", "xlarge") else s for s in SPACE_NAMES]


def _randomised(space: str, seed: int):
    """A plain supernet with random weights, BN affine parameters, running statistics and theta."""
    torch.manual_seed(seed)
    net = build_supernet(space, TINY_CLASSES)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
        for theta in net.arch_parameters():
            theta.normal_()
    return net


def _pair(space: str, seed: int = 0, prune: bool = False):
    """(plain, fused) with the same state; pruned to one random mask, every family size occurring."""
    plain = _randomised(space, seed)
    if prune:
        g = torch.Generator().manual_seed(seed)
        mask = torch.rand(len(plain.blocks), 13, generator=g) < 0.5
        mask[torch.arange(len(plain.blocks)), torch.randint(0, 13, (len(plain.blocks),), generator=g)] = True
        plain.set_live_mask(mask)
    fused = copy.deepcopy(plain)
    fused.set_fused(True)
    return plain, fused


def _inputs(net, seed: int, n: int = 2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 64, generator=g)
    logits = torch.randn(n, len(net.blocks), 13, generator=g) * 2
    weights = torch.softmax(logits.masked_fill(~net.live_mask(), float("-inf")), -1)
    return x, weights


def _close(a: torch.Tensor, b: torch.Tensor, rel: float, what: str) -> None:
    a, b = a.detach().double(), b.detach().double()
    assert a.shape == b.shape, what
    scale = b.abs().max().item()
    diff = (a - b).abs().max().item()
    assert diff <= rel * scale + 1e-30, f"{what}: max |fused - plain| {diff:.3g} > {rel} * {scale:.3g}"


def _relative(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """||a - b|| / ||b|| over the tensors of the lists as one vector."""
    a, b = (torch.cat([t.detach().double().flatten() for t in ts]) for ts in (a, b))
    return ((a - b).norm() / b.norm()).item()


def _step(net, x, weights, autocast: bool = False) -> dict:
    """logits, the gradients of the parameters, the input and the mixing weights for a random loss, and the
    state afterwards (running statistics updated in training mode), in the supernet's dtype."""
    dtype = next(net.parameters()).dtype
    net.zero_grad(set_to_none=True)
    x, weights = x.to(dtype).requires_grad_(), weights.to(dtype).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = net.forward_weights(x, weights)
    r = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out.to(dtype) * r.to(dtype)).sum().backward()
    grads = {name: p.grad for name, p in net.named_parameters()}
    assert all(grads[name] is None for name in grads if name.endswith("theta"))  # not in forward_weights' graph
    return {"logits": out, "input gradient": x.grad, "mixing weights' gradient": weights.grad,
            "grads": {name: g for name, g in grads.items() if g is not None}, "state": net.state_dict()}


def _assert_same_state(fused: dict, plain: dict, rel: float) -> None:
    assert list(fused) == list(plain)  # the same names: checkpoints, extract_network, resume
    for key, value in plain.items():
        if key.endswith("num_batches_tracked") or value.dtype == torch.bool:
            assert torch.equal(fused[key], value), key
        else:
            _close(fused[key], value, rel, key)


GRADIENTS = ("input gradient", "mixing weights' gradient")


def _assert_same_in_float64(plain, fused, x, weights, mode: str = "train") -> dict:
    """Fused and plain in float64 (so that rounding, of either, stays far below FP64) agree in the logits, every
    gradient and the state after the step; returns the plain step."""
    p = _step(getattr(plain.double(), mode)(), x, weights)
    f = _step(getattr(fused.double(), mode)(), x, weights)
    for what in ("logits", *GRADIENTS):
        _close(f[what], p[what], FP64, what)
    assert f["grads"].keys() == p["grads"].keys()
    for name, g in p["grads"].items():
        _close(f["grads"][name], g, FP64, f"gradient of {name}")
    _assert_same_state(f["state"], p["state"], FP64)
    return p


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("prune", [False, True], ids=["unpruned", "pruned"])
@pytest.mark.parametrize("space", SPACE_PARAMS)
def test_fused_supernet_computes_the_plain_supernets_math_in_float64(space, prune, mode):
    plain, fused = _pair(space, prune=prune)
    if prune:  # every family size occurs: fused units of 3 and 2, a survivor alone
        assert {1, 2, 3} <= {len(unit) for block in fused.blocks for unit in block.units}
    else:
        assert all(len(block.units) == 4 + ("skip" in block.ops) for block in fused.blocks)
    p = _assert_same_in_float64(plain, fused, *_inputs(plain, 0), mode)
    tracked = p["state"]["blocks.0.ops.k3_d1_e1_g2.expand.bn.num_batches_tracked"].item()
    assert tracked == (mode == "train")


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("space", SPACE_PARAMS)
def test_fused_supernet_in_float32_is_as_close_to_float64_as_the_plain_one(space, mode):
    # float32 gradients through training-mode BatchNorm on these tiny maps (16 values per channel at stride 16)
    # are already up to 1% off the float64 ones in the plain supernet; the fused one must not add to that
    plain, fused = _pair(space, seed=1, prune=space == "small")
    x, weights = _inputs(plain, 1)
    reference = _step(getattr(copy.deepcopy(plain).double(), mode)(), x, weights)
    p = _step(getattr(plain, mode)(), x, weights)
    f = _step(getattr(fused, mode)(), x, weights)
    _close(f["logits"], p["logits"], FP32, "logits")
    _assert_same_state(f["state"], p["state"], FP32)
    for what in GRADIENTS:
        assert _relative([f[what]], [reference[what]]) <= FLOAT32 * _relative([p[what]], [reference[what]]) + 1e-6
    names = list(reference["grads"])
    fused_error = _relative([f["grads"][n] for n in names], [reference["grads"][n] for n in names])
    plain_error = _relative([p["grads"][n] for n in names], [reference["grads"][n] for n in names])
    assert fused_error <= FLOAT32 * plain_error + 1e-6, (fused_error, plain_error)


@pytest.mark.parametrize("space, mode, prune", [
    ("tiny", "train", False), ("tiny", "eval", True), ("small", "train", True), ("small", "eval", False)])
def test_fused_supernet_under_bfloat16_autocast_is_as_close_to_float32_as_the_plain_one(space, mode, prune):
    # bfloat16 alone moves the plain supernet's gradients by 2-8% (eval) and, through training-mode BatchNorm on
    # these tiny maps (16 values per channel at stride 16), by 30-110%: the fused one must not add to that.
    plain, fused = _pair(space, seed=2, prune=prune)
    x, weights = _inputs(plain, 2)
    runs = {}
    for name, net, autocast in (("fp32", plain, False), ("plain", plain, True), ("fused", fused, True)):
        r = _step(getattr(copy.deepcopy(net), mode)(), x, weights, autocast)
        runs[name] = [[r["logits"]], list(r["grads"].values()), [r["input gradient"]], [r["mixing weights' gradient"]]]
    for k, what in enumerate(("logits", "parameter gradients", "input gradient", "mixing weights' gradient")):
        plain_error = _relative(runs["plain"][k], runs["fp32"][k])
        fused_error = _relative(runs["fused"][k], runs["fp32"][k])
        assert fused_error <= AUTOCAST * plain_error, f"{what}: fused {fused_error:.3g}, plain {plain_error:.3g}"
        if mode == "eval":
            assert _relative(runs["fused"][k], runs["plain"][k]) <= BF16, what


@pytest.mark.parametrize("variant", fusion.DEPTHWISE_VARIANTS)
def test_both_depthwise_variants_compute_the_plain_supernets_math(variant):
    plain, fused = _pair("tiny", seed=3, prune=True)
    fused.set_fused(True, depthwise=variant)
    _assert_same_in_float64(plain, fused, *_inputs(plain, 3))


def test_pruning_rebuilds_the_families_and_a_family_of_one_is_its_candidate():
    _, fused = _pair("tiny")
    block = fused.blocks[0]
    assert block.units == [tuple(names) for names in fusion.FAMILIES.values()] + [("skip",)]
    live = torch.ones(13, dtype=torch.bool)
    for name in ("k3_d1_e1_g2", "k3_d2_e1_g2", "k5_d1_e3_g1", "k3_d1_e6_g1", "k3_d2_e6_g1", "k5_d1_e6_g1"):
        live[CANDIDATE_NAMES.index(name)] = False
    block.set_live(live)
    assert block.units == [("k5_d1_e1_g2",), ("k3_d1_e1_g1", "k3_d2_e1_g1", "k5_d1_e1_g1"),
                           ("k3_d1_e3_g1", "k3_d2_e3_g1"), ("skip",)]
    assert fused.blocks[1].units[-1] != ("skip",)  # a residual block's skip has no module: it adds nothing


def test_a_family_of_sync_batchnorms_runs_unfused_and_gives_the_plain_results():
    plain, fused = _pair("tiny", seed=4)
    fused = nn.SyncBatchNorm.convert_sync_batchnorm(fused)  # what DDP on CUDA does; no CPU kernel in training
    ops = [fused.blocks[0].ops[name] for name in fused.blocks[0].units[0]]
    assert not fusion.fusable(ops)
    _assert_same_in_float64(plain, fused, *_inputs(plain, 4))


def test_fused_state_loads_into_a_plain_supernet_and_extracts_the_same_network():
    plain, fused = _pair("tiny", seed=5, prune=True)
    x, weights = _inputs(plain, 5)
    with torch.no_grad():
        fused.train().forward_weights(x, weights)  # running statistics written back by the fused path
    fresh = build_supernet(TINY, TINY_CLASSES)
    fresh.set_live_mask(fused.live_mask())
    fresh.load_state_dict(fused.state_dict())
    g = torch.Generator().manual_seed(5)
    choices = []
    for block in fused.blocks:
        live = torch.nonzero(block.live).flatten()
        choices.append(CANDIDATE_NAMES[int(live[torch.randint(len(live), (1,), generator=g)])])
    arch = Architecture("tiny", choices)
    with torch.no_grad():
        expected = extract_network(fresh, arch).eval()(x)
        torch.testing.assert_close(extract_network(fused, arch).eval()(x), expected, rtol=0, atol=0)
        one_hot = torch.zeros(2, TINY.num_blocks, 13)
        one_hot[:, torch.arange(TINY.num_blocks), [CANDIDATE_NAMES.index(c) for c in choices]] = 1
        torch.testing.assert_close(fused.eval().forward_weights(x, one_hot), expected, rtol=1e-5, atol=1e-5)


def test_the_same_search_fused_and_plain_ends_with_the_same_theta(tmp_path):
    # tests/test_search's 3-epoch run (12 steps, pruning at every epoch end) with gentler learning rates: at its own
    # (weights 0.05, theta 0.2) this tiny search amplifies any rounding chaotically (plain against plain with the
    # initial weights scaled by 1 + 1e-7 noise ends with theta 0.8 apart), so no two summation orders agree there
    config = replace(BASE, weight_lr=0.005, theta_lr=0.05, prune_threshold=0.05)
    cost, fixed = cost_matrix(build_cost_table(TINY, (32, 64), TINY_CLASSES))
    results = {}
    for fused in (False, True):
        torch.manual_seed(0)
        net = build_supernet(TINY, TINY_CLASSES, fused=fused)
        result = run_search(net, search_loader(TinySegmentation(16), 4), cost, config, tmp_path / str(fused),
                            fixed_cost=fixed, log=lambda s: None)
        results[fused] = (net, result)
    (plain, res_p), (fused, res_f) = results[False], results[True]
    assert len(res_p.pruning_log) > 0  # the runs prune, so the fused families were rebuilt mid-search
    assert res_f.pruning_log[["epoch", "block", "candidate"]].equals(res_p.pruning_log[["epoch", "block", "candidate"]])
    assert torch.equal(fused.live_mask(), plain.live_mask())
    theta_p, theta_f = plain.arch_logits().detach(), fused.arch_logits().detach()
    live = plain.live_mask()
    assert (theta_p[live] != 0).all()
    torch.testing.assert_close(theta_f[live], theta_p[live], rtol=0, atol=1e-4)
    assert res_f.architecture == res_p.architecture
    for key, value in plain.state_dict().items():
        if value.is_floating_point():
            _close(fused.state_dict()[key], value, 1e-3, key)


def test_search_fused_setting_is_auto_true_or_false():
    assert parse_params({"search": {"fused": True}}).search.fused is True
    assert SearchParams().fused == "auto"
    with pytest.raises(ParamsError, match=r"search\.fused"):
        parse_params({"search": {"fused": "fast"}})


def test_search_fused_setting_resolves_per_device():
    assert resolve_fused(True, "cpu") is True and resolve_fused(False, "cuda") is False
    assert resolve_fused("auto", "cpu") in (True, False)
    with pytest.raises(ValueError, match="search.fused must be true, false or auto"):
        resolve_fused("yes", "cpu")


def test_every_space_is_covered():
    assert set(SPACE_NAMES) - {"tiny"} == set(SPACES) - {"tiny"}  # a new space joins the equivalence tests
