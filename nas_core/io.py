"""Atomic artifact writes: every file appears whole or not at all (temp file + fsync + rename).
Artifacts get the modes a plain write would (0644/0755 under the usual umask: teammates share a
machine), and a write that fails raises WriteError naming the artifact, the old one left intact."""
from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Protocol


class WriteError(OSError):
    """An artifact could not be written (permission, disk full, a file where a folder should be)."""

    def __str__(self) -> str:
        return f"{self.filename}: cannot write: {self.strerror}"


def _umask() -> int:
    try:  # Linux: read it without setting it (os.umask would change it for every thread meanwhile)
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def _blocker(folder: Path) -> Path | None:
    """The file standing where `folder` or one of its parents should be a folder, if any."""
    for p in (folder, *folder.parents):
        if p.exists() or p.is_symlink():
            return None if p.is_dir() else p
    return None


# the errors of a write that fails for the place it writes to, and how to say them
_WHY = {errno.ENOSPC: "no space left on the disk", errno.EDQUOT: "disk quota exceeded",
        errno.EACCES: "permission denied in {folder}", errno.EPERM: "operation not permitted in {folder}",
        errno.EROFS: "read-only file system", errno.EFBIG: "file too large", errno.EISDIR: "a folder is in the way",
        errno.ENOTDIR: "a file is in the way", errno.EEXIST: "a file is in the way"}


@contextmanager
def _naming(path: Path, folder: Path | None = None) -> Iterator[None]:
    """Turn an OSError while writing `path` (in `folder`, default its parent) into a WriteError
    that names `path` and says why."""
    folder = path.parent if folder is None else folder
    try:
        yield
    except WriteError:
        raise
    except OSError as e:
        blocker = _blocker(folder)
        if blocker is not None:
            raise WriteError(errno.ENOTDIR, f"{blocker} is a file, not a folder", str(path)) from None
        if e.errno not in _WHY:  # not a failed write (e.g. an input the body reads is missing): as it is
            raise
        raise WriteError(e.errno, _WHY[e.errno].format(folder=folder), str(path)) from None


class Registry(Protocol):
    """Whoever removes a folder if this process dies before it can (tasks/processes.py's reaper)."""

    def remove_at_exit(self, folder: Path) -> None: ...

    def forget(self, folder: Path) -> None: ...


def temp_dir(parent: str | Path, prefix: str, suffix: str = "", reported: Path | None = None,
             registry: Registry | None = None) -> Path:
    """A new empty folder in `parent` with a plain folder's mode (mkdtemp's is 0700); an error
    names `reported` (default: the folder's prefix), the artifact the folder is for.

    With `registry`, the folder is registered before it exists, so a kill -9 at any instant leaves
    nothing behind (registered after mkdtemp, a kill between the two left the folder for good)."""
    parent = Path(parent)
    with _naming(reported or parent / prefix, folder=parent):
        parent.mkdir(parents=True, exist_ok=True)
        while True:
            tmp = parent / f"{prefix}{secrets.token_hex(6)}{suffix}"
            if registry is not None:
                registry.remove_at_exit(tmp)
            try:
                tmp.mkdir()  # mode 0777 less the umask, as a plain mkdir; exclusive like mkdtemp
                return tmp
            except FileExistsError:  # another's folder: not ours to remove
                if registry is not None:
                    registry.forget(tmp)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`."""
    path = Path(path)
    with _naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would hide the artifact from the group
        os.close(fd)
    tmp = Path(tmp)
    try:
        with _naming(path):
            yield tmp
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; on success it replaces `path` whole, so no
    file of an earlier write that this one did not produce lingers (e.g. a space no longer
    configured). Between the two renames `path` is briefly absent, never partly written."""
    path = Path(path)
    tmp = temp_dir(path.parent, f".{path.name}.", ".tmp", reported=path)
    try:
        with _naming(path):
            yield tmp
            old = tmp.with_suffix(".old")
            if path.exists():
                os.replace(path, old)
            os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb", buffering=0) as f:  # unbuffered: a failed write raises at once
        try:
            torch.save(obj, f)
        except RuntimeError as e:  # torch wraps the failed write (a full disk); the OSError says why
            if isinstance(e.__context__, OSError):
                raise e.__context__ from None
            raise


def atomic_write_parquet(path: str | Path, df, metadata: dict[str, str] | None = None) -> None:
    """Write a DataFrame as parquet, with string key/values added to the schema metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    if metadata:
        merged = dict(table.schema.metadata or {})
        merged.update({k.encode(): str(v).encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(merged)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def remove_checkpoint(path: str | Path) -> None:
    """Remove a finished run's `<checkpoints>/<fingerprint>/last.pt` folder, and `<checkpoints>` once no
    other configuration keeps one there (their runs stay resumable)."""
    folder = Path(path).parent
    shutil.rmtree(folder, ignore_errors=True)
    try:
        folder.parent.rmdir()
    except OSError:  # not empty (or already gone)
        pass


def read_parquet(path: str | Path, what: str, hint: str = ""):
    """A parquet file as a DataFrame; a missing or unreadable file is an error naming it."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found{hint}")
    try:
        return pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise ValueError(f"{path}: not a readable parquet {what} ({e})") from None


def _jsonable(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
