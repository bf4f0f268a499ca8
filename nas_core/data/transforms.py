"""Joint image/label transforms for segmentation training (random scale, crop, flip; Sec. 5.3.2) and evaluation."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from nas_core.data.labels import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) uint8 -> float normalized with the ImageNet mean and std."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (image.float() / 255.0 - mean) / std


def _to_chw(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    image = torch.as_tensor(np.ascontiguousarray(image))
    return image.permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)


class EvalTransform:
    """Full image, no augmentation: normalized (3, H, W) float image and (H, W) long label."""

    def __call__(self, image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return normalize(_to_chw(image)), torch.as_tensor(np.ascontiguousarray(label)).long()


class TrainTransform:
    """Random scale, crop to `patch`, horizontal flip, then ImageNet normalization; labels stay exact.

    Scale, crop and flip are one resampling: every output pixel is mapped back into the source image,
    so the cost depends on the patch and not on the scale (a 2x upscale of a 1024x2048 frame is never
    materialized). The image is sampled bilinearly, the label by nearest neighbour, so no label value
    is ever invented. Where the scaled image is smaller than the patch it sits at the top-left and the
    rest is padded: label 255, image 0 after normalization (the mean colour).

    Randomness comes from `generator`; without one, torch's global generator is used, which a
    DataLoader seeds per worker from its own `generator`, so seeded loaders are reproducible.
    """

    def __init__(self, patch: tuple[int, int] = (768, 768), scale: tuple[float, float] = (0.5, 2.0),
                 flip: bool = True) -> None:
        if scale[0] <= 0 or scale[1] < scale[0]:
            raise ValueError(f"scale must be 0 < min <= max, got {scale}")
        self.patch = (int(patch[0]), int(patch[1]))
        self.scale = (float(scale[0]), float(scale[1]))
        self.flip = flip

    def __call__(self, image: np.ndarray, label: np.ndarray,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = label.shape
        patch_h, patch_w = self.patch
        u_scale, u_flip, u_y, u_x = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
        s = self.scale[0] + (self.scale[1] - self.scale[0]) * u_scale
        # top-left corner of the crop in the scaled image, in whole output pixels
        y0 = math.floor(u_y * (max(0, math.floor(height * s - patch_h)) + 1))
        x0 = math.floor(u_x * (max(0, math.floor(width * s - patch_w)) + 1))
        # source coordinates (pixel units, pixel centres at integers) of each output pixel centre
        ys = (torch.arange(patch_h, dtype=torch.float64) + 0.5 + y0) / s - 0.5
        xs = (torch.arange(patch_w, dtype=torch.float64) + 0.5 + x0) / s - 0.5
        if self.flip and u_flip < 0.5:
            xs = xs.flip(0)
        # only decode the source window the patch touches (+1 pixel for the bilinear neighbour)
        r0, r1 = self._window(ys, height)
        c0, c1 = self._window(xs, width)
        window = normalize(_to_chw(image[r0:r1, c0:c1]))  # (3, h, w)
        window_label = torch.as_tensor(np.ascontiguousarray(label[r0:r1, c0:c1])).float() + 1.0
        # grid_sample with align_corners=False: pixel p of a length-n axis sits at (2p + 1) / n - 1
        gy = (2.0 * (ys - r0) + 1.0) / (r1 - r0) - 1.0
        gx = (2.0 * (xs - c0) + 1.0) / (c1 - c0) - 1.0
        grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1).float().unsqueeze(0)  # (1, ph, pw, 2)
        out_image = F.grid_sample(window.unsqueeze(0), grid, mode="bilinear", padding_mode="zeros",
                                  align_corners=False)[0]
        # labels are shifted by one so the zero padding marks outside pixels, which become 255
        out_label = F.grid_sample(window_label[None, None], grid, mode="nearest", padding_mode="zeros",
                                  align_corners=False)[0, 0].long() - 1
        out_label[out_label < 0] = IGNORE_INDEX
        return out_image, out_label

    @staticmethod
    def _window(coords: torch.Tensor, size: int) -> tuple[int, int]:
        lo = min(max(math.floor(coords.min().item()), 0), size - 1)
        hi = min(max(math.floor(coords.max().item()) + 2, lo + 1), size)
        return lo, hi
