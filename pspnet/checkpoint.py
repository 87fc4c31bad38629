"""PSPNet checkpoints: loading weights (official semseg checkpoints, plain state_dicts, our own
checkpoints), and writing / resuming our training checkpoints.

The model a checkpoint describes is rebuilt by :func:`pspnet.build.model_from_checkpoint`.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn as nn

from .errors import UserError
from .runtime import unwrap

if TYPE_CHECKING:
    from .config import Config

from .checkpoint_file import load_file

__all__ = [
    "load_checkpoint",
    "load_file",
    "read_state_dict",
    "apply_state_dict",
    "extract_state_dict",
    "save_checkpoint",
    "load_training_state",
    "find_resume",
]

_PREFIXES = ("module.", "_orig_mod.")
_NESTED_KEYS = ("state_dict", "model", "model_state_dict", "net")


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if key.startswith(p):
                key = key[len(p) :]
                changed = True
    # a wrapped submodule, e.g. "layer1._orig_mod.0.conv1.weight"
    for p in _PREFIXES:
        key = key.replace("." + p, ".")
    return key


def extract_state_dict(obj, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Return the model ``state_dict`` held by a loaded checkpoint object, prefixes stripped.

    Understands ``{'state_dict': sd}`` (official semseg, ``module.`` keys from DataParallel),
    ``{'model': sd, 'optimizer': ..., 'epoch': ...}`` (our trainer), and a plain ``state_dict``.
    ``module.`` (DataParallel/DDP) and ``_orig_mod.`` (torch.compile) prefixes are removed.
    """
    if not isinstance(obj, Mapping):
        raise UserError(
            f"{source} does not hold a state_dict: loaded a {type(obj).__name__}, expected a dict "
            "of tensors or a dict with a 'state_dict' or 'model' entry"
        )
    sd = obj
    for key in _NESTED_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
            sd = inner
            break
    tensors = {k: v for k, v in sd.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        keys = ", ".join(map(repr, list(obj.keys())[:8]))
        raise UserError(
            f"{source} does not hold a state_dict: no tensors found (top-level keys: {keys})"
        )
    out: dict[str, torch.Tensor] = {}
    for k, v in tensors.items():
        nk = _strip(k)
        if nk in out:
            raise UserError(f"{source}: key {k!r} collides with another after prefix stripping")
        out[nk] = v
    return out


def _few(keys, n: int = 6) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_checkpoint(
    model: nn.Module,
    path: str | os.PathLike,
    strict: bool = True,
    map_location="cpu",
    weights_only: bool = True,
) -> nn.Module:
    """Load weights from ``path`` into ``model`` and return ``model``.

    Accepts official hszhao/semseg checkpoints (``{'state_dict': {'module.layer0.0.weight': ..}}``),
    plain ``state_dict`` files (e.g. ``torch.save(model.state_dict(), path)``), and training
    checkpoints ``{'model': state_dict, 'optimizer': ..., 'epoch': ...}``. ``module.``
    (DataParallel/DDP) and ``_orig_mod.`` (torch.compile) key prefixes are stripped, and ``model``
    itself may be wrapped in DataParallel/DDP or ``torch.compile``.

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
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a PyTorch checkpoint, holds no state_dict, a shape differs,
            or (strict) keys are missing/unexpected; the message lists a few of them.
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
    obj = load_file(path, map_location=map_location, weights_only=weights_only)
    return extract_state_dict(obj, source=repr(os.fspath(path)))


_DEPTHS = {(3, 4, 6, 3): "ResNet-50", (3, 4, 23, 3): "ResNet-101", (3, 8, 36, 3): "ResNet-152"}


def _last_conv(sd: Mapping[str, torch.Tensor], module: str) -> torch.Tensor | None:
    """The weight of the last 4-d (conv) entry of ``module`` (``cls`` or ``aux``)."""
    best, best_i = None, -1
    for k, v in sd.items():
        parts = k.split(".")
        if len(parts) == 3 and parts[0] == module and parts[2] == "weight" and v.dim() == 4:
            if parts[1].isdigit() and int(parts[1]) > best_i:
                best, best_i = v, int(parts[1])
    return best


def _architecture(sd: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """What a PSPNet-like state_dict is: backbone, PPM, number of classes (what can be told)."""
    out: dict[str, str] = {}
    blocks = []
    for i in range(1, 5):
        idx = {k.split(".")[1] for k in sd if k.startswith(f"layer{i}.")}
        blocks.append(len({j for j in idx if j.isdigit()}))
    if any(blocks):
        feats = [
            v.shape[0]
            for k, v in sd.items()
            if k.startswith("layer4.") and k.endswith("conv3.weight")
        ]
        name = _DEPTHS.get(tuple(blocks), "ResNet")
        desc = f"{name} ({'-'.join(map(str, blocks))} blocks"
        out["backbone"] = desc + (f", {feats[-1]} features)" if feats else ")")
    bins = {k.split(".")[2] for k in sd if k.startswith("ppm.features.")}
    if any(k.startswith(("layer", "cls.")) for k in sd):
        out["PPM"] = f"{len(bins)} bins" if bins else "none"
    cls = _last_conv(sd, "cls")
    if cls is not None:
        out["classes"] = str(cls.shape[0])
    return out


def _architecture_error(source: str, sd, own) -> str | None:
    """A message when ``sd`` is another architecture or class count than ``own``, else None."""
    theirs, ours = _architecture(sd), _architecture(own)
    diff = [k for k in ("backbone", "PPM", "classes") if k in theirs and k in ours]
    diff = [k for k in diff if theirs[k] != ours[k]]
    if not diff:
        return None
    what = "; ".join(f"{k}: checkpoint {theirs[k]}, model {ours[k]}" for k in diff)
    kind = "class count" if diff == ["classes"] else "architecture"
    return (
        f"{source} is a checkpoint of another {kind} than the model ({what}); build the model "
        "with the checkpoint's settings (layers / classes / bins) to load it"
    )


def apply_state_dict(
    model: nn.Module,
    sd: Mapping[str, torch.Tensor],
    strict: bool = True,
    source: str = "state_dict",
    optional: tuple[str, ...] = (),
) -> nn.Module:
    """Copy ``sd`` into ``model`` (unwrapped from DataParallel/DDP/torch.compile), checked first.

    Shapes must agree (``ValueError`` naming them); with ``strict`` every key of the model must be
    present and none extra, except BatchNorm ``num_batches_tracked`` counters and keys starting
    with one of the ``optional`` prefixes, which may be absent from or extra in ``sd`` (optional
    keys whose shapes differ are skipped). Nothing is copied when an error is raised. Returns
    ``model``.
    """
    target = unwrap(model)
    own = target.state_dict()

    def required(k: str) -> bool:
        return not (k.endswith("num_batches_tracked") or k.startswith(optional))

    missing = {k for k in own if k not in sd and required(k)}
    unexpected = {k for k in sd if k not in own and not k.startswith(optional)}
    differ = [k for k in own if k in sd and sd[k].shape != own[k].shape]
    mismatched = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in differ
        if required(k)
    ]
    arch = _architecture_error(source, sd, own) if (mismatched or missing or unexpected) else None
    if mismatched:
        n = 3 if arch else 6
        more = f" ... and {len(mismatched) - n} more" if len(mismatched) > n else ""
        detail = (
            f"{len(mismatched)} tensor shape(s) differ from the model: "
            + "; ".join(mismatched[:n])
            + more
        )
        raise UserError(f"{arch} [{detail}]" if arch else f"{source}: {detail}")
    if missing or unexpected:
        n = 3 if arch else 6
        keys = (
            f"{len(missing)} missing key(s) [{_few(missing, n)}], {len(unexpected)} "
            f"unexpected key(s) [{_few(unexpected, n)}]"
        )
        msg = f"{arch} [{keys}]" if arch else f"{source} does not match the model: {keys}"
        if strict:
            hint = "" if arch else " (pass strict=False to load the matching keys only)"
            raise UserError(msg + hint)
        warnings.warn(msg, UserWarning, stacklevel=3)
    skip = set(differ)  # only optional keys are left here
    target.load_state_dict(
        {k: v for k, v in sd.items() if k in own and k not in skip}, strict=False
    )
    return model


# ---------------------------------------------------------------- training checkpoints (ours)


def _rng_state() -> dict:
    np_state = np.random.get_state()  # noqa: NPY002 - the legacy global RNG is what we save
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "python": random.getstate(),
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        cuda = list(state["cuda"])[: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda)
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))  # noqa: NPY002
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def save_checkpoint(
    path,
    model,
    optimizer=None,
    scheduler=None,
    scaler=None,
    epoch=0,
    cfg: Config | None = None,
    extra: dict | None = None,
) -> None:
    """Write ``{'model', 'optimizer', 'scheduler', 'scaler', 'epoch', 'iteration', 'rng',
    'config', ...}`` atomically (``torch.load(weights_only=True)`` can read it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model": unwrap(model).state_dict(),
        "epoch": int(epoch),
        "iteration": int(scheduler.last_epoch) if scheduler is not None else 0,
        "rng": _rng_state(),
        "config": cfg.to_dict() if cfg is not None else None,
    }
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    state.update(extra or {})
    from .atomic import atomic_path

    # a failed or interrupted write leaves the previous file intact (OSError naming the file)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_training_state(
    path, model, optimizer=None, scheduler=None, scaler=None, map_location="cpu"
) -> dict:
    """Restore a :func:`save_checkpoint` file; returns the checkpoint dict (``epoch`` = epochs
    done). Restores the RNG states too."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"resume checkpoint not found: {path}")
    state = load_file(path, map_location=map_location)  # clear errors for bad files
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise UserError(f"{path} is not a training checkpoint of pspnet (no model/epoch entries)")
    apply_state_dict(model, state["model"], source=repr(str(path)))
    if optimizer is not None and "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and "scheduler" in state:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and "scaler" in state and state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    if "rng" in state:
        _set_rng_state(state["rng"])
    return state


def find_resume(cfg: Config) -> Path | None:
    """The checkpoint ``cfg.resume`` names: ``auto`` = ``<out_dir>/last.pth`` if it exists."""
    if not cfg.resume:
        return None
    if cfg.resume == "auto":
        p = cfg.out_dir / "last.pth"
        return p if p.is_file() else None
    p = Path(cfg.resume)
    if not p.is_file():
        raise FileNotFoundError(f"--resume: no such checkpoint {p}")
    return p
