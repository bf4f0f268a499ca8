"""The one torchrun launch (tasks/torchrun.py) with real torchrun and gloo: workers run and see their launcher,
a failure's status and message come through, and a worker dies with its launcher, also one already gone."""
from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from tasks.torchrun import run_torchrun
from tests.repo_copy import ROOT, stage_env


@pytest.mark.slow
def test_two_workers_all_reduce_under_the_launcher_and_know_its_pid(tmp_path, capfd):
    assert run_torchrun("tests.torchrun_worker", [str(tmp_path)], 2, "test") == 0
    results = [(tmp_path / f"rank{r}.txt").read_text().split() for r in (0, 1)]
    assert [r[0] for r in results] == ["3.0", "3.0"]  # 1 + 2 on both ranks
    assert results[0][1] == results[1][1] == results[0][2] == results[1][2]  # their parent is torchrun
    assert "launching 2 DDP processes" in capfd.readouterr().out


@pytest.mark.slow
def test_a_failing_worker_gives_torchrun_s_status_and_its_message(tmp_path, capfd):
    assert run_torchrun("tests.torchrun_worker", [str(tmp_path), "--fail"], 2, "test") != 0
    assert "worker: planned failure" in capfd.readouterr().err  # relayed, not swallowed


ORPHAN = """
import sys, time
from tasks.processes import die_with_parent
die_with_parent(expected_parent=int(sys.argv[1]))
print("alive", flush=True)
time.sleep(60)
"""


def test_a_worker_whose_launcher_is_already_gone_dies_at_once():
    proc = subprocess.run([sys.executable, "-c", ORPHAN, "1"], cwd=ROOT, env=stage_env(PYTHONPATH=str(ROOT)),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL and "alive" not in proc.stdout


def test_a_worker_dies_when_its_parent_is_killed_outright():
    # sh starts the worker and waits; kill -9 of sh must end the worker without anyone signalling it
    parent = subprocess.Popen(["sh", "-c", f'"{sys.executable}" -c "$1" $$; true', "sh", ORPHAN], cwd=ROOT,
                              env=stage_env(PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, text=True)
    assert parent.stdout.readline() == "alive\n"
    worker = int(subprocess.run(["pgrep", "-P", str(parent.pid)], capture_output=True, text=True).stdout.split()[0])
    parent.kill()
    parent.wait()
    for _ in range(100):
        try:
            with open(f"/proc/{worker}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
        except FileNotFoundError:
            break
        subprocess.run(["sleep", "0.05"])
    else:
        raise AssertionError(f"worker {worker} outlived its parent")
