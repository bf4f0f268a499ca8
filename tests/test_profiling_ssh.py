"""The SSH target against a real OpenSSH server on 127.0.0.1 (the `sshd` fixture of tests/sshd.py, a plugin of
tests/conftest.py)."""
import json
import subprocess
import sys

import pytest

from nas_core.cost.latency import MeasurementStore, measure_units, profile_space, store_path
from nas_core.cost.macs import read_cost_table, write_cost_table
from nas_core.cost.ssh import AuthError, HostKeyError, SshTarget, fetch_host_key, fingerprint, trust_host
from nas_core.cost.targets import MeasurementProtocol
from nas_core.space.spaces import SPACES
from tests.sshd import _keygen
from tests.test_profiling_local import FAST, SIZE, TINY, _tiny_units

quiet = lambda s: None  # noqa: E731


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setitem(SPACES, "tiny", TINY)
    return TINY


def _target(server, tmp_path, **kw) -> SshTarget:
    args = dict(host=server.host, port=server.port, user=server.user, key_file=str(server.key_file),
                known_hosts=str(server.known_hosts), remote_python=sys.executable,
                remote_workdir=str(tmp_path / "remote"), timeout_s=60)
    args.update(kw)
    (tmp_path / "remote").mkdir(exist_ok=True)
    return SshTarget(FAST, **args)


def test_full_profile_of_a_tiny_space_over_ssh(sshd, tiny, tmp_path):
    target = _target(sshd, tmp_path)
    store = MeasurementStore(store_path(tmp_path / "m", target))
    table, stats = profile_space("tiny", SIZE, 3, target, store, tmp_path / "onnx", log=quiet)
    write_cost_table(table, tmp_path / "t.parquet")
    table = read_cost_table(tmp_path / "t.parquet")
    ran = table[~(table["candidate"].eq("skip") & table["residual"])]
    assert (ran["latency_ms"] > 0).all() and stats["measured"] == 40
    assert list((tmp_path / "remote").iterdir()) == []  # the remote working directory was removed
    assert not target.connected


def test_device_facts_over_ssh(sshd, tmp_path):
    with _target(sshd, tmp_path) as target:
        facts = target.facts()
    assert facts["hostname"] and facts["onnxruntime"] and facts["target"] == target.name


def test_unknown_host_key_is_refused(sshd, tmp_path):
    (tmp_path / "empty_known_hosts").write_text("")
    with pytest.raises(HostKeyError, match="unknown host.*--trust-host"):
        _target(sshd, tmp_path, known_hosts=str(tmp_path / "empty_known_hosts")).open()


def test_missing_known_hosts_file_is_refused(sshd, tmp_path):
    with pytest.raises(HostKeyError, match="known_hosts file not found"):
        _target(sshd, tmp_path, known_hosts=str(tmp_path / "nope")).open()


def test_changed_host_key_is_refused(sshd, tmp_path):
    _keygen(tmp_path / "other_host")
    kind, b64 = (tmp_path / "other_host.pub").read_text().split()[:2]
    (tmp_path / "known").write_text(f"[{sshd.host}]:{sshd.port} {kind} {b64}\n")
    with pytest.raises(HostKeyError, match="HOST KEY CHANGED"):
        _target(sshd, tmp_path, known_hosts=str(tmp_path / "known")).open()


def test_wrong_user_key_is_refused(sshd, tmp_path):
    _keygen(tmp_path / "stranger")
    with pytest.raises(AuthError, match="authentication failed"):
        _target(sshd, tmp_path, key_file=str(tmp_path / "stranger")).open()


def test_trusting_a_host_needs_its_verified_fingerprint(sshd, tmp_path):
    known = tmp_path / "known_hosts"
    expected = subprocess.run(["ssh-keygen", "-lf", str(sshd.host_pub)], capture_output=True, text=True,
                              check=True).stdout.split()[1]
    assert fingerprint(fetch_host_key(sshd.host, sshd.port)) == expected  # as OpenSSH prints it
    with pytest.raises(HostKeyError, match="left unchanged"):
        trust_host(sshd.host, sshd.port, known, "SHA256:" + "A" * 43)
    assert not known.exists()
    assert trust_host(sshd.host, sshd.port, known, expected) == expected
    with _target(sshd, tmp_path, known_hosts=str(known)) as target:
        assert target.connected


def test_profile_resumes_after_the_connection_is_killed(sshd, tiny, tmp_path):
    units = _tiny_units()
    target = _target(sshd, tmp_path)
    store = MeasurementStore(store_path(tmp_path / "m", target))
    seen, logs = [], []

    def kill_on_third(rec):
        seen.append(rec["key"])
        if len(seen) == 3:
            assert sshd.kill_connections() > 0

    stats = measure_units(target, units, store, tmp_path / "onnx", on_result=kill_on_third, retries=3,
                          backoff_s=0.05, log=logs.append)
    assert any("reconnecting" in line for line in logs)
    keys = [json.loads(line)["key"] for line in store.path.read_text().splitlines()]
    assert sorted(keys) == sorted(u.key for u in units)  # no duplicate and no missing row
    assert len(seen) == stats["measured"] == len(units)
    assert list((tmp_path / "remote").iterdir()) == []


def test_remote_arguments_with_shell_metacharacters_arrive_intact(sshd, tiny, tmp_path):
    weird = f"a b;$(touch {tmp_path}/PWNED)`touch {tmp_path}/PWNED2`'\"&|<>*?{{x,y}}~#!\\"
    target = _target(sshd, tmp_path, remote_workdir=str(tmp_path / "remote" / weird))
    with target:
        assert target.run_command(["printf", "%s", weird]) == weird
    seen = []
    measure_units(target, _tiny_units()[:2], MeasurementStore(tmp_path / "s.jsonl"), tmp_path / "onnx",
                  on_result=lambda r: seen.append([p.name for p in (tmp_path / "remote" / weird).iterdir()]),
                  log=quiet)
    assert seen and all(len(names) == 1 and names[0].startswith("squeezenas-") for names in seen)
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "PWNED2").exists()
    assert list((tmp_path / "remote" / weird).iterdir()) == []


def test_no_retry_for_a_refused_key(sshd, tiny, tmp_path):
    _keygen(tmp_path / "stranger")
    target = _target(sshd, tmp_path, key_file=str(tmp_path / "stranger"))
    with pytest.raises(AuthError):
        measure_units(target, _tiny_units()[:1], MeasurementStore(tmp_path / "s.jsonl"), tmp_path / "onnx",
                      retries=5, backoff_s=10, log=quiet)  # would take > 10 s if it retried


def test_protocol_reaches_the_remote_runner(sshd, tiny, tmp_path):
    target = _target(sshd, tmp_path)
    target.protocol = MeasurementProtocol(warmup=0, runs=7, min_time_s=0.0)
    store = MeasurementStore(tmp_path / "s.jsonl")
    measure_units(target, _tiny_units()[:1], store, tmp_path / "onnx", log=quiet)
    assert next(iter(store.records.values()))["runs"] == 7


def test_trust_host_is_an_explicit_cli_action(sshd, tmp_path, capsys):
    import yaml

    from cli.main import main

    known = tmp_path / "known_hosts"
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"latency": {"target": "ssh", "host": sshd.host, "port": sshd.port,
                                                  "known_hosts": str(known)}}))
    assert main(["profile", "--params", str(params), "--trust-host"]) == 0
    shown = capsys.readouterr().out
    fp = fingerprint(fetch_host_key(sshd.host, sshd.port))
    assert fp in shown and not known.exists()  # printing the fingerprint trusts nothing
    assert main(["profile", "--params", str(params), "--trust-host", "SHA256:wrong"]) == 2
    assert not known.exists()
    assert main(["profile", "--params", str(params), "--trust-host", fp]) == 0
    assert known.read_text().startswith(f"[{sshd.host}]:{sshd.port} ssh-ed25519 ")


def test_trtexec_backend_over_ssh(sshd, tiny, tmp_path):
    from tests.test_profiling_trtexec import _fake_trtexec

    fake = _fake_trtexec(tmp_path, "trt8.5.2_xavier")
    target = _target(sshd, tmp_path)
    target.protocol = MeasurementProtocol(backend="trtexec", trtexec=str(fake), runs=200)
    store = MeasurementStore(tmp_path / "s.jsonl")
    measure_units(target, _tiny_units()[:2], store, tmp_path / "onnx", log=quiet)
    assert all(r["source"] == "export_times" and r["runs"] == 200 for r in store.records.values())
    assert list((tmp_path / "remote").iterdir()) == []
