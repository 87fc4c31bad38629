"""PSPNet checkpoints: what a checkpoint file holds, written and read here only.

A training checkpoint of pspnet is a dict that ``torch.load(weights_only=True)`` reads:

- ``format_version``: :data:`FORMAT_VERSION`; files written before the key existed hold the same
  keys without it and read as version 1;
- ``model``: the model's ``state_dict``; ``config``: the :class:`~pspnet.config.Config` as a
  dict; ``class_names``: the dataset's class names (or None);
- ``epoch``: epochs done; ``iteration``: the schedule's step count; ``rng``: the global RNG
  states (:func:`pspnet.runtime.rng_state`); ``optimizer``, ``scheduler``, ``scaler``: their
  ``state_dict`` (each optional);
- ``bad_steps``: non-finite steps skipped so far; ``batches_done`` and ``partial``: for a run
  stopped mid-epoch, the batches of epoch ``epoch + 1`` already done and that epoch's running
  sums (``batches_done`` 0 and ``partial`` None at an epoch boundary).

Other files load as weights: official hszhao/semseg checkpoints (``{'state_dict': ...}`` with
DataParallel's ``module.`` prefix), plain ``state_dict`` files, and dicts with a ``model``,
``model_state_dict`` or ``net`` entry (:func:`pspnet.state_dict.extract_state_dict`). Files are
read by :func:`pspnet.safe_load.safe_load` (checked, nothing in them run); the model a checkpoint
describes is rebuilt by :func:`pspnet.build.model_from_checkpoint`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from .errors import UserError
from .runtime import rng_state, set_rng_state, unwrap
from .safe_load import safe_load
from .state_dict import apply_state_dict, extract_state_dict

if TYPE_CHECKING:
    from .config import Config

__all__ = [
    "FORMAT_VERSION",
    "Checkpoint",
    "read_checkpoint",
    "load_checkpoint",
    "read_state_dict",
    "save_checkpoint",
    "load_training_state",
    "find_resume",
]

#: the version of the layout :func:`save_checkpoint` writes (see the module's docstring)
FORMAT_VERSION = 2


class Checkpoint(Mapping):
    """A checkpoint file read once: the loaded object (as a read-only mapping when it is a dict)
    and what pspnet reads from it.

    ``format_version`` is 0 for a file that is not a pspnet training checkpoint (official or
    plain weights), 1 for one written before the version key existed."""

    def __init__(self, path: Path, data: Any):
        self.path = Path(path)
        self.data = data
        version = 0
        if isinstance(data, dict):
            if "format_version" in data:
                version = data["format_version"]
                if not isinstance(version, int) or version < 1:
                    raise UserError(f"{str(path)!r}: format_version {version!r} is not valid")
            elif "model" in data and "epoch" in data:
                version = 1
        if version > FORMAT_VERSION:
            raise UserError(
                f"{str(path)!r} was written by a newer pspnet (checkpoint format {version}; this "
                f"one reads formats up to {FORMAT_VERSION}): upgrade pspnet to read it"
            )
        self.format_version = version

    # the loaded dict, read-only (``ckpt["epoch"]``)
    def __getitem__(self, key):
        if not isinstance(self.data, dict):
            raise KeyError(key)
        return self.data[key]

    def __iter__(self) -> Iterator:
        return iter(self.data) if isinstance(self.data, dict) else iter(())

    def __len__(self) -> int:
        return len(self.data) if isinstance(self.data, dict) else 0

    @property
    def is_training_checkpoint(self) -> bool:
        return self.format_version >= 1

    def _get(self, key: str, default=None):
        return self.data.get(key, default) if self.is_training_checkpoint else default

    @property
    def config(self) -> dict | None:
        """The saved config as a dict (None for files that are not ours)."""
        cfg = self._get("config")
        return cfg if isinstance(cfg, dict) else None

    @property
    def class_names(self) -> list | None:
        return self._get("class_names")

    @property
    def epoch(self) -> int:
        return int(self._get("epoch", 0) or 0)

    @property
    def batches_done(self) -> int:
        return int(self._get("batches_done", 0) or 0)

    @property
    def partial(self) -> dict | None:
        return self._get("partial") if self.batches_done else None

    @property
    def bad_steps(self) -> int:
        return int(self._get("bad_steps", 0) or 0)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The model's weights, ``module.`` / ``_orig_mod.`` prefixes stripped."""
        return extract_state_dict(self.data, source=repr(str(self.path)))


def read_checkpoint(
    path: str | os.PathLike, map_location="cpu", weights_only: bool = True, verify: bool = True
) -> Checkpoint:
    """Read a checkpoint file (any of the layouts of this module) with
    :func:`~pspnet.safe_load.safe_load`'s checks and errors. ``map_location="meta"`` with
    ``verify=False`` reads the config and keys without the weights' data."""
    data = safe_load(path, map_location=map_location, weights_only=weights_only, verify=verify)
    return Checkpoint(Path(os.fspath(path)), data)


def load_checkpoint(
    model: nn.Module,
    path: str | os.PathLike,
    strict: bool = True,
    map_location="cpu",
    weights_only: bool = True,
) -> nn.Module:
    """Load weights from ``path`` into ``model`` and return ``model``.

    Accepts official hszhao/semseg checkpoints (``{'state_dict': {'module.layer0.0.weight': ..}}``),
    plain ``state_dict`` files (e.g. ``torch.save(model.state_dict(), path)``), and pspnet's
    training checkpoints (any format version). ``module.`` (DataParallel/DDP) and ``_orig_mod.``
    (torch.compile) key prefixes are stripped, and ``model`` itself may be wrapped in
    DataParallel/DDP or ``torch.compile``.

    Args:
        model: the module to fill (e.g. a :class:`pspnet.PSPNet` of the matching depth/classes).
        path: the checkpoint file.
        strict: every key of ``model`` must be present and no extra key may appear (missing
            BatchNorm ``num_batches_tracked`` counters, absent from old files, are tolerated). With
            ``strict=False`` the matching keys are loaded and the others reported in a warning.
        map_location: passed to :func:`torch.load`.
        weights_only: passed to :func:`torch.load`; set ``False`` only for files you trust that
            hold other Python objects.

    Raises:
        FileNotFoundError: ``path`` does not exist (IsADirectoryError: it is a directory).
        ValueError (:class:`~pspnet.errors.UserError`): the file is not a PyTorch checkpoint, is
            truncated or damaged, holds Python objects (``weights_only``), holds no state_dict,
            a shape differs, or (strict) keys are missing/unexpected; the message lists a few.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    sd = read_state_dict(path, map_location=map_location, weights_only=weights_only)
    return apply_state_dict(model, sd, strict=strict, source=repr(os.fspath(path)))


def read_state_dict(
    path: str | os.PathLike, map_location="cpu", weights_only: bool = True
) -> dict[str, torch.Tensor]:
    """Read the model ``state_dict`` of a checkpoint file, prefixes stripped.

    The file layouts and errors are those of :func:`load_checkpoint`.
    """
    return read_checkpoint(path, map_location, weights_only).state_dict()


def save_checkpoint(
    path,
    model,
    optimizer=None,
    scheduler=None,
    scaler=None,
    epoch=0,
    cfg: Config | None = None,
    extra: dict | None = None,
    *,
    class_names=None,
    bad_steps: int = 0,
    batches_done: int = 0,
    partial: dict | None = None,
) -> None:
    """Write a training checkpoint (the keys of this module's docstring; ``extra``: more
    entries) atomically: a failed or interrupted write leaves the previous file as it was."""
    from .atomic import atomic_path

    state = {
        "format_version": FORMAT_VERSION,
        "model": unwrap(model).state_dict(),
        "epoch": int(epoch),
        "iteration": int(scheduler.last_epoch) if scheduler is not None else 0,
        "rng": rng_state(),
        "config": cfg.to_dict() if cfg is not None else None,
        "class_names": None if class_names is None else [str(c) for c in class_names],
        "bad_steps": int(bad_steps),
        "batches_done": int(batches_done),
        "partial": partial if batches_done else None,
    }
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    state.update(extra or {})
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_training_state(
    path, model, optimizer=None, scheduler=None, scaler=None, map_location="cpu"
) -> Checkpoint:
    """Restore a training checkpoint (:func:`save_checkpoint`, any format version) into the
    given objects and the global RNGs; returns it (``ckpt["epoch"]``: epochs done)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"resume checkpoint not found: {path}")
    ckpt = read_checkpoint(path, map_location=map_location)
    if not ckpt.is_training_checkpoint:
        raise UserError(f"{path} is not a training checkpoint of pspnet (no model/epoch entries)")
    apply_state_dict(model, ckpt["model"], source=repr(str(path)))
    if optimizer is not None and "optimizer" in ckpt:
        optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and "scheduler" in ckpt:
        scheduler.load_state_dict(ckpt["scheduler"])
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    if "rng" in ckpt:
        set_rng_state(ckpt["rng"])
    return ckpt


def find_resume(cfg: Config) -> Path | None:
    """The checkpoint ``cfg.resume`` names: ``auto`` = ``<out_dir>/last.pth`` if it exists."""
    if not cfg.resume:
        return None
    if cfg.resume == "auto":
        p = cfg.out_dir / "last.pth"
        return p if p.is_file() else None
    p = Path(cfg.resume)
    if p.is_dir():
        raise IsADirectoryError(f"--resume {p} is a directory: pass its last.pth (or auto)")
    if not p.is_file():
        raise FileNotFoundError(f"--resume: no such checkpoint {p}")
    return p
