"""Oracles for checking a model against the official layout: the official PPM in plain PyTorch,
and BatchNorm statistics that make eval differ from the identity.

Shared by the tests and the benchmarks (the eager baseline of the PPM is :class:`OfficialPPM`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["OfficialPPM", "randomize_batchnorm"]


def randomize_batchnorm(module: nn.Module, seed: int | None = None) -> nn.Module:
    """Give every BatchNorm of ``module`` non-trivial affine parameters and running statistics
    (so eval mode differs from the identity): weight and running_var in ``[0.5, 1.5)``, bias
    and running_mean in ``[-0.1, 0.1)``. Drawn from a generator seeded with ``seed``, else from
    the global RNG; returns ``module``."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features

                def draw(lo, hi, _n=n):
                    return torch.rand(_n, generator=gen, dtype=torch.float64) * (hi - lo) + lo

                if m.affine:
                    m.weight.copy_(draw(0.5, 1.5))
                    m.bias.copy_(draw(-0.1, 0.1))
                if m.track_running_stats:
                    m.running_mean.copy_(draw(-0.1, 0.1))
                    m.running_var.copy_(draw(0.5, 1.5))
    return module


def _interpolate(y: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(y, size, mode="bilinear", align_corners=True)


class OfficialPPM(nn.Module):
    """The hszhao/semseg ``PPM`` in plain PyTorch: same submodules and ``state_dict`` keys as
    ``pspnet.PPM``, ``cat([x] + [interpolate(f(x), align_corners=True)])`` (the definition).

    ``upsample(y, size)`` replaces the bilinear interpolation where a caller needs to (the
    benchmarks' compiled CPU baseline: ``psp_kernels.reference.upsample``, the same values).
    """

    def __init__(self, in_dim: int, reduction_dim: int, bins, *, upsample=None):
        super().__init__()
        self.upsample = upsample or _interpolate
        self.features = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(b),
                nn.Conv2d(in_dim, reduction_dim, kernel_size=1, bias=False),
                nn.BatchNorm2d(reduction_dim),
                nn.ReLU(inplace=True),
            )
            for b in bins
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        return torch.cat([x] + [self.upsample(f(x), size) for f in self.features], 1)
