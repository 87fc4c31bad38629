"""The official hszhao/semseg PPM layout, converted to :class:`pspnet.PPM` (a module swap), and
CSAIL's UPerNet PPM, recognised and left unconverted.

The official PPM's only child is ``features``, a ``ModuleList`` of ``Sequential(
AdaptiveAvgPool2d(b), Conv2d(C, R, 1, bias=False), BatchNorm2d(R), ReLU)``; its concat is
``[x, up(y_1), ...]`` with ``align_corners=True``, and the classifier's conv over it lives in the
model's own forward, so only the PPM is converted (kernel 1, then kernel 2).

CSAIL's (``semantic-segmentation-pytorch``) ``PPMDeepsup`` / ``UPerNet`` keep ``ppm_pooling``
(the pools) and ``ppm_conv`` (conv + BatchNorm + ReLU) apart and run the conv, norm and ReLU
*after* the upsampling, on the full-resolution map: that does not map onto a pyramid computed
at the bins' resolution.
"""

from __future__ import annotations

import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..ppm import PPM, _bin_of

__all__ = ["is_official_ppm", "to_fused", "csail_reason"]


def is_official_ppm(module: nn.Module) -> bool:
    """True for a module laid out like the official PPM (only child: ``features``)."""
    if isinstance(module, PPM):
        return False
    children = dict(module.named_children())
    features = children.get("features")
    if set(children) != {"features"} or not isinstance(features, nn.ModuleList):
        return False
    if len(features) == 0:
        return False
    in_dims = set()
    for f in features:
        if not isinstance(f, nn.Sequential) or len(f) != 4:
            return False
        pool, conv, bn, act = f
        if not isinstance(pool, nn.AdaptiveAvgPool2d) or _bin_of(pool) is None:
            return False
        if not (
            type(conv) is nn.Conv2d
            and conv.kernel_size == (1, 1)
            and conv.stride == (1, 1)
            and conv.padding == (0, 0)
            and conv.dilation == (1, 1)
            and conv.groups == 1
            and conv.bias is None
        ):
            return False
        if not isinstance(bn, _BatchNorm) or bn.num_features != conv.out_channels:
            return False
        if type(act) is not nn.ReLU:
            return False
        in_dims.add(conv.in_channels)
    return len(in_dims) == 1


def to_fused(module: nn.Module) -> PPM:
    """The fused :class:`pspnet.PPM` over an official PPM's own ``features`` (weights shared)."""
    fused = PPM.from_features(module.features)
    fused.training = module.training  # not .train(): children keep their own flags
    return fused


def csail_reason(module: nn.Module) -> str | None:
    """Why a CSAIL-style PPM (``ppm_pooling`` + ``ppm_conv``) is left unconverted, or ``None``."""
    pooling = getattr(module, "ppm_pooling", None)
    convs = getattr(module, "ppm_conv", None)
    if not isinstance(pooling, nn.ModuleList) or not isinstance(convs, nn.ModuleList):
        return None
    if not any(isinstance(p, nn.AdaptiveAvgPool2d) for p in pooling):
        return None
    return (
        "its pyramid convs, BatchNorms and ReLUs run after the upsampling, on the full-resolution "
        "map (CSAIL layout), so they cannot run at the bins' resolution"
    )
