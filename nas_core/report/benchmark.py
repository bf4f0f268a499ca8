"""The final benchmark of the paper's Table 1: per network, class mIoU, latency at batch 1 on the target,
GMACs, GMACs/s and parameters, measured the same way for our network and the baselines."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from nas_core.cost.export import Unit, export_onnx
from nas_core.cost.macs import architecture_cost, build_cost_table
from nas_core.data.labels import TRAIN_ID_NAMES
from nas_core.engine.evaluate import evaluate_segmentation
from nas_core.space.mobilenetv3 import VARIANTS, count_conv_macs, count_params, mobilenetv3_lraspp
from nas_core.space.spaces import NUM_CLASSES, Architecture
from nas_core.space.zoo import PUBLISHED, load_official_weights, published_network

# measure(unit, onnx_path) -> {"median_ms", "p10_ms", "p90_ms", "runs"}: the target's latency protocol
Measure = Callable[[Unit, Path], dict]


@dataclass(frozen=True)
class BenchmarkRow:
    network: str
    architecture: str  # the space and block choices, or the baseline's family
    weights: str  # "trained here", "authors", "random", or a file
    class_miou: float | None  # None: not evaluated (random weights say nothing)
    latency_ms: float
    latency_p10_ms: float
    latency_p90_ms: float
    runs: int
    macs: int
    params: int
    onnx_max_rel_diff: float  # max |PyTorch - ONNX| / max(1, max |logit|) (export_checked)
    class_iou: dict[str, float | None] | None = None  # {class name: IoU} of the dataset's classes (None: NaN)

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    @property
    def gmacs_per_s(self) -> float:
        """Throughput as in the paper's Figure 10: GMACs per second of latency."""
        return self.gmacs / (self.latency_ms / 1e3)

    def to_dict(self) -> dict:
        return {**asdict(self), "gmacs": self.gmacs, "gmacs_per_s": self.gmacs_per_s, "params_m": self.params / 1e6}


def describe_architecture(arch: Architecture) -> str:
    return f"{arch.space}: {' '.join(arch.choices)}"


def baseline_network(name: str, weights: str | Path | None = None, num_classes: int = NUM_CLASSES
                     ) -> tuple[nn.Module, Architecture | None, str]:
    """A published SqueezeNAS network or a MobileNetV3 LR-ASPP, with released weights when given.

    Returns:
        the model (eval mode), its Architecture (None for MobileNetV3) and a label of its weights.
    """
    torch.manual_seed(0)  # random baselines are the same network on every run
    if name in PUBLISHED:
        model, arch = published_network(name, num_classes), PUBLISHED[name]
        if weights:
            load_official_weights(model, weights)
    elif name in VARIANTS:
        model, arch = mobilenetv3_lraspp(name, num_classes), None
        if weights:
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    else:
        raise ValueError(f"unknown baseline {name!r}; valid: {', '.join([*PUBLISHED, *VARIANTS])}")
    label = "random" if not weights else ("authors" if name in PUBLISHED else str(weights))
    return model.eval(), arch, label


def usable_weights(name: str, weights: str | None, class_names: tuple[str, ...]) -> str | None:
    """The released weights of baseline `name` when they fit the dataset: they predict Cityscapes' 19 classes, so
    on a dataset of other classes the network is measured with random weights (no mIoU) instead."""
    if not weights or tuple(class_names) != TRAIN_ID_NAMES:
        return None
    if not Path(weights).is_file():
        raise FileNotFoundError(f"benchmark.weights.{name}: {weights}: no such weights file")
    return weights


def network_macs(model: nn.Module, arch: Architecture | None, input_size: tuple[int, int], num_classes: int) -> int:
    """SqueezeNAS networks: the foundation's analytic cost table; others: conv MACs counted by hooks."""
    if arch is not None:
        return int(architecture_cost(build_cost_table(arch.space, input_size, num_classes), arch, "macs"))
    return count_conv_macs(model, (1, 3, *input_size))


def onnx_parity(model: nn.Module, onnx_path: str | Path, input_shape: tuple[int, ...], seed: int = 0,
                relative: bool = False) -> float:
    """Max |PyTorch - onnxruntime (CPU)| over the logits of one seeded random input; `relative`:
    divided by max(1, max |PyTorch logit|), float32's error growing with the logits' magnitude."""
    import onnxruntime as ort

    x = torch.randn(input_shape, generator=torch.Generator().manual_seed(seed))
    model.eval()
    with torch.no_grad():
        expected = model(x).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    if got.shape != expected.shape:
        raise ValueError(f"{onnx_path}: ONNX logits have shape {got.shape}, PyTorch {expected.shape}")
    diff = float(np.abs(got - expected).max())
    return diff / max(1.0, float(np.abs(expected).max())) if relative else diff


def model_unit(name: str, model: nn.Module, input_size: tuple[int, int]) -> Unit:
    """`model` at batch 1 as the profiling code's unit of timing."""
    return Unit(f"benchmark:{name}:{input_size[0]}x{input_size[1]}", ((1, 3, *input_size),), lambda: model.eval())


def export_checked(model: nn.Module, path: str | Path, input_size: tuple[int, int], atol: float = 1e-4) -> float:
    """Export `model` to ONNX at batch 1 and check it against PyTorch; returns the max difference
    relative to the logits' scale, max(1, max |logit|): a trained network's logits reach tens, and
    float32 kernels that sum in another order differ by ~1e-6 of that (a fixed 1e-4 failed one at 1.05e-4)."""
    shape = (1, 3, *input_size)
    export_onnx(model_unit(Path(path).stem, model, input_size), path)
    diff = onnx_parity(model, path, shape, relative=True)
    if not diff <= atol:  # also catches NaN
        raise ValueError(f"{path}: ONNX logits differ from PyTorch by {diff:.3g} (relative to the logits' scale) "
                         f"> {atol:g}")
    return diff


def benchmark_network(name: str, model: nn.Module, arch: Architecture | None, weights: str, onnx_path: str | Path,
                      input_size: tuple[int, int], measure: Measure, eval_loader: Iterable | None = None,
                      num_classes: int = NUM_CLASSES, atol: float = 1e-4, log: Callable[[str], None] = print,
                      class_names: tuple[str, ...] | None = None) -> BenchmarkRow:
    """One row of the report: export + parity, latency on the target, MACs, params and, with
    `eval_loader`, the class mIoU at the loader's (full) resolution."""
    model = model.cpu().eval()
    facts = network_facts(name, model, arch, onnx_path, input_size, eval_loader, num_classes, atol, log, class_names)
    log(f"[benchmark] {name}: latency on the target")
    lat = measure(model_unit(name, model, input_size), Path(onnx_path))
    row = BenchmarkRow(name, describe_architecture(arch) if arch else f"{name} (LR-ASPP head)", weights,
                       facts["class_miou"], float(lat["median_ms"]), float(lat["p10_ms"]), float(lat["p90_ms"]),
                       int(lat["runs"]), facts["macs"], facts["params"], facts["onnx_max_rel_diff"],
                       facts["class_iou"])
    log(f"[benchmark] {name}: {row.latency_ms:.1f} ms, {row.gmacs:.2f} GMACs, {row.params / 1e6:.3f} M params"
        + (f", mIoU {100 * row.class_miou:.2f}%" if row.class_miou is not None else ""))
    return row


def network_facts(name: str, model: nn.Module, arch: Architecture | None, onnx_path: str | Path,
                  input_size: tuple[int, int], eval_loader: Iterable | None = None, num_classes: int = NUM_CLASSES,
                  atol: float = 1e-4, log: Callable[[str], None] = print,
                  class_names: tuple[str, ...] | None = None) -> dict:
    """A Table-1 row but its latency: the ONNX export checked against PyTorch, MACs, parameters and,
    with `eval_loader`, the class mIoU at the loader's (full) resolution and the IoU of each of its classes
    (`class_names`: the dataset's)."""
    model = model.cpu().eval()
    log(f"[benchmark] {name}: export to ONNX at {input_size[0]}x{input_size[1]} and parity check")
    diff = export_checked(model, onnx_path, input_size, atol)
    miou = class_iou = None
    if eval_loader is not None:
        log(f"[benchmark] {name}: class mIoU on the validation set")
        scores = evaluate_segmentation(model, eval_loader, num_classes, class_names=class_names)
        miou = float(scores["class_miou"])
        names = scores.get("class_names") or [str(k) for k in range(num_classes)]
        class_iou = {n: None if math.isnan(v) else float(v) for n, v in zip(names, scores["class_iou"])}
    return {"onnx_max_rel_diff": diff, "macs": network_macs(model, arch, input_size, num_classes),
            "params": count_params(model), "class_miou": miou, "class_iou": class_iou}


def target_measure(target) -> Measure:
    """Latency on a profiling target (nas_core.cost.targets.Target), with its own protocol."""
    from nas_core.cost.targets import Job

    def measure(unit: Unit, onnx_path: Path) -> dict:
        results: list[dict] = []
        with target:
            target.measure([Job(unit, Path(onnx_path) if target.needs_onnx else None)], results.append)
        if len(results) != 1:
            raise RuntimeError(f"{target.name}: expected one latency for {onnx_path}, got {len(results)}")
        r = results[0]
        return {"median_ms": r["latency_ms"], "p10_ms": r["latency_p10_ms"], "p90_ms": r["latency_p90_ms"],
                "runs": r["runs"]}
    return measure


def latency_prediction(arch, choice: dict, target, input_hw: tuple[int, int], num_classes: int,
                       folder: str | Path) -> dict | None:
    """`arch` timed whole at the latency table's input `input_hw` on `target` (measurements kept in
    `folder`), beside the select stage's predictions for it in `choice` (`chosen_latency_ms`: the table,
    `chosen_latency_model`: the latency model); None when the choice carries neither."""
    from nas_core.cost.latency import MeasurementStore, measure_networks, store_path

    predicted = {name: float(choice[f"chosen_{key}"]) for key, name in (("latency_ms", "table"),
                                                                       ("latency_model", "model"))
                 if choice.get(f"chosen_{key}") is not None}
    if not predicted:
        return None
    folder = Path(folder)
    store = MeasurementStore(store_path(folder / "measurements", target))
    (measured,) = measure_networks([arch], input_hw, num_classes, target, store, folder / "onnx", log=lambda s: None)
    out = {"input_size": list(input_hw), "target": target.name, "measured_ms": measured}
    for name, ms in predicted.items():
        out[f"{name}_ms"], out[f"{name}_error"] = ms, (ms - measured) / measured
    return out


def local_target(threads: int, warmup: int, runs: int, rounds: int = 1, optimization: str = "all"):
    """onnxruntime on this machine through the profiling runner (pinned threads, sequential execution;
    thread CPU time when single-threaded, as the profiling stage does on shared machines; rounds > 1
    interleaves the models of one call), with the graph optimisation deployed ('all' by default)."""
    from nas_core.cost.targets import LocalTarget, MeasurementProtocol

    return LocalTarget(MeasurementProtocol(warmup=warmup, runs=runs, rounds=rounds, threads=threads,
                                           clock="thread" if threads == 1 else "wall", optimization=optimization))


def _fmt(v: float | None, spec: str) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def report_markdown(rows: list[BenchmarkRow], target: str, input_size: tuple[int, int],
                    references: dict[str, float] | None = None, prediction: dict | None = None) -> str:
    """The Table-1-style report: one line per network, then the references our mIoU must clear."""
    lines = [f"# Benchmark on `{target}` (input 1x3x{input_size[0]}x{input_size[1]}, batch 1)", "",
             "| network | weights | class mIoU (%) | latency (ms) [p10, p90] | GMACs | GMACs/s | params (M) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        miou = _fmt(None if r.class_miou is None else 100 * r.class_miou, ".2f")
        lines.append(f"| {r.network} | {r.weights} | {miou} | {r.latency_ms:.1f} [{r.latency_p10_ms:.1f}, "
                     f"{r.latency_p90_ms:.1f}] | {r.gmacs:.2f} | {r.gmacs_per_s:.1f} | {r.params / 1e6:.3f} |")
    lines += ["", "mIoU: class mIoU on the validation set at its full resolution (no test-time augmentation); "
              "MACs: convolution multiply-accumulates at the input size above (the paper's convention); "
              "latency: median over the runs, ONNX export checked against PyTorch.", ""]
    if prediction:
        h, w = prediction["input_size"]
        said = [f"the {name} {prediction[f'{name}_ms']:.2f} ms ({100 * prediction[f'{name}_error']:+.1f}%)"
                for name in ("model", "table") if f"{name}_ms" in prediction]
        lines += [f"Latency predicted for the chosen network at the latency table's input ({h}x{w}, "
                  f"{prediction['target']}): measured {prediction['measured_ms']:.2f} ms; predicted by "
                  + ", by ".join(said) + ".", ""]
    if references:
        lines += ["References for the trained network:", ""]
        lines += [f"- {k}: class mIoU {_fmt(100 * v, '.2f')}%" for k, v in references.items()]
        lines.append("")
    scored = [r for r in rows if r.class_iou]
    if scored:
        names = list(scored[0].class_iou)
        lines += [f"Class IoU (%) on the validation set's {len(names)} classes:", "",
                  "| class | " + " | ".join(r.network for r in scored) + " |",
                  "| --- |" + " ---: |" * len(scored)]
        lines += [f"| {name} | " + " | ".join(_fmt(None if r.class_iou.get(name) is None else
                                                   100 * r.class_iou[name], ".2f") for r in scored) + " |"
                  for name in names]
        lines.append("")
    lines += ["Architectures:", ""] + [f"- {r.network}: {r.architecture}" for r in rows]
    return "\n".join(lines) + "\n"
