"""Atomic file writes: a file is either its old version or the complete new one, never half.

Every file pspnet writes goes through :func:`atomic_path`: the data goes to a temporary file in
the same folder (``.NAME.XXXXXXXX.tmp``), is fsynced, then renamed over the target with
:func:`os.replace` (atomic on POSIX and Windows). The new file gets the permissions of the file it
replaces, or those the umask gives a new file (not the temporary file's 0600). When writing fails
(an ``OSError``, or the ``RuntimeError`` of torch's writer), the temporary file is removed, the
target is left as it was, and an ``OSError`` names the target, and says when the disk is full.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
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
    removed and ``path`` is untouched; an ``OSError`` or ``RuntimeError`` (a failed write) is
    raised as an ``OSError`` naming ``path`` (saying so when the disk is full); any other
    exception passes through unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _mode_for(path))
    finally:
        os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # the data is on disk before the rename makes it visible
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        full = _disk_full(e, path.parent)  # measured while the temporary file still fills it
        with contextlib.suppress(OSError):
            tmp.unlink()
        if not isinstance(e, (OSError, RuntimeError)):
            raise
        kept = "the previous version of the file, if any, is unchanged"
        if full is not None:
            said = f"{e.strerror}; " if isinstance(e, OSError) and e.strerror else ""
            err = OSError(
                f"could not write {path}: the disk is full ({said}{_size(full)} free on the file "
                f"system of {path.parent}); free some space or write elsewhere; {kept}"
            )
            err.errno = errno.ENOSPC
            raise err from e
        raise OSError(f"could not write {path} ({type(e).__name__}: {e}); {kept}") from e
    _fsync_dir(path.parent)


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"  # pragma: no cover


def _umask() -> int:
    try:  # Linux: read it without changing it
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mode_for(path: Path) -> int:
    """The permissions of the file being replaced, or those a new file gets from the umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~_umask()


#: less free space than this after a failed write: the disk is full
FULL_BELOW = 1 << 20


def _disk_full(e: BaseException, folder: Path) -> int | None:
    """The free bytes of ``folder``'s file system when the failed write ``e`` ran out of space
    (``ENOSPC`` / ``EDQUOT`` in its chain, or, for writers that lose the errno such as torch's,
    almost no space left); None otherwise."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return None
    blocks = st.f_bfree if hasattr(os, "geteuid") and os.geteuid() == 0 else st.f_bavail
    free = blocks * st.f_frsize
    seen, chain = e, set()
    while seen is not None and id(seen) not in chain:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return free
        chain.add(id(seen))
        seen = seen.__cause__ or seen.__context__
    if isinstance(e, (OSError, RuntimeError)) and free < FULL_BELOW:
        return free
    return None


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
    its process was killed mid-write (``.NAME.*.tmp``), and the temporary folders of the same
    names (a large ONNX export writes its model and data file in one); returns them. An entry
    that cannot be removed is left (the write that follows uses a name of its own). Call it only
    where no other process writes these files at the same time."""
    removed = []
    for name in names:
        for tmp in Path(folder).glob(f".{glob_escape(name)}.*.tmp"):
            try:
                if tmp.is_dir() and not tmp.is_symlink():
                    shutil.rmtree(tmp)
                else:
                    tmp.unlink()
            except OSError:  # gone already, or not ours to remove (permissions...): left
                continue
            removed.append(tmp)
    return removed
