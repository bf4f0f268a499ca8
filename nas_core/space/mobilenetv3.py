"""MobileNetV3-Small/-Large with the LR-ASPP head (the paper's Table 1 baselines) as torchvision's
`lraspp_mobilenet_v3_*` builds them, in the MobileNetV3 paper's segmentation setting (its section 6.4:
dilated last stage, output stride 16, halved tail); plus a MAC counter by forward hooks on conv layers."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nas_core.space.spaces import NUM_CLASSES

VARIANTS = ("mobilenetv3_small", "mobilenetv3_large")


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round to a multiple of `divisor`, never below it nor more than 10% down (MobileNet's rule)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


@dataclass(frozen=True)
class Bneck:
    """One inverted-residual block: kernel, expanded and output channels, SE, hard-swish, stride, dilation."""

    c_in: int
    kernel: int
    expanded: int
    c_out: int
    se: bool
    hswish: bool
    stride: int
    dilation: int = 1


def mobilenetv3_config(variant: str, reduced_tail: bool = True, dilated: bool = True) -> tuple[Bneck, ...]:
    """The block table of MobileNetV3 `variant` (the paper's Tables 1 and 2)."""
    r, d = (2 if reduced_tail else 1), (2 if dilated else 1)
    if variant == "mobilenetv3_large":
        return (
            Bneck(16, 3, 16, 16, False, False, 1), Bneck(16, 3, 64, 24, False, False, 2),
            Bneck(24, 3, 72, 24, False, False, 1), Bneck(24, 5, 72, 40, True, False, 2),
            Bneck(40, 5, 120, 40, True, False, 1), Bneck(40, 5, 120, 40, True, False, 1),
            Bneck(40, 3, 240, 80, False, True, 2), Bneck(80, 3, 200, 80, False, True, 1),
            Bneck(80, 3, 184, 80, False, True, 1), Bneck(80, 3, 184, 80, False, True, 1),
            Bneck(80, 3, 480, 112, True, True, 1), Bneck(112, 3, 672, 112, True, True, 1),
            # torchvision keeps 672 here; halving it too reproduces the MobileNetV3 paper's 1.51M
            # parameters for the Large RF2 segmentation network (Small halves its 288 in both)
            Bneck(112, 5, 672 // r, 160 // r, True, True, 2, d),
            Bneck(160 // r, 5, 960 // r, 160 // r, True, True, 1, d),
            Bneck(160 // r, 5, 960 // r, 160 // r, True, True, 1, d),
        )
    if variant == "mobilenetv3_small":
        return (
            Bneck(16, 3, 16, 16, True, False, 2), Bneck(16, 3, 72, 24, False, False, 2),
            Bneck(24, 3, 88, 24, False, False, 1), Bneck(24, 5, 96, 40, True, True, 2),
            Bneck(40, 5, 240, 40, True, True, 1), Bneck(40, 5, 240, 40, True, True, 1),
            Bneck(40, 5, 120, 48, True, True, 1), Bneck(48, 5, 144, 48, True, True, 1),
            Bneck(48, 5, 288 // r, 96 // r, True, True, 2, d),
            Bneck(96 // r, 5, 576 // r, 96 // r, True, True, 1, d),
            Bneck(96 // r, 5, 576 // r, 96 // r, True, True, 1, d),
        )
    raise ValueError(f"unknown MobileNetV3 variant {variant!r}; valid variants are: {', '.join(VARIANTS)}")


class ConvBNAct(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1, dilation: int = 1,
                 groups: int = 1, act: type[nn.Module] | None = nn.ReLU):
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2 * dilation, dilation, groups, bias=False),
            nn.BatchNorm2d(c_out, eps=0.001, momentum=0.01),  # torchvision's MobileNetV3 BN settings
            act(inplace=True) if act is not None else nn.Identity(),
        )


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        squeeze = make_divisible(channels // 4)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))
        return x * F.hardsigmoid(self.fc2(s))


class MobileNetV3Block(nn.Module):
    """expand (skipped when expanded == c_in), depthwise, optional SE, project, then the residual."""

    def __init__(self, cfg: Bneck):
        super().__init__()
        act = nn.Hardswish if cfg.hswish else nn.ReLU
        self.residual = cfg.stride == 1 and cfg.c_in == cfg.c_out
        # a dilated block keeps the resolution: the dilation replaces the stride (output stride 16)
        stride = 1 if cfg.dilation > 1 else cfg.stride
        self.expand = ConvBNAct(cfg.c_in, cfg.expanded, 1, act=act) if cfg.expanded != cfg.c_in else nn.Identity()
        self.depthwise = ConvBNAct(cfg.expanded, cfg.expanded, cfg.kernel, stride, cfg.dilation, cfg.expanded, act)
        self.se = SqueezeExcitation(cfg.expanded) if cfg.se else nn.Identity()
        self.project = ConvBNAct(cfg.expanded, cfg.c_out, 1, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.se(self.depthwise(self.expand(x))))
        return x + out if self.residual else out


class LRASPPHead(nn.Module):
    """torchvision's LR-ASPP: a gated 1x1 branch (global pool gate) on C5 plus a classifier on C2."""

    def __init__(self, low_channels: int, high_channels: int, num_classes: int, inter_channels: int = 128):
        super().__init__()
        self.cbr = ConvBNAct(high_channels, inter_channels, 1)
        self.scale = nn.Conv2d(high_channels, inter_channels, 1, bias=False)
        self.low_classifier = nn.Conv2d(low_channels, num_classes, 1)
        self.high_classifier = nn.Conv2d(inter_channels, num_classes, 1)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        x = self.cbr(high) * torch.sigmoid(self.scale(F.adaptive_avg_pool2d(high, 1)))  # (N, 128, H/16, W/16)
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)  # (N, 128, H/8, W/8)
        return self.low_classifier(low) + self.high_classifier(x)


class MobileNetV3LRASPP(nn.Module):
    """Maps a normalized (N, 3, H, W) batch to (N, classes, H, W) logits."""

    def __init__(self, variant: str, num_classes: int = NUM_CLASSES, reduced_tail: bool = True, dilated: bool = True):
        super().__init__()
        blocks = mobilenetv3_config(variant, reduced_tail, dilated)
        self.variant = variant
        last = 6 * blocks[-1].c_out
        self.features = nn.Sequential(
            ConvBNAct(3, blocks[0].c_in, 3, stride=2, act=nn.Hardswish),
            *(MobileNetV3Block(b) for b in blocks),
            ConvBNAct(blocks[-1].c_out, last, 1, act=nn.Hardswish),
        )
        # torchvision's rule: stage boundaries are the stem, the strided blocks and the last conv; the
        # low-level feature is the fourth from the end, the output of the block that reaches stride 8 (C2)
        stages = [0] + [i + 1 for i, b in enumerate(blocks) if b.stride > 1] + [len(self.features) - 1]
        self.low_index = stages[-4]
        self.head = LRASPPHead(blocks[self.low_index - 1].c_out, last, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        low = x
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i == self.low_index:
                low = x  # (N, C2, H/8, W/8)
        out = self.head(low, x)
        return F.interpolate(out, size=size, mode="bilinear", align_corners=False)


def mobilenetv3_lraspp(variant: str, num_classes: int = NUM_CLASSES, reduced_tail: bool = True) -> MobileNetV3LRASPP:
    return MobileNetV3LRASPP(variant, num_classes, reduced_tail)


def count_conv_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """MACs of all Conv2d layers in one forward pass of a zero batch of `input_shape` (paper convention:
    output elements x kernel area x input channels / groups), via forward hooks."""
    total = 0

    def hook(m: nn.Conv2d, _inputs, out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        total += out.numel() * kh * kw * (m.in_channels // m.groups)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(input_shape))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
