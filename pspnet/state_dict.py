"""Model weights in a checkpoint: finding the state_dict inside a loaded file (whatever layout:
official hszhao/semseg, plain, ours), removing wrapper prefixes, and copying it into a model after
checking that it fits, with an error that says which architecture or class count the file holds
when it does not."""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch
import torch.nn as nn

from .errors import UserError
from .runtime import unwrap

__all__ = ["extract_state_dict", "apply_state_dict", "strip_prefixes"]

_PREFIXES = ("module.", "_orig_mod.")
_NESTED_KEYS = ("state_dict", "model", "model_state_dict", "net")


def strip_prefixes(key: str) -> str:
    """``key`` without DataParallel / DDP (``module.``) and torch.compile (``_orig_mod.``)
    prefixes, also those of a wrapped submodule."""
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
        nk = strip_prefixes(k)
        if nk in out:
            raise UserError(f"{source}: key {k!r} collides with another after prefix stripping")
        out[nk] = v
    return out


def _few(keys, n: int = 6) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


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
