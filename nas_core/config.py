"""The one typed schema of `params.yaml`: frozen sections, unknown keys rejected, errors that name
the field and the allowed values. Each stage receives its own section."""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from nas_core.params_file import ParamsError, parse_yaml, read_text, yaml_kind
from nas_core.space.spaces import INPUT_MULTIPLE, SPACES

# strict scalars: YAML's `yes` is no epoch count, "3" no integer and 1.0 no index (an int is a valid float)
Int, Float, Bool = StrictInt, StrictFloat, StrictBool
SpaceName = Literal["small", "large", "xlarge"]


# No setting is a secret (SSH uses key files or an agent): a key that looks like one is refused, and its
# value never reaches a message, a log or a store (Prefect's included).
_SECRET_WORDS = ("pass", "secret", "token")


def is_secret_key(key: object) -> bool:
    return any(word in str(key).lower() for word in _SECRET_WORDS)


def _redact(value: Any) -> Any:
    """`value` with the values of secret-looking keys replaced, at any depth (for messages)."""
    if isinstance(value, dict):
        return {k: "<redacted>" if is_secret_key(k) else _redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact(v) for v in value]
    return value


def _secret_keys(key: str, value: Any) -> list[str]:
    """Dotted keys of an override that name a secret, its value's nested keys included."""
    found = [key] if any(is_secret_key(part) for part in key.split(".")) else []
    if isinstance(value, dict):
        found += [k for sub, v in value.items() for k in _secret_keys(f"{key}.{sub}", v)]
    return found


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Size(Section):
    height: Int = Field(gt=0, multiple_of=INPUT_MULTIPLE)
    width: Int = Field(gt=0, multiple_of=INPUT_MULTIPLE)

    @property
    def hw(self) -> tuple[int, int]:
        return (self.height, self.width)


class Paths(Section):
    """Every artifact path, once; dvc.yaml refers to them as ${paths.x}."""

    dataset: str = "data/cityscapes"  # the target task's dataset, in the format data.format names
    coco: str = "data/coco"
    imagenet: str = "data/imagenet"
    cost_tables: str = "outputs/cost_tables"
    latency: str = "outputs/latency"
    search: str = "outputs/search"
    samples: str = "outputs/samples"
    train: str = "outputs/train"
    benchmark: str = "outputs/benchmark"
    metrics: str = "outputs/metrics"  # small DVC metrics files kept in git (cache: false)
    # the experiment layer: <experiments>/<name>/{search,samples,train} and <benchmark>/<name> per experiment,
    # network cards <networks>/<name>.json (the published networks and each experiment's choice), Table 1 in <report>
    experiments: str = "outputs/experiments"
    networks: str = "outputs/networks"
    report: str = "outputs/report"
    cluster: str = "outputs/cluster"  # launchers written by `squeezenas cluster submit` (sbatch scripts, manifests)

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data):
        if isinstance(data, dict) and "cityscapes" in data:
            raise ValueError("paths.cityscapes: renamed to paths.dataset (the target task's dataset; data.format "
                             "says whether it is cityscapes or folder): rename the key")
        return data


def _removed_num_classes(section: str, data):
    """num_classes is no setting any more: the class count is the target dataset's (classes.yaml or Cityscapes')."""
    if isinstance(data, dict) and "num_classes" in data:
        raise ValueError(f"{section}.num_classes: removed; the class count comes from the dataset (paths.dataset, "
                         "data.format): delete the key")
    return data


class Tracking(Section):
    mlflow_uri: str = "sqlite:///mlflow.db"
    experiment: str = "squeezenas"
    registered_model: str = "squeezenas"


class DataParams(Section):
    """The target dataset's format and the generated default datasets. With real datasets, set generate: false
    and point paths.dataset / coco / imagenet at them (README: "Real data"). A folder-format target is the
    user's own (README: "Your own dataset"): it is checked, never generated."""

    format: Literal["cityscapes", "folder"] = "cityscapes"
    generate: Bool = True
    seed: Int = 0
    cityscapes_train: Int = Field(32, ge=1)
    cityscapes_val: Int = Field(12, ge=1)
    cityscapes_extra: Int = Field(8, ge=0)
    cityscapes_size: Size = Size(height=256, width=512)
    coco_train: Int = Field(24, ge=1)
    coco_val: Int = Field(8, ge=1)
    coco_size: Size = Size(height=240, width=320)
    imagenet_classes: Int = Field(4, ge=2)
    imagenet_train_per_class: Int = Field(32, ge=1)
    imagenet_val_per_class: Int = Field(8, ge=1)
    imagenet_size: Int = Field(64, ge=16)


# Across machines (search and training): nnodes > 1 runs the same command on every node, the nodes meet at a
# c10d rendezvous (`rdzv_endpoint`, host:port on one of them), torchrun restarts the workers up to `max_restarts`
# times after a failure or a node's return, each time from the last checkpoint (tasks/torchrun.py).

_ENDPOINT = re.compile(r"^(?P<host>[A-Za-z0-9_.\-]+|\[[0-9A-Fa-f:.]+\]):(?P<port>[0-9]{1,5})$")


def check_rendezvous(section, name: str) -> None:
    """nnodes > 1 needs a host:port rendezvous; errors name `name`'s field."""
    endpoint = section.rdzv_endpoint
    if endpoint is not None:
        m = _ENDPOINT.match(endpoint)
        if not m or not 1 <= int(m.group("port")) <= 65535:
            raise ValueError(f"{name}.rdzv_endpoint: expected host:port (a port 1-65535, e.g. node1:29400), "
                             f"got {endpoint!r}")
    if section.nnodes > 1 and endpoint is None:
        raise ValueError(f"{name}.rdzv_endpoint: nnodes {section.nnodes} needs a c10d rendezvous endpoint "
                         f"host:port on one of the nodes (e.g. --set {name}.rdzv_endpoint=node1:29400)")


class CostTablesParams(Section):
    spaces: tuple[SpaceName, ...] = ("small", "large", "xlarge")
    input_size: Size = Size(height=1024, width=2048)

    @model_validator(mode="before")
    @classmethod
    def _no_num_classes(cls, data):
        return _removed_num_classes("cost_tables", data)

    @field_validator("spaces")
    @classmethod
    def _nonempty(cls, v):
        if not v:
            raise ValueError(f"list at least one space of: {', '.join(SPACES)}")
        return v


Baseline = Literal["squeezenas_mac_small", "squeezenas_lat_small", "squeezenas_mac_large", "squeezenas_lat_large",
                   "squeezenas_mac_xlarge", "squeezenas_lat_xlarge", "mobilenetv3_small", "mobilenetv3_large"]


class TrainStageParams(Section):
    """One retraining stage (paper section 5.3.2); lr / weight_decay left unset take train.lr / train.weight_decay."""

    enabled: Bool = True  # off: the stage passes the previous model on (or 'scratch'), recorded in its lineage
    epochs: Int = Field(gt=0)
    lr: Float | None = Field(None, gt=0)
    weight_decay: Float | None = Field(None, ge=0)
    schedule: Literal["step", "poly", "constant"] = "step"
    milestones: tuple[Int, ...] = ()  # step: epochs at which the lr is multiplied by gamma
    gamma: Float = Field(0.1, gt=0, le=1)
    power: Float = Field(0.9, gt=0)  # poly
    warmup_epochs: Float = Field(0.0, ge=0)
    patch: Size = Size(height=768, width=768)  # crop size; ImageNet: the square training crop
    scale: tuple[Float, Float] = (0.5, 2.0)  # segmentation: zoom range; ImageNet: crop area fraction
    batch_size: Int = Field(8, ge=1)  # per process
    eval_every: Int = Field(1, ge=0)  # validate every n epochs (0: only after the last)

    @model_validator(mode="after")
    def _milestones_inside(self):
        m = list(self.milestones)
        if m != sorted(set(m)) or any(not 0 < x < self.epochs for x in m):
            raise ValueError(f"milestones must increase strictly within 1..{self.epochs - 1}, got {m}")
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale must be 0 < min <= max, got {list(self.scale)}")
        return self


# the paper's regime (section 5.3.2); ImageNet follows ResNet's, COCO DeepLabV3+'s poly schedule
TRAIN_STAGE_DEFAULTS: dict[str, dict] = {
    "pretrain_imagenet": dict(epochs=90, lr=0.1, weight_decay=1e-4, schedule="step", milestones=(30, 60),
                              patch=dict(height=224, width=224), scale=(0.08, 1.0), batch_size=64),
    "pretrain_coco": dict(epochs=30, schedule="poly"),
    "train_coarse": dict(epochs=40, schedule="poly"),
    "train_fine": dict(epochs=100, schedule="step", milestones=(50, 75)),
}


class TrainParams(Section):
    """Shared optimiser defaults (the paper's: SGD momentum, lr 0.05, wd 1e-5, AMP) and the four stages.
    The schema defaults are the paper's regime; params.yaml holds the small default run."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    nproc: Int = Field(1, ge=1)  # > 1: DDP (SyncBatchNorm on GPU) in that many torchrun processes (per node)
    nnodes: Int = Field(1, ge=1)  # machines; > 1 needs rdzv_endpoint and storage every node sees
    rdzv_endpoint: str | None = None  # host:port of the c10d rendezvous store (on one of the nodes)
    max_restarts: Int = Field(0, ge=0)  # torchrun --max-restarts: worker restarts after a failure
    threads: Int | None = Field(None, ge=1)  # torch CPU threads per process (None: torch's default)
    lr: Float = Field(0.05, gt=0)
    momentum: Float = Field(0.9, ge=0, lt=1)
    weight_decay: Float = Field(1e-5, ge=0)
    nesterov: Bool = False
    amp: Bool = True  # float16 autocast on CUDA; ignored on CPU
    grad_clip: Float | None = Field(None, gt=0)
    num_workers: Int = Field(4, ge=0)
    seed: Int = 0
    checkpoint_every: Int = Field(0, ge=0)  # batches between mid-epoch checkpoints (0: epoch ends only)
    log_every: Int = Field(20, ge=1)
    pretrain_imagenet: TrainStageParams = TrainStageParams(**TRAIN_STAGE_DEFAULTS["pretrain_imagenet"])
    pretrain_coco: TrainStageParams = TrainStageParams(**TRAIN_STAGE_DEFAULTS["pretrain_coco"])
    train_coarse: TrainStageParams = TrainStageParams(**TRAIN_STAGE_DEFAULTS["train_coarse"])
    train_fine: TrainStageParams = TrainStageParams(**TRAIN_STAGE_DEFAULTS["train_fine"])

    @model_validator(mode="before")
    @classmethod
    def _stage_defaults(cls, data):
        # a stage given in part keeps its own defaults for the rest (e.g. only `enabled: false`)
        if isinstance(data, dict):
            data = {**data, **{name: {**defaults, **data[name]} for name, defaults in TRAIN_STAGE_DEFAULTS.items()
                               if isinstance(data.get(name), dict)}}
        return data

    @model_validator(mode="after")
    def _square_imagenet_crop(self):
        check_rendezvous(self, "train")
        patch = self.pretrain_imagenet.patch
        if patch.height != patch.width:
            raise ValueError(f"pretrain_imagenet.patch must be square, got {patch.height}x{patch.width}")
        return self

    def stage(self, name: str) -> TrainStageParams:
        return getattr(self, name)


class BenchmarkParams(Section):
    """The final Table-1-style benchmark: our network and the baselines, measured the same way."""

    input_size: Size = Size(height=1024, width=2048)  # latency and MACs, batch 1 (the paper's)
    # where latency is measured: 'local' = onnxruntime on this machine's CPU (threads, warmup, runs below);
    # 'profiling' = the latency profiling stage's target and protocol (its params section)
    target: Literal["local", "profiling"] = "local"
    threads: Int = Field(1, ge=1)  # onnxruntime (and torch evaluation) threads (1: the profiling protocol)
    # local: onnxruntime's graph optimisation as deployed ('all': onnxruntime's default; 'extended' before issue 16)
    optimization: Literal["basic", "extended", "all"] = "all"
    warmup: Int = Field(3, ge=0)
    runs: Int = Field(20, ge=1)
    baselines: tuple[Baseline, ...] = ("squeezenas_lat_small", "mobilenetv3_small", "mobilenetv3_large")
    # released weights of published networks (relative paths are from the repository root), used by the
    # baselines here and by the report stage's Table 1
    weights: dict[Baseline, str] = {"squeezenas_lat_small": "reference/weights/squeezenas_lat_small.pth"}
    onnx_atol: Float = Field(1e-4, gt=0)  # max |PyTorch - ONNX| on the logits / max(1, max |logit|)
    register_model: Bool = True  # register our final model in the MLflow model registry
    # the report stage times every network of Table 1 in one session, interleaved over this many rounds
    # (each of warmup + runs), so that busy moments of a shared machine hit all of them alike
    rounds: Int = Field(3, ge=1)



# latency_ms: the latency table alone (the paper's eq. 3); latency_model: the latency_table stage's model over it
CostKind = Literal["macs", "params", "latency_ms", "latency_model"]
# published networks ('{space}' stands for the searched space) and MobileNetV3 (macs/params only)
_REFERENCE = r"^(squeezenas_(mac|lat)_(small|large|xlarge|\{space\})|mobilenetv3_(small|large))$"


class ChoiceParams(Section):
    """How the network to retrain is chosen from the estimated front (paper section 5.3.1): cost
    nearest to a target, or the best mIoU under a budget; the target/budget is `target` (table
    units: MACs, parameters or ms) or, when that is unset, the cost of the `reference` network."""

    rule: Literal["nearest_cost", "best_under_budget"] = "nearest_cost"
    metric: CostKind = "macs"
    reference: str | None = Field("squeezenas_mac_{space}", pattern=_REFERENCE)
    target: Float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _a_target(self):
        if self.reference is None and self.target is None:
            raise ValueError("set target (a cost) or reference (a network whose cost is the target)")
        return self


class SampleParams(Section):
    """Sample K architectures from the searched distribution and score each through the supernet."""

    num_samples: Int = Field(200, ge=1)
    seed: Int = 0
    bn_recalibration_batches: Int = Field(0, ge=0)  # train batches to re-estimate BN per path (paper: 0)
    batch_size: Int = Field(2, ge=1)
    val_images: Int = Field(0, ge=0)  # the first n val images (0: all, as the paper)
    # recorded when their table (latency_model: its model) exists
    costs: tuple[CostKind, ...] = ("macs", "params", "latency_ms", "latency_model")
    workers: Int = Field(2, ge=1)  # parallel evaluations
    threads_per_worker: Int = Field(0, ge=0)  # torch threads of each (0: cores // workers)
    runner: Literal["threads", "dask"] = "threads"  # dask: prefect-dask, a local cluster or dask_address
    dask_address: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"  # several GPUs: paths are dealt out across them
    val_cache_mb: Int = Field(2048, ge=0)  # keep the val (and BN) images in memory up to this size
    choice: ChoiceParams = ChoiceParams()


class SearchParams(Section):
    """The supernet search (paper sections 4.1-4.3). Schema defaults: the paper's stated choices
    (768x768 patches, tau 5 -> 1, pruning under 0.5%, joint co-optimisation) and FBNet's where the
    paper is silent (90 epochs, Adam on theta at 0.01); params.yaml holds the small CPU run."""

    space: SpaceName = "small"
    # C(i, j): a MAC table of the cost_tables stage or a latency table of the profiling stage
    cost_table: str = "outputs/cost_tables/macs_small.parquet"
    cost_metric: CostKind = "macs"
    cost_reference: Float | None = Field(None, gt=0)  # table units; unset: expected block cost at uniform theta
    alpha: Float = Field(0.2, ge=0)
    epochs: Int = Field(90, ge=1)
    scheme: Literal["joint", "fbnet"] = "joint"
    fbnet_split: Float = Field(0.8, gt=0, lt=1)  # fbnet: the weights' share of the training set
    warmup_epochs: Int = Field(0, ge=0)  # weights only
    tau_schedule: Literal["linear", "exponential"] = "linear"
    tau_start: Float = Field(5.0, gt=0)
    tau_end: Float = Field(1.0, gt=0)
    tau_decay: Float | None = Field(None, gt=0, le=1)  # exponential: fixed factor per epoch (FBNet 0.956)
    hard: Bool = False  # straight-through one-hot samples
    patch: Size = Size(height=768, width=768)
    scale: tuple[Float, Float] = (0.5, 2.0)
    batch_size: Int = Field(8, ge=1)  # per process
    weight_lr: Float = Field(0.05, gt=0)
    momentum: Float = Field(0.9, ge=0, lt=1)
    weight_decay: Float = Field(1e-5, ge=0)
    theta_lr: Float = Field(0.01, gt=0)
    theta_weight_decay: Float = Field(0.0, ge=0)
    prune_threshold: Float = Field(0.005, ge=0, lt=1 / 13)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    nproc: Int = Field(1, ge=1)  # > 1: DDP in that many torchrun processes per node (SyncBatchNorm on GPU)
    nnodes: Int = Field(1, ge=1)  # machines; > 1 needs rdzv_endpoint and storage every node sees
    rdzv_endpoint: str | None = None  # host:port of the c10d rendezvous store (on one of the nodes)
    max_restarts: Int = Field(0, ge=0)  # torchrun --max-restarts: worker restarts after a failure
    amp: Bool = True  # float16 autocast on CUDA; ignored on CPU
    # the fused superblock (issue 19: same parameters and math, fewer kernels); auto: what benchmarks/README.md
    # measured faster on the device (nas_core.search.supernet.FUSED_AUTO)
    fused: Literal["auto"] | Bool = "auto"
    num_workers: Int = Field(0, ge=0)
    threads: Int = Field(0, ge=0)  # torch CPU threads per process (0: torch's default)
    checkpoint_every: Int = Field(0, ge=0)  # steps between mid-epoch checkpoints (0: epoch ends only)
    log_every: Int = Field(10, ge=1)
    eval_images: Int = Field(0, ge=0)  # val images for the argmax architecture's mIoU (0: all)
    seed: Int = 0

    @model_validator(mode="before")
    @classmethod
    def _no_num_classes(cls, data):
        return _removed_num_classes("search", data)

    @model_validator(mode="after")
    def _consistent(self):
        check_rendezvous(self, "search")
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be below epochs ({self.epochs})")
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale must be 0 < min <= max, got {list(self.scale)}")
        return self


class FidelityParams(Section):
    """Does the table (and the model) predict real latency: networks measured end to end on the same
    target, none of them among the model's fitted ones (held out)."""

    num_networks: Int = Field(30, ge=0)  # 0 skips the check
    seed: Int = 0
    space: SpaceName = "small"  # one of latency.spaces


MIN_FIT_NETWORKS = 8  # the latency model has 5 coefficients: it is fitted on at least this many networks


class LatencyModelParams(Section):
    """The latency model over each table (nas_core/cost/model.py, issue 16): fitted per space on
    `fit_networks` whole networks measured on the target. kind `table`: the paper's additive table
    alone (eq. 3), nothing fitted; `pairwise`: intercept, the table's scale and neighbour-coupled
    junction terms. Latency experiments search with `search.cost_metric: latency_model` and price
    samples and the choice with it."""

    kind: Literal["table", "pairwise"] = "pairwise"
    fit_networks: Int = Field(16, ge=0)
    seed: Int = 1  # the fitted networks' draw (the fidelity check's is fidelity.seed)
    # the junction terms' ridge; auto: the least leave-one-out error over the fitted networks
    ridge: Float | Literal["auto"] = "auto"

    @field_validator("ridge")
    @classmethod
    def _ridge(cls, v):
        if v != "auto" and v < 0:
            raise ValueError("must be >= 0 or auto")
        return v

    @model_validator(mode="after")
    def _enough(self):
        if self.kind == "pairwise" and self.fit_networks < MIN_FIT_NETWORKS:
            raise ValueError(f"latency.model.fit_networks: the pairwise model needs at least {MIN_FIT_NETWORKS} "
                             f"measured networks, got {self.fit_networks} (or kind: table)")
        return self


class LatencyParams(Section):
    """Latency cost tables measured on a target device (paper section 5.2), `squeezenas profile`.
    SSH authenticates with key_file or an ssh-agent only: a password has no place here."""

    target: Literal["local", "ssh"] = "local"
    host: str | None = None
    # a pool of identical devices, each reached like `host` (same port, user, key, backend); the
    # units are dealt across them and the table assembled from all of their measurements
    hosts: tuple[str, ...] = ()
    runner: Literal["threads", "dask"] = "threads"  # one job per device: threads, or prefect-dask
    dask_address: str | None = None  # runner dask: an existing scheduler; unset: a local cluster
    port: Int = Field(22, ge=1, le=65535)
    user: str | None = None
    key_file: str | None = None
    known_hosts: str = "~/.ssh/known_hosts"  # the only file host keys are checked against
    backend: Literal["onnxruntime", "trtexec", "torch_cuda"] = "onnxruntime"
    # what is deployed (issue 16): trtexec fp32 | fp16 | int8 | best (torch_cuda: fp32 | fp16); INT8 is often
    # no faster than FP16 on a Jetson, so measure both
    precision: Literal["fp32", "fp16", "int8", "best"] = "fp32"
    cuda_graph: Bool = False  # trtexec --useCudaGraph; torch_cuda: each model timed inside a CUDA graph
    no_data_transfers: Bool = True  # trtexec --noDataTransfers (the input stays on the GPU, as deployed)
    spin_wait: Bool = True  # trtexec --useSpinWait (steadier synchronisation)
    threads: Int = Field(1, ge=1)  # onnxruntime intra-op threads (pinned)
    # onnxruntime graph optimisation level; 'all' adds NCHWc layout changes whose placement depends on
    # the neighbouring blocks, which breaks the additive table (benchmarks/README.md)
    optimization: Literal["basic", "extended", "all"] = "extended"
    clock: Literal["wall", "thread"] = "wall"  # thread: CPU time of the inference thread (shared CPUs)
    providers: tuple[str, ...] = ("CPUExecutionProvider",)  # onnxruntime execution providers
    remote_python: str = "python3"
    remote_workdir: str = "/tmp"  # a private squeezenas-* directory is made in it and removed after
    trtexec: str = "/usr/src/tensorrt/bin/trtexec"
    trtexec_warmup_ms: Int = Field(200, ge=0)
    power_mode: Int | None = Field(None, ge=0)  # nvpmodel -m N first (AGX Xavier 30 W: 3 = MODE_30W_ALL)
    pin_clocks: Bool = False  # jetson_clocks first
    warmup: Int = Field(10, ge=0)
    runs: Int = Field(50, ge=1)  # at least this many timed runs per model ...
    min_time_s: Float = Field(0.3, ge=0)  # ... lasting at least this long
    rounds: Int = Field(1, ge=1)  # onnxruntime: > 1 interleaves all models over rounds (busy machines)
    input_size: Size = Size(height=256, width=512)
    spaces: tuple[SpaceName, ...] = ("small",)
    timeout_s: Float = Field(600.0, gt=0)  # no result from the device for this long: retry
    keepalive_s: Float = Field(15.0, gt=0)
    retries: Int = Field(3, ge=0)  # reconnects without progress, and Prefect task retries
    backoff_s: Float = Field(2.0, ge=0)  # first retry delay, doubled each time
    fidelity: FidelityParams = FidelityParams()
    model: LatencyModelParams = LatencyModelParams()

    @model_validator(mode="before")
    @classmethod
    def _no_password(cls, data):
        _removed_num_classes("latency", data)
        if isinstance(data, dict) and "fp16" in data:
            raise ValueError("latency.fp16: replaced by latency.precision (fp32 | fp16 | int8 | best): "
                             "write precision: fp16 for fp16: true")
        secret = [k for k in data if is_secret_key(k)] if isinstance(data, dict) else []
        if secret:  # the message's "got" is redacted by _format: never the secret
            raise ValueError(f"latency.{secret[0]}: passwords are never accepted; use key_file or an ssh-agent")
        return data

    @model_validator(mode="after")
    def _consistent(self):
        if not self.spaces:
            raise ValueError(f"latency.spaces: list at least one space of: {', '.join(SPACES)}")
        if self.target == "ssh" and not (self.host or self.hosts):
            raise ValueError("latency.host: target 'ssh' needs a host (or latency.hosts, a pool)")
        if self.hosts and self.target != "ssh":
            raise ValueError("latency.hosts: a pool of devices is reached over SSH; set target: ssh")
        if self.hosts and self.host:
            raise ValueError("latency.host and latency.hosts: set one (hosts names every device of a pool)")
        twice = sorted({h for h in self.hosts if self.hosts.count(h) > 1})
        if twice:
            raise ValueError(f"latency.hosts: {', '.join(twice)} listed more than once")
        if self.target == "ssh" and self.backend == "torch_cuda":
            raise ValueError("latency.backend: torch_cuda times PyTorch on this machine; use target 'local'")
        if self.backend == "torch_cuda" and self.precision in ("int8", "best"):
            raise ValueError(f"latency.precision: {self.precision} is TensorRT's (backend trtexec); torch_cuda "
                             "times fp32 or fp16")
        if self.clock == "thread" and (self.threads != 1 or self.backend != "onnxruntime"):
            raise ValueError("latency.clock: 'thread' measures one CPU thread: needs backend onnxruntime, threads 1")
        if self.fidelity.num_networks and self.fidelity.space not in self.spaces:
            raise ValueError(f"latency.fidelity.space {self.fidelity.space!r} is not among latency.spaces "
                             f"{list(self.spaces)}")
        return self

    def devices(self) -> tuple[LatencyParams, ...]:
        """One section per device: each host of the pool with the shared settings, or this one."""
        return tuple(self.model_copy(update={"host": h, "hosts": ()}) for h in self.hosts) or (self,)


class PipelineParams(Section):
    """The Prefect parent flow (flows/pipeline.py, scheduling without DVC): independent experiment chains
    run side by side, at most `concurrency` at a time (`dvc repro` runs stages one by one). `dispatch`:
    `subflows` runs each chain stage as a subflow in the parent's process; `deployments` runs each as its
    own flow run of its prefect.yaml deployment, on that deployment's work pool (a worker picks it up)."""

    concurrency: Int = Field(2, ge=1)
    dispatch: Literal["subflows", "deployments"] = "subflows"


DnsLabel = Annotated[str, StringConstraints(pattern=r"^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$")]


class SlurmParams(Section):
    """The sbatch script of `squeezenas cluster sbatch`: one task per node, each running the stage command."""

    partition: str | None = None
    account: str | None = None
    time: str = Field("2-00:00:00", pattern=r"^([0-9]+-)?[0-9]{1,2}:[0-9]{2}:[0-9]{2}$")  # --time
    gpus_per_node: Int = Field(0, ge=0)
    cpus_per_task: Int = Field(8, ge=1)
    # shell lines run on every node before the command (the job starts in the submit folder, which must be on
    # storage every node sees): the project's environment
    setup: str = "source .venv/bin/activate"


class KubernetesParams(Section):
    """The manifest of `squeezenas cluster k8s`: a Kubeflow Trainer v2 TrainJob (runtime `runtime`), or where
    that operator is absent an indexed Job with a headless Service (plain Kubernetes, no operator)."""

    kind: Literal["trainjob", "indexed-job"] = "trainjob"
    namespace: DnsLabel = "default"
    image: str = "squeezenas:latest"  # the project installed, `squeezenas` on PATH
    runtime: str = "torch-distributed"  # TrainJob: the (Cluster)TrainingRuntime
    # the project folder (params.yaml, data, outputs, mlflow.db), the command's working directory: storage
    # every pod sees; indexed-job mounts the PersistentVolumeClaim `volume_claim` there (TrainJob: the runtime's)
    workdir: str = "/workspace"
    volume_claim: DnsLabel | None = None
    gpus_per_node: Int = Field(0, ge=0)


class ClusterParams(Section):
    """Launchers of the gang-scheduled stages (search, training) on the engines clusters run: SLURM and
    Kubernetes, generated by `squeezenas cluster sbatch|k8s` from this section: a job of `nnodes` nodes x
    `nproc` processes, whose command sets the stage's nnodes, nproc and rdzv_endpoint (the first node's
    address is known only in the job, so the stage section itself keeps nnodes 1 and no endpoint)."""

    nnodes: Int = Field(2, ge=1)
    nproc: Int = Field(1, ge=1)  # per node, e.g. its GPUs
    job_name: DnsLabel = "squeezenas"
    rdzv_port: Int = Field(29400, ge=1, le=65535)
    poll_s: Float = Field(30.0, gt=0)  # how often a submitted job's state is read while it is watched
    slurm: SlurmParams = SlurmParams()
    kubernetes: KubernetesParams = KubernetesParams()


PUBLISHED_NAMES = ("squeezenas_mac_small", "squeezenas_lat_small", "squeezenas_mac_large", "squeezenas_lat_large",
                   "squeezenas_mac_xlarge", "squeezenas_lat_xlarge")
ExperimentName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,39}$")]
OBJECTIVE_METRIC = {"macs": "macs", "latency": "latency_model"}  # latency.model.kind table: the table alone


class ExperimentChoice(Section):
    """The paper's choice rules (section 5.3.1) relative to a network: `nearest_cost` picks the sample
    whose cost is nearest to the reference's (MAC networks: the published MAC network of the space),
    `best_under_budget` the best estimated mIoU at a cost no higher than the reference's (latency
    networks: the MAC experiment's chosen network of the same space). `reference` names a published
    network or another experiment; its card is <paths.networks>/<reference>.json."""

    rule: Literal["nearest_cost", "best_under_budget"]
    metric: CostKind
    reference: ExperimentName
    # best_under_budget with no sample under the budget (a short search, few samples): 'cheapest' takes the
    # cheapest sample and records budget_met: false in select_metrics.json (the report says so); 'fail' stops
    if_none_under: Literal["cheapest", "fail"] = "cheapest"


class ExperimentParams(Section):
    """One search of the paper's experiment (sections 5.1-5.3) and its chain: space, objective and its
    cost table C(i, j), alpha, the choice rule; `search` overrides other search settings for it alone."""

    space: SpaceName
    objective: Literal["macs", "latency"]
    cost_table: str
    alpha: Float = Field(ge=0)
    choice: ExperimentChoice
    search: dict[str, Any] = {}


class Params(Section):
    paths: Paths = Paths()
    tracking: Tracking = Tracking()
    data: DataParams = DataParams()
    cost_tables: CostTablesParams = CostTablesParams()
    latency: LatencyParams = LatencyParams()
    train: TrainParams = TrainParams()
    benchmark: BenchmarkParams = BenchmarkParams()
    sample: SampleParams = SampleParams()
    search: SearchParams = SearchParams()
    pipeline: PipelineParams = PipelineParams()
    cluster: ClusterParams = ClusterParams()
    # the paper's six searches by default (params.yaml); each stage of a chain runs with --experiment NAME
    experiments: dict[ExperimentName, ExperimentParams] = {}
    experiment: str | None = None  # set by for_experiment (the --experiment option), never in the file

    @model_validator(mode="after")
    def _experiments_consistent(self):
        for name, exp in self.experiments.items():
            _check_experiment(self, name, exp)
        for name in self.experiments:  # a chain of references must end at a published network
            seen = [name]
            while (ref := self.experiments[seen[-1]].choice.reference) in self.experiments:
                if ref in seen:
                    raise ValueError(f"experiments.{name}.choice.reference: the references form a cycle "
                                     f"({' -> '.join([*seen, ref])})")
                seen.append(ref)
        return self

    def for_experiment(self, name: str) -> Params:
        """These params as experiment `name`'s chain sees them: its search settings, its choice rule, its
        own folders under paths.experiments and its own registered model (squeezenas-<name>)."""
        if name not in self.experiments:
            known = ", ".join(self.experiments) or "none: add an experiments section"
            raise ParamsError(f"--experiment {name}: no such experiment in params (experiments: {known})")
        exp = self.experiments[name]
        root = Path(self.paths.experiments) / name
        # the benchmarks side by side under paths.benchmark: the report stage reads that one folder
        paths = self.paths.model_copy(update={**{k: str(root / k) for k in ("search", "samples", "train")},
                                              "benchmark": str(Path(self.paths.benchmark) / name)})
        tracking = self.tracking.model_copy(update={"registered_model": f"{self.tracking.registered_model}-{name}"})
        search = experiment_search(self.search, name, exp, self.latency.model.kind)
        return self.model_copy(update={"search": search, "paths": paths,
                                       "tracking": tracking, "experiment": name})

    def dvc_stage(self, stage: str) -> str:
        """The DVC name of `stage` for these params: `search@lat_small` in an experiment's chain."""
        return f"{stage}@{self.experiment}" if self.experiment else stage

    def datasets(self) -> dict[str, str]:
        """The datasets the pipeline reads, by their paths field: the target (paths.dataset), COCO and ImageNet
        (each while a stage trains on it)."""
        used = {"dataset": True, "coco": self.train.pretrain_coco.enabled,
                "imagenet": self.train.pretrain_imagenet.enabled}
        return {name: getattr(self.paths, name) for name, on in used.items() if on}

    @model_validator(mode="after")
    def _coarse_needs_cityscapes(self):
        if self.data.format == "folder" and self.train.train_coarse.enabled:
            raise ValueError("train.train_coarse.enabled: the folder format has no coarse annotations (Cityscapes' "
                             "gtCoarse); set it to false (train_fine then starts from pretrain_coco's model)")
        return self


def experiment_search(base: SearchParams, name: str, exp: ExperimentParams,
                      latency_model: str = "pairwise") -> SearchParams:
    """The search section of experiment `name`: the shared one with its own space, table, objective,
    alpha and `search` overrides. A latency objective searches with the latency model over the table
    (`latency_model`), or the table alone where `latency.model.kind` is `table` (the paper's eq. 3)."""
    metric = OBJECTIVE_METRIC[exp.objective]
    if metric == "latency_model" and latency_model == "table":
        metric = "latency_ms"
    fixed = {"space": exp.space, "cost_table": exp.cost_table, "cost_metric": metric, "alpha": exp.alpha}
    clash = sorted(set(exp.search) & set(fixed))
    if clash:
        raise ValueError(f"experiments.{name}.search.{clash[0]}: set it on the experiment itself, not under search")
    try:
        return SearchParams.model_validate({**base.model_dump(), **exp.search, **fixed})
    except ValidationError as e:
        problems = []
        for err in e.errors():
            field = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                problems.append(f"{field}: unknown search key ({_nearest(field, list(SearchParams.model_fields))}"
                                f"valid keys: {', '.join(SearchParams.model_fields)})")
            else:
                problems.append(_problem({**err, "loc": ("experiments", name, "search", *err["loc"])}))
        raise ValueError("; ".join(p if p.startswith("experiments.") else f"experiments.{name}.search.{p}"
                                   for p in problems)) from None


def _check_experiment(params: Params, name: str, exp: ExperimentParams) -> None:
    """The experiment's table is one the pipeline makes (or an outside file), of its space and objective;
    its reference exists and is not itself."""
    where = f"experiments.{name}"
    table = Path(exp.cost_table)
    if table.parent == Path(params.paths.latency) / "tables":
        if exp.objective != "latency":
            raise ValueError(f"{where}.cost_table: {table} is a latency table; the objective is {exp.objective!r}")
        if table.name != f"latency_{exp.space}.parquet":
            raise ValueError(f"{where}.cost_table: {table} is not the latency table of space {exp.space!r} "
                             f"(latency_{exp.space}.parquet)")
        if exp.space not in params.latency.spaces:
            raise ValueError(f"{where}: objective latency needs the latency table of space {exp.space!r}, which the "
                             f"profiling stage does not measure: add {exp.space} to latency.spaces "
                             f"{list(params.latency.spaces)}")
    elif table.parent == Path(params.paths.cost_tables):
        if exp.objective != "macs":
            raise ValueError(f"{where}.cost_table: {table} is a MAC table; objective {exp.objective!r} needs "
                             f"{params.paths.latency}/tables/latency_{exp.space}.parquet")
        if table.name != f"macs_{exp.space}.parquet":
            raise ValueError(f"{where}.cost_table: {table} is not the MAC table of space {exp.space!r} "
                             f"(macs_{exp.space}.parquet)")
        if exp.space not in params.cost_tables.spaces:
            raise ValueError(f"{where}: the MAC table of space {exp.space!r} is not built: add {exp.space} to "
                             f"cost_tables.spaces {list(params.cost_tables.spaces)}")
    ref = exp.choice.reference
    if ref == name:
        raise ValueError(f"{where}.choice.reference: an experiment cannot be chosen relative to itself")
    if ref not in params.experiments and ref not in PUBLISHED_NAMES:
        raise ValueError(f"{where}.choice.reference: {ref!r} is neither a published network nor an experiment "
                         f"{_nearest(ref, [*PUBLISHED_NAMES, *params.experiments])}(published: "
                         f"{', '.join(PUBLISHED_NAMES)}; experiments: {', '.join(params.experiments)})")
    if exp.choice.metric.startswith("latency") and exp.objective == "macs" and exp.space not in params.latency.spaces:
        raise ValueError(f"{where}.choice.metric: {exp.choice.metric} needs the latency table of space "
                         f"{exp.space!r}: add it to latency.spaces")
    experiment_search(params.search, name, exp, params.latency.model.kind)


def missing_datasets(params: Params) -> list[str]:
    """One message per dataset the pipeline reads whose folder is absent: each one with data.generate false, and
    a folder-format target always (the pipeline never generates the user's own dataset)."""
    stage = {"coco": "pretrain_coco", "imagenet": "pretrain_imagenet"}
    own = params.data.format == "folder"
    messages = []
    for name, path in params.datasets().items():
        if Path(path).is_dir() or (params.data.generate and not (own and name == "dataset")):
            continue
        if own and name == "dataset":
            messages.append(f"paths.dataset: {path}: no such dataset folder (data.format is folder: point "
                            "paths.dataset at your dataset, README 'Your own dataset')")
        else:
            messages.append(f"paths.{name}: {path}: no such dataset folder (data.generate is false: point "
                            f"paths.{name} at the real dataset" +
                            (f", or set train.{stage[name]}.enabled: false)" if name in stage else ")"))
    return messages


def _keys_at(loc: tuple) -> list[str]:
    """The valid keys of the section that `loc` (a field's path) sits in; [] if it is no section."""
    model: type[BaseModel] = Params
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    return list(model.model_fields)


def _nearest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


def _problem(e: dict) -> str:
    """One validation error as `field: problem (got ..., the valid keys/values)`."""
    field = ".".join(str(p) for p in e["loc"])
    if e["type"] == "extra_forbidden":
        keys = _keys_at(e["loc"])
        return f"{field}: unknown key ({_nearest(e['loc'][-1], keys)}valid keys: {', '.join(keys)})"
    msg = e["msg"].removeprefix("Value error, ")
    if msg.startswith(field):  # a section's own check already names its fields
        return msg
    value = "<redacted>" if any(is_secret_key(p) for p in e["loc"]) else _redact(e.get("input"))
    got = "" if e["type"] == "missing" or isinstance(value, (dict, list)) else f" (got {value!r})"
    if isinstance(value, bool) and e["type"] in ("int_type", "float_type"):
        got = f" (got {value!r}: YAML reads yes/no/on/off as booleans)"
    elif isinstance(value, str) and e["type"] in ("int_type", "float_type", "bool_type"):
        got = f" (got the string {value!r}: write it unquoted)"
    if e["type"] == "literal_error":  # the allowed values are in the message; suggest the nearest
        hint = _nearest(value, re.findall(r"'([^']*)'", e["ctx"]["expected"]))
        got = f" (got {value!r}; {hint.rstrip()})" if hint else got
    return f"{field}: {msg}{got}"


def _format(err: ValidationError, source: str) -> str:
    return f"{source}: " + "; ".join(_problem(e) for e in err.errors())


def _set_dotted(data: dict, dotted: str, value: Any, source: str) -> None:
    keys = dotted.split(".")
    if not all(keys):
        raise ParamsError(f"--set {dotted!r}: expected key.sub=value with a key like search.alpha")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ParamsError(f"{source}: {k} is a value, not a section")
    node[keys[-1]] = value


def parse_params(data: dict, source: str = "params.yaml") -> Params:
    if not isinstance(data, dict):
        raise ParamsError(f"{source}: the top level must be a mapping of sections, not {yaml_kind(data)}")
    if "experiment" in data:
        raise ParamsError(f"{source}: experiment: chosen on the command line (--experiment NAME), not in the file; "
                          "the experiments are listed under 'experiments'")
    try:
        return Params.model_validate(data)
    except ValidationError as e:
        raise ParamsError(_format(e, source)) from None


def load_params(path: str | Path = "params.yaml", overrides: list[str] | tuple[str, ...] = (),
                experiment: str | None = None) -> Params:
    """Read params.yaml and apply `key.sub=value` overrides (values parsed as YAML); with `experiment`,
    the params as that experiment's chain sees them (Params.for_experiment)."""
    path = Path(path)
    data = parse_yaml(read_text(path), str(path))
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: the top level must be a mapping of sections, not {yaml_kind(data)}")
    for item in overrides:
        if "=" not in item:
            raise ParamsError(f"--set {item!r}: expected key.sub=value, e.g. --set search.alpha=0.5")
        key, raw = (part.strip() for part in item.split("=", 1))
        secret = _secret_keys(key, None)  # before parsing: a YAML error would quote the value
        # messages name the key, never echo the value: a value given here may be a secret
        value = parse_yaml(raw, f"--set {key}", tuple(key.split("."))) if not secret else None
        secret = secret or _secret_keys(key, value)
        if secret:
            raise ParamsError(f"--set {secret[0]}: secrets are never accepted (the value was not recorded); "
                              "SSH uses latency.key_file or an ssh-agent")
        _set_dotted(data, key, value, f"--set {key}")
    keys = [item.split("=", 1)[0].strip() for item in overrides]
    source = f"{path} with --set {', '.join(keys)}" if overrides else str(path)
    params = parse_params(data, source)
    return params.for_experiment(experiment) if experiment else params
