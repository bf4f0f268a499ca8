"""A cost model on top of a per-block table: what the search, the sampling and the choice price an
architecture with (paper eq. 3 sums a table; issue 16 goes beyond it for latency as deployed).

    cost(a) = fixed + sum_i U[i, a_i] + sum_i P[i, a_i, a_{i+1}]

U (num_blocks, 13) are per-block costs, P (num_blocks - 1, 13, 13) terms coupling neighbouring blocks.
A table is the model with U = its per-block costs and P = 0 (the paper's additive latency). Under the
search's distribution the blocks are independent, so the expected cost is exact and differentiable in
theta: E = fixed + sum_i p_i . U_i + sum_i p_i^T P_i p_{i+1} (the expectation of a pairwise term is a
product of the two blocks' probabilities).

The fitted latency model (`fit_latency_model`): a deployed runtime fuses across block boundaries
(onnxruntime `all` keeps activations in its blocked NCHWc layout between convolutions and reorders
only where a layout change is needed; TensorRT fuses and chooses formats across layers; CUDA graphs
remove the per-kernel launch gap), so a whole network is not the sum of its blocks timed alone. The
model keeps the table as its main feature and fits, on K whole networks measured on the device
(HELP and TuNAS show that a handful suffice when the table carries the shape):

    latency(a) = b0 + b1 * table(a) + sum_k g_k * sum_i s_i [kind(a_i), kind(a_{i+1}) = k]

b0 the per-network constant (session, input and output copies), b1 the table's scale, and per kind
of junction k (a convolution candidate then `skip`, `skip` then a convolution, two `skip`s; two
convolutions are the baseline, in b0) a cost per million activation elements s_i crossing block i's
output: the layout conversions and memory traffic a block pays alone and a fused network does not
(or does only where the kinds change). Fitted by
ridge-regularised least squares on relative error (the bar is relative: +-10%), the ridge chosen by
leave-one-out error with the one-standard-error rule; the coefficients
are expanded into U and P, so the search, the sampling and the choice use the fitted model
through the same two arrays.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from nas_core.config import MIN_FIT_NETWORKS
from nas_core.space.candidates import CANDIDATE_NAMES, NUM_CANDIDATES
from nas_core.space.spaces import Architecture

SKIP_INDEX = CANDIDATE_NAMES.index("skip")
# the kinds of a junction's two sides: 0 a convolution candidate, 1 skip
KIND = np.array([1 if n == "skip" else 0 for n in CANDIDATE_NAMES])
# junction kinds (kind(a_i), kind(a_{i+1})) = 2 * kind(a_i) + kind(a_{i+1}); conv-conv is the baseline:
# every network has sum_i s_i junctions in all, so a conv-conv term would be the intercept again
JUNCTIONS = ("conv-skip", "skip-conv", "skip-skip")
# fewer measured networks than MIN_FIT_NETWORKS cannot pin 2 + len(JUNCTIONS) coefficients (params checks it too)


@dataclass
class CostModel:
    """fixed + sum_i U[i, a_i] + sum_i P[i, a_i, a_{i+1}] for architectures of `space`."""

    space: str
    metric: str
    fixed: float
    unary: np.ndarray  # (num_blocks, 13)
    pairwise: np.ndarray | None = None  # (num_blocks - 1, 13, 13); None: additive
    info: dict = field(default_factory=dict)  # how it was made (kind, coefficients, fitted networks)

    def __post_init__(self):
        self.unary = np.asarray(self.unary, dtype=np.float64)
        b = self.unary.shape[0]
        if self.unary.shape != (b, NUM_CANDIDATES):
            raise ValueError(f"unary costs must be (num_blocks, {NUM_CANDIDATES}), got {self.unary.shape}")
        if self.pairwise is not None:
            self.pairwise = np.asarray(self.pairwise, dtype=np.float64)
            if self.pairwise.shape != (b - 1, NUM_CANDIDATES, NUM_CANDIDATES):
                raise ValueError(f"pairwise costs must be ({b - 1}, {NUM_CANDIDATES}, {NUM_CANDIDATES}), "
                                 f"got {self.pairwise.shape}")

    @property
    def num_blocks(self) -> int:
        return self.unary.shape[0]

    def indices(self, arch: Architecture) -> np.ndarray:
        if arch.space != self.space:
            raise ValueError(f"the cost model is for the {self.space} space, the architecture for {arch.space}")
        return np.array([CANDIDATE_NAMES.index(c) for c in arch.choices])

    def predict_indices(self, idx: np.ndarray) -> np.ndarray:
        """Costs of architectures given as candidate indices, (N, num_blocks) -> (N,)."""
        idx = np.atleast_2d(idx)
        blocks = np.arange(self.num_blocks)
        total = self.fixed + self.unary[blocks, idx].sum(axis=1)
        if self.pairwise is not None:
            total = total + self.pairwise[blocks[:-1], idx[:, :-1], idx[:, 1:]].sum(axis=1)
        return total

    def predict(self, arch: Architecture) -> float:
        return float(self.predict_indices(self.indices(arch))[0])

    def expected(self, probs):
        """E[cost] under independent per-block distributions `probs` (num_blocks, 13): a torch tensor
        (differentiable) or a NumPy array."""
        if isinstance(probs, np.ndarray):
            e = self.fixed + float((probs * self.unary).sum())
            if self.pairwise is not None:
                e += float(np.einsum("ia,iab,ib->", probs[:-1], self.pairwise, probs[1:]))
            return e
        import torch

        unary = torch.as_tensor(self.unary, dtype=probs.dtype, device=probs.device)
        e = (probs * unary).sum() + self.fixed
        if self.pairwise is not None:
            pair = torch.as_tensor(self.pairwise, dtype=probs.dtype, device=probs.device)
            e = e + torch.einsum("ia,iab,ib->", probs[:-1], pair, probs[1:])
        return e

    def to_json(self) -> dict:
        return {"space": self.space, "metric": self.metric, "fixed": self.fixed, "unary": self.unary.tolist(),
                "pairwise": None if self.pairwise is None else self.pairwise.tolist(), "info": self.info}

    @classmethod
    def from_json(cls, obj: dict, where: str = "cost model") -> CostModel:
        try:
            return cls(obj["space"], obj["metric"], float(obj["fixed"]), np.array(obj["unary"]),
                       None if obj.get("pairwise") is None else np.array(obj["pairwise"]), obj.get("info", {}))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: not a cost model ({e}); rerun the latency_table stage") from None


def table_model(table: pd.DataFrame, metric: str) -> CostModel:
    """The table itself as a model: additive, U = its per-block costs."""
    from nas_core.cost.macs import cost_matrix

    matrix, fixed = cost_matrix(table, metric)
    return CostModel(str(table["space"].iloc[0]), metric, fixed, matrix, None, {"kind": "table"})


def junction_sizes(table: pd.DataFrame) -> np.ndarray:
    """Millions of activation elements leaving each block but the last (batch 1): s_i of the model."""
    blocks = table[table["kind"] == "block"].drop_duplicates("block").sort_values("block")
    sizes = (blocks["c_out"] * blocks["out_h"] * blocks["out_w"]).to_numpy(dtype=np.float64) / 1e6
    return sizes[:-1]


def _features(table_cost: np.ndarray, idx: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Per architecture: [1, table cost, one column per junction kind]."""
    pair = 2 * KIND[idx[:, :-1]] + KIND[idx[:, 1:]]  # (N, num_blocks - 1): 0 conv-conv, then JUNCTIONS
    cols = [(sizes * (pair == k)).sum(axis=1) for k in range(1, len(JUNCTIONS) + 1)]
    return np.column_stack([np.ones(len(idx)), table_cost, *cols])


RIDGES = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)  # ridge "auto" chooses among these (`_auto_ridge`)


def _solve(X: np.ndarray, m: np.ndarray, ridge: float) -> np.ndarray:
    """Coefficients minimising the squared relative error (each network weighted by 1/measured) plus a
    ridge that pulls the junction terms (not the intercept or the table's scale) towards 0, scaled to
    the features' magnitude; least squares on the augmented system, so a junction kind that none of
    the networks has gets 0 rather than a singular matrix."""
    w = 1.0 / m
    Xw, yw = X * w[:, None], m * w
    scale = np.sqrt((Xw ** 2).mean(axis=0)) + 1e-12
    penalty = np.sqrt(np.r_[0.0, 0.0, np.full(X.shape[1] - 2, ridge * len(m))])
    Z = np.vstack([Xw / scale, np.diag(penalty)])
    y = np.r_[yw, np.zeros(X.shape[1])]
    return np.linalg.lstsq(Z, y, rcond=None)[0] / scale


def _loo_errors(X: np.ndarray, m: np.ndarray, ridge: float) -> np.ndarray:
    """Relative error of each network predicted by the model fitted on the others."""
    keep = np.ones(len(m), dtype=bool)
    errors = []
    for i in range(len(m)):
        keep[i] = False
        errors.append(abs(X[i] @ _solve(X[keep], m[keep], ridge) / m[i] - 1))
        keep[i] = True
    return np.array(errors)


def _auto_ridge(X: np.ndarray, m: np.ndarray) -> tuple[float, float]:
    """(ridge, its leave-one-out mean relative error) by the one-standard-error rule (Breiman et al.;
    as glmnet's lambda.1se): the largest ridge of RIDGES whose leave-one-out error is within one
    standard error of the least. Junction terms must earn their place: on noisy measurements the
    rule keeps the table's intercept and scale, on clean ones the terms the networks support."""
    errors = {r: _loo_errors(X, m, r) for r in RIDGES}
    best = min(RIDGES, key=lambda r: errors[r].mean())
    bar = errors[best].mean() + errors[best].std(ddof=1) / np.sqrt(len(m))
    ridge = max(r for r in RIDGES if errors[r].mean() <= bar)
    return ridge, float(errors[ridge].mean())


def fit_latency_model(table: pd.DataFrame, archs: list[Architecture], measured, *, ridge: float | str = "auto",
                      min_networks: int = MIN_FIT_NETWORKS) -> CostModel:
    """The latency model fitted to `measured` (ms) whole networks `archs` over `table` (see the module).
    `ridge` "auto": chosen among RIDGES by leave-one-out relative error over the fitted networks with
    the one-standard-error rule (`_auto_ridge`): junction terms the networks do not support shrink
    towards 0, leaving the table's intercept and scale."""
    if len(archs) != len(measured):
        raise ValueError(f"{len(archs)} architectures but {len(measured)} measurements")
    if len(archs) < min_networks:
        raise ValueError(f"fitting the latency model needs at least {min_networks} measured networks, got "
                         f"{len(archs)} (latency.model.fit_networks)")
    m = np.asarray(measured, dtype=np.float64)
    if not np.isfinite(m).all() or (m <= 0).any():
        raise ValueError("measured latencies must be finite and positive")
    base = table_model(table, "latency_ms")
    idx = np.stack([base.indices(a) for a in archs])
    sizes = junction_sizes(table)
    X = _features(base.predict_indices(idx), idx, sizes)
    loo = None
    if ridge == "auto":
        ridge, loo = _auto_ridge(X, m)
    coef = _solve(X, m, float(ridge))
    b0, b1, g = coef[0], coef[1], coef[2:]
    if not b1 > 0:
        raise ValueError(f"the latency model's fitted table scale is {b1:.3g}, not positive: the {len(m)} measured "
                         "networks do not follow the table (a noisy device? more runs or rounds, or kind: table)")
    pairwise = np.zeros((base.num_blocks - 1, NUM_CANDIDATES, NUM_CANDIDATES))
    kinds = 2 * KIND[:, None] + KIND[None, :]  # (13, 13) junction kind of (a, b)
    per_kind = np.r_[0.0, g]  # conv-conv: the baseline
    for i, s in enumerate(sizes):
        pairwise[i] = s * per_kind[kinds]
    fitted = X @ coef
    info = {"kind": "pairwise", "networks": len(archs), "ridge": float(ridge), "intercept_ms": float(b0),
            "table_scale": float(b1), "junction_ms_per_melement": dict(zip(JUNCTIONS, map(float, g))),
            "fit_mape": float(np.abs(fitted / m - 1).mean()),
            **({"ridge_loo_mape": loo} if loo is not None else {})}
    return CostModel(base.space, "latency_ms", float(b0 + b1 * base.fixed), b1 * base.unary, pairwise, info)


def model_path(table_path: str | Path) -> Path:
    """Where the latency_table stage keeps a table's fitted model: beside it."""
    p = Path(table_path)
    return p.with_name(p.stem + ".model.json")


def write_model(model: CostModel, path: str | Path) -> None:
    from nas_core.io import atomic_write_text

    atomic_write_text(path, json.dumps(model.to_json()))


def read_model(path: str | Path) -> CostModel:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: no latency model (the latency_table stage writes it beside the table; "
                         "rerun it, or use the table alone: cost_metric latency_ms)")
    try:
        obj = json.loads(p.read_text())
    except ValueError as e:
        raise ValueError(f"{p}: not JSON ({e}); rerun the latency_table stage") from None
    return CostModel.from_json(obj, str(p))


def load_cost_model(table_path: str | Path, metric: str) -> CostModel:
    """What prices architectures by `metric`: the table's column (macs, params, latency_ms), or the
    latency model fitted over the latency table (latency_model). Errors name the file."""
    from nas_core.cost.macs import read_cost_table

    if metric == "latency_model":
        return read_model(model_path(table_path))
    table = read_cost_table(table_path)
    try:
        return table_model(table, metric)
    except ValueError as e:
        raise ValueError(f"{table_path}: {e}") from None
