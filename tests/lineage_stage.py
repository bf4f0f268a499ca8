"""A stage of the tiny DVC pipeline of tests/test_lineage_links.py, run by `dvc repro` as its own
process: it writes its outputs inside tracking.stage_run, as the real stages do. LINEAGE_FAIL=<stage>
makes that stage raise inside its run; LINEAGE_FAIL=<stage>-early makes it exit before any run."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from nas_core.config import load_params
from tasks import tracking


def write(path: str, text: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)


def benchmark(params) -> None:
    import torch

    model = torch.nn.Conv2d(3, 19, 1)
    onnx_path = Path("outputs/net.onnx")
    torch.onnx.export(model, (torch.zeros(1, 3, 16, 16),), str(onnx_path), input_names=["image"],
                      output_names=["logits"], dynamo=False)
    logged = tracking.log_model(model, onnx_path, "squeezenas", params.tracking.registered_model)
    tracking.log_metrics({"ours.class_miou": 0.5}, model_id=logged["pytorch_model_id"])
    tracking.log_metrics({"baseline.class_miou": 0.9})
    write(f"{params.paths.benchmark}/report.md", "report\n")


def main(stage: str) -> int:
    params = load_params("params.yaml")
    if os.environ.get("LINEAGE_FAIL") == f"{stage}-early":
        print(f"squeezenas {stage}: error: params.yaml: {stage}.x: not a number", file=sys.stderr)
        return 2
    with tracking.stage_run(params.tracking, stage):
        if os.environ.get("LINEAGE_FAIL") == stage:
            raise RuntimeError(f"{stage} broke on purpose\nsecond line")
        if stage == "data":
            for split in ("train", "val"):
                write(f"{params.paths.dataset}/{split}/a.png", f"image {split}")
            tracking.log_dataset(params.paths.dataset, "cityscapes")
        elif stage == "cost_tables":
            write(f"{params.paths.cost_tables}/macs_small.parquet", "table")
        elif stage == "search":
            write(f"{params.paths.search}/supernet.pt", Path("search.txt").read_text())
        else:
            benchmark(params)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
