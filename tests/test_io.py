"""Atomic writes: group-readable modes (teammates share a machine) and failures that name the
artifact and leave the old one intact (a file in the way, permission denied, disk full)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nas_core.io import WriteError, atomic_dir, atomic_path, atomic_write_json, atomic_write_text, temp_dir
from tests.repo_copy import ROOT


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize("mask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750),
                                                     (0o077, 0o600, 0o700)])
def test_artifacts_get_the_modes_a_plain_write_would(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    atomic_write_json(tmp_path / "a" / "x.json", {"k": 1})
    with atomic_dir(tmp_path / "tables") as tmp:
        (tmp / "t.parquet").write_bytes(b"1")
    assert mode(tmp_path / "a" / "x.json") == file_mode
    assert mode(tmp_path / "tables") == dir_mode and mode(temp_dir(tmp_path, ".data.")) == dir_mode


class Recorder:
    """A registry (the reaper's two calls) that notes whether the folder existed when it heard of it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Path, bool]] = []

    def remove_at_exit(self, folder: Path) -> None:
        self.calls.append(("remove_at_exit", folder, folder.exists()))

    def forget(self, folder: Path) -> None:
        self.calls.append(("forget", folder, folder.exists()))


def test_a_registered_temp_folder_is_registered_before_it_exists(tmp_path):
    """A kill -9 between creating the folder and registering it would leave it for good."""
    registry = Recorder()
    tmp = temp_dir(tmp_path / "data", ".cityscapes.", registry=registry)
    assert registry.calls == [("remove_at_exit", tmp, False)]
    assert tmp.is_dir() and tmp.parent == tmp_path / "data" and tmp.name.startswith(".cityscapes.")
    assert temp_dir(tmp_path / "data", ".cityscapes.", registry=registry) != tmp


def test_a_file_in_the_way_of_a_folder_is_named(tmp_path):
    (tmp_path / "outputs").write_text("not a folder")
    with pytest.raises(WriteError) as e:
        atomic_write_text(tmp_path / "outputs" / "search" / "metrics.json", "{}")
    assert str(e.value) == (f"{tmp_path}/outputs/search/metrics.json: cannot write: {tmp_path}/outputs is a file, "
                            "not a folder")
    with pytest.raises(WriteError, match="tables: cannot write: .*outputs is a file"):
        with atomic_dir(tmp_path / "outputs" / "tables"):
            pass
    assert (tmp_path / "outputs").read_text() == "not a folder"


WRITE = "import sys; from nas_core.io import atomic_write_text; atomic_write_text(sys.argv[1], 'new' * 4000)"


def write_in(prefix: list[str], target: Path) -> subprocess.CompletedProcess:
    """Write `target` from a fresh Python under `prefix` (a user namespace: see the tests)."""
    return subprocess.run([*prefix, sys.executable, "-c", WRITE, str(target)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)


def unshare(*flags: str) -> list[str]:
    """`unshare FLAGS`, or a skip where user namespaces are not allowed (a container without them)."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", *flags, "true"], capture_output=True).returncode:
        pytest.skip(f"unshare {' '.join(flags)} is not permitted here")
    return ["unshare", *flags]


def test_permission_denied_names_the_artifact_and_keeps_the_old_one(tmp_path):
    folder = tmp_path / "outputs"
    folder.mkdir()
    (folder / "metrics.json").write_text("old")
    folder.chmod(0o555)
    # a user namespace without a mapping drops root's override of file modes (a non-root user has none)
    proc = write_in(unshare("--user") if os.geteuid() == 0 else [], folder / "metrics.json")
    folder.chmod(0o755)
    assert proc.returncode == 1 and "Traceback" in proc.stderr  # a plain Python: the error's text is what counts
    assert f"WriteError: {folder}/metrics.json: cannot write: permission denied in {folder}" in proc.stderr
    assert (folder / "metrics.json").read_text() == "old" and os.listdir(folder) == ["metrics.json"]


def test_disk_full_names_the_artifact_and_keeps_the_old_one(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    script = (f"mount -t tmpfs -o size=16k none {disk} && echo old > {disk}/metrics.json && "
              f"(dd if=/dev/zero of={disk}/fill bs=1k 2>/dev/null; true) && "
              f"{sys.executable} -c \"{WRITE}\" {disk}/metrics.json; "
              f"echo rc=$?; cat {disk}/metrics.json; ls -A {disk}")
    proc = subprocess.run([*unshare("-rm"), "sh", "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert f"WriteError: {disk}/metrics.json: cannot write: no space left on the disk" in proc.stderr
    assert proc.stdout.split() == ["rc=1", "old", "fill", "metrics.json"]  # old content, no temporary file left


def test_a_checkpoint_on_a_full_disk_names_it_too(tmp_path):
    """torch.save wraps the failed write in a RuntimeError; the WriteError names the checkpoint."""
    disk = tmp_path / "disk"
    disk.mkdir()
    save = ("import sys, torch; from nas_core.io import atomic_torch_save; "
            "atomic_torch_save(sys.argv[1], torch.zeros(10**5))")
    script = (f"mount -t tmpfs -o size=64k none {disk} && {sys.executable} -c '{save}' {disk}/last.pt; "
              f"echo rc=$?; ls -A {disk}")
    proc = subprocess.run([*unshare("-rm"), "sh", "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert f"WriteError: {disk}/last.pt: cannot write: no space left on the disk" in proc.stderr, proc.stderr
    assert proc.stdout.split() == ["rc=1"]  # no partial checkpoint, no temporary file


def test_an_error_that_is_no_failed_write_passes_unchanged(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        with atomic_path(tmp_path / "table.parquet"):
            open(tmp_path / "missing_input.json")  # the body reads an input that is not there
    assert not isinstance(e.value, WriteError) and os.listdir(tmp_path) == []
