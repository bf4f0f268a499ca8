"""The sweep of bad inputs (issue 12): each through the real `squeezenas` command, refused with exit 2
and one line naming the file or the field, no traceback, and before any Prefect server starts."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.repo_copy import ROOT, stage_env

SMALL_CHOICES = ["k3_d1_e1_g1"] * 20  # nas_core.space.spaces: the small space has 20 blocks

# name -> text of a params file in the working folder (bytes: written as they are)
FILES = {
    "dup.yaml": "search:\n  epochs: 3\n  alpha: 0.5\n  epochs: 4\n",
    "dup_section.yaml": "search: {epochs: 3}\nsample: {}\nsearch: {epochs: 4}\n",
    "list.yaml": "- search\n- sample\n",
    "scalar.yaml": "just some words\n",
    "broken.yaml": "search:\n  alpha: [0.5, 1\n",
    "tabs.yaml": "search:\n\talpha: 0.5\n",
    "binary.yaml": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe",
    "nul.yaml": b"search:\x00 {}\n",
    "bad_candidate.json": json.dumps({"space": "small", "choices": ["k3_d1_e1_g1"] * 19 + ["k7_d1_e1_g1"]}),
    "short.json": json.dumps({"space": "small", "choices": SMALL_CHOICES[:3]}),
    "space.json": json.dumps({"space": "medium", "choices": SMALL_CHOICES}),
    "notjson.json": "{space: small",
    "extra.json": json.dumps({"space": "small", "choices": SMALL_CHOICES, "alpha": 1}),
}

S = "--set"
# (id, argv, what the one line must say); every message names the file or the field
CASES = [
    # the params file itself
    ("params-is-a-folder", ["search", "--params", "afolder"], "afolder: is a folder, not a params file"),
    ("params-missing", ["sample", "--params", "nope.yaml"], "nope.yaml: no such params file"),
    ("params-binary", ["cost-tables", "--params", "binary.yaml"], "binary.yaml: not a UTF-8 text file"),
    ("params-nul-byte", ["data", "--params", "nul.yaml"], "nul.yaml: not valid YAML"),
    ("params-a-list", ["select", "--params", "list.yaml"],
     "list.yaml: the top level must be a mapping of sections, not a list"),
    ("params-a-string", ["benchmark", "--params", "scalar.yaml"], "scalar.yaml: the top level must be a mapping"),
    ("params-bad-yaml", ["search", "--params", "broken.yaml"], "broken.yaml: not valid YAML at line 3"),
    ("params-tab-indent", ["search", "--params", "tabs.yaml"], "tabs.yaml: not valid YAML at line 2"),
    ("params-duplicate-key", ["search", "--params", "dup.yaml"],
     "dup.yaml: search.epochs: duplicate key (lines 2 and 4)"),
    ("params-duplicate-section", ["run", "--params", "dup_section.yaml"],
     "dup_section.yaml: search: duplicate key (lines 1 and 3)"),
    ("params-folder-for-run", ["run", "--params", "afolder"], "afolder: is a folder"),
    ("params-missing-lineage", ["lineage", "squeezenas", "--params", "nope.yaml"], "nope.yaml: no such params file"),
    # a typo in every section (and a section's own typo): the nearest valid key
    ("typo-section", ["search", S, "serach.alpha=0.5"], "serach: unknown key (did you mean 'search'?"),
    ("typo-paths", ["data", S, "paths.datset=x"], "paths.datset: unknown key (did you mean 'dataset'?"),
    ("paths-cityscapes-renamed", ["data", S, "paths.cityscapes=x"],
     "paths.cityscapes: renamed to paths.dataset (the target task's dataset; data.format says whether it is "
     "cityscapes or folder): rename the key"),
    ("data-format-unknown", ["data", S, "data.format=coco"],
     "data.format: Input should be 'cityscapes' or 'folder' (got 'coco')"),
    ("folder-with-coarse-stage", ["data", S, "data.format=folder"],
     "train.train_coarse.enabled: the folder format has no coarse annotations"),
    ("typo-tracking", ["lineage", "m", S, "tracking.mlflow_url=x"],
     "tracking.mlflow_url: unknown key (did you mean 'mlflow_uri'?"),
    ("typo-data", ["data", S, "data.generat=false"], "data.generat: unknown key (did you mean 'generate'?"),
    ("typo-cost-tables", ["cost-tables", S, "cost_tables.space=[small]"],
     "cost_tables.space: unknown key (did you mean 'spaces'?"),
    ("typo-latency", ["profile", S, "latency.hots=[a]"], "latency.hots: unknown key (did you mean 'hosts'?"),
    ("typo-latency-fidelity", ["profile", S, "latency.fidelity.num_network=3"],
     "latency.fidelity.num_network: unknown key (did you mean 'num_networks'?"),
    ("typo-train", ["train", "train_fine", S, "train.learning_rate=0.1"],
     "train.learning_rate: unknown key (valid keys: device,"),
    ("typo-train-stage", ["train", "pretrain_coco", S, "train.pretrain_coco.epoch=2"],
     "train.pretrain_coco.epoch: unknown key (did you mean 'epochs'?"),
    ("typo-benchmark", ["benchmark", S, "benchmark.baseline=[mobilenetv3_small]"],
     "benchmark.baseline: unknown key (did you mean 'baselines'?"),
    ("typo-sample", ["sample", S, "sample.num_sample=4"],
     "sample.num_sample: unknown key (did you mean 'num_samples'?"),
    ("typo-sample-choice", ["select", S, "sample.choice.rul=nearest_cost"],
     "sample.choice.rul: unknown key (did you mean 'rule'?"),
    ("typo-search", ["search", S, "search.alpah=0.5"], "search.alpah: unknown key (did you mean 'alpha'?"),
    # wrong types: no lax coercion
    ("epochs-yes", ["search", S, "search.epochs=yes"],
     "search.epochs: Input should be a valid integer (got True: YAML reads yes/no"),
    ("epochs-string", ["search", S, "search.epochs='3'"],
     "search.epochs: Input should be a valid integer (got the string '3'"),
    ("epochs-float", ["train", "train_fine", S, "train.train_fine.epochs=2.0"],
     "train.train_fine.epochs: Input should be a valid integer (got 2.0)"),
    ("bool-from-int", ["data", S, "data.generate=1"], "data.generate: Input should be a valid boolean (got 1)"),
    ("float-from-word", ["search", S, "search.alpha=fast"],
     "search.alpha: Input should be a valid number (got the string 'fast'"),
    ("section-a-number", ["search", S, "search=5"], "search: Input should be a valid dictionary"),
    ("literal-typo", ["search", S, "search.space=smal"],
     "search.space: Input should be 'small', 'large' or 'xlarge' (got 'smal'; did you mean 'small'?)"),
    ("list-item-literal", ["cost-tables", S, "cost_tables.spaces=[medium]"],
     "cost_tables.spaces.0: Input should be 'small', 'large' or 'xlarge'"),
    ("size-not-multiple-of-16", ["cost-tables", S, "cost_tables.input_size.height=100"],
     "cost_tables.input_size.height: Input should be a multiple of 16"),
    ("num-classes-removed", ["cost-tables", S, "cost_tables.num_classes=19"],
     "cost_tables.num_classes: removed; the class count comes from the dataset (paths.dataset, data.format): "
     "delete the key"),
    ("num-classes-removed-latency", ["profile", S, "latency.num_classes=19"], "latency.num_classes: removed"),
    ("num-classes-removed-search", ["search", S, "search.num_classes=19"], "search.num_classes: removed"),
    ("port-out-of-range", ["profile", S, "latency.port=70000"],
     "latency.port: Input should be less than or equal to 65535"),
    ("device-unknown", ["search", S, "search.device=gpu"],
     "search.device: Input should be 'auto', 'cpu' or 'cuda' (got 'gpu'; did you mean 'cpu'?)"),
    ("ssh-without-host", ["profile", S, "latency.target=ssh"], "latency.host: target 'ssh' needs a host"),
    ("reference-unknown", ["select", S, "sample.choice.reference=resnet50"],
     "sample.choice.reference: String should match pattern"),
    ("baseline-unknown", ["benchmark", S, "benchmark.baselines=[resnet50]"], "benchmark.baselines.0: Input should be"),
    ("milestone-past-the-end", ["train", "train_fine", S, "train.train_fine.milestones=[99]"],
     "milestones must increase strictly within 1..2"),
    ("password-refused", ["profile", S, "latency.password=hunter2"],
     "--set latency.password: secrets are never accepted"),
    # --set syntax
    ("set-without-equals", ["search", S, "search.alpha"], "--set 'search.alpha': expected key.sub=value"),
    ("set-empty-key", ["search", S, "=3"], "--set '': expected key.sub=value"),
    ("set-empty-part", ["search", S, "search..alpha=1"], "--set 'search..alpha': expected key.sub=value"),
    ("set-bad-yaml-value", ["search", S, "search.scale=[0.5, 2"], "--set search.scale: not valid YAML"),
    ("set-into-a-value", ["search", S, "search.epochs.low=1"],
     "--set search.epochs.low: epochs is a value, not a section"),
    ("set-duplicate-key", ["search", S, "search.patch={height: 64, height: 32}"], "search.patch.height: duplicate key"),
    # command line
    ("unknown-stage", ["serach"], "invalid choice: 'serach'"),
    ("unknown-train-stage", ["train", "train_fin"], "invalid choice: 'train_fin'"),
    ("unknown-flag", ["cost-tables", "--spaces", "small"], "unrecognized arguments: --spaces small"),
    ("describe-num-classes-zero", ["describe", "squeezenas_lat_small", "--num-classes", "0"],
     "argument --num-classes: expected a positive integer, got 0"),
    ("describe-num-classes-negative", ["describe", "squeezenas_lat_small", "--num-classes", "-3"],
     "argument --num-classes: expected a positive integer, got -3"),
    ("describe-num-classes-word", ["describe", "squeezenas_lat_small", "--num-classes", "many"],
     "argument --num-classes: expected a positive integer, got 'many'"),
    ("describe-size-not-16", ["describe", "squeezenas_lat_small", "--input-size", "100x200"],
     "--input-size '100x200': height and width must be positive multiples of 16"),
    ("describe-size-zero", ["describe", "squeezenas_lat_small", "--input-size", "0x0"],
     "--input-size '0x0': height and width must be positive"),
    ("describe-size-nonsense", ["describe", "squeezenas_lat_small", "--input-size", "big"],
     "--input-size 'big': expected HEIGHTxWIDTH"),
    ("describe-size-three", ["describe", "squeezenas_lat_small", "--input-size", "16x16x16"],
     "--input-size '16x16x16': expected HEIGHTxWIDTH"),
    ("describe-bad-candidate", ["describe", "bad_candidate.json"],
     "bad_candidate.json: block 19: unknown candidate 'k7_d1_e1_g1'"),
    ("describe-too-few-blocks", ["describe", "short.json"],
     "short.json: the small space has 20 blocks, but the architecture lists 3"),
    ("describe-unknown-space", ["describe", "space.json"], "space.json: unknown search space 'medium'"),
    ("describe-not-json", ["describe", "notjson.json"], "notjson.json: architecture is not valid JSON"),
    ("describe-extra-field", ["describe", "extra.json"], "extra.json: architecture has unknown field(s): alpha"),
    # data with generate: false checks every dataset the pipeline reads, not only Cityscapes
    ("data-real-cityscapes-missing", ["data", S, "data.generate=false", S, "paths.dataset=no/cityscapes"],
     "paths.dataset: no/cityscapes: no such dataset folder"),
    ("data-real-coco-missing", ["data", S, "data.generate=false", S, "paths.dataset=afolder",
                                S, "paths.imagenet=afolder", S, "paths.coco=no/coco"],
     "paths.coco: no/coco: no such dataset folder"),
    ("data-real-imagenet-missing", ["data", S, "data.generate=false", S, "paths.dataset=afolder",
                                    S, "paths.coco=afolder", S, "paths.imagenet=no/imagenet"],
     "paths.imagenet: no/imagenet: no such dataset folder"),
    # a folder-format target is the user's own: never generated, so it must be there whatever data.generate says
    ("data-folder-missing", ["data", S, "data.format=folder", S, "train.train_coarse.enabled=false",
                             S, "paths.dataset=no/mine"],
     "paths.dataset: no/mine: no such dataset folder (data.format is folder: point paths.dataset at your dataset"),
]


def squeezenas() -> list[str]:
    """The installed console script (it imports this checkout's code through PYTHONPATH)."""
    script = Path(sys.executable).parent / "squeezenas"
    return [str(script)] if script.exists() else [sys.executable, "-m", "cli.main"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad_inputs")
    shutil.copy(ROOT / "params.yaml", root / "params.yaml")
    (root / "afolder").mkdir()
    for name, content in FILES.items():
        path = root / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return root


def run_cli(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # SQUEEZENAS_FORKSERVER unset: the command runs cold, as a user's does
    env = {k: v for k, v in stage_env(PYTHONPATH=str(ROOT)).items() if k != "SQUEEZENAS_FORKSERVER"}
    return subprocess.run([*squeezenas(), *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_the_sweep_has_enough_cases():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("argv,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_no_traceback(workdir, argv, message):
    before = sorted(p.name for p in workdir.iterdir())
    proc = run_cli(argv, workdir)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "temporary server" not in proc.stderr + proc.stdout  # refused before any Prefect server
    assert sorted(p.name for p in workdir.iterdir()) == before  # nothing written
    if "hunter2" in " ".join(argv):
        assert "hunter2" not in proc.stderr + proc.stdout


def test_a_good_params_file_passes_the_check(workdir):
    """The checks refuse only what is wrong: good arguments reach the command."""
    good = ["describe", "squeezenas_lat_small", "--input-size", "64x128", "--num-classes", "3", "--json"]
    proc = run_cli(good, workdir)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["num_classes"] == 3


def test_the_warm_path_refuses_the_same_way(workdir, tmp_path):
    """Under `squeezenas run` a fork-server child runs the command: the same one line, exit 2."""
    from cli import forkserver

    sock = tmp_path / "s.sock"
    env = stage_env(PYTHONPATH=str(ROOT))
    proc = forkserver.start(sock, env, modules=("cli.main",), entry="cli.main:main")
    assert proc is not None
    try:
        env[forkserver.ENV] = str(sock)
        warm = subprocess.run([*squeezenas(), "search", "--set", "search.alpah=1"], cwd=workdir, env=env,
                              capture_output=True, text=True, timeout=120)
    finally:
        counts = forkserver.stop(proc, sock)
    assert counts.get("served") == 1
    assert warm.returncode == 2 and len(warm.stderr.strip().splitlines()) == 1
    assert "search.alpah: unknown key (did you mean 'alpha'?" in warm.stderr


# ---------------------------------------------------------------- faults while a stage runs
# These need a stage to run: the session's Prefect test server (conftest.py's prefect_harness) for them all (the
# commands reach it through PREFECT_API_URL, as under `squeezenas run`), so none starts its own.

COST_TABLES = "tracking: {{mlflow_uri: 'sqlite:///{db}', experiment: t}}\n" \
              "cost_tables: {{spaces: [small], input_size: {{height: 64, width: 128}}}}\n"


@pytest.fixture(scope="module")
def prefect_api(prefect_harness) -> str:
    """The URL of the session's Prefect test server."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


@pytest.fixture
def stage_dir(tmp_path, prefect_api):
    (tmp_path / "params.yaml").write_text(COST_TABLES.format(db=tmp_path / "mlflow.db"))
    return tmp_path


def run_stage(cwd: Path, api: str, argv: list[str], prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`prefix squeezenas argv` against the test server; `argv` a shell script when prefix ends with sh."""
    env = {k: v for k, v in stage_env(PYTHONPATH=str(ROOT), PREFECT_API_URL=api).items()
           if k != "SQUEEZENAS_FORKSERVER"}
    command = [*prefix, "-c", argv[0]] if prefix[-1:] == ("sh",) else [*prefix, *squeezenas(), *argv]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def assert_refused(proc: subprocess.CompletedProcess, command: str, message: str) -> None:
    """Exit 2, and one error line naming the artifact (Prefect's own log lines around it are the stage's)."""
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith(f"squeezenas {command}: error:")]
    assert errors == [f"squeezenas {command}: error: {message}"], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout


def test_a_file_in_the_way_of_an_output_folder(stage_dir, prefect_api):
    (stage_dir / "outputs").write_text("a file where the outputs folder goes")
    proc = run_stage(stage_dir, prefect_api, ["cost-tables"])
    assert_refused(proc, "cost-tables", "outputs/cost_tables/macs_small.parquet: cannot write: outputs is a file, "
                                        "not a folder")
    assert (stage_dir / "outputs").read_text() == "a file where the outputs folder goes"


def test_an_output_folder_without_write_permission(stage_dir, prefect_api):
    from tests.test_io import unshare

    out = stage_dir / "outputs" / "cost_tables"
    out.mkdir(parents=True)
    (out / "macs_small.parquet").write_text("old table")
    out.chmod(0o555)
    try:  # as root: a user namespace without a mapping, where root's override of file modes is gone
        proc = run_stage(stage_dir, prefect_api, ["cost-tables"], tuple(unshare("--user")) if os.geteuid() == 0 else ())
    finally:
        out.chmod(0o755)
    assert_refused(proc, "cost-tables", "outputs/cost_tables/macs_small.parquet: cannot write: permission denied in "
                                        "outputs/cost_tables")
    assert (out / "macs_small.parquet").read_text() == "old table" and os.listdir(out) == ["macs_small.parquet"]


def test_a_full_disk(stage_dir, prefect_api):
    from tests.test_io import unshare

    out = stage_dir / "outputs" / "cost_tables"
    out.mkdir(parents=True)
    cmd = " ".join([*squeezenas(), "cost-tables"])
    script = (f"mount -t tmpfs -o size=16k none {out} && echo old table > {out}/macs_small.parquet && "
              f"(dd if=/dev/zero of={out}/fill bs=1k 2>/dev/null; true) && {cmd}; "
              f"code=$?; cat {out}/macs_small.parquet; ls -A {out}; exit $code")
    proc = run_stage(stage_dir, prefect_api, [script], (*unshare("-rm"), "sh"))
    assert_refused(proc, "cost-tables", "outputs/cost_tables/macs_small.parquet: cannot write: no space left on "
                                        "the disk")
    assert proc.stdout.splitlines()[-3:] == ["old table", "fill", "macs_small.parquet"]


def test_data_with_real_datasets_checks_coco_and_imagenet_too(stage_dir, prefect_api):
    from nas_core.data import generate_cityscapes, generate_coco, generate_imagenet

    generate_cityscapes(stage_dir / "cs", 2, 1, 1, (32, 64), 0)
    generate_coco(stage_dir / "coco", 1, 1, (32, 48), 0)
    generate_imagenet(stage_dir / "imagenet", 2, 1, 1, 16, 0)
    real = ["data", S, "data.generate=false", S, "paths.dataset=cs", S, "paths.coco=coco",
            S, "paths.imagenet=imagenet"]
    proc = run_stage(stage_dir, prefect_api, real)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "'coco.val': 1" in proc.stdout and "'imagenet.train': 2" in proc.stdout

    shutil.rmtree(stage_dir / "imagenet" / "val")
    assert_refused(run_stage(stage_dir, prefect_api, real), "data", "missing split folder imagenet/val")


def test_stages_refuse_a_broken_folder_dataset_naming_every_file_and_write_nothing(stage_dir, prefect_api):
    from PIL import Image

    from nas_core.data import generate_folder

    generate_folder(stage_dir / "mine", "index", num_train=2, num_val=1, size=(32, 64))
    (stage_dir / "mine" / "images" / "train" / "train_0000.png").unlink()
    Image.new("L", (64, 32), 3).save(stage_dir / "mine" / "masks" / "val" / "val_0000.png")  # 3: no class id
    folder = [S, "data.format=folder", S, "train.train_coarse.enabled=false", S, "paths.dataset=mine",
              S, "paths.coco=coco", S, "paths.imagenet=imagenet"]
    proc = run_stage(stage_dir, prefect_api, ["data", *folder])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("squeezenas data: error:")]
    assert "2 problem(s) in mine" in error and "mine/masks/train/train_0000.png: no image" in error
    assert "mine/masks/val/val_0000.png: mask values 3" in error
    assert not (stage_dir / "coco").exists() and not (stage_dir / "imagenet").exists()  # checked before generating

    assert run_stage(stage_dir, prefect_api, ["cost-tables", *folder]).returncode == 0  # classes.yaml is sound
    proc = run_stage(stage_dir, prefect_api, ["search", *folder])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("squeezenas search: error:")]
    assert "mine/masks/train/train_0000.png: no image" in error
    assert not (stage_dir / "outputs" / "search").exists()


def test_a_refused_command_imports_no_heavy_library(workdir):
    """The check runs before torch, Prefect, MLflow or DVC is imported (seconds each), warm or cold."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "cli.main", "train", "train_fine",
                           "--set", "train.train_fine.epochs=yes"], cwd=workdir, capture_output=True, text=True,
                          env=stage_env(PYTHONPATH=str(ROOT)), timeout=120)
    assert proc.returncode == 2 and "train.train_fine.epochs" in proc.stderr
    imported = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if "|" in line}
    assert "nas_core" in imported and not imported & {"torch", "prefect", "mlflow", "dvc", "numpy", "pandas"}
