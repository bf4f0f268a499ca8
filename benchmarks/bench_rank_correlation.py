"""Is the supernet's ranking meaningful (paper section 5.3.1)? The Spearman correlation between the
mIoU estimated through the supernet and the mIoU after a short standalone training, for K sampled
architectures on the generated Cityscapes. Measured and printed, no bar.

Steps: a short search on the generated data (the params.yaml `search:` run) unless --search-dir is
given; K architectures drawn as the `sample` stage draws them; each one scored through the supernet
and then trained from scratch for --epochs with the training engine (nas_core/engine/training.py) and scored.

Usage: python benchmarks/bench_rank_correlation.py [--num 10] [--epochs 12] [--search-epochs N]
       [--bn-batches N] [--search-dir DIR] [--init scratch|supernet] [--out results.csv]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from scipy.stats import kendalltau, spearmanr  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from nas_core.config import load_params  # noqa: E402
from nas_core.cost.macs import build_cost_table, write_cost_table  # noqa: E402
from nas_core.data import CityscapesSegmentation, EvalTransform, TrainTransform, generate_cityscapes  # noqa: E402
from nas_core.engine.evaluate import evaluate_segmentation  # noqa: E402
from nas_core.engine.schedules import Poly  # noqa: E402
from nas_core.engine.seeding import make_train_loader  # noqa: E402
from nas_core.engine.training import TrainConfig, train  # noqa: E402
from nas_core.search.supernet import extract_network  # noqa: E402
from nas_core.select.sampling import evaluate_path, load_supernet, read_probabilities, sample_architectures  # noqa: E402
from nas_core.space.network import SegmentationNetwork  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def short_search(tmp: Path, data: Path, epochs: int | None) -> Path:
    """The params.yaml search run (Small, MACs) on the generated data; returns its output folder."""
    from tasks.search import search

    cfg = load_params(ROOT / "params.yaml").search
    table = tmp / "macs_small.parquet"
    write_cost_table(build_cost_table(cfg.space), table)
    cfg = cfg.model_copy(update={"cost_table": str(table), "device": "cpu", "epochs": epochs or cfg.epochs})
    out = tmp / "search"
    tic = time.perf_counter()
    summary = search(cfg, str(data), str(out))
    print(f"[rank] search: {cfg.epochs} epochs in {time.perf_counter() - tic:.0f} s, argmax mIoU "
          f"{summary['argmax_class_miou']:.4f}")
    return out


def standalone_miou(net: SegmentationNetwork, data: Path, epochs: int, batch: int, patch: int, lr: float,
                    ckpt: Path, val) -> float:
    dataset = CityscapesSegmentation(data, "train", TrainTransform((patch, patch), (0.5, 2.0)))
    loader = make_train_loader(dataset, batch, seed=0)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=1e-5)
    train(net, lambda logits, y: F.cross_entropy(logits, y, ignore_index=255), loader, optimizer,
          Poly(epochs), TrainConfig(epochs, ckpt, log_every=10 ** 6), log=lambda s: None)
    return evaluate_segmentation(net.eval(), val)["class_miou"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--patch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--init", choices=("scratch", "supernet"), default="scratch")
    ap.add_argument("--search-dir", type=Path)
    ap.add_argument("--search-epochs", type=int, help="override params.yaml's search.epochs")
    ap.add_argument("--bn-batches", type=int, default=0, help="recalibrate BN on this many train batches of 2")
    ap.add_argument("--data", type=Path, help="a Cityscapes-layout root (default: generated 32 + 12 images)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = args.data or tmp / "cityscapes"
        if args.data is None:
            generate_cityscapes(data, 32, 12, 0, (256, 512), 0)
        search_dir = args.search_dir or short_search(tmp, data, args.search_epochs)
        supernet = load_supernet(search_dir / "supernet.pt")
        probs = read_probabilities(search_dir / "theta.parquet", len(supernet.blocks))
        archs = sample_architectures(probs, supernet.space.name, args.num, args.seed).architectures
        val = DataLoader(CityscapesSegmentation(data, "val", EvalTransform()), batch_size=2)
        bn = [b for _, b in zip(range(args.bn_batches), DataLoader(CityscapesSegmentation(data, "train"), 2))] \
            if args.bn_batches else None
        rows = []
        for i, arch in enumerate(archs):
            estimate = evaluate_path(supernet, arch, val, supernet.num_classes, bn)["class_miou"]
            torch.manual_seed(args.seed + i)
            net = extract_network(supernet, arch) if args.init == "supernet" else \
                SegmentationNetwork(arch, supernet.num_classes)
            tic = time.perf_counter()
            trained = standalone_miou(net, data, args.epochs, args.batch, args.patch, args.lr, tmp / f"ckpt{i}", val)
            rows.append({"sample": i, "supernet_miou": estimate, "standalone_miou": trained,
                         "choices": ",".join(arch.choices)})
            print(f"[rank] {i + 1}/{len(archs)}: supernet {estimate:.4f}, standalone {trained:.4f} "
                  f"({time.perf_counter() - tic:.0f} s)", flush=True)
    df = pd.DataFrame(rows)
    if args.out:
        df.to_csv(args.out, index=False)
    rho, p = spearmanr(df["supernet_miou"], df["standalone_miou"])
    tau, p_tau = kendalltau(df["supernet_miou"], df["standalone_miou"])
    print(df[["sample", "supernet_miou", "standalone_miou"]].to_string(index=False))
    print(f"Spearman rho (supernet estimate, BN recalibrated on {args.bn_batches} batches, vs {args.epochs}-epoch "
          f"standalone, {args.init} init, "
          f"{len(df)} architectures): {rho:.3f} (p = {p:.3f}); Kendall tau {tau:.3f} (p = {p_tau:.3f})")


if __name__ == "__main__":
    main()
