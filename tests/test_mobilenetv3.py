"""MobileNetV3 LR-ASPP baselines: shapes, output stride, parameter counts of the published networks, MACs."""
import pytest
import torch
from torch import nn

from nas_core.space.mobilenetv3 import VARIANTS, count_conv_macs, count_params, make_divisible, mobilenetv3_lraspp

# low-level (C2) channels at stride 8 and the channels of the last (stride-16) conv, reduced tail
SHAPES = {"mobilenetv3_small": (24, 288), "mobilenetv3_large": (40, 480)}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    torch.set_num_threads(1)


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_have_the_input_resolution(variant):
    model = mobilenetv3_lraspp(variant, num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 96)).shape == (2, 3, 64, 96)


@pytest.mark.parametrize("variant", VARIANTS)
def test_low_level_feature_is_stride_8_and_the_encoder_ends_at_stride_16(variant):
    model = mobilenetv3_lraspp(variant).eval()
    seen = {}
    for i, layer in enumerate(model.features):
        layer.register_forward_hook(lambda m, inp, out, i=i: seen.__setitem__(i, out.shape))
    with torch.no_grad():
        model(torch.randn(1, 3, 128, 256))
    low_channels, last_channels = SHAPES[variant]
    assert seen[model.low_index] == (1, low_channels, 16, 32)
    assert seen[len(model.features) - 1] == (1, last_channels, 8, 16)  # dilated last stage: stride 16


# The MobileNetV3 paper's segmentation networks (reduced tail, 19 classes): 0.47 M and 1.51 M parameters.
@pytest.mark.parametrize("variant,params_m", [("mobilenetv3_small", 0.47), ("mobilenetv3_large", 1.51)])
def test_reduced_tail_parameters_match_the_mobilenetv3_paper(variant, params_m):
    assert count_params(mobilenetv3_lraspp(variant, 19)) / 1e6 == pytest.approx(params_m, abs=0.005)


def test_full_tail_large_equals_torchvisions_lraspp_parameter_count():
    # torchvision's lraspp_mobilenet_v3_large (21 classes, no reduced tail) has 3,221,538 parameters
    assert count_params(mobilenetv3_lraspp("mobilenetv3_large", 21, reduced_tail=False)) == 3_221_538


def test_hook_mac_count_is_output_elements_times_kernel_area_times_input_channels_per_group():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 5, stride=2, padding=2, groups=8))
    assert count_conv_macs(model, (1, 3, 16, 16)) == 8 * 16 * 16 * 9 * 3 + 8 * 8 * 8 * 25 * 1


@pytest.mark.parametrize("variant", VARIANTS)
def test_macs_scale_with_the_pixels(variant):
    model = mobilenetv3_lraspp(variant)
    small, big = count_conv_macs(model, (1, 3, 128, 256)), count_conv_macs(model, (1, 3, 256, 512))
    assert 3.9 < big / small < 4.01  # only the 1x1 convs on globally pooled maps do not scale


def test_unknown_variant_lists_the_valid_ones():
    with pytest.raises(ValueError, match="mobilenetv3_small, mobilenetv3_large"):
        mobilenetv3_lraspp("mobilenetv3_tiny")


@pytest.mark.parametrize("v,expected", [(4, 8), (18, 24), (120, 120), (168, 168), (60, 64)])
def test_make_divisible_follows_mobilenets_rounding(v, expected):
    assert make_divisible(v) == expected
