"""Same seeds, same results: the search and the retraining, each uninterrupted and killed-then-resumed, on
tiny CPU fixtures, saved to one file; `--compare` checks two such files bitwise (issue 13, item 2: the
engine refactor must not change a single bit).

    .venv/bin/python benchmarks/engine_equality.py /tmp/before.pt     # on the old code
    .venv/bin/python benchmarks/engine_equality.py /tmp/after.pt      # on the new code
    .venv/bin/python benchmarks/engine_equality.py --compare /tmp/before.pt /tmp/after.pt
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nas_core.cost.macs import build_cost_table, cost_matrix  # noqa: E402
from nas_core.data import generate_cityscapes  # noqa: E402
from nas_core.engine.schedules import build_schedule  # noqa: E402
from nas_core.search.data import search_loader, split_dataset  # noqa: E402
from nas_core.search.gumbel import TauSchedule  # noqa: E402
from nas_core.search.loop import SearchConfig, run_search  # noqa: E402
from nas_core.search.supernet import build_supernet  # noqa: E402
from nas_core.space.zoo import PUBLISHED  # noqa: E402
from nas_core.train.stages import StageSettings, run_stage  # noqa: E402
from tests.test_search import KillAfter, Killed  # noqa: E402
from tests.test_supernet_fixtures import TINY, TINY_CLASSES, TinySegmentation, register_tiny  # noqa: E402
from tests.test_train import NoisyToy, dropout_net  # noqa: E402

try:  # the engine after the refactor
    from nas_core.engine.seeding import make_train_loader
    from nas_core.engine.training import TrainConfig, train
except ImportError:  # before it
    from nas_core.engine.training import make_train_loader, train
    TrainConfig = None

TIMING = ("seconds", "images_per_s")


def _search(ckpt: Path, config: SearchConfig, kill_after: int | None = None, init_seed: int = 0) -> dict:
    cost, fixed = cost_matrix(build_cost_table(TINY, (32, 64), TINY_CLASSES))
    torch.manual_seed(init_seed)
    net = build_supernet(TINY, TINY_CLASSES)
    data = KillAfter(TinySegmentation(16), kill_after)
    if config.scheme == "fbnet":
        weights, theta = split_dataset(data, 0.5, config.seed)
        train_loader, arch = search_loader(weights, 4, config.seed), search_loader(theta, 4, config.seed)
    else:
        train_loader, arch = search_loader(data, 4, config.seed), None
    result = run_search(net, train_loader, cost, config, ckpt, arch_loader=arch, fixed_cost=fixed, log=lambda s: None)
    return {"weights": net.state_dict(), "theta_history": result.history, "pruning_log": result.pruning_log,
            "curves": result.curves.drop(columns="seconds"), "architecture": list(result.architecture.choices),
            "slot": result.checkpoint.parent.name}


def search_runs(tmp: Path) -> dict:
    """joint: 2 epochs with pruning, killed in epoch 2 after a step checkpoint; fbnet: warm-up then a kill
    in the theta phase."""
    register_tiny()
    # every field spelled out (the values of the code this was first checked against): SearchConfig has no defaults
    joint = SearchConfig(epochs=2, alpha=2.0, cost_reference=None, tau=TauSchedule(kind="linear", start=5.0, end=1.0,
                         decay=None), hard=False, scheme="joint", warmup_epochs=0, weight_lr=0.05, momentum=0.9,
                         weight_decay=1e-5, theta_lr=0.2, theta_weight_decay=0.0, prune_threshold=0.07,
                         checkpoint_every=1, amp=True, seed=0, log_every=100)
    fbnet = replace(joint, epochs=3, scheme="fbnet", warmup_epochs=1)
    out = {}
    for name, config, reads in (("joint", joint, 22), ("fbnet", fbnet, 22)):
        out[f"search_{name}"] = _search(tmp / name / "full", config)
        try:
            _search(tmp / name / "run", config, kill_after=reads)
            raise AssertionError("the search was not killed")
        except Killed:
            pass
        out[f"search_{name}_resumed"] = _search(tmp / name / "run", config, init_seed=123)
    return out


def _engine_train(ckpt: Path, kill_at=None, checkpoint_every: int = 2) -> dict:
    model = dropout_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    loader = make_train_loader(NoisyToy(), 4, seed=3)
    schedule = build_schedule("poly", 4)

    def hook(epoch, batch, loss):
        if (epoch, batch) == kill_at:
            raise Killed

    if TrainConfig is None:
        result = train(model, torch.nn.functional.cross_entropy, loader, optimizer, schedule, 4, ckpt,
                       checkpoint_every=checkpoint_every, grad_clip=5.0, fingerprint="eq", step_hook=hook,
                       log=lambda _: None)
    else:
        config = TrainConfig(epochs=4, checkpoint_dir=ckpt, fingerprint="eq", grad_clip=5.0,
                             checkpoint_every=checkpoint_every)
        result = train(model, torch.nn.functional.cross_entropy, loader, optimizer, schedule, config,
                       step_hook=hook, log=lambda _: None)
    return {"weights": model.state_dict(), "history": [{k: v for k, v in h.items() if k not in TIMING}
                                                       for h in result.history], "resumed_from": result.resumed_from}


def _stage(data: Path, ckpt: Path, kill_epoch: int | None = None) -> dict:
    settings = StageSettings(epochs=2, lr=0.02, momentum=0.9, weight_decay=1e-5, nesterov=False, schedule="step",
                             milestones=(), gamma=0.1, power=0.9, warmup_epochs=0.0, patch=(64, 64), scale=(0.5, 2.0),
                             batch_size=2, num_workers=0, amp=False, grad_clip=None, seed=0, eval_every=1,
                             checkpoint_every=1, log_every=100)

    def epoch_end(epoch, metrics):
        if epoch == kill_epoch:
            raise Killed

    model, summary = run_stage("train_coarse", PUBLISHED["squeezenas_lat_small"], settings, data, None, ckpt,
                               on_epoch_end=epoch_end, log=lambda _: None)
    return {"weights": model.state_dict(), "final": summary["final"], "fingerprint": summary["fingerprint"],
            "history": [{k: v for k, v in h.items() if k not in TIMING} for h in summary["history"]],
            "resumed_from": summary["resumed_from"]}


def train_runs(tmp: Path) -> dict:
    out = {"train_engine": _engine_train(tmp / "engine_full")}
    try:
        _engine_train(tmp / "engine_run", kill_at=(2, 1))
        raise AssertionError("the training was not killed")
    except Killed:
        pass
    out["train_engine_resumed"] = _engine_train(tmp / "engine_run")
    generate_cityscapes(tmp / "cityscapes", num_train=4, num_val=2, num_extra=2, size=(64, 128), seed=0)
    out["train_stage"] = _stage(tmp / "cityscapes", tmp / "stage_full")
    try:
        _stage(tmp / "cityscapes", tmp / "stage_run", kill_epoch=0)
        raise AssertionError("the stage was not killed")
    except Killed:
        pass
    out["train_stage_resumed"] = _stage(tmp / "cityscapes", tmp / "stage_run")
    return out


def equal(a, b) -> bool:
    """Bitwise: tensors by torch.equal, frames by DataFrame.equals (same dtypes, NaNs alike), the rest by ==
    (NaN equal to NaN)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b))
    if torch.is_tensor(a) and torch.is_tensor(b):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, pd.DataFrame) and isinstance(b, pd.DataFrame):
        return a.equals(b) and list(a.columns) == list(b.columns)
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True  # NaN (a class absent from the validation images) equals NaN
    return type(a) is type(b) and a == b


def compare(before: Path, after: Path) -> int:
    a, b = (torch.load(p, weights_only=False) for p in (before, after))
    bad = 0
    for run in sorted(a.keys() | b.keys()):
        for key in sorted(a.get(run, {}).keys() | b.get(run, {}).keys()):
            same = run in a and run in b and key in a[run] and key in b[run] and equal(a[run][key], b[run][key])
            bad += not same
            print(f"{run:24s} {key:14s} {'bitwise equal' if same else 'DIFFERENT'}")
    print("all bitwise equal" if not bad else f"{bad} artifact(s) differ")
    return int(bad > 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path)
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args(argv)
    if args.compare:
        return compare(*args.compare)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        results = {**search_runs(Path(tmp) / "search"), **train_runs(Path(tmp) / "train")}
    torch.save(results, args.out)
    print(f"wrote {args.out}: {', '.join(results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
