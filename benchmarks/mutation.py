"""Mutation testing of the paper's core (issue 20): plausible one-line bugs planted one at a time in a
copy of the project, each run against the fast tests that should notice it; a mutant that passes
them survives. Prints every mutant's fate and the score (killed / planted).

    .venv/bin/python benchmarks/mutation.py                      # the tests of the working tree
    .venv/bin/python benchmarks/mutation.py --tests-from 584b946 # the same mutants, another revision's tests/
    .venv/bin/python benchmarks/mutation.py --only gumbel-ignores-tau --show

Each mutant names the one string it replaces (found exactly once, or the script stops: a stale
mutant never passes silently) and the test files to run, in order, stopping at the first failure.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

GUMBEL, SUPERNET, SEARCH, TRAIN = "tests/test_gumbel.py", "tests/test_supernet.py", "tests/test_search.py", \
    "tests/test_train.py"
CONFIG, SCHEDULES, PAPER = "tests/test_config.py", "tests/test_schedules.py", "tests/test_paper_core.py"
SCHEMA_TESTS = (PAPER, CONFIG, SCHEDULES)


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    keyword: str | None = None  # pytest -k: the part of a slow file that concerns the mutated code


MUTANTS = (
    # the five survivors reported in issue 20
    Mutant("gumbel-ignores-tau", "nas_core/search/gumbel.py",
           "F.softmax((logits.float() + noise) / tau, dim=-1)", "F.softmax(logits.float() + noise, dim=-1)",
           (GUMBEL, PAPER)),
    Mutant("schema-tau-end-0.5", "nas_core/config.py",
           "tau_end: float = Field(1.0, gt=0)", "tau_end: float = Field(0.5, gt=0)", SCHEMA_TESTS),
    Mutant("schema-fine-decay-by-5", "nas_core/config.py",
           "gamma: float = Field(0.1, gt=0, le=1)", "gamma: float = Field(0.2, gt=0, le=1)", SCHEMA_TESTS),
    Mutant("prune-at-or-below-threshold", "nas_core/search/supernet.py",
           "drop = self.live & (p < threshold)", "drop = self.live & (p <= threshold)",
           (PAPER, SUPERNET), keyword="prun"),
    Mutant("resume-without-rng-restore", "nas_core/engine/checkpoint.py",
           'set_rng_state(payload["rng"])', "pass", (TRAIN,)),
    # the defect behind the last one: the loader drawing its worker seed from the global generator
    Mutant("loader-without-own-generator", "nas_core/engine/seeding.py",
           'pin_memory=info.device.type == "cuda", generator=generator)', 'pin_memory=info.device.type == "cuda")',
           (TRAIN, SEARCH)),
    # Gumbel-softmax and tau (section 4.1)
    Mutant("gumbel-noise-negated", "nas_core/search/gumbel.py",
           "return (-torch.log(-torch.log(u))).to(device)", "return (torch.log(-torch.log(u))).to(device)",
           (GUMBEL, PAPER)),
    Mutant("gumbel-noise-exponential", "nas_core/search/gumbel.py",
           "return (-torch.log(-torch.log(u))).to(device)", "return (-torch.log(u)).to(device)", (GUMBEL, PAPER)),
    Mutant("straight-through-without-gradient", "nas_core/search/gumbel.py",
           "return one_hot - soft.detach() + soft", "return one_hot", (GUMBEL,)),
    Mutant("linear-tau-stops-short-of-end", "nas_core/search/gumbel.py",
           "progress = step / max(1, total_steps - 1)", "progress = step / max(1, total_steps)", (GUMBEL, PAPER)),
    Mutant("noise-shared-by-the-batch", "nas_core/search/supernet.py",
           "noise = sample_gumbel((batch, *logits.shape), generator, logits.device)",
           "noise = sample_gumbel((1, *logits.shape), generator, logits.device)",
           (SUPERNET,), keyword="sampled or generator"),
    Mutant("gumbel-seed-fixed-across-steps", "nas_core/search/loop.py",
           "generator.manual_seed(derive_seed(config.seed, rank, step))",
           "generator.manual_seed(derive_seed(config.seed, rank))", (PAPER, SEARCH)),
    # the loss and the search loop (eq. 1, 3; section 4.2)
    Mutant("alpha-ignored", "nas_core/search/loop.py",
           "return ce + self.alpha * resource, ce, resource", "return ce + resource, ce, resource", (PAPER, SEARCH)),
    Mutant("resource-loss-not-normalised", "nas_core/search/loop.py",
           "return (probs * cost).sum() / reference", "return (probs * cost).sum()", (PAPER, SEARCH)),
    Mutant("cost-reference-from-max", "nas_core/search/loop.py",
           "reference = config.cost_reference or float(cost.mean(axis=1).sum())",
           "reference = config.cost_reference or float(cost.max(axis=1).sum())", (PAPER, SEARCH)),
    Mutant("theta-trained-in-warmup", "nas_core/search/loop.py",
           "(opt_t, update_t)", "(opt_t, True)", (SEARCH,)),
    Mutant("search-never-prunes", "nas_core/search/loop.py",
           "removed = supernet.prune(config.prune_threshold) if config.prune_threshold > 0 else []",
           "removed = []", (SEARCH,)),
    # the paper's numbers in the schema (sections 4.1, 4.2, 5.3.1, 5.3.2)
    Mutant("schema-tau-start-4", "nas_core/config.py",
           "tau_start: float = Field(5.0, gt=0)", "tau_start: float = Field(4.0, gt=0)", SCHEMA_TESTS),
    Mutant("schema-prune-5-percent", "nas_core/config.py",
           "prune_threshold: float = Field(0.005, ge=0, lt=1 / 13)",
           "prune_threshold: float = Field(0.05, ge=0, lt=1 / 13)", SCHEMA_TESTS),
    Mutant("schema-search-patch-512", "nas_core/config.py",
           "    patch: Size = Size(height=768, width=768)\n    scale",
           "    patch: Size = Size(height=512, width=512)\n    scale", SCHEMA_TESTS),
    Mutant("schema-100-samples", "nas_core/config.py",
           "num_samples: int = Field(200, ge=1)", "num_samples: int = Field(100, ge=1)", SCHEMA_TESTS),
    Mutant("schema-train-weight-decay-1e-4", "nas_core/config.py",
           "weight_decay: float = Field(1e-5, ge=0)\n    nesterov",
           "weight_decay: float = Field(1e-4, ge=0)\n    nesterov", SCHEMA_TESTS),
    # retraining (section 5.3.2)
    Mutant("step-decay-a-step-late", "nas_core/engine/schedules.py",
           "sum(epoch >= m for m in self.milestones)", "sum(epoch > m for m in self.milestones)", (SCHEDULES,)),
    Mutant("poly-power-ignored", "nas_core/engine/schedules.py",
           "1.0 - epoch / self.total_epochs) ** self.power", "1.0 - epoch / self.total_epochs) ** 1.0",
           (SCHEDULES,)),
    Mutant("lr-updated-once-per-epoch", "nas_core/engine/training.py",
           "schedule.factor(state.epoch + batch / steps)", "schedule.factor(state.epoch)", (TRAIN,)),
    Mutant("same-augmentation-every-epoch", "nas_core/engine/seeding.py",
           "manual_seed(derive_seed(self.seed, epoch, index))", "manual_seed(derive_seed(self.seed, index))", (TRAIN,)),
    Mutant("same-shuffle-every-epoch", "nas_core/engine/seeding.py",
           "manual_seed(derive_seed(self.seed, self.epoch))", "manual_seed(derive_seed(self.seed))", (TRAIN,)),
    # the search space, costs, metric and choice
    Mutant("residual-ignores-stride", "nas_core/space/spaces.py",
           "return self.stride == 1 and self.c_in == self.c_out", "return self.c_in == self.c_out",
           ("tests/test_blocks.py", "tests/test_search_space.py", PAPER)),
    Mutant("macs-ignore-groups", "nas_core/cost/macs.py",
           "self.macs += c_out * out_hw[0] * out_hw[1] * kh * kw * (c_in // groups)",
           "self.macs += c_out * out_hw[0] * out_hw[1] * kh * kw * c_in",
           ("tests/test_cost_table.py",), keyword="published"),
    Mutant("iou-without-false-positives", "nas_core/engine/metrics.py",
           "denominator = tp + fp + fn", "denominator = tp + fn", ("tests/test_metrics.py",)),
    Mutant("pareto-keeps-equal-scores", "nas_core/select/pareto.py",
           "if top > best_before:", "if top >= best_before:", ("tests/test_pareto.py",)),
)


def copy_project(dest: Path, tests_from: str | None) -> None:
    """The working tree's files git knows of (tracked or not ignored), with tests/ from `tests_from`."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    if tests_from:
        shutil.rmtree(dest / "tests")
        archive = subprocess.run(["git", "archive", tests_from, "tests"], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)


def run_tests(project: Path, tests: tuple[str, ...], keyword: str | None, timeout: float) -> tuple[str, str, float]:
    """(status, first failing test, seconds): status 'passed', 'failed', 'timeout', 'no tests' or 'error'."""
    present = [t for t in tests if (project / t).is_file()]
    if not present:
        return "no tests", "", 0.0
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *present]
    if keyword:
        cmd += ["-k", keyword]
    # no .pyc files: a mutant the same size as the original, written in the same second, would
    # otherwise be shadowed by the original's bytecode (and the original by the mutant's)
    # one torch thread: the fast tests use tiny tensors, and a shared machine's cores are busy
    env = {"OMP_NUM_THREADS": "1", **os.environ, "PYTHONPATH": str(project), "PYTHONDONTWRITEBYTECODE": "1"}
    tic = time.perf_counter()
    try:
        proc = subprocess.run(cmd, check=False, cwd=project, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", "", time.perf_counter() - tic
    seconds = time.perf_counter() - tic
    failed = re.search(r"^(?:FAILED|ERROR) (\S+)", proc.stdout, re.MULTILINE)
    status = {0: "passed", 1: "failed", 5: "no tests"}.get(proc.returncode, "error")
    detail = failed.group(1) if failed else ("" if status != "error" else proc.stdout[-300:] + proc.stderr[-300:])
    return status, detail, seconds


def baseline_passes(project: Path, mutants: list[Mutant], timeout: float) -> bool:
    """The unmutated copy passes every selection the mutants use (grouped by keyword)."""
    groups: dict[str | None, dict[str, None]] = {}
    for m in mutants:
        groups.setdefault(m.keyword, {}).update(dict.fromkeys(m.tests))
    for keyword, files in groups.items():
        status, detail, seconds = run_tests(project, tuple(files), keyword, timeout * 4)
        print(f"baseline {' '.join(files)}{' -k ' + repr(keyword) if keyword else ''}: {status} {detail} "
              f"({seconds:.0f} s)", flush=True)
        if status not in ("passed", "no tests"):
            return False
    return True


def apply(project: Path, mutant: Mutant) -> str:
    """Write the mutant into the copy; returns the original text to restore."""
    path = project / mutant.path
    text = path.read_text()
    count = text.count(mutant.old)
    if count != 1:
        raise SystemExit(f"mutant {mutant.name}: {mutant.path} holds its string {count} times (expected once)")
    path.write_text(text.replace(mutant.old, mutant.new))
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests-from", help="a git revision whose tests/ to run instead of the working tree's")
    parser.add_argument("--only", nargs="+", help="mutant names")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds per mutant; a mutant that runs out is 'timeout', neither killed nor survived")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of every test file")
    parser.add_argument("--show", action="store_true", help="print each mutant's diff")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    mutants = [m for m in MUTANTS if not args.only or m.name in args.only]
    unknown = set(args.only or ()) - {m.name for m in MUTANTS}
    if unknown:
        raise SystemExit(f"--only: unknown mutants {sorted(unknown)}; known: {', '.join(m.name for m in MUTANTS)}")

    with tempfile.TemporaryDirectory(prefix="squeezenas-mutants-") as tmp:
        project = Path(tmp)
        copy_project(project, args.tests_from)
        if not args.no_baseline and not baseline_passes(project, mutants, args.timeout):
            print("the unmutated tests do not pass: no score", file=sys.stderr)
            return 2
        results = []
        for mutant in mutants:
            original = apply(project, mutant)
            try:
                status, detail, seconds = run_tests(project, mutant.tests, mutant.keyword, args.timeout)
            finally:
                (project / mutant.path).write_text(original)
            fate = {"passed": "SURVIVED", "no tests": "SURVIVED", "failed": "killed", "timeout": "timeout"}
            results.append({**asdict(mutant), "status": fate.get(status, "error"), "by": detail, "seconds": seconds})
            print(f"{fate.get(status, 'ERROR'):17} {mutant.name:36} {seconds:5.0f} s  {detail}", flush=True)
            if args.show:
                print(f"    {mutant.path}: {mutant.old!r} -> {mutant.new!r}")

    killed = sum(r["status"] == "killed" for r in results)
    undecided = [r["name"] for r in results if r["status"] in ("error", "timeout")]
    print(f"\nmutation score: {killed}/{len(results)} killed ({100 * killed / max(1, len(results)):.0f}%)"
          f"{' (tests of ' + args.tests_from + ')' if args.tests_from else ''}")
    survivors = [r["name"] for r in results if r["status"] == "SURVIVED"]
    if survivors:
        print("survivors: " + ", ".join(survivors))
    if undecided:
        print("timeouts and errors (neither killed nor survived): " + ", ".join(undecided))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
