"""Bad samples met mid-run (a corrupt or vanished image or label): stop, or skip and count.

A dataset wrapper in ``mark`` mode returns a :class:`BadSample` in place of a sample whose
loading failed; :func:`collate_samples` (the loaders' ``collate_fn``) batches the good samples and
passes the markers on as ``(x, y, bad)``, so the training or evaluation loop, in the main
process, either stops with :func:`bad_sample_error` or, with ``skip_bad_samples``, logs each bad
file once and counts it (:class:`BadSampleLog`).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch.utils.data import default_collate

from ..errors import UserError

__all__ = [
    "BadSample",
    "BadSampleLog",
    "SAMPLE_ERRORS",
    "bad_sample_error",
    "collate_samples",
    "load_or_mark",
    "unpack",
]

#: what loading a sample raises on a bad file: missing (OSError), unreadable / corrupt (ValueError)
SAMPLE_ERRORS = (OSError, ValueError)


@dataclass(frozen=True)
class BadSample:
    """A sample that could not be loaded: its index and the error (which names the file)."""

    index: int
    error: str
    kind: str = "ValueError"


def load_or_mark(dataset, index: int):
    """``dataset[index]``, or a :class:`BadSample` when loading it raises a data error."""
    try:
        return dataset[index]
    except SAMPLE_ERRORS as e:
        msg = str(e)
        if f"sample {index}" not in msg:
            msg = f"{msg} (sample {index})"
        return BadSample(int(index), msg, type(e).__name__)


def collate_samples(items):
    """``(x, y, bad)``: the good items collated as usual (``x, y`` are None when none is good)
    and the list of :class:`BadSample` markers."""
    bad = [it for it in items if isinstance(it, BadSample)]
    good = [it for it in items if not isinstance(it, BadSample)]
    if not good:
        return None, None, bad
    x, y = default_collate(good)
    return x, y, bad


def bad_sample_error(bad: BadSample) -> Exception:
    """The error that stops a run at ``bad`` (its type kept: FileNotFoundError, ValueError)."""
    msg = (
        f"{bad.error}; fix or remove the file, or pass --skip-bad-samples to skip such samples "
        "(each logged once, counted in the epoch summary)"
    )
    return FileNotFoundError(msg) if bad.kind == "FileNotFoundError" else UserError(msg)


class BadSampleLog:
    """Per run: which bad samples were already logged; per epoch (or evaluation): the count."""

    def __init__(self, skip: bool, log=print):
        self.skip = bool(skip)
        self.log = log
        self.seen: set[int] = set()
        self.count = 0

    def handle(self, bad) -> int:
        """Stop on the first marker (not skipping), else log new ones once; returns how many."""
        for b in bad:
            if not self.skip:
                raise bad_sample_error(b)
            if b.index not in self.seen:
                self.seen.add(b.index)
                self.log(f"skipping bad sample {b.index}: {b.error}")
        self.count += len(bad)
        return len(bad)

    def take(self) -> int:
        """The count since the last call (and reset it)."""
        n, self.count = self.count, 0
        return n


def unpack(batch):
    """``(x, y, bad)`` of a batch from :func:`collate_samples` or a plain ``(x, y)`` loader."""
    if isinstance(batch, (tuple, list)) and len(batch) == 3:
        return batch[0], batch[1], batch[2]
    x, y = batch
    return x, y, []
