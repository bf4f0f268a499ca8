"""The fused superblock's arithmetic (issue 19): the live candidates of one family run as fewer, larger kernels.

The 12 inverted-residual candidates fall in 4 families of 3 that share the input and the expansion's shape
((expansion, groups) = (1, 2), (1, 1), (3, 1), (6, 1), each with k3, k3 dilated 2 and k5). For the live members
of a family (`fusion_plan`), `fused_family` computes exactly what running each member's own module and mixing the
outputs computes, with the members' own parameters and buffers, concatenated inside the forward (so gradients flow
back to the per-candidate tensors and the state_dict is the plain supernet's):

- the members' expansions are one 1x1 convolution (for groups = g > 1 with the output channels arranged per conv
  group: [group 0 of every member, group 1 of every member, ...], see `arrange`);
- BatchNorm and ReLU are per channel, so one call over the concatenated channels is the members' calls; in
  training mode the batch statistics are per channel too, and the members' running statistics are updated on
  concatenated copies of their buffers and written back (`batch_norm`), `num_batches_tracked` counted per member;
- the depthwise convolutions are one depthwise convolution with every member's taps embedded in the largest
  extent (5x5: k3 as its centre, k3 dilated 2 as every other tap; the other taps are zero and so add exact zeros),
  or one depthwise convolution per member on its channel slice (`DEPTHWISE` names the variant; measured in
  benchmarks/README.md);
- the projections are one grouped 1x1 convolution (g x members groups);
- the per-image mixing sum_j w[n, j] y_j[n] is one batched matrix product.

Only floating-point rounding differs (other summation orders): tests/test_fused_supernet.py states the tolerances.
A family with one live member is that member's own module (today's path). A BatchNorm that is not a plain
`nn.BatchNorm2d` with running statistics and a momentum (e.g. the SyncBatchNorm of multi-GPU DDP), or members whose
settings differ, leave the family unfused: each member then runs its own module.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nas_core.space.blocks import InvertedResidual
from nas_core.space.candidates import CANDIDATES

# (expansion, groups) -> the family's candidate names, in CANDIDATES order
FAMILIES: dict[tuple[int, int], tuple[str, ...]] = {}
for _c in CANDIDATES:
    if not _c.is_skip:
        FAMILIES.setdefault((_c.expansion, _c.groups), ())
        FAMILIES[(_c.expansion, _c.groups)] += (_c.name,)
_FAMILY_OF = {name: key for key, names in FAMILIES.items() for name in names}

# "kernel5": one depthwise convolution with every member's taps in the largest kernel; "slices": one depthwise
# convolution per member on its channels. Measured by benchmarks/bench_supernet.py (benchmarks/README.md, issue 19):
# on the CPU kernel5 was the faster on small and large, slices on xlarge; kernel5 is also one kernel where slices
# are 3-6 and a concatenation (what a launch-bound GPU step pays for), so kernel5 is the default.
DEPTHWISE_VARIANTS = ("kernel5", "slices")
DEPTHWISE = "kernel5"


def fusion_plan(names: Sequence[str]) -> list[tuple[str, ...]]:
    """The units of a superblock's forward over its live candidates `names`: a tuple of two or more names is a
    family run fused, a tuple of one a candidate run by its own module (`skip`, or a family's only survivor)."""
    units: list[tuple[str, ...]] = []
    for key, members in FAMILIES.items():
        live = tuple(n for n in members if n in names)
        if len(live) > 1:
            units.append(live)
        else:
            units += [(n,) for n in live]
    units += [(n,) for n in names if n not in _FAMILY_OF]
    return units


def arrange(tensors: Sequence[torch.Tensor], groups: int) -> torch.Tensor:
    """The members' per-channel tensors (along dim 0) in the fused channel order: conv group by conv group, in
    each the members in turn: [t_0 group 0, t_1 group 0, ..., t_0 group 1, t_1 group 1, ...]."""
    if groups == 1:
        return torch.cat(list(tensors))
    return torch.cat([t.chunk(groups)[gi] for gi in range(groups) for t in tensors])


def _plain_bn(bn: nn.Module) -> bool:
    return (type(bn) is nn.BatchNorm2d and bn.affine and bn.track_running_stats and bn.momentum is not None
            and bn.running_mean is not None and bn.num_batches_tracked is not None)


def _same(values) -> bool:
    values = list(values)
    return all(v == values[0] for v in values[1:])


def fusable(ops: Sequence[nn.Module]) -> bool:
    """Whether the modules can run fused: inverted residuals of one family, plain BatchNorms of the same settings
    and mode, depthwise convolutions of the same stride whose padding keeps the size."""
    if len(ops) < 2 or not all(type(op) is InvertedResidual for op in ops):
        return False
    for part in ("expand", "depthwise", "project"):
        convs = [getattr(op, part).conv for op in ops]
        bns = [getattr(op, part).bn for op in ops]
        if not all(_plain_bn(bn) for bn in bns):
            return False
        if not _same((bn.eps, bn.momentum, bn.training, bn.num_features) for bn in bns):
            return False
        if not _same((c.stride, c.groups, c.in_channels, c.out_channels, c.padding_mode) for c in convs):
            return False
        if any(c.bias is not None for c in convs):
            return False
    for op in ops:
        c = op.depthwise.conv
        extent = c.dilation[0] * (c.kernel_size[0] - 1) + 1
        if c.kernel_size[0] != c.kernel_size[1] or c.dilation[0] != c.dilation[1] \
                or c.padding != ((extent - 1) // 2,) * 2 or extent % 2 == 0:
            return False
        if op.expand.conv.kernel_size != (1, 1) or op.project.conv.kernel_size != (1, 1):
            return False
    return True


def batch_norm(x: torch.Tensor, bns: Sequence[nn.BatchNorm2d], groups: int) -> torch.Tensor:
    """The members' BatchNorms as one call over their concatenated channels (arranged as `arrange`).

    Training mode: the batch statistics are per channel, so they are the members' own; each member's running
    statistics get the same update (momentum, unbiased variance) as its own call would make, and its
    num_batches_tracked is counted. Eval mode: the running statistics normalise, as in the members' own calls."""
    first = bns[0]
    running_mean = arrange([bn.running_mean for bn in bns], groups)
    running_var = arrange([bn.running_var for bn in bns], groups)
    y = F.batch_norm(x, running_mean, running_var, arrange([bn.weight for bn in bns], groups),
                     arrange([bn.bias for bn in bns], groups), first.training, first.momentum, first.eps)
    if first.training:  # the write-back as two multi-tensor ops (one kernel each on a GPU), not 3 per member
        members = len(bns)
        with torch.no_grad():
            means = running_mean.view(groups, members, -1)
            variances = running_var.view(groups, members, -1)
            torch._foreach_copy_([bn.running_mean.view(groups, -1) for bn in bns] +
                                 [bn.running_var.view(groups, -1) for bn in bns],
                                 [means[:, m] for m in range(members)] + [variances[:, m] for m in range(members)])
            torch._foreach_add_([bn.num_batches_tracked for bn in bns], 1)
    return y


def _embed(conv: nn.Conv2d, size: int) -> torch.Tensor:
    """The depthwise weight of `conv` as a dilation-1 size x size kernel with the same taps (zeros elsewhere)."""
    w, d, k = conv.weight, conv.dilation[0], conv.kernel_size[0]
    extent = d * (k - 1) + 1
    if extent == size and d == 1:
        return w
    off = (size - extent) // 2
    out = w.new_zeros(w.shape[0], w.shape[1], size, size)
    out[:, :, off:off + extent:d, off:off + extent:d] = w  # differentiable: the gradient reaches w's taps
    return out


def depthwise(h: torch.Tensor, convs: Sequence[nn.Conv2d], groups: int, variant: str = DEPTHWISE) -> torch.Tensor:
    """The members' depthwise convolutions on the fused channels `h` (arranged as `arrange`)."""
    first = convs[0]
    if variant == "kernel5":
        size = max(c.dilation[0] * (c.kernel_size[0] - 1) + 1 for c in convs)
        weight = arrange([_embed(c, size) for c in convs], groups)
        return F.conv2d(h, weight, None, first.stride, (size - 1) // 2, 1, h.shape[1])
    if variant != "slices":
        raise ValueError(f"unknown depthwise variant {variant!r}; valid: {', '.join(DEPTHWISE_VARIANTS)}")
    members, channels = len(convs), h.shape[1] // (groups * len(convs))
    parts = []
    for gi in range(groups):
        for m, c in enumerate(convs):
            start = (gi * members + m) * channels
            parts.append(F.conv2d(h[:, start:start + channels], c.weight.chunk(groups)[gi], None, c.stride,
                                  c.padding, c.dilation, channels))
    return torch.cat(parts, 1)


def fused_family(x: torch.Tensor, ops: Sequence[InvertedResidual], weights: torch.Tensor,
                 variant: str = DEPTHWISE) -> torch.Tensor:
    """sum_m weights[:, m] * ops[m](x) for the members `ops` of one family (`fusable(ops)` holds).

    Args:
        x: (N, C_in, H, W).
        weights: (N, members) per-image mixing weights.
    Returns (N, C_out, H/s, W/s).
    """
    g, members = ops[0].expand.conv.groups, len(ops)
    h = F.conv2d(x, arrange([op.expand.conv.weight for op in ops], g), None, 1, 0, 1, g)
    h = F.relu_(batch_norm(h, [op.expand.bn for op in ops], g))
    h = depthwise(h, [op.depthwise.conv for op in ops], g, variant)
    h = F.relu_(batch_norm(h, [op.depthwise.bn for op in ops], g))
    y = F.conv2d(h, arrange([op.project.conv.weight for op in ops], g), None, 1, 0, 1, g * members)
    y = batch_norm(y, [op.project.bn for op in ops], g)  # (N, [group, member, C_out / g], H', W')
    n, _, height, width = y.shape
    # the mixing as one batched product: (N, 1, 1, members) @ (N, g, members, C_out / g * H' * W')
    mixed = torch.matmul(weights.to(y.dtype).view(n, 1, 1, members), y.reshape(n, g, members, -1))
    return mixed.reshape(n, -1, height, width)
