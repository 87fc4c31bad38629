"""The modules the benchmarks build: the official PPM, the model's head, the fused PPM beside them.

Nothing here re-states the model: the plain PPM is the tests' oracle
(:class:`pspnet.testing.OfficialPPM`), the classifier is ``pspnet.model._head`` (the model's own),
and the head-layout comparison calls ``PSPNet._classify`` itself.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

import pspnet
from psp_kernels import reference
from pspnet.model import _head
from pspnet.testing import OfficialPPM, randomize_batchnorm

from .grids import BINS, CLASSES

__all__ = ["HeadModule", "PlainPPM", "classifier", "fused_ppm", "randomize_batchnorm"]


def _baseline_upsample(y: torch.Tensor, size) -> torch.Tensor:
    if y.device.type == "cpu":  # expand a 1x1 map: Inductor's CPU backward of it fails
        return reference.upsample(y, size, align_corners=True)
    return F.interpolate(y, size, mode="bilinear", align_corners=True)


class PlainPPM(OfficialPPM):
    """The official PPM as the eager baseline: :class:`pspnet.testing.OfficialPPM`, except that on
    CPU the 1x1 bin is expanded instead of interpolated (``psp_kernels.reference.upsample``: the
    same values), because Inductor's CPU backend fails on the backward of bilinear upsampling from
    a 1x1 map; on CUDA it is the official ``F.interpolate``. Same ``state_dict`` keys as
    ``pspnet.PPM``."""

    def __init__(self, in_dim: int, reduction_dim: int, bins=BINS):
        super().__init__(in_dim, reduction_dim, bins, upsample=_baseline_upsample)


def classifier(in_dim: int, mid: int, classes: int = CLASSES, dropout: float = 0.1):
    """The PSPNet ``cls`` head, built by the model's own ``pspnet.model._head``."""
    return _head(in_dim, mid, classes, dropout)


def fused_ppm(plain: nn.Module, in_dim: int, reduction_dim: int, bins) -> nn.Module:
    """``pspnet.PPM`` holding the same weights as ``plain``."""
    fused = pspnet.PPM(in_dim, reduction_dim, bins)
    fused.load_state_dict(plain.state_dict())
    return fused


class HeadModule(nn.Module):
    """PPM + classifier computed exactly as ``pspnet.PSPNet`` computes them (its ``_classify``).

    ``head`` is ``"concat"`` or ``"concat_free"``, as in ``PSPNet(head=...)``; calling the model's
    own method keeps this benchmark in step with the model.
    """

    use_ppm = True

    def __init__(self, ppm: nn.Module, cls: nn.Sequential, head: str):
        super().__init__()
        self.ppm = ppm
        self.cls = cls
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pspnet.PSPNet._classify(self, x)
