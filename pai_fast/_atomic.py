"""Atomic file replacement (temp file, fsync, rename) shared by checkpoints and run outputs; torch-free, so the
graph-rendering child process can import it without torch."""

from __future__ import annotations

import errno
import os
import shutil
import threading
import uuid

_inflight: set[str] = set()  # temp files being written by this process (never removed as stale)
_inflight_lock = threading.Lock()


def _temp_prefix(path: str) -> str:
    return f".{os.path.basename(path)}.tmp-"


def _temp_path(path: str) -> str:
    # pid first: the stale-file sweep reads it back to tell a killed writer from a live one.
    name = f"{_temp_prefix(path)}{os.getpid()}-{uuid.uuid4().hex[:12]}"
    return os.path.join(os.path.dirname(os.path.abspath(path)), name)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, belongs to another user
        return True
    except OSError as exc:
        return exc.errno != errno.ESRCH
    return True


def _remove_stale_temps(path: str) -> list[str]:
    """Delete temp files of earlier saves to ``path`` whose writer is gone; returns the removed paths."""
    directory = os.path.dirname(os.path.abspath(path))
    prefix = _temp_prefix(path)
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        pid_text = entry.name[len(prefix) :].split("-", 1)[0]
        try:
            pid = int(pid_text)
        except ValueError:
            continue
        with _inflight_lock:
            busy = entry.path in _inflight
        if busy or (pid != os.getpid() and _pid_alive(pid)):
            continue  # a save in progress (this process or another live one)
        if _remove_path(entry.path):
            removed.append(entry.path)
    return removed


def _fsync_dir(directory: str) -> None:
    # Makes the rename itself durable; not possible on every platform/filesystem, hence best effort.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _AtomicTarget:
    """Context manager: yields a temp path next to ``path``; on success makes it ``path`` atomically.

    With ``private_dir`` the temp path lies inside a temp directory of its own: writers that use temp files of
    their own (safetensors' ``save_file`` writes ``.tmpXXXXXX`` and renames it) then leave nothing behind in
    the target directory when killed, since the whole directory is swept as stale.
    """

    def __init__(self, path: str, *, fsync: bool = True, private_dir: bool = False) -> None:
        self.path = os.fspath(path)
        self.fsync = fsync
        self.private_dir = private_dir
        self.tmp = ""
        self.file = ""

    def __enter__(self) -> str:
        _remove_stale_temps(self.path)
        self.tmp = _temp_path(self.path)
        with _inflight_lock:
            _inflight.add(self.tmp)
        if self.private_dir:
            os.mkdir(self.tmp)
            self.file = os.path.join(self.tmp, "payload")
        else:
            self.file = self.tmp
        return self.file

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                if self.fsync:
                    fd = os.open(self.file, os.O_RDWR)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                os.replace(self.file, self.path)
                if self.fsync:
                    _fsync_dir(os.path.dirname(os.path.abspath(self.path)))
        finally:
            with _inflight_lock:
                _inflight.discard(self.tmp)
            _remove_path(self.tmp)


def _remove_path(path: str) -> bool:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.unlink(path)
        else:
            return False
        return True
    except OSError:
        return False


def atomic_write(path: str | os.PathLike, data: bytes | str, *, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` so that a reader (or a crash) sees the old or the new file, never a part."""
    payload = data.encode() if isinstance(data, str) else data
    with _AtomicTarget(os.fspath(path), fsync=fsync) as tmp:
        with open(tmp, "wb") as f:
            f.write(payload)
