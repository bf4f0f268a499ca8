"""The SSH target (paper section 5.2: latencies measured on the target device, e.g. a Jetson AGX
Xavier): one paramiko connection per profile, host keys checked against the configured
known_hosts only, key or agent authentication, SFTP upload, every remote argument quoted."""
from __future__ import annotations

import base64
import hashlib
import posixpath
import shlex
import socket
import tempfile
import uuid
from pathlib import Path

import paramiko

from nas_core.cost.export import onnx_filename
from nas_core.cost.targets import (
    RUNNER,
    Job,
    MeasurementProtocol,
    OnResult,
    ProfileError,
    RunnerOutput,
    Target,
    TransientError,
    write_manifest,
)
from nas_core.io import atomic_write_text


class HostKeyError(ProfileError):
    """The host's key is unknown or changed; trusting a host is an explicit user action."""


class AuthError(ProfileError):
    """The server refused our key (or agent keys)."""


def host_entry(host: str, port: int) -> str:
    """The known_hosts name of host:port, as OpenSSH writes it."""
    return host if port == 22 else f"[{host}]:{port}"


def fingerprint(key: paramiko.PKey) -> str:
    """The key's fingerprint as `ssh-keygen -lf` prints it: SHA256:<base64 without padding>."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def fetch_host_key(host: str, port: int = 22, timeout_s: float = 15.0) -> paramiko.PKey:
    """The key the server presents (no authentication happens)."""
    try:
        transport = paramiko.Transport(socket.create_connection((host, port), timeout=timeout_s))
        try:
            transport.start_client(timeout=timeout_s)
            return transport.get_remote_server_key()
        finally:
            transport.close()
    except (OSError, paramiko.SSHException) as e:
        raise TransientError(f"ssh {host}:{port}: cannot reach the server ({e})") from None


def trust_host(host: str, port: int, known_hosts: str | Path, expected: str, timeout_s: float = 15.0) -> str:
    """Append the server's key to `known_hosts` if its fingerprint is `expected` (which the user
    verified out of band); otherwise write nothing and raise HostKeyError."""
    key = fetch_host_key(host, port, timeout_s)
    got = fingerprint(key)
    if got != expected:
        raise HostKeyError(f"ssh {host}:{port} presents {key.get_name()} key {got}, not {expected}; "
                           f"{known_hosts} was left unchanged")
    path = Path(known_hosts).expanduser()
    old = path.read_text() if path.is_file() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    atomic_write_text(path, f"{old}{host_entry(host, port)} {key.get_name()} {key.get_base64()}\n")
    return got


def quote_command(argv: list[str]) -> str:
    """One shell command line in which every argument reaches the remote program unchanged."""
    return " ".join(shlex.quote(str(a)) for a in argv)


class SshTarget(Target):
    """A remote device driven over SSH; the runner and the ONNX files live in a private remote
    working directory for the duration of the profile, removed by `cleanup()`."""

    def __init__(self, protocol: MeasurementProtocol, host: str, port: int = 22, user: str | None = None,
                 key_file: str | None = None, known_hosts: str = "~/.ssh/known_hosts",
                 remote_python: str = "python3", remote_workdir: str = "/tmp", timeout_s: float = 600.0,
                 keepalive_s: float = 15.0, connect_timeout_s: float = 15.0):
        self.protocol, self.host, self.port, self.user = protocol, host, port, user
        self.key_file = str(Path(key_file).expanduser()) if key_file else None
        self.known_hosts = Path(known_hosts).expanduser()
        self.remote_python, self.timeout_s = remote_python, timeout_s
        self.keepalive_s, self.connect_timeout_s = keepalive_s, connect_timeout_s
        self.name = f"ssh:{user + '@' if user else ''}{host}:{port}"
        # one directory per profile run: a reconnect finds the files it already uploaded
        self.remote_dir = posixpath.join(remote_workdir, f"squeezenas-{uuid.uuid4().hex[:12]}")
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._sizes: dict[str, int] = {}

    @property
    def connected(self) -> bool:
        t = self._client.get_transport() if self._client else None
        return bool(t and t.is_active())

    def open(self) -> None:
        if self.connected:
            return
        self.close()
        if not self.known_hosts.is_file():
            raise HostKeyError(f"{self.known_hosts}: known_hosts file not found. {self._trust_hint()}")
        client = paramiko.SSHClient()
        client.load_host_keys(str(self.known_hosts))  # only this file: never the system's, never auto-added
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(self.host, self.port, username=self.user, key_filename=self.key_file, allow_agent=True,
                           look_for_keys=False, timeout=self.connect_timeout_s,
                           banner_timeout=self.connect_timeout_s, auth_timeout=self.connect_timeout_s)
        except paramiko.BadHostKeyException as e:
            client.close()
            raise HostKeyError(
                f"{self.name}: HOST KEY CHANGED: the server presents {e.key.get_name()} key {fingerprint(e.key)} but "
                f"{self.known_hosts} holds {fingerprint(e.expected_key)}. This may be an attack or a reinstalled "
                f"device; refusing to connect. If you verified the new key, remove the old line "
                f"(ssh-keygen -R '{host_entry(self.host, self.port)}' -f {self.known_hosts}) and trust it again. "
                f"{self._trust_hint()}") from None
        except paramiko.AuthenticationException as e:
            client.close()
            raise AuthError(f"{self.name}: authentication failed as {self.user or '(current user)'} with "
                            f"{self.key_file or 'ssh-agent keys'} ({e}); passwords are never used") from None
        except paramiko.SSHException as e:
            client.close()
            if "not found in known_hosts" in str(e):
                raise HostKeyError(f"{self.name}: unknown host: no key for {host_entry(self.host, self.port)} in "
                                   f"{self.known_hosts}. {self._trust_hint()}") from None
            raise TransientError(f"{self.name}: SSH failure while connecting ({e})") from None
        except (OSError, EOFError) as e:
            client.close()
            raise TransientError(f"{self.name}: cannot connect ({e})") from None
        client.get_transport().set_keepalive(int(self.keepalive_s))
        self._client, self._sftp = client, client.open_sftp()
        self.run_command(["mkdir", "-p", "--", posixpath.join(self.remote_dir, "onnx")])
        self._sizes = {a.filename: a.st_size for a in self._sftp.listdir_attr(posixpath.join(self.remote_dir, "onnx"))}

    def _trust_hint(self) -> str:
        return (f"Trusting a host is explicit: run `squeezenas profile --trust-host` to print the key the "
                f"server presents, verify it on the device (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), "
                f"then `squeezenas profile --trust-host SHA256:...` (or ssh-keyscan -p {self.port} {self.host} "
                f">> {self.known_hosts} after checking the fingerprint).")

    def close(self) -> None:
        for c in (self._sftp, self._client):
            try:
                if c is not None:
                    c.close()
            except Exception:  # closing a dead connection must not mask the error that killed it
                pass
        self._client = self._sftp = None

    def run_command(self, argv: list[str], timeout_s: float | None = None) -> str:
        """Run one remote command (arguments quoted); its stdout, or ProfileError on failure."""
        self.open()
        try:
            chan = self._client.get_transport().open_session()
            chan.settimeout(timeout_s or self.timeout_s)
            chan.exec_command(quote_command(argv))
            out, err = chan.makefile("rb").read(), chan.makefile_stderr("rb").read()
            rc = chan.recv_exit_status()
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise TransientError(f"{self.name}: connection lost running {argv[0]} ({e})") from None
        if rc != 0:
            raise ProfileError(f"{self.name}: `{quote_command(argv)}` exited with {rc}: "
                               f"{err.decode(errors='replace')[-1000:]}")
        return out.decode(errors="replace")

    def _put(self, local: Path, remote_name: str) -> str:
        """Upload `local` as onnx/<remote_name> unless an equal-sized copy is there; the remote path."""
        remote = posixpath.join(self.remote_dir, "onnx", remote_name)
        size = local.stat().st_size
        if self._sizes.get(remote_name) != size:
            tmp = remote + ".part"  # renamed when complete: a dropped upload never looks finished
            self._sftp.put(str(local), tmp)
            self._sftp.posix_rename(tmp, remote)
            self._sizes[remote_name] = size
        return remote

    def _stream(self, mode: str, jobs: list[Job], out: RunnerOutput) -> None:
        try:
            runner = self._put(RUNNER, "runner.py")
            with tempfile.TemporaryDirectory() as tmp:
                manifest = Path(tmp) / "manifest.json"
                write_manifest(manifest, self.protocol, [(j.unit.key, self._put(j.onnx, onnx_filename(j.unit.key)),
                                                          j.unit.inputs) for j in jobs])
                remote_manifest = posixpath.join(self.remote_dir, f"manifest-{uuid.uuid4().hex[:8]}.json")
                self._sftp.put(str(manifest), remote_manifest)
            chan = self._client.get_transport().open_session()
            chan.settimeout(self.timeout_s)  # no line for this long: the device hangs
            chan.set_combine_stderr(True)
            chan.exec_command(quote_command([self.remote_python, runner, mode, remote_manifest]))
            tail = []
            for line in chan.makefile("r"):
                out.feed(line.rstrip("\n"))
                tail = (tail + [line])[-20:]
            rc = chan.recv_exit_status()
        except socket.timeout:
            raise TransientError(f"{self.name}: no result for {self.timeout_s:g} s") from None
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise TransientError(f"{self.name}: connection lost ({e})") from None
        if not self.connected or (rc == -1 and not out.done):
            raise TransientError(f"{self.name}: connection lost while measuring")
        if rc != 0:
            raise ProfileError(f"{self.name}: remote runner exited with {rc}: {''.join(tail)[-2000:]}")

    def facts(self) -> dict:
        self.open()
        out = RunnerOutput(self.protocol, lambda r: None, self.name)
        self._stream("facts", [], out)
        return {**(out.facts or {}), "target": self.name}

    def measure(self, jobs: list[Job], on_result: OnResult) -> None:
        self.open()
        out = RunnerOutput(self.protocol, on_result, self.name, self.on_progress)
        self._stream("measure", jobs, out)
        if not out.done:
            raise TransientError(f"{self.name}: the remote runner stopped before the end")
        out.finish()

    def cleanup(self) -> None:
        if self.connected:
            self.run_command(["rm", "-rf", "--", self.remote_dir])
