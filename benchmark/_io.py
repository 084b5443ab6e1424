"""Atomic file writes: the one place a temp file is written beside its target and moved over it with ``os.replace``.

A reader never sees a half-written file, and an interrupted or failed writer (Ctrl-C, disk full, I/O error) leaves
no temp file behind and the target as it was; the error names the target. The data is fsynced before the rename, and
the file keeps the target's permissions (a new file gets the umask's, as ``open`` would give it).
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on a clean exit it replaces ``path``, on any exception it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.chmod(tmp, _mode(path))
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)  # a failed write names no file otherwise
        raise


def _mode(path: Path) -> int:
    """The permissions ``path`` has, or those a new file gets under the current umask."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_UMASK


def _umask() -> int:
    umask = os.umask(0o022)  # read once, at import (setting the umask is not thread-safe)
    os.umask(umask)
    return umask


_UMASK = _umask()


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any, **kwargs: Any) -> None:
    write_text(path, json.dumps(obj, sort_keys=True, **kwargs))
