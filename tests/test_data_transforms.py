"""Joint image/label transforms: exact label values, alignment, padding, and seeded reproducibility."""
import numpy as np
import pytest
import torch

from nas_core.data import EvalTransform, TrainTransform
from nas_core.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize

SIZE = (32, 64)


def blocky_sample(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Label of 4x4 blocks with far-apart values, and an image whose red channel encodes the label."""
    rng = np.random.default_rng(seed)
    label = np.kron(rng.choice(np.array([0, 5, 18, 255], np.uint8), (SIZE[0] // 4, SIZE[1] // 4)),
                    np.ones((4, 4), np.uint8))
    image = np.stack([label // 2 + 60, rng.integers(0, 256, SIZE), rng.integers(0, 256, SIZE)], -1).astype(np.uint8)
    return image, label


def _denormalize_red(image: torch.Tensor) -> torch.Tensor:
    return (image[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255


@pytest.mark.parametrize("patch", [(16, 16), (32, 64), (48, 96)])
@pytest.mark.parametrize("scale", [(0.5, 0.5), (1.0, 1.0), (2.0, 2.0), (0.5, 2.0)])
def test_train_output_has_patch_shape_and_only_input_label_values(patch, scale):
    image, label = blocky_sample()
    transform = TrainTransform(patch=patch, scale=scale)
    for seed in range(4):
        out_image, out_label = transform(image, label, torch.Generator().manual_seed(seed))
        assert out_image.shape == (3, *patch) and out_image.dtype == torch.float32
        assert out_label.shape == patch and out_label.dtype == torch.int64
        assert set(out_label.unique().tolist()) <= {0, 5, 18, 255}  # nearest neighbour invents no value


@pytest.mark.parametrize("seed", range(6))
def test_image_and_label_stay_aligned(seed):
    image, label = blocky_sample(seed)
    out_image, out_label = TrainTransform(patch=(24, 24), scale=(0.75, 1.5))(
        image, label, torch.Generator().manual_seed(seed))
    # inside a block the image is constant, so bilinear sampling must return exactly the label's encoding
    inner = torch.zeros_like(out_label, dtype=torch.bool)
    inner[1:-1, 1:-1] = True
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            inner[1:-1, 1:-1] &= out_label[1 + dy : out_label.shape[0] - 1 + dy, 1 + dx : out_label.shape[1] - 1 + dx] \
                == out_label[1:-1, 1:-1]
    red = _denormalize_red(out_image)
    expected = out_label.float() // 2 + 60
    assert inner.any()
    assert torch.allclose(red[inner], expected[inner], atol=1e-3)


def test_scale_one_without_flip_on_full_patch_is_identity():
    image, label = blocky_sample()
    out_image, out_label = TrainTransform(patch=SIZE, scale=(1.0, 1.0), flip=False)(image, label)
    assert torch.equal(out_label, torch.from_numpy(label).long())
    assert torch.allclose(out_image, normalize(torch.from_numpy(image).permute(2, 0, 1)), atol=1e-6)


def test_flip_mirrors_both_image_and_label():
    image, label = blocky_sample()
    transform = TrainTransform(patch=SIZE, scale=(1.0, 1.0), flip=True)
    seen = set()
    for seed in range(12):
        out_image, out_label = transform(image, label, torch.Generator().manual_seed(seed))
        flipped = torch.equal(out_label, torch.from_numpy(label[:, ::-1].copy()).long())
        if flipped:
            assert torch.allclose(out_image, normalize(torch.from_numpy(image[:, ::-1].copy()).permute(2, 0, 1)),
                                  atol=1e-6)
        else:
            assert torch.equal(out_label, torch.from_numpy(label).long())
        seen.add(flipped)
    assert seen == {True, False}


def test_area_beyond_a_small_scaled_image_is_padded_with_ignore_and_mean():
    image, label = blocky_sample()
    label[:] = 5
    out_image, out_label = TrainTransform(patch=(40, 80), scale=(0.5, 0.5), flip=False)(image, label)
    assert (out_label[:16, :32] == 5).all()
    assert (out_label[17:] == 255).all() and (out_label[:, 33:] == 255).all()
    assert (out_image[:, 17:] == 0).all()  # zero after normalization is the ImageNet mean colour


def test_same_generator_seed_gives_same_sample_and_different_seeds_differ():
    image, label = blocky_sample()
    transform = TrainTransform(patch=(16, 16))
    first = transform(image, label, torch.Generator().manual_seed(3))
    again = transform(image, label, torch.Generator().manual_seed(3))
    other = transform(image, label, torch.Generator().manual_seed(4))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


def test_eval_transform_only_normalizes():
    image, label = blocky_sample()
    out_image, out_label = EvalTransform()(image, label)
    assert torch.equal(out_label, torch.from_numpy(label).long())
    assert torch.equal(out_image, normalize(torch.from_numpy(image).permute(2, 0, 1)))


def test_invalid_scale_is_refused():
    with pytest.raises(ValueError, match="scale"):
        TrainTransform(scale=(2.0, 1.0))
