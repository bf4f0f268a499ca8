"""The two decoders of the search spaces (paper section 3.1): LR-ASPP (Small, Large; MobileNetV3's
head) and the depthwise ASPP of DeepLabV3+ (XLarge), as `published_networks.md` specifies them."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nas_core.space.blocks import ConvBN

LRASPP_POOL_KERNEL = 49
LRASPP_POOL_STRIDE = (16, 20)


def lraspp_pool_geometry(h: int, w: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Kernel and stride of the LR-ASPP average pool on a stride-16 map of h x w.

    Published: kernel 49, stride (16, 20), which needs a map of at least 49 x 49, i.e. the full
    1024x2048 input (a 64x128 map). Our choice for smaller inputs (e.g. the 768x768 training
    patch, a 48x48 map): clamp the kernel to the map in each dimension and keep the stride. At or
    above full resolution this is exactly the published pool; below it the pool covers the whole
    height (and width), i.e. it becomes the global pool that torchvision's LR-ASPP uses.
    """
    kernel = (min(LRASPP_POOL_KERNEL, h), min(LRASPP_POOL_KERNEL, w))
    return kernel, LRASPP_POOL_STRIDE


class LRASPP(nn.Module):
    """Lite R-ASPP: a gated 1x1 branch on the stride-16 feature plus a low-level classifier."""

    def __init__(self, in_channels: int, low_channels: int, mid_channels: int, num_classes: int):
        super().__init__()
        self.project = ConvBN(in_channels, mid_channels, 1)  # a
        self.scale = nn.Conv2d(in_channels, mid_channels, 1)  # b: after the pool, with bias
        self.classifier = nn.Conv2d(mid_channels, num_classes, 1)
        self.low_classifier = nn.Conv2d(low_channels, num_classes, 1)

    def forward(self, feature: torch.Tensor, low: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        a = self.project(feature)  # (N, mid, H/16, W/16)
        kernel, stride = lraspp_pool_geometry(*feature.shape[-2:])
        b = F.avg_pool2d(feature, kernel, stride, count_include_pad=False)
        b = torch.sigmoid(self.scale(b))
        b = F.interpolate(b, size=a.shape[-2:], mode="bilinear", align_corners=False)
        y = F.interpolate(a * b, scale_factor=2, mode="bilinear", align_corners=False)  # (N, mid, H/8, W/8)
        logits = self.classifier(y) + self.low_classifier(low)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=True)


class DepthwiseASPP(nn.Module):
    """ASPP with depthwise (groups = mid) atrous convs, then the DeepLabV3+ low-level fusion."""

    def __init__(self, in_channels: int, low_channels: int, mid_channels: int, num_classes: int,
                 rates: tuple[int, int, int] = (6, 12, 18)):
        super().__init__()
        self.branches = nn.ModuleList(
            [ConvBN(in_channels, mid_channels, 1)]
            + [ConvBN(in_channels, mid_channels, 3, dilation=r, groups=mid_channels) for r in rates]
        )
        self.aspp_project = ConvBN(len(self.branches) * mid_channels + in_channels, mid_channels, 1)
        self.low_project = nn.Conv2d(low_channels, low_channels, 1)  # channels unchanged, with bias
        fused = mid_channels + low_channels
        self.fuse = ConvBN(fused, fused, 3, groups=fused)
        self.classifier = nn.Conv2d(fused, num_classes, 1)

    def forward(self, feature: torch.Tensor, low: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        h, w = feature.shape[-2:]
        pooled = F.interpolate(feature.mean((2, 3), keepdim=True), size=(h, w), mode="nearest")
        y = torch.cat([branch(feature) for branch in self.branches] + [pooled], dim=1)
        y = self.aspp_project(y)  # (N, mid, H/16, W/16)
        y = F.interpolate(y, size=low.shape[-2:], mode="bilinear", align_corners=True)  # x4: stride 4
        y = self.fuse(torch.cat([y, self.low_project(low)], dim=1))
        return F.interpolate(self.classifier(y), size=size, mode="bilinear", align_corners=True)


def build_decoder(kind: str, in_channels: int, low_channels: int, mid_channels: int,
                  num_classes: int) -> nn.Module:
    if kind == "lraspp":
        return LRASPP(in_channels, low_channels, mid_channels, num_classes)
    if kind == "dw_aspp":
        return DepthwiseASPP(in_channels, low_channels, mid_channels, num_classes)
    raise ValueError(f"unknown decoder {kind!r}; valid decoders are: lraspp, dw_aspp")
