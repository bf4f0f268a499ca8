"""The paper's ideas in plain PyTorch, one package per pipeline phase (data, space, cost, engine, search,
select, train, report).

Modules that moved keep their old import paths: `import nas_core.network` gives the module
`nas_core.space.network` itself, so models pickled with the old class paths (MLflow's registered PyTorch
models) still load. Nothing is imported until an old path is."""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

# old module -> its home since the phase packages (issue 13). nas_core.search, .train and .report name
# packages now; their old modules are nas_core.search.loop, nas_core.engine.training, nas_core.report.table1.
MOVED = {
    "nas_core.arch_diagram": "nas_core.select.diagrams",
    "nas_core.benchmark": "nas_core.report.benchmark",
    "nas_core.blocks": "nas_core.space.blocks",
    "nas_core.candidates": "nas_core.space.candidates",
    "nas_core.classifier": "nas_core.space.classifier",
    "nas_core.cost_table": "nas_core.cost.macs",
    "nas_core.decoders": "nas_core.space.decoders",
    "nas_core.evaluate": "nas_core.engine.evaluate",
    "nas_core.gumbel": "nas_core.search.gumbel",
    "nas_core.metrics": "nas_core.engine.metrics",
    "nas_core.mobilenetv3": "nas_core.space.mobilenetv3",
    "nas_core.network": "nas_core.space.network",
    "nas_core.pareto": "nas_core.select.pareto",
    "nas_core.profiling": "nas_core.cost",
    "nas_core.profiling.export": "nas_core.cost.export",
    "nas_core.profiling.fidelity": "nas_core.cost.fidelity",
    "nas_core.profiling.pool": "nas_core.cost.pool",
    "nas_core.profiling.profile": "nas_core.cost.latency",
    "nas_core.profiling.runner": "nas_core.cost.runner",
    "nas_core.profiling.ssh": "nas_core.cost.ssh",
    "nas_core.profiling.targets": "nas_core.cost.targets",
    "nas_core.profiling.trtexec": "nas_core.cost.trtexec",
    "nas_core.retrain": "nas_core.train.stages",
    "nas_core.sampling": "nas_core.select.sampling",
    "nas_core.schedules": "nas_core.engine.schedules",
    "nas_core.search_checkpoint": "nas_core.search.checkpoint",
    "nas_core.search_data": "nas_core.search.data",
    "nas_core.search_plots": "nas_core.search.plots",
    "nas_core.search_space": "nas_core.space.spaces",
    "nas_core.supernet": "nas_core.search.supernet",
    "nas_core.zoo": "nas_core.space.zoo",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old path as the module at its new one (the same object, under both names in sys.modules)."""

    def __init__(self):
        self.specs = {}

    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED else None

    def create_module(self, spec):
        module = importlib.import_module(MOVED[spec.name])
        self.specs[module.__name__] = module.__spec__
        return module

    def exec_module(self, module):
        module.__spec__ = self.specs[module.__name__]  # the import machinery gave it the old path's spec


if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.insert(0, _MovedModules())
