"""Our networks with the authors' released weights reproduce the authors' outputs."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from nas_core.space.network import SegmentationNetwork
from nas_core.space.spaces import Architecture
from nas_core.space.zoo import PUBLISHED, convert_official_state_dict, load_official_weights, published_network

MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


@pytest.fixture(scope="module")
def test_image(reference_dir):
    rgb = np.asarray(Image.open(reference_dir / "outputs" / "input_1024x2048.png").convert("RGB"))
    x = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255
    return ((x - MEAN) / STD)[None]


@pytest.mark.parametrize("name", ["squeezenas_lat_small", "squeezenas_mac_small", "squeezenas_mac_large"])
def test_reference_logits_reproduced(name, reference_dir, test_image):
    ref_dir = reference_dir / "outputs"
    net = load_official_weights(published_network(name), reference_dir / "weights" / f"{name}.pth").eval()
    with torch.no_grad():
        logits = net(test_image)
    meta = json.loads((ref_dir / "reference_outputs.json").read_text())[name]
    assert list(logits.shape) == meta["logits_shape"]
    ref = np.load(ref_dir / f"{name}_logits_every16px.npy")
    sampled = logits[0, :, ::16, ::16].numpy()
    assert sampled.shape == ref.shape
    assert np.abs(sampled - ref).max() <= 1e-3
    argmax = logits[0].argmax(0).numpy()
    ref_argmax = np.asarray(Image.open(ref_dir / f"{name}_argmax.png"))
    assert (argmax == ref_argmax).mean() >= 0.999
    counts = np.bincount(argmax.ravel(), minlength=19)
    assert np.abs(counts - np.array(meta["class_pixel_counts"])).sum() <= 0.001 * argmax.size


def test_published_names_and_spaces():
    assert {n: a.space for n, a in PUBLISHED.items()} == {
        "squeezenas_mac_small": "small", "squeezenas_lat_small": "small", "squeezenas_mac_large": "large",
        "squeezenas_lat_large": "large", "squeezenas_mac_xlarge": "xlarge", "squeezenas_lat_xlarge": "xlarge"}
    with pytest.raises(ValueError, match="valid names are"):
        published_network("squeezenas_mac_medium")


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_network_maps_input_to_logits(name):
    net = published_network(name, num_classes=5).eval()
    with torch.no_grad():
        y = net(torch.randn(1, 3, 128, 256))
    assert y.shape == (1, 5, 128, 256)


def test_official_loader_rejects_weights_of_another_network(reference_dir, tmp_path):
    net = published_network("squeezenas_mac_large")
    with pytest.raises(ValueError, match="do not fit this network"):
        load_official_weights(net, reference_dir / "weights" / "squeezenas_lat_small.pth")
    with pytest.raises(FileNotFoundError, match="no such weights file"):
        load_official_weights(net, tmp_path / "missing.pth")


def test_official_loader_round_trips_xlarge_layout():
    """XLarge has no released weights; build the authors' key layout from ours and load it back."""
    arch = PUBLISHED["squeezenas_lat_xlarge"]
    src = SegmentationNetwork(arch)
    theirs = {}
    names = {"stem.conv": "encoder.conv1.0", "stem.bn": "encoder.conv1.1",
             "decoder.branches.0": "decoder._1x1_1_conv", "decoder.branches.1": "decoder._3x3_1_conv",
             "decoder.branches.2": "decoder._3x3_2_conv", "decoder.branches.3": "decoder._3x3_3_conv",
             "decoder.aspp_project": "decoder._1x1_2_conv", "decoder.low_project": "lowlevel1x1",
             "decoder.fuse": "logits2", "decoder.classifier": "logits3"}
    ir = {"expand.conv": "0", "expand.bn": "1", "depthwise.conv": "3", "depthwise.bn": "4",
          "project.conv": "6", "project.bn": "7", "conv": "op.1", "bn": "op.2"}
    for key, value in src.state_dict().items():
        if key.startswith("blocks."):
            _, i, _, rest = key.split(".", 3)
            module, field = rest.rsplit(".", 1)
            theirs[f"encoder.residuals.{i}.op.{ir[module]}.{field}"] = value
        else:
            prefix = max((n for n in names if key.startswith(n + ".")), key=len)
            theirs[names[prefix] + key[len(prefix):]] = value
    dst = SegmentationNetwork(arch)
    dst.load_state_dict(convert_official_state_dict(theirs))
    src.eval(), dst.eval()
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        assert torch.equal(src(x), dst(x))


def test_unmapped_key_is_named():
    with pytest.raises(KeyError, match="encoder.mystery"):
        convert_official_state_dict({"encoder.mystery.weight": torch.zeros(1)})


def test_input_checks():
    net = SegmentationNetwork(Architecture("small", ["skip"] * 20), 3)
    with pytest.raises(ValueError, match="multiples of 16"):
        net(torch.randn(1, 3, 100, 200))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        net(torch.randn(1, 1, 64, 64))
