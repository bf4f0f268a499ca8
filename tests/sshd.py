"""A real OpenSSH server on 127.0.0.1, started by the SSH profiling tests: host and user keys
generated in a temporary directory, a high free port, public-key login only (root included when
the tests run as root, as in CI). Skips with the reason when /usr/sbin/sshd is not installed."""
from __future__ import annotations

import getpass
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

SSHD = Path("/usr/sbin/sshd")


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)], check=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class SshServer:
    host: str
    port: int
    user: str
    key_file: Path  # an authorized user key
    known_hosts: Path  # holds the server's host key
    host_pub: Path
    dir: Path
    proc: subprocess.Popen

    def descendants(self) -> list[int]:
        """Processes below the listening sshd: one set per open connection."""
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
            except (OSError, IndexError, ValueError):
                continue
        out, todo = [], [self.proc.pid]
        while todo:
            kids = children.get(todo.pop(), [])
            out += kids
            todo += kids
        return out

    def kill_connections(self) -> int:
        """SIGKILL every session process (the connection drops as if the device went away)."""
        pids = self.descendants()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(pids)

    def stop(self) -> None:
        self.kill_connections()
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_sshd(tmp: Path) -> SshServer:
    if not SSHD.exists():
        pytest.skip("SSH tests need OpenSSH's server at /usr/sbin/sshd (scripts/setup.sh --test installs it)")
    tmp.mkdir(parents=True, exist_ok=True)
    host_key, user_key = tmp / "host_ed25519", tmp / "user_ed25519"
    _keygen(host_key)
    _keygen(user_key)
    (tmp / "authorized_keys").write_text(Path(f"{user_key}.pub").read_text())
    os.chmod(tmp / "authorized_keys", 0o600)
    port = free_port()
    host_pub = Path(f"{host_key}.pub")
    kind, b64 = host_pub.read_text().split()[:2]
    (tmp / "known_hosts").write_text(f"[127.0.0.1]:{port} {kind} {b64}\n")
    config = tmp / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}", f"PidFile {tmp / 'sshd.pid'}",
        f"AuthorizedKeysFile {tmp / 'authorized_keys'}", "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "UsePAM no", "StrictModes no",  # the keys live under /tmp, which is world-writable
        "Subsystem sftp internal-sftp", "AllowTcpForwarding no", "X11Forwarding no", "PrintMotd no",
        "MaxStartups 100", "LogLevel ERROR", ""]))
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    check = subprocess.run([str(SSHD), "-t", "-f", str(config)], capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"sshd rejects {config}: {check.stderr}")
    log = open(tmp / "sshd.log", "w")
    proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(64).startswith(b"SSH-2.0"):
                    break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(tmp / 'sshd.log').read_text()}") from None
            time.sleep(0.05)
    else:
        proc.kill()
        raise RuntimeError(f"sshd did not answer on port {port}: {(tmp / 'sshd.log').read_text()}")
    return SshServer("127.0.0.1", port, getpass.getuser(), user_key, tmp / "known_hosts", host_pub, tmp, proc)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()
