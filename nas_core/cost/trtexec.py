"""Reading trtexec's output (TensorRT 7.x to 10.x) as the latency of one model on the target GPU
(paper section 5.2): per-query GPU compute time, synchronised with the device by TensorRT itself.

Preferred source: the `--exportTimes` JSON, whose per-query `computeMs` exists in every version;
TensorRT <= 8.4 also writes the warm-up queries there, which are dropped. Fallback: the text
summary, whose format differs by version:
  7.x      a "GPU Compute" block of lines "min: 1.2 ms", ..., "percentile: 1.4 ms at 99%"
  8.0-8.4  "GPU Compute Time: min = ..., median = ..., percentile(99%) = ..."
  8.5+     the same line with percentile(90%), (95%) and (99%)
The version is on the `&&&& PASSED TensorRT.trtexec [TensorRT v8502]` line (absent before 8.0).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

_PREFIX = re.compile(r"^(?:\[\d\d/\d\d/\d{4}-[\d:]+\] )?\[[IWEVF]\] ", re.M)
_STATUS = re.compile(r"^&&&& (RUNNING|PASSED|FAILED) TensorRT\.trtexec(?: \[TensorRT v(\d+)\])?", re.M)
_NUMBER = r"([-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)"


class TrtexecError(RuntimeError):
    """trtexec failed or its output holds no timing; the message quotes its error lines."""


@dataclass(frozen=True)
class TrtexecTiming:
    median_ms: float
    p10_ms: float  # NaN where only the text summary was available (it has no 10th percentile)
    p90_ms: float  # NaN for 7.x-8.4 summaries (they print only the 99th percentile)
    runs: int
    source: str  # "export_times" or "summary"
    version: tuple[int, int, int] | None


def parse_version(log: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) from the `[TensorRT vNNNN]` tag: v8201 -> 8.2.1, v100300 -> 10.3.0."""
    for m in _STATUS.finditer(log):
        if m[2]:
            n = int(m[2])
            if n >= 100000:
                return n // 10000, n // 100 % 100, n % 100
            return n // 1000, n // 100 % 10, n % 100
    return None


def _strip(log: str) -> str:
    return _PREFIX.sub("", log)


def check_passed(log: str, returncode: int | None = 0) -> None:
    """Raise TrtexecError unless the log ends in `&&&& PASSED`; quote its [E] lines if not."""
    statuses = [m[1] for m in _STATUS.finditer(log)]
    if returncode == 0 and statuses and statuses[-1] == "PASSED":
        return
    errors = [line for line in log.splitlines() if "[E]" in line or line.startswith("&&&& FAILED")]
    detail = "\n".join(errors[-12:]) or log.strip()[-2000:] or "(no output)"
    raise TrtexecError(f"trtexec failed (exit status {returncode}):\n{detail}")


def _counts(text: str) -> tuple[int | None, int | None]:
    warm = re.search(r"Warmup completed (\d+) queries", text)
    timed = re.search(r"Timing trace has (\d+) queries", text)
    return (int(warm[1]) if warm else None), (int(timed[1]) if timed else None)


def compute_times(times_json: str, log: str, warmup_ms: float) -> list[float]:
    """Per-query GPU compute times (ms) of the timed queries of an --exportTimes file."""
    try:
        entries = json.loads(times_json)
        compute = [float(e["computeMs"]) for e in entries]
    except (ValueError, TypeError, KeyError) as e:
        raise TrtexecError(f"--exportTimes output is not a list of queries with computeMs ({e})") from None
    warm, timed = _counts(_strip(log))
    if timed is not None and warm and len(compute) == timed + warm:
        return compute[warm:]  # <= 8.4: the trace starts with the warm-up queries
    if timed is not None and len(compute) == timed:
        return compute
    version = parse_version(log)
    if version is not None and version >= (8, 5, 0):
        return compute
    # no usable counts: warm-up queries are those that started inside the warm-up period
    return [c for c, e in zip(compute, entries) if float(e.get("startComputeMs", math.inf)) >= warmup_ms]


def _quantile(sorted_ms: list[float], p: float) -> float:
    x = p * (len(sorted_ms) - 1)
    lo = int(x)
    hi = min(lo + 1, len(sorted_ms) - 1)
    return sorted_ms[lo] + (sorted_ms[hi] - sorted_ms[lo]) * (x - lo)


def parse_summary(log: str) -> dict[str, float]:
    """The GPU compute statistics of the text summary: median, and p90/p99 where printed."""
    text = _strip(log)
    line = re.search(r"^GPU Compute Time: (.*)$", text, re.M)
    if line:  # 8.0+
        stats = {k: float(v) for k, v in re.findall(rf"(min|max|mean|median) = {_NUMBER} ms", line[1])}
        stats.update({f"p{p}": float(v) for p, v in re.findall(rf"percentile\((\d+)%\) = {_NUMBER} ms", line[1])})
    else:  # 7.x: a block of "key: value ms" lines under "GPU Compute"
        block = re.search(r"^GPU Compute\s*$\n((?:.*\n?){1,8})", text, re.M)
        if not block:
            raise TrtexecError("trtexec output has no GPU compute summary (neither 7.x nor 8.x+ format)")
        stats = {k: float(v) for k, v in re.findall(rf"^(min|max|mean|median): {_NUMBER} ms", block[1], re.M)}
        percentiles = re.findall(rf"^percentile: {_NUMBER} ms at (\d+)%", block[1], re.M)
        stats.update({f"p{p}": float(v) for v, p in percentiles})
    if "median" not in stats:
        raise TrtexecError("trtexec GPU compute summary has no median")
    return stats


def parse_trtexec(log: str, times_json: str | None = None, warmup_ms: float = 200.0,
                  returncode: int | None = 0) -> TrtexecTiming:
    """The GPU compute latency of one trtexec run (the JSON trace if given, else the summary)."""
    check_passed(log, returncode)
    version = parse_version(log)
    if times_json:
        times = sorted(compute_times(times_json, log, warmup_ms))
        if times:
            return TrtexecTiming(_quantile(times, 0.5), _quantile(times, 0.1), _quantile(times, 0.9),
                                 len(times), "export_times", version)
    stats = parse_summary(log)
    _, timed = _counts(_strip(log))
    return TrtexecTiming(stats["median"], math.nan, stats.get("p90", math.nan), timed or 0, "summary", version)
