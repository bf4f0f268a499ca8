"""Where latencies are measured (paper section 5.2: the target platform). One interface, three
kinds: `LocalTarget` runs the runner in a subprocess on this machine, `TorchCudaTarget` times
PyTorch modules on this machine's GPU with CUDA events, `SshTarget` (ssh.py) drives a device;
factory.py builds the one a `latency` section names."""
from __future__ import annotations

import json
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from nas_core.cost.export import Unit
from nas_core.cost.runner import MARK, summarize
from nas_core.cost.trtexec import TrtexecError, parse_trtexec

RUNNER = Path(__file__).with_name("runner.py")

OnResult = Callable[[dict], None]


class ProfileError(RuntimeError):
    """Profiling failed; the message names the target and what went wrong."""


class TransientError(ProfileError):
    """A failure worth retrying: a dropped connection, a timeout, a killed runner."""


class MeasurementError(ProfileError):
    """The device could not run a model (e.g. trtexec failed); retrying would not help."""


@dataclass(frozen=True)
class MeasurementProtocol:
    """How every unit is timed; part of the key of stored measurements."""

    backend: str = "onnxruntime"  # onnxruntime | trtexec | torch_cuda
    warmup: int = 10  # untimed runs first (trtexec: warm-up time in ms, `trtexec_warmup_ms`)
    runs: int = 50  # at least this many timed runs ...
    min_time_s: float = 0.0  # ... and at least this long (trtexec: --duration, whole seconds)
    rounds: int = 1  # onnxruntime: > 1 interleaves all models over this many rounds (shared machines)
    threads: int = 1  # onnxruntime intra-op threads, pinned
    optimization: str = "extended"  # onnxruntime graph optimisation level: basic | extended | all
    clock: str = "wall"  # wall | thread (CPU time of the inference thread; needs threads == 1)
    # trtexec: fp32 | fp16 | int8 | best (INT8 is often no faster than FP16 on a Jetson: measure both);
    # torch_cuda: fp32 | fp16
    precision: str = "fp32"
    # as deployed on a GPU: trtexec --useCudaGraph / torch_cuda timing each model inside a CUDA graph
    # (kernel launch gaps then no longer count per block), --noDataTransfers, --useSpinWait
    cuda_graph: bool = False
    no_data_transfers: bool = True
    spin_wait: bool = True
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    trtexec: str = "/usr/src/tensorrt/bin/trtexec"
    trtexec_warmup_ms: int = 200
    power_mode: int | None = None  # nvpmodel -m N before profiling (AGX Xavier 30 W: 3)
    pin_clocks: bool = False  # jetson_clocks before profiling

    def manifest(self) -> dict:
        return {**asdict(self), "providers": list(self.providers)}


@dataclass(frozen=True)
class Job:
    unit: Unit
    onnx: Path | None  # None for targets that time the PyTorch module itself


class Target(ABC):
    """A device to time units on. Use as a context manager (`open` / `close`)."""

    name: str
    protocol: MeasurementProtocol
    needs_onnx: bool = True
    # (done, total) steps of the current `measure` call, while interleaved rounds hold the results back
    on_progress: Callable[[int, int], None] | None = None

    def open(self) -> None:
        """Connect (no-op for local targets); idempotent."""

    def close(self) -> None:
        """Disconnect; idempotent, never raises."""

    def cleanup(self) -> None:
        """Remove the target's temporary files (remote working directory)."""

    @abstractmethod
    def facts(self) -> dict:
        """Hostname, OS, CPU/GPU, runtime versions, power mode and clocks where reported."""

    @abstractmethod
    def measure(self, jobs: list[Job], on_result: OnResult) -> None:
        """Time each job, calling `on_result(record)` as each result arrives."""

    def __enter__(self) -> Target:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def record(key: str, median: float, p10: float, p90: float, runs: int, **extra) -> dict:
    """One measurement as stored and tabled."""
    return {"key": key, "latency_ms": median, "latency_p10_ms": p10, "latency_p90_ms": p90, "runs": runs, **extra}


class RunnerOutput:
    """Turns the runner's output lines into records; collects per-model errors."""

    def __init__(self, protocol: MeasurementProtocol, on_result: OnResult, where: str,
                 on_progress: Callable[[int, int], None] | None = None):
        self.protocol, self.on_result, self.where, self.on_progress = protocol, on_result, where, on_progress
        self.errors: list[str] = []
        self.done = False
        self.facts: dict | None = None

    def feed(self, line: str) -> None:
        if not line.startswith(MARK):
            return  # library chatter
        msg = json.loads(line[len(MARK):])
        event = msg["event"]
        if event == "result":
            self.on_result(record(msg["key"], msg["median_ms"], msg["p10_ms"], msg["p90_ms"], msg["runs"],
                                  timed_s=msg["timed_s"], setup_s=msg["setup_s"], warmup_s=msg["warmup_s"]))
        elif event == "trtexec":
            try:
                t = parse_trtexec(msg["log"], msg["times"], self.protocol.trtexec_warmup_ms, msg["returncode"])
            except TrtexecError as e:
                self.errors.append(f"{msg['key']}: {e}")
                return
            self.on_result(record(msg["key"], t.median_ms, t.p10_ms, t.p90_ms, t.runs,
                                  timed_s=t.median_ms * t.runs / 1e3,
                                  setup_s=msg["wall_s"] - t.median_ms * t.runs / 1e3,
                                  warmup_s=0.0, source=t.source))
        elif event == "progress":
            if self.on_progress is not None:
                self.on_progress(int(msg["done"]), int(msg["total"]))
        elif event == "error":
            self.errors.append(f"{msg['key']}: {msg['message']}")
        elif event == "facts":
            self.facts = msg["facts"]
        elif event == "done":
            self.done = True

    def finish(self) -> None:
        if self.errors:
            shown = "\n  ".join(self.errors[:10])
            raise MeasurementError(f"{self.where}: {len(self.errors)} model(s) failed to run:\n  {shown}")


def write_manifest(path: Path, protocol: MeasurementProtocol, jobs: Iterable[tuple[str, str, tuple]]) -> None:
    from nas_core.io import atomic_write_json

    entries = [{"key": k, "file": f, "inputs": [list(s) for s in shapes]} for k, f, shapes in jobs]
    atomic_write_json(path, {**protocol.manifest(), "jobs": entries})


def _lines(proc: subprocess.Popen, timeout_s: float, where: str) -> Iterator[str]:
    """stdout lines of `proc`; raises TransientError if none arrives for `timeout_s` seconds."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    buf = b""
    while True:
        if not sel.select(timeout_s):
            proc.kill()
            raise TransientError(f"{where}: no result for {timeout_s:g} s; the runner was stopped")
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            break
        buf += chunk
        *done, buf = buf.split(b"\n")
        for line in done:
            yield line.decode(errors="replace")
    if buf:
        yield buf.decode(errors="replace")


class LocalTarget(Target):
    """This machine, through the same runner script that a remote device gets."""

    def __init__(self, protocol: MeasurementProtocol, python: str = sys.executable, timeout_s: float = 600.0):
        if protocol.backend == "torch_cuda":
            raise ValueError("LocalTarget runs onnxruntime or trtexec; use TorchCudaTarget for torch_cuda")
        self.protocol, self.python, self.timeout_s = protocol, python, timeout_s
        self.name = f"local:{socket.gethostname()}"

    def _run(self, mode: str, jobs: list[Job], out: RunnerOutput) -> None:
        with tempfile.TemporaryDirectory(prefix="squeezenas-runner-") as tmp:
            manifest = Path(tmp) / "manifest.json"
            write_manifest(manifest, self.protocol,
                           [(j.unit.key, str(Path(j.onnx).resolve()), j.unit.inputs) for j in jobs])
            with open(Path(tmp) / "stderr", "w+") as err:
                proc = subprocess.Popen([self.python, str(RUNNER), mode, str(manifest)], cwd=tmp,
                                        stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
                try:
                    for line in _lines(proc, self.timeout_s, self.name):
                        out.feed(line)
                except BaseException:
                    proc.kill()
                    proc.wait()
                    raise
                rc = proc.wait()
                err.seek(0)
                if rc != 0:
                    raise ProfileError(f"{self.name}: runner exited with status {rc}: {err.read()[-2000:]}")

    def facts(self) -> dict:
        out = RunnerOutput(self.protocol, lambda r: None, self.name)
        self._run("facts", [], out)
        return out.facts or {}

    def measure(self, jobs: list[Job], on_result: OnResult) -> None:
        out = RunnerOutput(self.protocol, on_result, self.name, self.on_progress)
        self._run("measure", jobs, out)
        if not out.done:
            raise TransientError(f"{self.name}: the runner stopped before the end")
        out.finish()


class TorchCudaTarget(Target):
    """This machine's GPU, timing the PyTorch module itself. Each run is bracketed by CUDA events
    and synchronised: the host-side time of the call only measures the kernel launches, which is
    kept as `launch_ms` to show the difference."""

    needs_onnx = False

    def __init__(self, protocol: MeasurementProtocol, device: str = "cuda"):
        self.protocol, self.device = protocol, device
        self.name = f"torch_cuda:{socket.gethostname()}"

    def facts(self) -> dict:
        import platform

        import torch

        return {"hostname": socket.gethostname(), "os": platform.platform(), "torch": torch.__version__,
                "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                "gpu": torch.cuda.get_device_name(self.device) if torch.cuda.is_available() else None}

    def _warmed_up(self, module, xs: list) -> Callable[[], object]:
        """The call to time, after the warm-up: the module itself, or (cuda_graph) a CUDA graph of
        one call captured after warming up on a side stream, as PyTorch's documentation does it:
        a replay launches the whole model at once, as a deployment with CUDA graphs does."""
        import torch

        if not self.protocol.cuda_graph:
            for _ in range(self.protocol.warmup):
                module(*xs)
            torch.cuda.synchronize()
            return lambda: module(*xs)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(max(self.protocol.warmup, 3)):  # at least 3 before a capture (cuDNN, allocator)
                module(*xs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=side):  # the warm-up's stream: its library handles exist already
            module(*xs)
        graph.replay()
        torch.cuda.synchronize()
        return graph.replay

    def measure(self, jobs: list[Job], on_result: OnResult) -> None:
        import torch

        if not torch.cuda.is_available():
            raise ProfileError(f"{self.name}: backend torch_cuda needs a CUDA GPU, and torch sees none")
        torch.backends.cudnn.benchmark = True  # the algorithm choice happens in the warm-up
        if self.protocol.precision not in ("fp32", "fp16"):
            raise ProfileError(f"{self.name}: backend torch_cuda times fp32 or fp16, not {self.protocol.precision} "
                               "(int8 and best are TensorRT's: backend trtexec)")
        dtype = torch.float16 if self.protocol.precision == "fp16" else torch.float32
        for job in jobs:
            t0 = time.perf_counter()
            module = job.unit.build().to(self.device, dtype)
            xs = [torch.randn(*s, device=self.device, dtype=dtype) for s in job.unit.inputs]
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            gpu, launch = [], []
            tw = time.perf_counter()
            with torch.no_grad():
                run = self._warmed_up(module, xs)
                t1 = time.perf_counter()
                while len(gpu) < self.protocol.runs or time.perf_counter() < t1 + self.protocol.min_time_s:
                    start.record()
                    a = time.perf_counter()
                    run()
                    b = time.perf_counter()
                    end.record()
                    end.synchronize()
                    gpu.append(start.elapsed_time(end))
                    launch.append((b - a) * 1e3)
            t2 = time.perf_counter()
            s = summarize(gpu)
            on_result(record(job.unit.key, s["median_ms"], s["p10_ms"], s["p90_ms"], s["runs"], timed_s=t2 - t1,
                             setup_s=tw - t0, warmup_s=t1 - tw, launch_ms=summarize(launch)["median_ms"]))
