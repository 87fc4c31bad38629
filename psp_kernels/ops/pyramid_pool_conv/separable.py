"""Kernel 1 in plain PyTorch as matrix products: its CPU path, and the pooling of exported graphs.

Pooling is separable: ``adaptive_avg_pool2d(x, b) = P_H,b @ x @ P_W,b^T`` with ``P`` the
window-averaging matrices of :func:`psp_kernels.geometry.stacked_pool_matrix`. Stacking the
matrices of all bins (12 rows for bins 1, 2, 3, 6), :func:`stacked_pools` reads ``x`` once, as
kernel 1 does on the GPU: one product with the stacked column matrix, one with the stacked row
matrix, and bin ``b`` is a diagonal block of the ``(S, S)`` result. Exact to rounding (the
matrices hold PyTorch's windows, overlapping and repeating ones included).

Measured on the 2-core CI CPU (``python -m benchmarks.compare_pooling``, committed under
``benchmarks/results/``), against four ``F.adaptive_avg_pool2d`` calls: contiguous (NCHW) inputs
are faster forward and forward + backward; channels_last inputs are faster forward + backward
(PyTorch's channels_last pooling backward is slow) but slower forward, where PyTorch's
channels_last pooling kernel wins. :func:`pyramid_pool_conv` therefore takes the matrix products
except for a channels_last input that needs no gradient, and the four pooling calls there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ... import reference
from ...geometry import apply_rows, stacked_pool_matrix

__all__ = ["stacked_pools", "pyramid_pool_conv", "MATMUL_DTYPES"]

#: Dtypes the CPU path computes by matrix products (low precision keeps the reference: its
#: pooling weights would be rounded to 8 or 11 bits).
MATMUL_DTYPES = (torch.float32, torch.float64)


def _diagonal_blocks(pooled: torch.Tensor, bins, dim: int) -> list[torch.Tensor]:
    out, offset = [], 0
    for b in bins:
        out.append(pooled.narrow(dim, offset, b).narrow(dim + 1, offset, b))
        offset += b
    return out


def stacked_pools(x: torch.Tensor, bins) -> list[torch.Tensor]:
    """``[F.adaptive_avg_pool2d(x, b) for b in bins]`` from one read of ``x`` ``(N, C, H, W)``.

    The sizes may be symbolic (``torch.export``): the matrices are built in the graph from
    ``H`` and ``W``, and no product reshapes by a symbolic size.
    """
    height, width = x.shape[-2:]
    rows = stacked_pool_matrix(height, bins, x.dtype, x.device)  # (S, H)
    cols = stacked_pool_matrix(width, bins, x.dtype, x.device)  # (S, W)
    pooled = apply_rows(rows, torch.matmul(x, cols.t()))  # (N, C, S, S)
    return _diagonal_blocks(pooled, bins, 2)


def _stacked_pools_channels_last(x: torch.Tensor, bins) -> list[torch.Tensor]:
    """:func:`stacked_pools` for a channels_last ``x``: the products run over its ``(N, H, W, C)``
    memory in place (``K = W``, then ``K = H``, ``C`` the long dimension)."""
    n, c, h, w = x.shape
    rows = stacked_pool_matrix(h, bins, x.dtype, x.device)
    cols = stacked_pool_matrix(w, bins, x.dtype, x.device)
    s = cols.shape[0]
    t = torch.matmul(cols, x.permute(0, 2, 3, 1).reshape(n * h, w, c))  # (N*H, S, C)
    pooled = torch.matmul(rows, t.view(n, h, s * c)).view(n, s, s, c)  # (N, S, S, C)
    return _diagonal_blocks(pooled.permute(0, 3, 1, 2), bins, 2)


def pyramid_pool_conv(x, weights, bins, scale=None, shift=None, relu=False) -> list[torch.Tensor]:
    """``reference.pyramid_pool_conv`` (checked arguments) with the pooling as matrix products,
    except a channels_last ``x`` that needs no gradient (see the module docstring)."""
    channels_last = x.dim() == 4 and not x.is_contiguous()
    channels_last = channels_last and x.is_contiguous(memory_format=torch.channels_last)
    if channels_last and not (x.requires_grad and torch.is_grad_enabled()):
        pooled = [F.adaptive_avg_pool2d(x, b) for b in bins]
    elif channels_last:
        pooled = _stacked_pools_channels_last(x, bins)
    else:
        pooled = stacked_pools(x, bins)
    return reference.conv_epilogue(pooled, weights, scale, shift, relu)
