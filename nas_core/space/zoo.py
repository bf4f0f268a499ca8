"""The six published SqueezeNAS networks (Appendix C's choice columns) and a loader for the
authors' released state dicts (their key layout mapped onto our modules)."""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from nas_core.space.network import SegmentationNetwork
from nas_core.space.spaces import NUM_CLASSES, Architecture

_S = "skip"
PUBLISHED: dict[str, Architecture] = {
    "squeezenas_mac_small": Architecture("small", (
        "k3_d1_e1_g2", "k3_d1_e1_g1", "k3_d1_e1_g1", "k3_d1_e1_g2", "k5_d1_e6_g1", "k3_d1_e1_g1",
        "k3_d1_e1_g1", "k3_d2_e1_g2", "k5_d1_e6_g1", "k3_d2_e6_g1", _S, "k3_d1_e1_g2", "k5_d1_e6_g1",
        "k3_d2_e3_g1", "k3_d2_e1_g1", "k3_d2_e1_g1", "k3_d2_e6_g1", "k3_d2_e1_g2", "k3_d2_e1_g2",
        "k3_d2_e1_g2")),
    "squeezenas_lat_small": Architecture("small", (
        "k3_d1_e1_g1", _S, _S, _S, "k3_d1_e6_g1", "k3_d1_e6_g1", _S, _S, "k5_d1_e6_g1", "k3_d2_e6_g1",
        "k5_d1_e1_g2", "k3_d1_e1_g2", "k3_d2_e6_g1", "k3_d2_e6_g1", "k3_d2_e6_g1", "k3_d2_e1_g1",
        "k3_d2_e6_g1", "k3_d2_e3_g1", "k3_d2_e3_g1", "k3_d2_e3_g1")),
    "squeezenas_mac_large": Architecture("large", (
        "k3_d1_e1_g2", "k3_d1_e6_g1", "k3_d2_e1_g2", "k3_d1_e1_g2", "k3_d1_e1_g2", "k5_d1_e6_g1",
        "k5_d1_e6_g1", "k3_d2_e6_g1", "k5_d1_e6_g1", "k5_d1_e6_g1", "k5_d1_e6_g1", "k5_d1_e1_g1",
        "k3_d1_e3_g1", "k5_d1_e6_g1", "k3_d1_e1_g1", "k5_d1_e1_g1", "k3_d2_e3_g1", "k3_d2_e6_g1",
        "k3_d2_e1_g2", "k3_d2_e1_g2", "k3_d2_e1_g2", "k3_d2_e1_g1")),
    "squeezenas_lat_large": Architecture("large", (
        _S, "k3_d1_e6_g1", "k3_d1_e3_g1", "k3_d2_e1_g1", "k3_d1_e3_g1", "k5_d1_e6_g1", "k3_d1_e6_g1",
        "k3_d1_e3_g1", "k3_d2_e6_g1", "k5_d1_e6_g1", "k5_d1_e1_g1", "k5_d1_e1_g1", "k5_d1_e1_g2",
        "k3_d2_e6_g1", "k3_d2_e6_g1", "k3_d2_e6_g1", "k3_d1_e1_g1", "k3_d2_e6_g1", "k3_d2_e6_g1",
        "k3_d2_e6_g1", "k3_d2_e6_g1", "k3_d2_e6_g1")),
    "squeezenas_mac_xlarge": Architecture("xlarge", (
        "k3_d1_e1_g2", "k3_d1_e3_g1", "k3_d1_e1_g2", "k5_d1_e1_g1", "k3_d2_e3_g1", "k5_d1_e6_g1",
        "k5_d1_e1_g2", "k3_d2_e1_g2", "k3_d1_e3_g1", "k5_d1_e6_g1", "k3_d1_e3_g1", _S, "k3_d2_e1_g2",
        "k5_d1_e6_g1", "k3_d1_e1_g1", "k5_d1_e6_g1", _S, "k3_d2_e6_g1", "k3_d2_e1_g2", "k3_d2_e1_g2",
        "k3_d2_e1_g2", "k3_d2_e3_g1")),
    "squeezenas_lat_xlarge": Architecture("xlarge", (
        _S, "k3_d1_e3_g1", "k3_d1_e3_g1", "k3_d1_e3_g1", "k3_d2_e1_g1", "k3_d1_e6_g1", "k3_d1_e3_g1",
        "k5_d1_e6_g1", "k5_d1_e1_g2", "k5_d1_e6_g1", "k3_d1_e6_g1", "k3_d2_e1_g2", "k3_d1_e6_g1",
        "k5_d1_e6_g1", "k3_d2_e3_g1", "k3_d2_e1_g2", "k3_d1_e3_g1", "k3_d2_e6_g1", "k3_d2_e3_g1",
        "k5_d1_e1_g1", "k3_d2_e3_g1", "k3_d2_e6_g1")),
}


def published_architecture(name: str) -> Architecture:
    try:
        return PUBLISHED[name]
    except KeyError:
        raise ValueError(f"unknown published network {name!r}; valid names are: {', '.join(PUBLISHED)}") from None


def published_network(name: str, num_classes: int = NUM_CLASSES) -> SegmentationNetwork:
    """The published network `name`, randomly initialised; see `load_official_weights`."""
    return SegmentationNetwork(published_architecture(name), num_classes)


# The authors' key layout -> ours. Their inverted residual is an nn.Sequential (conv, bn, relu) x 3.
_SEQ_IR = {"0": "expand.conv", "1": "expand.bn", "3": "depthwise.conv", "4": "depthwise.bn",
           "6": "project.conv", "7": "project.bn"}
_RULES: list[tuple[re.Pattern, object]] = [
    (re.compile(r"^encoder\.conv1\.0\.(.+)$"), r"stem.conv.\1"),
    (re.compile(r"^encoder\.conv1\.1\.(.+)$"), r"stem.bn.\1"),
    (re.compile(r"^encoder\.residuals\.(\d+)\.op\.([013467])\.(.+)$"),
     lambda m: f"blocks.{m[1]}.op.{_SEQ_IR[m[2]]}.{m[3]}"),
    (re.compile(r"^encoder\.residuals\.(\d+)\.op\.op\.1\.(.+)$"), r"blocks.\1.op.conv.\2"),
    (re.compile(r"^encoder\.residuals\.(\d+)\.op\.op\.2\.(.+)$"), r"blocks.\1.op.bn.\2"),
    (re.compile(r"^encoder\.residuals\.(\d+)\.op\.conv_1\.0\.(.+)$"), r"blocks.\1.op.conv_a.\2"),
    (re.compile(r"^encoder\.residuals\.(\d+)\.op\.conv_2\.0\.(.+)$"), r"blocks.\1.op.conv_b.\2"),
    (re.compile(r"^encoder\.last_conv\.0\.(.+)$"), r"post_encoder.conv.\1"),
    (re.compile(r"^encoder\.last_conv\.1\.(.+)$"), r"post_encoder.bn.\1"),
    (re.compile(r"^decoder\._1x1_TL\.(conv|bn)\.(.+)$"), r"decoder.project.\1.\2"),
    (re.compile(r"^decoder\._1x1_BL\.(.+)$"), r"decoder.scale.\1"),
    (re.compile(r"^decoder\._1x1_TR\.(.+)$"), r"decoder.classifier.\1"),
    (re.compile(r"^decoder\._1x1_BR\.(.+)$"), r"decoder.low_classifier.\1"),
    (re.compile(r"^decoder\._1x1_1_conv\.(.+)$"), r"decoder.branches.0.\1"),
    (re.compile(r"^decoder\._3x3_([123])_conv\.(.+)$"), lambda m: f"decoder.branches.{m[1]}.{m[2]}"),
    (re.compile(r"^decoder\._1x1_2_conv\.(.+)$"), r"decoder.aspp_project.\1"),
    (re.compile(r"^lowlevel1x1\.(.+)$"), r"decoder.low_project.\1"),
    (re.compile(r"^logits2\.(.+)$"), r"decoder.fuse.\1"),
    (re.compile(r"^logits3\.(.+)$"), r"decoder.classifier.\1"),
]
# Their factorized reduce has one BN per half; ours is one BN after the concatenation, which is
# the same per-channel affine map, so the halves are concatenated.
_FR_BN = re.compile(r"^encoder\.residuals\.(\d+)\.op\.conv_([12])\.1\.(.+)$")


def convert_official_state_dict(official: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the authors' keys to ours; raises KeyError naming any key with no mapping."""
    ours, halves = {}, {}
    for key, value in official.items():
        key = key.removeprefix("module.")
        if m := _FR_BN.match(key):
            halves.setdefault((m[1], m[3]), {})[m[2]] = value
            continue
        for pattern, repl in _RULES:
            if pattern.match(key):
                ours[pattern.sub(repl, key) if isinstance(repl, str) else repl(pattern.match(key))] = value
                break
        else:
            raise KeyError(f"no mapping for the authors' key {key!r}")
    for (block, field), parts in halves.items():
        target = f"blocks.{block}.op.bn.{field}"
        # num_batches_tracked is a scalar count, equal in both halves
        ours[target] = parts["1"] if field == "num_batches_tracked" else torch.cat([parts["1"], parts["2"]])
    return ours


def load_official_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load the authors' released state dict at `path` into `model` (strict: every key must match)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    converted = convert_official_state_dict(state)
    try:
        result = model.load_state_dict(converted, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"{path}: the weights do not fit this network ({str(e).splitlines()[1:3]}); "
                         "is it the right published network?") from None
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{path}: the weights do not fit this network (missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}); is it the right published network?"
        )
    return model
