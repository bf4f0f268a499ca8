"""`squeezenas profile`: the latency_table stage, and `--trust-host`, the explicit action that adds
an SSH target's host key to known_hosts once its fingerprint has been verified."""
from __future__ import annotations

import sys

from cli.args import add_params_args, quiet_user_tracebacks


def _trust(args) -> int:
    from nas_core.config import load_params
    from nas_core.cost.ssh import HostKeyError, fetch_host_key, fingerprint, trust_host

    cfg = load_params(args.params, tuple(args.overrides)).latency
    if cfg.target != "ssh":
        raise ValueError("--trust-host needs latency.target: ssh (and latency.host or latency.hosts)")
    hosts = [d.host for d in cfg.devices()]
    if not args.trust_host:
        for host in hosts:
            key = fetch_host_key(host, cfg.port)
            print(f"{host}:{cfg.port} presents {key.get_name()} key {fingerprint(key)}\n"
                  f"Verify it on the device (ssh-keygen -lf /etc/ssh/ssh_host_{key.get_name().split('-')[-1]}_key.pub),"
                  f" then run: squeezenas profile --trust-host {fingerprint(key)}")
        return 0
    if len(hosts) > 1:  # a pool: each device has its own key; add the host(s) presenting this one
        pool, hosts = hosts, [h for h in hosts if fingerprint(fetch_host_key(h, cfg.port)) == args.trust_host]
        if not hosts:
            raise HostKeyError(f"latency.hosts: none of {', '.join(pool)} presents {args.trust_host}; "
                               f"{cfg.known_hosts} was left unchanged")
    for host in hosts:  # trust_host checks the fingerprint again and refuses a mismatch
        got = trust_host(host, cfg.port, cfg.known_hosts, args.trust_host)
        print(f"added {host}:{cfg.port} ({got}) to {cfg.known_hosts}")
    return 0


def _profile(args) -> int:
    from nas_core.cost.targets import ProfileError

    try:
        if args.trust_host is not None:
            return _trust(args)
        from cli.server import stage_api
        from flows.profile import profile_flow

        quiet_user_tracebacks()
        with stage_api():
            profile_flow(args.params, tuple(args.overrides))
    except ProfileError as e:
        print(f"squeezenas profile: error: {e}", file=sys.stderr)
        return 2
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("profile", help="stage latency_table: latency cost tables measured on the target device")
    add_params_args(p)
    p.add_argument("--trust-host", nargs="?", const="", default=None, metavar="SHA256:FINGERPRINT",
                   help="print the SSH target's host key fingerprint; given the verified fingerprint, "
                        "add the key to latency.known_hosts (nothing is profiled)")
    p.set_defaults(func=_profile)
