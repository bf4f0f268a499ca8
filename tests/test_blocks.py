import pytest
import torch

from nas_core.space.blocks import Block, FactorizedReduce, InvertedResidual, SkipProjection, build_candidate
from nas_core.space.candidates import CANDIDATE_NAMES, Candidate
from nas_core.space.spaces import BlockSpec

# stride 1 with and without the residual, stride 2
SPECS = {
    "stride1-residual": BlockSpec(0, 8, 8, 1),
    "stride1-widen": BlockSpec(0, 8, 16, 1),
    "stride2": BlockSpec(0, 8, 16, 2),
}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("spec_name", list(SPECS))
@pytest.mark.parametrize("name", CANDIDATE_NAMES)
def test_block_shapes_and_gradients(name, spec_name):
    spec = SPECS[spec_name]
    block = Block(Candidate.parse(name), spec)
    x = torch.randn(2, spec.c_in, 16, 32, requires_grad=True)
    y = block(x)
    assert y.shape == (2, spec.c_out, 16 // spec.stride, 32 // spec.stride)
    y.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for p in block.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()


def test_skip_is_identity_when_shapes_match():
    block = Block(Candidate.parse("skip"), SPECS["stride1-residual"])
    assert block.op is None and list(block.parameters()) == []
    x = torch.randn(2, 8, 16, 32)
    assert torch.equal(block(x), x)


def test_skip_is_factorized_reduce_at_stride_2():
    op = build_candidate(Candidate.parse("skip"), SPECS["stride2"])
    assert isinstance(op, FactorizedReduce)
    op.eval()
    x = torch.randn(1, 8, 16, 32)
    y = op(x)
    # second half sees the input shifted by one pixel: equal to conv_b on x[1:, 1:] after the ReLU
    expected_b = op.bn(torch.cat([op.conv_a(x.relu()), op.conv_b(x.relu()[:, :, 1:, 1:])], 1))
    assert torch.allclose(y, expected_b)
    assert not torch.allclose(op.conv_b(x.relu()[:, :, 1:, 1:]), op.conv_b(x.relu()))


def test_skip_is_relu_conv_bn_when_channels_change():
    op = build_candidate(Candidate.parse("skip"), SPECS["stride1-widen"])
    assert isinstance(op, SkipProjection)
    assert op.conv.kernel_size == (1, 1) and op.conv.bias is None


@pytest.mark.parametrize("name", [n for n in CANDIDATE_NAMES if n != "skip"])
def test_inverted_residual_structure(name):
    cand = Candidate.parse(name)
    op = build_candidate(cand, SPECS["stride2"])
    assert isinstance(op, InvertedResidual)
    hidden = 8 * cand.expansion
    assert op.expand.conv.out_channels == hidden and op.expand.conv.groups == cand.groups
    assert op.depthwise.conv.groups == hidden and op.depthwise.conv.dilation == (cand.dilation,) * 2
    assert op.depthwise.conv.kernel_size == (cand.kernel,) * 2 and op.depthwise.conv.stride == (2, 2)
    assert op.project.conv.groups == cand.groups and isinstance(op.project.relu, torch.nn.Identity)
    assert all(c.bias is None for c in (op.expand.conv, op.depthwise.conv, op.project.conv))


def test_residual_added_outside_the_candidate():
    block = Block(Candidate.parse("k3_d1_e3_g1"), SPECS["stride1-residual"]).eval()
    x = torch.randn(1, 8, 16, 32)
    assert torch.allclose(block(x), x + block.op(x))
    widen = Block(Candidate.parse("k3_d1_e3_g1"), SPECS["stride1-widen"]).eval()
    assert torch.allclose(widen(x), widen.op(x))
