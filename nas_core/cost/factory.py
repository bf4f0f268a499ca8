"""The latency target a `latency` params section names (nas_core.config.LatencyParams): the one module that
knows every kind of target (targets.py holds the interface and the local kinds, ssh.py the device over SSH)."""
from __future__ import annotations

import socket

from nas_core.cost.targets import LocalTarget, MeasurementProtocol, Target, TorchCudaTarget


def build_target(cfg) -> Target:
    """The target of a `latency` params section (nas_core.config.LatencyParams)."""
    protocol = MeasurementProtocol(
        backend=cfg.backend, warmup=cfg.warmup, runs=cfg.runs, min_time_s=cfg.min_time_s, rounds=cfg.rounds,
        threads=cfg.threads, optimization=cfg.optimization, clock=cfg.clock, precision=cfg.precision,
        cuda_graph=cfg.cuda_graph, no_data_transfers=cfg.no_data_transfers, spin_wait=cfg.spin_wait,
        providers=tuple(cfg.providers), trtexec=cfg.trtexec, trtexec_warmup_ms=cfg.trtexec_warmup_ms,
        power_mode=cfg.power_mode, pin_clocks=cfg.pin_clocks)
    if cfg.target == "ssh":
        from nas_core.cost.ssh import SshTarget  # paramiko is imported only for a device driven over SSH

        return SshTarget(protocol, cfg.host, cfg.port, cfg.user, cfg.key_file, cfg.known_hosts, cfg.remote_python,
                         cfg.remote_workdir, cfg.timeout_s, cfg.keepalive_s)
    if cfg.backend == "torch_cuda":
        return TorchCudaTarget(protocol)
    return LocalTarget(protocol, timeout_s=cfg.timeout_s)


def device_name(cfg) -> str:
    """The device a `latency` section points at (for tags such as a per-device concurrency limit)."""
    return cfg.host if cfg.target == "ssh" else socket.gethostname()
