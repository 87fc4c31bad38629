"""A training run's output folder (``cfg.out_dir``): what it holds, when it may be written.

A folder holds a run when it has ``last.pth``, ``metrics.jsonl`` or ``eval.json``. Such a folder
is never written over silently: a new run there is refused (:func:`check_run_folder`) unless it
continues that run (``--resume auto`` or ``--resume <folder>/last.pth``, with that ``last.pth``
present) or replaces it on purpose (``--overwrite``, which deletes the old run's files first).
A training holds an exclusive lock on the folder (:func:`hold_run_folder`) for its whole run, so
that two trainings never share a folder. The checks run before anything is trained.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from .atomic import check_writable, remove_stale_temps, write_text_atomic
from .config import Config
from .errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX (Windows): trainings are not locked
    fcntl = None

__all__ = [
    "LOCK_NAME",
    "RUN_FILES",
    "RUN_RESULTS",
    "check_run_folder",
    "hold_run_folder",
    "prepare_run_folder",
    "read_log_rows",
]

#: every file a run writes in its folder
RUN_FILES = ("last.pth", "metrics.jsonl", "eval.json", "curves.png", "config.yaml")
#: the files whose presence means the folder holds a run
RUN_RESULTS = ("last.pth", "metrics.jsonl", "eval.json")
#: the lock file a training holds in its folder (:func:`hold_run_folder`)
LOCK_NAME = ".pspnet.lock"


def _held(out: Path) -> list[str]:
    return [name for name in RUN_RESULTS if (out / name).exists()]


def continues_run(cfg: Config) -> bool:
    """Whether ``cfg.resume`` continues the run in ``cfg.out_dir``: it is ``auto`` or a path
    that resolves to ``<out_dir>/last.pth``, and that file exists."""
    last = cfg.out_dir / "last.pth"
    if not cfg.resume or not last.is_file():
        return False
    if cfg.resume == "auto":
        return True
    return Path(cfg.resume).resolve() == last.resolve()


def check_run_folder(cfg: Config) -> None:
    """Refuse, before any work, an output folder that cannot be written or that holds another
    run this one would overwrite: without ``overwrite``, a folder holding a run may only be
    continued (:func:`continues_run`), and its ``metrics.jsonl`` must be readable."""
    out = cfg.out_dir
    check_writable(out, "the output folder", folder=True)
    held = _held(out) if out.is_dir() else []
    if not held or cfg.overwrite:
        return
    if continues_run(cfg):
        read_log_rows(out / "metrics.jsonl")  # a damaged log is refused before any work
        return
    fresh = "or pass --output-dir with a new folder"
    replace = "replace it with --overwrite (its files are deleted first)"
    if not (out / "last.pth").is_file():
        raise UserError(
            f"{out} holds a run ({', '.join(held)}) but no last.pth to continue from: {replace}, "
            f"{fresh}"
        )
    if cfg.resume and cfg.resume != "auto":
        if not Path(cfg.resume).is_file():
            return  # named by find_resume: no such checkpoint, or a folder
        raise UserError(
            f"{out} holds another run ({', '.join(held)}) and --resume {cfg.resume} is not its "
            f"last.pth: {replace}, {fresh}"
        )
    raise UserError(
        f"{out} holds another run ({', '.join(held)}): continue it with --resume auto, "
        f"{replace}, {fresh}"
    )


@contextlib.contextmanager
def hold_run_folder(cfg: Config) -> Iterator[None]:
    """Hold an exclusive lock on ``cfg.out_dir`` (``flock`` on its ``.pspnet.lock``) while the
    block runs: another training in that folder is refused (one-line :class:`UserError`) before
    it touches any file there. Folders created for the lock that are still empty at the end (the
    run failed before writing anything) are removed again, and so is the lock file."""
    out = cfg.out_dir
    if fcntl is None:  # pragma: no cover - not POSIX
        yield
        return
    check_writable(out, "the output folder", folder=True)
    created = []
    probe = out
    while not probe.exists() and probe != probe.parent:
        created.append(probe)
        probe = probe.parent
    out.mkdir(parents=True, exist_ok=True)
    lock = out / LOCK_NAME
    fd = _lock(lock, out)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()  # while still locked: a waiting process sees a new file (see _lock)
        os.close(fd)
        for folder in created:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                break


def _lock(lock: Path, out: Path) -> int:
    """An open descriptor of ``lock`` holding its exclusive ``flock``; UserError when another
    process holds it. Retries when the file was removed (by its previous holder) in between."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(
                f"another training is using {out} (it holds {lock}): wait for it to finish, "
                "or pass --output-dir with another folder"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def read_log_rows(log_path: Path) -> list[dict]:
    """The rows of ``metrics.jsonl`` (blank lines skipped); a line that is not a JSON object
    (a damaged or hand-edited file) is a :class:`UserError` naming the file and the line."""
    if not log_path.exists():
        return []
    rows = []
    for n, raw in enumerate(log_path.read_bytes().split(b"\n"), 1):
        try:
            text = raw.decode("utf-8")
            if not text.strip():
                continue
            row = json.loads(text)
            if not isinstance(row, dict):
                raise ValueError(f"a JSON {type(row).__name__}, not an object")
        except ValueError as e:  # UnicodeDecodeError and JSONDecodeError included
            raise UserError(
                f"{log_path} line {n} is not a metrics row ({str(e).splitlines()[0]}): repair or "
                "delete that line (the other rows are kept), or start over with --overwrite"
            ) from e
        rows.append(row)
    return rows


def prepare_run_folder(cfg: Config, epochs_done: int, say: Callable) -> None:
    """Rank 0, once the run is set up: create the folder; with ``overwrite`` (and no resume)
    delete the previous run's files; remove temporary files an interrupted save left; drop the
    ``metrics.jsonl`` rows past the checkpoint resumed from; write ``config.yaml``."""
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    if cfg.overwrite and not continues_run(cfg) and _held(out):
        gone = [name for name in RUN_FILES if (out / name).exists()]
        for name in gone:
            (out / name).unlink()
        say(f"--overwrite: deleted the previous run's {', '.join(gone)} in {out}")
    stale = remove_stale_temps(out, RUN_FILES)
    if stale:
        names = ", ".join(p.name for p in stale)
        say(f"removed {len(stale)} temporary file(s) left in {out} by an interrupted save: {names}")
    _trim_log(out / "metrics.jsonl", epochs_done)
    write_text_atomic(out / "config.yaml", cfg.to_yaml())


def _trim_log(log_path: Path, epochs_done: int) -> None:
    """Keep the rows of the epochs the resumed checkpoint holds (all gone when starting over):
    a row written before a checkpoint that failed to save is dropped."""
    if not log_path.exists():
        return
    if epochs_done == 0:
        log_path.unlink()
        return
    rows = read_log_rows(log_path)
    keep = [r for r in rows if r.get("epoch", 0) <= epochs_done]
    if keep != rows:
        write_text_atomic(log_path, "".join(json.dumps(r) + "\n" for r in keep))
