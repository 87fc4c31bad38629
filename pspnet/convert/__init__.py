"""``pspnet.convert_ppm``: speed up the pyramid pooling heads of models you already have.

One call finds every supported head in a model and converts it in place, keeping every
parameter and buffer (names, shapes, values, the very same tensors), so checkpoints load before
and after and a converted model's ``state_dict`` loads into the unconverted library:

* the official hszhao/semseg PPM layout: swapped for :class:`pspnet.PPM` where a probe shows the
  same maths (:mod:`.official`);
* mmsegmentation's ``PSPHead``, ``UPerHead``, ``ICNet`` and Fast-SCNN's
  ``GlobalFeatureExtractor`` (:mod:`.mmseg`); transformers' ``UperNetHead``, ``BeitUperHead``
  and ``Data2VecVisionUperHead`` (:mod:`.hf`); segmentation_models_pytorch's ``PSPNet``
  decoder and ``UPerNet``'s ``PSPModule`` (:mod:`.smp`): the method that builds the concat is
  replaced (:mod:`.fused`) by the fused computation of :mod:`.units` (kernel 1 for the
  pyramid, the conv after the concat concat-free).

Recognition reads class names, module paths and module structure: none of those libraries is
imported, and ``pspnet`` works without them. A module whose forward the fused computation skips
must run its class's own forward and have no hooks (:mod:`.fused`), else its head is left. Each
converted head is logged (``logging``, logger ``pspnet.convert``, level INFO); a recognised head
whose maths does not map is left as it was and logged at WARNING with the reason; a model in
which nothing is recognised gets a ``UserWarning`` naming what was looked for.
"""

from __future__ import annotations

import logging
import warnings

import torch.nn as nn

from ..ppm import PPM
from . import hf, mmseg, official, smp
from .fused import is_converted
from .registry import describe, library_class, try_convert

__all__ = ["convert_ppm", "SUPPORTED"]

logger = logging.getLogger("pspnet.convert")

HEADS = [*mmseg.HEADS, *hf.HEADS, *smp.HEADS]
UNSUPPORTED = list(mmseg.UNSUPPORTED)
#: What the converter looks for, by label (the warning lists them).
SUPPORTED = ("official semseg PPM", *(h.label for h in HEADS))


def _head_of(module: nn.Module):
    for head in HEADS:
        if library_class(module, head.library, head.names, head.module_path) is not None:
            return head
    return None


def _unsupported_reason(module: nn.Module) -> tuple[str, str] | None:
    for u in UNSUPPORTED:
        if library_class(module, u.library, u.names) is not None:
            return u.label, u.reason
    reason = official.csail_reason(module)
    return ("CSAIL-style PPM", reason) if reason else None


def _visit(module: nn.Module, path: str, found: list) -> nn.Module:
    """Convert ``module`` or its descendants; returns what replaces ``module``."""
    where = path or "the model"
    if isinstance(module, PPM) or is_converted(module):
        found.append(path)  # already fused: recognised, nothing to do
        return module
    if official.is_official_ppm(module):
        found.append(path)
        reason = official.refusal(module)
        if reason is None:
            logger.info("converted the official semseg PPM at %s: kernel 1 then kernel 2", where)
            return official.to_fused(module)
        logger.warning("left the official semseg PPM at %s unconverted: %s", where, reason)
        return module
    head = _head_of(module)
    if head is not None:
        reason = try_convert(module, head)
        found.append(path)
        if reason is None:
            logger.info("converted the %s at %s: %s", head.label, where, describe(module, head))
            return module
        logger.warning("left the %s at %s unconverted: %s", head.label, where, reason)
    else:
        unsupported = _unsupported_reason(module)
        if unsupported is not None:
            found.append(path)
            label, reason = unsupported
            logger.warning("left the %s at %s unconverted: %s", label, where, reason)
            return module
    for name, child in module.named_children():
        new = _visit(child, f"{path}.{name}" if path else name, found)
        if new is not child:
            setattr(module, name, new)
    return module


def convert_ppm(model: nn.Module) -> nn.Module:
    """Convert every supported pyramid pooling head in ``model``, in place; returns the model.

    Like ``nn.SyncBatchNorm.convert_sync_batchnorm``: use the returned module (it is ``model``
    itself, except when ``model`` is an official PPM, which is replaced by the fused
    :class:`pspnet.PPM` over the same submodules)::

        model = pspnet.convert_ppm(model)

    Eval runs kernel 1 with every branch's BatchNorm (or conv bias) and ReLU folded; training
    runs each branch's own norm on the pooled maps, so running statistics update exactly
    (``SyncBatchNorm`` too); the conv after the concat runs concat-free where that is cheaper for
    the input's shapes (decided per call), its own norm and activation unchanged. Parameter and
    buffer names, shapes and values stay as they were. Converting twice changes nothing.
    See :mod:`pspnet.convert` for what is recognised, logged and warned about.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    found: list[str] = []
    model = _visit(model, "", found)
    if not found:
        warnings.warn(
            f"convert_ppm found no pyramid pooling head in {type(model).__name__}: nothing was "
            f"converted. It looks for: {', '.join(SUPPORTED)}.",
            UserWarning,
            stacklevel=2,
        )
    return model
