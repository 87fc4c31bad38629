"""The pyramid pooling module (PPM) of PSPNet, on the fused kernels.

:class:`PPM` has the official submodules and ``state_dict`` keys (``features.{i}.0``
AdaptiveAvgPool2d, ``.1`` Conv2d 1x1 without bias, ``.2`` BatchNorm2d, ``.3`` ReLU), so official
checkpoints load unchanged, but its forward is two fused operations:

* eval: ``psp_kernels.pyramid_pooling`` (kernel 1 then kernel 2 in one op, x read once) with
  every BatchNorm folded into a per-channel scale/shift and ReLU (``scale = gamma / sqrt(var +
  eps)``, ``shift = beta - mean * scale``), ``align_corners=True``;
* training: ``pyramid_pool_conv`` gives the small conv outputs, each branch's own BatchNorm
  module (batch statistics, running statistics updated exactly as in the plain module; a
  ``SyncBatchNorm`` works too) and ReLU run on them, then ``upsample_concat``.

Batch size 1 in training: the bin-1 branch then has a single value per channel, where plain
BatchNorm raises "Expected more than 1 value per channel when training". :class:`PPM` instead
normalises such a branch with its running statistics (as in eval) and leaves them untouched for
that step; the other branches use batch statistics as usual. (A ``SyncBatchNorm`` inside an
initialised process group of several ranks is left to synchronise its statistics instead.)

While exporting (``torch.export``, ``torch.onnx.export``) both paths use the plain formulation of
:mod:`pspnet.export_ops` instead, exact at every (symbolic) input size.

:func:`pspnet.convert_ppm` swaps the official PPM modules of an existing model for this one in
place (and converts the PSP heads of other libraries, :mod:`pspnet.convert`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

import psp_kernels

from . import export_ops

__all__ = ["PPM"]


def _bin_of(pool: nn.Module) -> int | None:
    """The square bin size of an ``AdaptiveAvgPool2d``, or ``None`` if it is not square."""
    size = pool.output_size
    if isinstance(size, int):
        return size
    if isinstance(size, (tuple, list)) and len(size) == 2 and size[0] == size[1]:
        if isinstance(size[0], int):
            return size[0]
    return None


def _uses_batch_stats(bn: nn.Module) -> bool:
    # PyTorch's rule: batch statistics in training, or when no running statistics are tracked.
    return bn.training or bn.running_mean is None or bn.running_var is None


def _synchronised(bn: nn.Module) -> bool:
    if not isinstance(bn, nn.SyncBatchNorm):
        return False
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return False
    return dist.get_world_size(bn.process_group) > 1


def _folded(bn: nn.Module, dtype: torch.dtype):
    """``(scale, shift)`` of an eval BatchNorm: ``bn(y) == y * scale + shift``."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale.to(dtype), shift.to(dtype)


def _branch_norm(bn: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """``bn(y)``, except a single value per channel in training uses the running statistics."""
    if not bn.training:  # (checked first: no test of the symbolic sizes while exporting)
        return bn(y)
    single = y.shape[0] * y.shape[2] * y.shape[3] == 1
    if single and bn.running_mean is not None and not _synchronised(bn):
        return F.batch_norm(
            y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
        )
    return bn(y)


class PPM(nn.Module):
    """Pyramid pooling module: ``cat([x] + [up(relu(bn_b(conv_b(pool_b(x))))) for b in bins])``.

    Drop-in for the official PSPNet ``PPM(in_dim, reduction_dim, bins)``: same submodules,
    same ``state_dict`` keys, same outputs and gradients, computed by the fused kernels
    (see the module docstring for eval/training and for batch size 1).

    Args:
        in_dim: channels of the input ``x``.
        reduction_dim: output channels of each branch's 1x1 convolution.
        bins: adaptive pooling sizes, one branch each.

    Shape: ``(N, in_dim, H, W)`` -> ``(N, in_dim + len(bins) * reduction_dim, H, W)``, in ``x``'s
    memory format.
    """

    def __init__(self, in_dim: int, reduction_dim: int, bins=(1, 2, 3, 6)):
        super().__init__()
        self.features = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(int(b)),
                nn.Conv2d(in_dim, reduction_dim, kernel_size=1, bias=False),
                nn.BatchNorm2d(reduction_dim),
                nn.ReLU(inplace=True),
            )
            for b in bins
        )

    @classmethod
    def from_features(cls, features: nn.ModuleList) -> PPM:
        """Wrap an official PPM's ``features`` (the same module objects: weights are shared)."""
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module.features = features
        return module

    @property
    def bins(self) -> tuple[int, ...]:
        return tuple(_bin_of(f[0]) for f in self.features)

    def _folded_params(self, x: torch.Tensor):
        """``(weights, scale, shift)`` with every BatchNorm folded, or ``None`` when one of them
        uses batch statistics (training)."""
        norms = [f[2] for f in self.features]
        if any(_uses_batch_stats(bn) for bn in norms):
            return None
        weights = [f[1].weight.to(x.dtype) for f in self.features]
        folded = [_folded(bn, x.dtype) for bn in norms]
        return weights, [s for s, _ in folded], [t for _, t in folded]

    def pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The branch outputs ``relu(bn_b(conv_b(pool_b(x))))`` at their ``b x b`` resolution."""
        bins = self.bins
        if export_ops.exporting():  # plain ops exact at every (symbolic) size
            pooled = export_ops.adaptive_pools(x, bins)
            return [f[3](_branch_norm(f[2], f[1](p))) for f, p in zip(self.features, pooled)]
        folded = self._folded_params(x)
        if folded is not None:
            # Eval: BatchNorm and ReLU folded into kernel 1's epilogue.
            weights, scale, shift = folded
            return psp_kernels.pyramid_pool_conv(
                x, weights, bins, scale=scale, shift=shift, relu=True
            )
        weights = [f[1].weight.to(x.dtype) for f in self.features]
        ys = psp_kernels.pyramid_pool_conv(x, weights, bins)
        # (.to: a no-op, unless autocast ran the BatchNorm in another dtype)
        return [f[3](_branch_norm(f[2], y)).to(x.dtype) for f, y in zip(self.features, ys)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if export_ops.exporting():
            return export_ops.upsample_concat(x, self.pyramid(x), align_corners=True)
        folded = self._folded_params(x)
        if folded is not None:
            # Eval: one fused op; kernel 1 copies x into the output while it reads x, so the
            # whole forward reads x once and writes the output once.
            weights, scale, shift = folded
            return psp_kernels.pyramid_pooling(
                x, weights, self.bins, scale=scale, shift=shift, relu=True, align_corners=True
            )
        return psp_kernels.upsample_concat(x, self.pyramid(x), align_corners=True)

    def extra_repr(self) -> str:
        return f"bins={self.bins}, fused=True"
