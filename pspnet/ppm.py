"""The pyramid pooling module (PPM) of PSPNet.

Placeholder with the official layout; the kernel-2 issue replaces its forward with the fused
kernels (same submodules, same state_dict keys).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["PPM", "convert_ppm"]


class PPM(nn.Module):
    """Pyramid pooling module: ``cat([x, up(branch_b(x)) for b in bins])``.

    ``features[i]`` is ``Sequential(AdaptiveAvgPool2d(b), Conv2d(in_dim, reduction_dim, 1,
    bias=False), BatchNorm2d(reduction_dim), ReLU)`` as in the official PSPNet.
    """

    def __init__(self, in_dim: int, reduction_dim: int, bins=(1, 2, 3, 6)):
        super().__init__()
        self.bins = tuple(int(b) for b in bins)
        self.features = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(b),
                nn.Conv2d(in_dim, reduction_dim, kernel_size=1, bias=False),
                nn.BatchNorm2d(reduction_dim),
                nn.ReLU(inplace=True),
            )
            for b in self.bins
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = [x]
        for f in self.features:
            out.append(F.interpolate(f(x), x.shape[-2:], mode="bilinear", align_corners=True))
        return torch.cat(out, 1)


def convert_ppm(model: nn.Module) -> nn.Module:
    """Replace every PPM-like module of ``model`` with the fused :class:`PPM`, keeping weights."""
    raise NotImplementedError
