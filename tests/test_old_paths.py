"""Modules that moved into nas_core's phase packages (issue 13) keep their old import paths as the same module
objects, so code and pickles naming them (MLflow's registered PyTorch models) still work."""
import importlib
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nas_core import MOVED
from nas_core.space.network import SegmentationNetwork
from nas_core.space.zoo import PUBLISHED

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("old, new", sorted(MOVED.items()))
def test_an_old_path_is_the_module_at_its_new_one(old, new):
    assert importlib.import_module(old) is importlib.import_module(new)
    assert sys.modules[new].__spec__.name == new  # the module keeps its own spec
    assert not (ROOT / (old.replace(".", "/") + ".py")).exists()  # no file of the old name is left to shadow it


def test_old_paths_resolve_in_a_fresh_process():
    code = ("import nas_core.profiling.targets as t, nas_core.zoo as z, nas_core.cost.targets, nas_core.space.zoo; "
            "assert t is nas_core.cost.targets and z is nas_core.space.zoo; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "ok", proc.stderr


def test_the_zoo_calls_outside_checks_make_work_by_the_old_path(tmp_path):
    import nas_core.zoo

    model = nas_core.zoo.published_network("squeezenas_lat_small", num_classes=19)
    assert isinstance(model, SegmentationNetwork)
    weights = ROOT / "reference" / "weights" / "squeezenas_lat_small.pth"
    assert nas_core.zoo.load_official_weights(model, weights) is model  # strict: every key matched


def test_a_model_pickled_with_the_old_class_paths_loads():
    """A network pickled before the move names nas_core.network, nas_core.blocks, ...: rewrite a pickle of today's
    network to those names, as a registered model of then holds them, and load it."""
    torch.manual_seed(0)
    model = SegmentationNetwork(PUBLISHED["squeezenas_lat_small"], 19).eval()
    data = pickle.dumps(model, protocol=2)  # GLOBAL opcodes: "c<module>\n<name>\n"
    for old, new in MOVED.items():
        data = data.replace(f"c{new}\n".encode(), f"c{old}\n".encode())
    assert b"cnas_core.network\nSegmentationNetwork\n" in data and b"nas_core.space." not in data
    loaded = pickle.loads(data)
    assert type(loaded) is SegmentationNetwork
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_a_class_by_its_old_path():
    assert pickle.loads(b"cnas_core.network\nSegmentationNetwork\n.") is SegmentationNetwork
