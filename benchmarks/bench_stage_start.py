"""What one stage command costs beyond its work, cold (its own process: Python, torch, Prefect and
MLflow imports) vs warm (a child of `squeezenas run`'s fork server), measured in one run (issue 8).

Runs `squeezenas cost-tables` (a stage whose work is ~0.1 s, so its wall time is almost all
overhead) `--repeats` times each way, interleaved, in a scratch folder against one temporary
Prefect server and an MLflow sqlite file, and prints the medians and their ratio.

    python benchmarks/bench_stage_start.py --repeats 5
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cli import forkserver  # noqa: E402
from cli.run import STAGE_ENTRY, STAGE_PRELOAD  # noqa: E402
from cli.server import prefect_server  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--stage", default="cost-tables", help="a cheap stage subcommand")
    a = p.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="sqz-bench-"))
    shutil.copy(ROOT / "params.yaml", scratch / "params.yaml")
    os.chdir(scratch)
    exe = shutil.which("squeezenas", path=str(Path(sys.executable).parent)) or "squeezenas"
    with prefect_server(scratch / ".prefect") as (url, ready):
        env = dict(os.environ, PREFECT_API_URL=url, PYTHONPATH=str(ROOT))
        env.pop(forkserver.ENV, None)
        print(f"Prefect server up in {ready():.1f} s; fork server ...", flush=True)
        t0 = time.perf_counter()
        server = forkserver.start(scratch / "s.sock", env, STAGE_ENTRY, STAGE_PRELOAD)
        assert server is not None, "the fork server did not start"
        print(f"fork server up in {time.perf_counter() - t0:.1f} s (once per pipeline run)", flush=True)
        times = {"cold": [], "warm": []}
        try:
            for i in range(a.repeats + 1):  # the first of each is a warm-up (files, caches), not counted
                for kind in ("cold", "warm"):
                    run_env = dict(env, **({forkserver.ENV: str(scratch / "s.sock")} if kind == "warm" else {}))
                    t = time.perf_counter()
                    subprocess.run([exe, a.stage], env=run_env, check=True, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
                    if i:
                        times[kind].append(time.perf_counter() - t)
        finally:
            counts = forkserver.stop(server, scratch / "s.sock")
    cold, warm = statistics.median(times["cold"]), statistics.median(times["warm"])
    print(f"`squeezenas {a.stage}`, median of {a.repeats}: cold {cold:.2f} s, warm {warm:.2f} s "
          f"-> warm / cold = {warm / cold:.2f} ({cold - warm:.1f} s saved per stage; "
          f"the fork server served {counts.get('served')} commands)")
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
