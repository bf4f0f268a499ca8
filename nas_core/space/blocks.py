"""The candidate blocks (paper Figure 2, Appendix B) with the published semantics of `skip`.

The residual `x + block(x)` (stride 1, c_in == c_out) is added outside the candidate, by `Block`,
so the same candidate modules serve the static network and the supernet's mixture.
"""
from __future__ import annotations

import torch
from torch import nn

from nas_core.space.candidates import Candidate
from nas_core.space.spaces import BlockSpec


class ConvBN(nn.Module):
    """conv (no bias) -> BN -> optional ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 1, *, stride: int = 1, dilation: int = 1,
                 groups: int = 1, relu: bool = True):
        super().__init__()
        padding = dilation * (kernel - 1) // 2
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding, dilation, groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True) if relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class InvertedResidual(nn.Module):
    """1x1 expand (groups g) -> kxk depthwise (stride s, dilation d) -> 1x1 project (groups g).

    e = 1 still has the expanding 1x1 conv, and there is no channel shuffle (published semantics).
    """

    def __init__(self, c_in: int, c_out: int, stride: int, cand: Candidate):
        super().__init__()
        hidden = c_in * cand.expansion
        self.expand = ConvBN(c_in, hidden, 1, groups=cand.groups)  # (N, C*e, H, W)
        self.depthwise = ConvBN(hidden, hidden, cand.kernel, stride=stride, dilation=cand.dilation,
                                groups=hidden)  # (N, C*e, H/s, W/s)
        self.project = ConvBN(hidden, c_out, 1, groups=cand.groups, relu=False)  # (N, C_out, H/s, W/s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.depthwise(self.expand(x)))


class FactorizedReduce(nn.Module):
    """`skip` at stride 2: ReLU, two 1x1 stride-2 convs (the second on the input shifted by one
    pixel), concatenated, then BN."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        if c_out % 2:
            raise ValueError(f"factorized reduce needs an even number of output channels, got {c_out}")
        self.relu = nn.ReLU()
        self.conv_a = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_b = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        return self.bn(torch.cat([self.conv_a(x), self.conv_b(x[:, :, 1:, 1:])], dim=1))


class SkipProjection(nn.Module):
    """`skip` at stride 1 with c_in != c_out: ReLU, 1x1 conv, BN."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(self.relu(x)))


def build_candidate(cand: Candidate, spec: BlockSpec) -> nn.Module | None:
    """The module of candidate `cand` at block `spec`; None where it contributes zero.

    `skip` has three cases: zero (the residual makes the block the identity), factorized reduce
    at stride 2, and a 1x1 projection at stride 1 when the channels change.
    """
    if not cand.is_skip:
        return InvertedResidual(spec.c_in, spec.c_out, spec.stride, cand)
    if spec.residual:
        return None
    if spec.stride == 2:
        return FactorizedReduce(spec.c_in, spec.c_out)
    return SkipProjection(spec.c_in, spec.c_out)


class Block(nn.Module):
    """One block of a static network: the chosen candidate plus the residual where it applies."""

    def __init__(self, cand: Candidate, spec: BlockSpec):
        super().__init__()
        self.residual = spec.residual
        self.op = build_candidate(cand, spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.op is None:  # skip under a residual: the candidate contributes zero
            return x
        out = self.op(x)
        return x + out if self.residual else out


def init_weights(module: nn.Module) -> None:
    """Kaiming normal (fan_out, relu) for convs; BN weight 1, bias 0 (the authors' init)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
