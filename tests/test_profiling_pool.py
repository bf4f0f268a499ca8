"""A pool of identical devices profiling one table: two names of the suite's real sshd on 127.0.0.1
(`127.0.0.1` and `localhost`), device jobs fanned out by threads or a real Dask cluster, one job
per device at a time (Prefect's global concurrency limits), a mismatched pool refused."""
import json
import sys
import threading
import time

import pytest
import yaml

from nas_core.config import LatencyParams, ParamsError, load_params
from nas_core.cost.export import Unit
from nas_core.cost.factory import build_target
from nas_core.cost.latency import MeasurementStore, store_path
from nas_core.cost.macs import build_cost_table, read_cost_table
from nas_core.cost.pool import FIDELITY, PoolError, check_same_hardware, deal

HOSTS = ["127.0.0.1", "localhost"]
SIZE = {"height": 32, "width": 64}
SMALL_UNITS = 128  # distinct shapes of the small space at 32x64 (tests/test_profiling_stage.py)


@pytest.fixture(scope="module")
def known_hosts(sshd, tmp_path_factory):
    """The server's key under both of its names: two devices to the pool."""
    kind, b64 = sshd.host_pub.read_text().split()[:2]
    path = tmp_path_factory.mktemp("keys") / "known_hosts"
    path.write_text("".join(f"[{h}]:{sshd.port} {kind} {b64}\n" for h in HOSTS))
    return path


@pytest.fixture
def dask_cluster():
    from distributed import LocalCluster

    # workers as threads of this process: a real scheduler and workers, without process start-up
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        yield cluster


def write_params(tmp_path, sshd, known_hosts, **latency) -> str:
    (tmp_path / "remote").mkdir(exist_ok=True)
    section = {"target": "ssh", "hosts": HOSTS, "port": sshd.port, "user": sshd.user, "key_file": str(sshd.key_file),
               "known_hosts": str(known_hosts), "remote_python": sys.executable,
               "remote_workdir": str(tmp_path / "remote"), "input_size": SIZE, "warmup": 0, "runs": 2,
               "min_time_s": 0.0, "clock": "thread", "retries": 1, "backoff_s": 0.1,
               "fidelity": {"num_networks": 0, "seed": 1, "space": "small"}, "model": {"kind": "table"}, **latency}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "tracking": {"mlflow_uri": "sqlite:///mlflow.db", "experiment": "pool"},
        "paths": {"latency": "lat", "metrics": "m"}, "latency": section}))
    return str(tmp_path / "params.yaml")


def device_stores(tmp_path, params_file) -> dict[str, MeasurementStore]:
    cfg = load_params(params_file).latency
    return {d.host: MeasurementStore(store_path(tmp_path / "lat" / "measurements", build_target(d)))
            for d in cfg.devices()}


def assert_complete_table(tmp_path, stores):
    """One row per (block, candidate) of the space, each with the latency some device stored."""
    table = read_cost_table(tmp_path / "lat" / "tables" / "latency_small.parquet")
    base = build_cost_table("small", (SIZE["height"], SIZE["width"]), 19)
    ident = ["kind", "block", "candidate", "shape_key"]
    assert table[ident].equals(base[ident]) and not table.duplicated(["kind", "block", "candidate"]).any()
    records = {k: r for s in stores.values() for k, r in s.records.items()}
    ran = table[table["latency_ms"] > 0]
    assert len(ran) > 200 and all(records[k]["latency_ms"] == ms for k, ms in zip(ran["shape_key"], ran["latency_ms"]))


def assert_shared_without_overlap(stores, total):
    a, b = (set(s.records) for s in stores.values())
    assert a and b and not a & b and len(a | b) == total  # both measured a share, nothing twice


@pytest.mark.slow
def test_a_pool_profiles_through_dask_one_job_per_device_at_a_time_and_resumes(
        sshd, known_hosts, prefect_harness, dask_cluster, tmp_path, monkeypatch):
    from prefect.concurrency.sync import concurrency

    from flows.profile import device_slot, profile_flow

    monkeypatch.chdir(tmp_path)
    params = write_params(tmp_path, sshd, known_hosts, runner="dask", dask_address=dask_cluster.scheduler_address,
                          fidelity={"num_networks": 4, "seed": 1, "space": "small"})
    first = store_path(tmp_path / "lat" / "measurements", build_target(load_params(params).latency.devices()[0]))
    device_json = tmp_path / "lat" / "device.json"
    held, holds = threading.Event(), []

    def wait_for(path):
        deadline = time.monotonic() + 60
        while not path.is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
        return path.is_file()

    def another_job_on_localhost():  # e.g. another flow run profiling the same device
        # held from before the flow starts until 127.0.0.1 has reported its facts, then again from
        # when the measuring is due until 127.0.0.1 has stored a result (or, if the flow's
        # localhost job got the slot first, from its end)
        for due, until in ((None, first.with_suffix(".facts.json")), (device_json, first)):
            if due:
                wait_for(due)
            with concurrency(device_slot("localhost"), occupy=1):
                start = time.time()
                held.set()
                arrived = wait_for(until)
                holds.append((start, time.time(), arrived))

    contender = threading.Thread(target=another_job_on_localhost)
    contender.start()
    assert held.wait(30)
    out = profile_flow(params)
    contender.join(60)

    # while localhost was busy, 127.0.0.1 went ahead; no localhost job ran while another held its slot
    assert len(holds) == 2 and holds[0][2]
    spans = {h: sorted((j["start"], j["end"]) for j in out["jobs"] if j["device"] == h) for h in HOSTS}
    assert spans["127.0.0.1"][0][0] < holds[0][1] <= spans["localhost"][0][0]
    assert all(end <= held_from or start >= held_to
               for start, end in spans["localhost"] for held_from, held_to, _ in holds)
    for device_spans in spans.values():  # one job per device at a time
        assert len(device_spans) == 2 and device_spans[0][1] <= device_spans[1][0]

    stores = device_stores(tmp_path, params)
    assert_shared_without_overlap(stores, SMALL_UNITS + 4)
    assert_complete_table(tmp_path, stores)
    assert out["tables"]["small"]["profile_measured"] == out["tables"]["small"]["profile_units"] == SMALL_UNITS
    assert out["fidelity"]["held_out"] == 4 and out["fidelity"]["table"]["n"] == 4
    device = json.loads(device_json.read_text())
    assert sorted(device["devices"]) == HOSTS and all(h in device["target"] for h in HOSTS)
    assert all(s.path.with_suffix(".facts.json").is_file() for s in stores.values())

    # an interrupted profile: the last 5 results of one device never arrived; the rerun measures
    # those 5 only, dealt across both devices
    lost = stores["localhost"].path
    lines = lost.read_text().splitlines(keepends=True)
    lost.write_text("".join(lines[:-5]))
    lost_table_units = sum(not json.loads(line)["key"].startswith("net:") for line in lines[-5:])
    again = profile_flow(params)
    measured = {j["device"]: j["measured"] for j in again["jobs"] if j["phase"] == "measure"}
    assert sorted(measured.values()) == [2, 3]
    assert again["tables"]["small"]["profile_measured"] == lost_table_units
    assert_shared_without_overlap(device_stores(tmp_path, params), SMALL_UNITS + 4)
    assert_complete_table(tmp_path, device_stores(tmp_path, params))


def test_a_pool_through_threads_shares_the_units_between_the_devices(sshd, known_hosts, prefect_harness, tmp_path,
                                                                     monkeypatch):
    from flows.profile import profile_flow

    monkeypatch.chdir(tmp_path)
    params = write_params(tmp_path, sshd, known_hosts)
    out = profile_flow(params)
    stores = device_stores(tmp_path, params)
    assert_shared_without_overlap(stores, SMALL_UNITS)
    assert_complete_table(tmp_path, stores)
    measured = {j["device"]: j["measured"] for j in out["jobs"] if j["phase"] == "measure"}
    assert measured == {h: len(stores[h]) for h in HOSTS} and sum(measured.values()) == SMALL_UNITS


def test_a_pool_of_different_devices_is_refused_naming_both(sshd, known_hosts, prefect_harness, tmp_path,
                                                            monkeypatch):
    from flows.profile import profile_flow

    # a stand-in trtexec: whichever device asks first reports TensorRT 8.5, the other 10.3
    marker, fake = tmp_path / "first", tmp_path / "trtexec"
    fake.write_text(f"""#!{sys.executable}
import os
try:
    os.close(os.open({str(marker)!r}, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    version = "8502"
except FileExistsError:
    version = "100300"
print(f"&&&& RUNNING TensorRT.trtexec [TensorRT v{{version}}] # trtexec --help")
""")
    fake.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    params = write_params(tmp_path, sshd, known_hosts, backend="trtexec", trtexec=str(fake), clock="wall")
    with pytest.raises(PoolError, match=r"latency.hosts: 127\.0\.0\.1 and localhost are not the same kind of "
                                        r"device \(tensorrt: '(8502|100300)' on 127\.0\.0\.1, '(8502|100300)' on"):
        profile_flow(params)
    assert not list((tmp_path / "lat").glob("measurements/*.jsonl")) and not (tmp_path / "lat" / "tables").exists()


def test_hardware_must_match_but_names_may_differ():
    a = {"hostname": "jetson-1", "cpu": "ARMv8 Processor rev 0 (v8l)", "gpu": None, "jetson_model": "AGX Xavier",
         "onnxruntime": "1.16.3", "tensorrt": "8502", "power_mode": "MODE_30W_ALL"}
    check_same_hardware({"jetson-1": a, "jetson-2": {**a, "hostname": "jetson-2"}})
    for key, other in (("jetson_model", "Orin"), ("tensorrt", "100300"), ("power_mode", "MODE_15W")):
        with pytest.raises(PoolError, match=f"jetson-1 and jetson-3 .*{key}"):
            check_same_hardware({"jetson-1": a, "jetson-2": a, "jetson-3": {**a, key: other}})


def test_units_are_dealt_once_each_and_evenly():
    unit = lambda k: Unit(k, ((1,),), build=None)  # noqa: E731 (dealing reads keys only)
    plan = {"small": [unit(k) for k in "abcdefg"], "large": [unit(k) for k in "efghij"], FIDELITY: [unit("n1")]}
    shares = deal(plan, done={"b", "i"}, devices=3)
    keys = [k for share in shares for name in share for k in share[name]]
    assert sorted(keys) == sorted(set("abcdefghij") - {"b", "i"} | {"n1"})  # no duplicate, nothing missing
    assert sorted(len(sum(s.values(), [])) for s in shares) == [3, 3, 3]
    assert not set("efg") & {k for s in shares for k in s["large"]}  # shapes both spaces share: under the first


@pytest.mark.parametrize("section,message", [
    ({"hosts": ["a", "b"]}, "latency.hosts: a pool of devices is reached over SSH"),
    ({"target": "ssh", "host": "a", "hosts": ["b", "c"]}, "latency.host and latency.hosts: set one"),
    ({"target": "ssh", "hosts": ["a", "b", "a"]}, "latency.hosts: a listed more than once"),
    ({"target": "ssh"}, "latency.host: target 'ssh' needs a host"),
])
def test_pool_settings_are_checked_naming_the_field(tmp_path, section, message):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"latency": section}))
    with pytest.raises(ParamsError, match=message):
        load_params(tmp_path / "params.yaml")
    assert [d.host for d in LatencyParams(target="ssh", hosts=("x", "y")).devices()] == ["x", "y"]


def test_trust_host_adds_the_pool_devices_presenting_the_fingerprint(sshd, tmp_path, capsys):
    from cli.main import main
    from nas_core.cost.ssh import fetch_host_key, fingerprint

    known = tmp_path / "known_hosts"
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"latency": {"target": "ssh", "hosts": HOSTS, "port": sshd.port,
                                                  "known_hosts": str(known)}}))
    assert main(["profile", "--params", str(params), "--trust-host"]) == 0
    assert capsys.readouterr().out.count(" presents ssh-ed25519 key ") == 2 and not known.exists()
    assert main(["profile", "--params", str(params), "--trust-host", "SHA256:wrong"]) == 2
    assert "none of 127.0.0.1, localhost presents SHA256:wrong" in capsys.readouterr().err and not known.exists()
    fp = fingerprint(fetch_host_key(sshd.host, sshd.port))
    assert main(["profile", "--params", str(params), "--trust-host", fp]) == 0
    assert sorted(line.split()[0] for line in known.read_text().splitlines()) == \
        sorted(f"[{h}]:{sshd.port}" for h in HOSTS)
