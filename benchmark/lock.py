"""One writer per output folder: :func:`folder_lock` holds an exclusive ``flock`` on ``<folder>/.vqbench.lock``.

The lock is the kernel's ``flock`` on the lock file, held by the open descriptor for as long as the process lives: a
run that exits, raises, is interrupted or is killed (SIGKILL included) releases it, so on the same host a lock file
left behind is stale by construction and the next run takes it over (and says so). The file's content (JSON: pid,
host, start time, command) is only for the messages. A lock file written on *another* host cannot be checked from
here (``flock`` may not reach across a network filesystem), so it is refused with a message naming that host and pid
and how to remove the file. The descriptor is close-on-exec (never inherited by a started program such as a Ray
worker); a forked child that inherits it never removes the file (only the pid that took the lock does).
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shlex
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from benchmark.config import ConfigError

LOCK_NAME = ".vqbench.lock"


class LockError(ConfigError):
    """The folder is being written by another run (or its lock cannot be taken): exit status 2, before any work."""


def lock_path(folder: str | Path) -> Path:
    return Path(folder) / LOCK_NAME


def _holder(fd: int) -> dict[str, Any] | None:
    """The lock file's content (None when empty or unreadable)."""
    try:
        size = os.fstat(fd).st_size
        data = os.pread(fd, min(size, 1 << 16), 0) if size else b""
        info = json.loads(data.decode("utf-8")) if data.strip() else None
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _describe(info: dict[str, Any] | None) -> str:
    if not info:
        return "an unnamed process (its lock file is empty or unreadable)"
    text = f"pid {info.get('pid', '?')} on host {info.get('host', '?')}"
    if info.get("started"):
        text += f", started {info['started']}"
    if info.get("command"):
        text += f" ({info['command']})"
    return text


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _open_locked(path: Path) -> tuple[int, bool]:
    """Open ``path`` (created if missing) and try to flock it; return ``(fd, locked)``. Retries when the file was
    replaced or removed between the open and the flock (a run releasing it), so the lock held is the one on the file
    at ``path``."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise LockError(f"{path}: cannot open the lock file ({exc.strerror}); if no run is writing "
                            f"{path.parent}, remove it: rm {shlex.quote(str(path))}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return fd, False
            os.close(fd)
            raise LockError(f"{path}: cannot lock ({exc.strerror}): the filesystem of {path.parent} may not "
                            f"support flock") from exc
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd, True
        os.close(fd)


def _probe(folder: str | Path) -> tuple[bool, dict[str, Any] | None] | str:
    """Whether ``folder``'s lock is held, and its content, without taking it (or a problem reading it)."""
    path = lock_path(folder)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False, None
    except OSError as exc:
        return f"{path}: cannot read the lock file ({exc.strerror})"
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            held = False
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                return f"{path}: cannot check the lock ({exc.strerror})"
            held = True
        return held, _holder(fd)
    finally:
        os.close(fd)


def check_unlocked(folder: str | Path, flag: str) -> list[str]:
    """Problems when ``folder`` is being written by a live run (for a folder only read, e.g. a ``--merge`` shard):
    its lock is held, or a lock file from another host is present. Takes nothing."""
    probe = _probe(folder)
    if isinstance(probe, str):
        return [f"{flag}: {probe}"]
    held, info = probe
    if held:
        return [f"{flag}: {folder} is being written by {_describe(info)}; wait until it ends"]
    if info and info.get("host") != socket.gethostname():
        return [f"{flag}: {folder} is locked by {_describe(info)}, which cannot be checked from host "
                f"{socket.gethostname()}; if that run has ended, remove the lock: "
                f"rm {shlex.quote(str(lock_path(folder)))}"]
    return []


def holder(folder: str | Path) -> str | None:
    """Who is writing ``folder``, in words (None when its lock is free): for a note by a reader such as
    ``--report-only``."""
    probe = _probe(folder)
    if isinstance(probe, str) or not probe[0]:
        return None
    return _describe(probe[1])


@contextmanager
def folder_lock(folder: str | Path, command: str | None = None, flag: str = "--out",
                log: Callable[[str], None] = lambda text: print(text, file=sys.stderr)) -> Iterator[Path]:
    """Hold the exclusive lock of ``folder`` (created if missing) for the ``with`` block; yield the lock file's path.

    Raises :class:`LockError` (one line: who holds it and what to do) when another live run holds it, or when a lock
    file from another host is present. A lock file left by a dead process on this host is taken over (``log`` says
    so). On leaving the block (normally, by an exception or by KeyboardInterrupt) the file is removed and the lock
    released; a folder this call created is removed again when it is still empty.
    """
    folder = Path(folder)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LockError(f"{flag}: cannot create {folder} ({exc.strerror})") from exc
    path = lock_path(folder)
    fd, locked = _open_locked(path)
    host = socket.gethostname()
    try:
        previous = _holder(fd)
        if not locked:
            raise LockError(f"{flag}: {folder} is being written by another run: {_describe(previous)}; wait for "
                            f"it to end (or stop it); only one run may write a folder at a time")
        if previous and previous.get("host") not in (None, host):
            raise LockError(f"{flag}: {folder} is locked by {_describe(previous)}; from host {host} it cannot be "
                            f"checked whether that run is still going; if it has ended, remove the lock: "
                            f"rm {shlex.quote(str(path))}")
        if os.fstat(fd).st_size:
            what = (f"pid {previous.get('pid')} is gone" if previous and not _pid_alive(previous.get("pid")) else
                    "it was not held by any process")
            log(f"note: took over the stale lock {path} of {_describe(previous)}: {what}")
        info = {"pid": os.getpid(), "host": host, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "command": command if command is not None else shlex.join(sys.argv)}
        data = (json.dumps(info) + "\n").encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    except BaseException:
        os.close(fd)
        raise
    owner = os.getpid()
    try:
        yield path
    finally:
        if os.getpid() == owner:  # never from a forked child that inherited the descriptor
            try:
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    path.unlink()
            except OSError:
                pass
        os.close(fd)
        if created and os.getpid() == owner:
            try:
                folder.rmdir()  # a run refused after the lock (e.g. by the checks on the data) leaves no folder
            except OSError:
                pass
