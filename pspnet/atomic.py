"""Atomic file writes: a file is either its old version or the complete new one, never half.

Each write goes to a temporary file in the same folder, is flushed and fsynced, then renamed over
the target with :func:`os.replace` (atomic on POSIX and Windows). When writing fails, the
temporary file is removed, the target is left as it was, and the error is raised with the
target's name.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from glob import escape as glob_escape
from pathlib import Path

__all__ = [
    "atomic_path",
    "write_atomic",
    "write_text_atomic",
    "append_line_atomic",
    "check_writable",
    "remove_stale_temps",
]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    ``with atomic_path(p) as tmp: torch.save(obj, tmp)``. On an exception the temporary file is
    removed, ``path`` is untouched and an ``OSError`` naming ``path`` is raised from the error
    (a ``KeyboardInterrupt`` passes through unchanged).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # the data is on disk before the rename makes it visible
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, Exception):
            raise OSError(
                f"could not write {path} ({type(e).__name__}: {e}); the previous version of the "
                "file, if any, is unchanged"
            ) from e
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, writer: Callable[[Path], object]) -> Path:
    """Call ``writer(tmp_path)`` and move the result to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def append_line_atomic(path: str | os.PathLike, line: str) -> Path:
    """Append ``line`` (a newline is added) to a text file by rewriting it atomically: a crash
    leaves the file with or without the new line, never with part of it."""
    path = Path(path)
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    return write_text_atomic(path, old + line.rstrip("\n") + "\n")


def check_writable(path: str | os.PathLike, what: str = "output", folder: bool = False) -> Path:
    """Raise, before any work, if ``path`` (a file, or with ``folder`` a folder) could not be
    written: a part of it is a file, the file is a folder, or the nearest existing folder is not
    writable. Creates nothing; returns ``path``."""
    path = Path(path)
    if not folder and path.is_dir():
        raise IsADirectoryError(f"cannot write {what} {path}: it is a folder")
    probe = path if folder else path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise NotADirectoryError(f"cannot write {what} {path}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {what} {path}: no permission to write in {probe}")
    return path


def remove_stale_temps(folder: str | os.PathLike, names) -> list[Path]:
    """Delete the temporary files that :func:`atomic_path` left for ``names`` in ``folder`` when
    its process was killed mid-write (``.NAME.*.tmp``); returns them. Call it only where no other
    process writes these files at the same time."""
    removed = []
    for name in names:
        for tmp in Path(folder).glob(f".{glob_escape(name)}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed.append(tmp)
    return removed
