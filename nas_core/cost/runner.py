"""Self-contained latency runner, copied to the target device (paper section 5.2): reads a JSON
manifest, times each ONNX model with onnxruntime or trtexec, prints one JSON line per result.

Standard library only (Python >= 3.6, as on JetPack 4), plus numpy + onnxruntime for that backend;
it never imports nas_core.
  python runner.py facts MANIFEST     device facts (after setting the power mode if asked)
  python runner.py measure MANIFEST   one line per job, as each is measured
Each output line starts with MARK, so library chatter on stdout is ignored by the reader.
"""
import json
import math
import os
import platform
import random
import re
import socket
import subprocess
import sys
import time

MARK = "@@squeezenas "


def emit(obj):
    sys.stdout.write(MARK + json.dumps(obj) + "\n")
    sys.stdout.flush()  # the profile appends each result to disk as soon as it arrives


def _run(cmd, timeout=30):
    """(returncode, combined output) of a command; (None, reason) when it cannot run."""
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
        return p.returncode, p.stdout.decode(errors="replace").strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"{type(e).__name__}: {e}"


def _privileged(cmd):
    return cmd if os.geteuid() == 0 else ["sudo", "-n"] + cmd


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip("\x00\n ")
    except OSError:
        return None


def _os_name():
    text = _read("/etc/os-release") or ""
    m = re.search(r'^PRETTY_NAME="?([^"\n]*)"?', text, re.M)
    return m.group(1) if m else platform.platform()


def _cpu_model():
    m = re.search(r"^(model name|Model)\s*:\s*(.+)$", _read("/proc/cpuinfo") or "", re.M)
    return m.group(2).strip() if m else platform.processor() or platform.machine()


def setup_power(m):
    """Apply the requested power mode / clock pinning (Jetson); errors are fatal: a table measured
    in another mode than asked would be silently wrong."""
    if m.get("power_mode") is not None:
        rc, out = _run(_privileged(["nvpmodel", "-m", str(m["power_mode"])]))
        if rc != 0:
            raise RuntimeError(f"nvpmodel -m {m['power_mode']} failed: {out}")
    if m.get("pin_clocks"):
        rc, out = _run(_privileged(["jetson_clocks"]))
        if rc != 0:
            raise RuntimeError(f"jetson_clocks failed: {out}")


def device_facts(m):
    facts = {"hostname": socket.gethostname(), "os": _os_name(), "kernel": platform.release(),
             "machine": platform.machine(), "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
             "python": platform.python_version(), "jetson_model": _read("/proc/device-tree/model"),
             "l4t": _read("/etc/nv_tegra_release")}
    try:
        import onnxruntime
        facts["onnxruntime"] = onnxruntime.__version__
        facts["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        facts["onnxruntime"] = None
    rc, out = _run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"])
    facts["gpu"] = out.splitlines()[0] if rc == 0 and out else None
    if m.get("backend") == "trtexec":
        rc, out = _run([m["trtexec"], "--help"])
        v = re.search(r"\[TensorRT v(\d+)\]", out or "")
        facts["tensorrt"] = v.group(1) if v else None
    rc, out = _run(["nvpmodel", "-q"])
    facts["nvpmodel"] = out if rc == 0 else None
    mode = re.search(r"NV Power Mode:\s*(\S+)", out or "") if rc == 0 else None
    facts["power_mode"] = mode.group(1) if mode else None
    rc, out = _run(_privileged(["jetson_clocks", "--show"]))
    facts["jetson_clocks"] = out if rc == 0 else None
    return facts


def summarize(times_ms):
    """Median and 10th/90th percentiles (linear interpolation) of a list of times."""
    s = sorted(times_ms)

    def q(p):
        x = p * (len(s) - 1)
        lo = int(x)
        hi = min(lo + 1, len(s) - 1)
        return s[lo] + (s[hi] - s[lo]) * (x - lo)
    return {"median_ms": q(0.5), "p10_ms": q(0.1), "p90_ms": q(0.9), "runs": len(s)}


def _ort_session(m, path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    # pinned threads and sequential execution: the same conditions for every unit and network
    so.intra_op_num_threads = m["threads"]
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                   "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                   "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[m["optimization"]]
    so.add_session_config_entry("session.set_denormal_as_zero", "1")
    return ort.InferenceSession(path, so, providers=m["providers"])


class OrtModel:
    """One model ready to run: a session with bound inputs and preallocated outputs."""

    def __init__(self, m, job):
        import numpy as np
        import onnxruntime as ort

        t0 = time.perf_counter()
        self.key, self.sess = job["key"], _ort_session(m, job["file"])
        rng = np.random.default_rng(0)
        feeds = {i.name: rng.standard_normal(tuple(s), dtype=np.float32)
                 for i, s in zip(self.sess.get_inputs(), job["inputs"])}
        # inputs bound once and outputs written into preallocated buffers: a run is the model alone,
        # without the per-call conversion and output copies of sess.run (paid once per network, not
        # once per block, so they would bias the additive table)
        self.binding = self.sess.io_binding()
        for name, value in feeds.items():
            self.binding.bind_cpu_input(name, value)
        for out, value in zip(self.sess.get_outputs(), self.sess.run(None, feeds)):
            self.binding.bind_ortvalue_output(out.name, ort.OrtValue.ortvalue_from_numpy(np.empty_like(value)))
        self.setup_s, self.warmup_s, self.timed_s, self.times = time.perf_counter() - t0, 0.0, 0.0, []

    def run(self, warmup, runs, min_time_s, clock):
        """`warmup` untimed runs, then at least `runs` timed runs lasting at least `min_time_s`."""
        t0 = time.perf_counter()
        for _ in range(warmup):
            self.sess.run_with_iobinding(self.binding)
        t1 = time.perf_counter()
        deadline, n = t1 + min_time_s, 0
        while n < runs or time.perf_counter() < deadline:
            a = clock()
            self.sess.run_with_iobinding(self.binding)
            self.times.append((clock() - a) * 1e3)
            n += 1
        self.warmup_s += t1 - t0
        self.timed_s += time.perf_counter() - t1

    def result(self):
        return dict(summarize(self.times), setup_s=self.setup_s, warmup_s=self.warmup_s, timed_s=self.timed_s,
                    event="result", key=self.key)


def _clock(m):
    # thread CPU time excludes time the OS gave to other processes (shared machines); it equals
    # the latency only for single-threaded inference, which the config enforces
    return time.thread_time if m["clock"] == "thread" else time.perf_counter


def measure_onnxruntime(m, jobs):
    """Each model in turn; with `rounds` > 1, all models in shuffled order per round instead, each
    round a warm-up run and its share of the timed runs, so that a busy moment of a shared machine
    lands on every model alike rather than on a few (results then come at the last round)."""
    rounds = m.get("rounds", 1)
    if rounds <= 1:
        for job in jobs:
            try:
                model = OrtModel(m, job)
                model.run(m["warmup"], m["runs"], m["min_time_s"], _clock(m))
                emit(model.result())
            except Exception as e:  # report and go on: one bad model must not cost the others
                emit({"event": "error", "key": job["key"], "message": "%s: %s" % (type(e).__name__, e)})
        return
    models, total, last = [], len(jobs) * (rounds + 1), [0.0]

    def progress(done):  # the results come at the end: say how far the rounds are, at most once a second
        now = time.perf_counter()
        if now - last[0] >= 1.0 or done == total:
            last[0] = now
            emit({"event": "progress", "done": done, "total": total})

    for n, job in enumerate(jobs, 1):
        try:
            models.append(OrtModel(m, job))
            models[-1].run(m["warmup"], 0, 0.0, _clock(m))
        except Exception as e:
            emit({"event": "error", "key": job["key"], "message": "%s: %s" % (type(e).__name__, e)})
        progress(n)
    rng = random.Random(0)
    for r in range(rounds):
        rng.shuffle(models)
        for n, model in enumerate(models, 1):
            model.run(1, math.ceil(m["runs"] / rounds), m["min_time_s"] / rounds, _clock(m))
            progress(len(jobs) * (r + 1) + n * len(jobs) // max(len(models), 1))
    for model in models:
        emit(model.result())


PRECISION_FLAGS = {"fp32": [], "fp16": ["--fp16"], "int8": ["--int8"], "best": ["--best"]}


def trtexec_command(m, onnx_file, times_path):
    """trtexec's command line for one model under the protocol `m`: precision, and the deployment's
    timing settings (CUDA graph, no host-device copies, spin-wait synchronisation)."""
    if m.get("precision", "fp32") not in PRECISION_FLAGS:
        raise ValueError("precision must be one of %s, got %r" % (", ".join(PRECISION_FLAGS), m.get("precision")))
    cmd = [m["trtexec"], "--onnx=" + onnx_file, "--warmUp=%d" % m["trtexec_warmup_ms"],
           "--iterations=%d" % m["runs"],
           "--duration=%d" % math.ceil(m["min_time_s"]), "--exportTimes=" + times_path]
    cmd += PRECISION_FLAGS[m.get("precision", "fp32")]
    if m.get("cuda_graph"):
        cmd.append("--useCudaGraph")
    if m.get("no_data_transfers"):
        cmd.append("--noDataTransfers")
    if m.get("spin_wait"):
        cmd.append("--useSpinWait")
    return cmd


def measure_trtexec(m, job, workdir):
    """Run trtexec on one model; the raw log and --exportTimes JSON go back to be parsed there."""
    times_path = os.path.join(workdir, "times-%d.json" % os.getpid())
    cmd = trtexec_command(m, job["file"], times_path)
    t0 = time.perf_counter()
    rc, log = _run(cmd, timeout=m.get("job_timeout_s", 1800))
    times = _read(times_path)
    if os.path.exists(times_path):
        os.remove(times_path)
    return {"returncode": rc, "log": log, "times": times, "wall_s": time.perf_counter() - t0}


def main(argv):
    if len(argv) != 3 or argv[1] not in ("facts", "measure"):
        sys.stderr.write("usage: runner.py facts|measure MANIFEST\n")
        return 2
    with open(argv[2]) as f:
        m = json.load(f)
    if argv[1] == "facts":
        setup_power(m)
        emit({"event": "facts", "facts": device_facts(m)})
        return 0
    if m["backend"] == "trtexec":
        workdir = os.path.dirname(os.path.abspath(argv[2]))
        for job in m["jobs"]:
            emit(dict(measure_trtexec(m, job, workdir), event="trtexec", key=job["key"]))
    else:
        measure_onnxruntime(m, m["jobs"])
    emit({"event": "done"})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
