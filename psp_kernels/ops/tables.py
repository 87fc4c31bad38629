"""Per-pixel cell tables: the dense matrices that turn pooling and bilinear upsampling into GEMMs.

Every kernel of the PPM multiplies a feature map, seen as a ``(channels, H * W)`` matrix of flat
pixels, by a small table with one row per pixel and one column per *cell*:

* :func:`pool_table`: the 0/1 membership of each pixel in each pooling cell of every bin
  (PyTorch's windows, overlapping and repeating ones included), exact in every dtype, and each
  cell's area. ``x @ T`` is every bin's window sums at once (kernel 1's stage 1, one read of x);
  ``dp @ T^T`` spreads the cell gradients back to the pixels (kernel 1's dx).
* :func:`bilinear_table`: the bilinear weight ``A[h, i] * B[w, j]`` of every low-resolution cell
  ``(i, j)`` of every branch in output pixel ``(h, w)`` (PyTorch's source coordinates, both
  ``align_corners``). ``y @ T^T`` is the upsampled branch (kernel 2's forward) and ``g @ T`` its
  gradient (kernel 2's backward).

Tables are built on the host in float64 from :mod:`psp_kernels.geometry` and stored in the
operand dtype of the kernel that reads them, padded so that every row starts 128-byte aligned
and the cells of each group fill a power-of-two block (``cells_pad``, at least 16: the smallest
``tl.dot`` dimension). ``pixel_major=False`` stores ``(cells, pixels)`` (for the GEMMs whose
reduction runs over pixels), ``True`` stores ``(pixels, cells)`` (reduction over cells): each
``tl.dot`` then reads its table tile along the reduction dimension, which every tensor-core
operand layout accepts. Cached per size and device; the tables are small (bins 1, 2, 3, 6 at
60x60: 64 x 3648 values) and live in L2.
"""

from __future__ import annotations

import dataclasses
import functools

import torch

from .. import geometry
from .utils import next_power_of_2

__all__ = ["CellTable", "pool_table", "bilinear_table", "cells_block"]

_ROW_ALIGN = 64  # elements: every row starts 128-byte aligned for 16-bit tables


@dataclasses.dataclass(frozen=True)
class CellTable:
    """A per-pixel cell table on a device.

    Attributes:
        table: ``(groups * cells_pad, pixels_pad)`` or, ``pixel_major``, its transpose.
        area: ``(groups * cells_pad,)`` cell areas for pooling tables (1 for padded cells), else
            ``None``.
        cells: real cells of each group (one group per bin set / per branch).
        cells_pad: the power-of-two block of cells each group occupies.
    """

    table: torch.Tensor
    area: torch.Tensor | None
    cells: tuple[int, ...]
    cells_pad: int

    @property
    def stride(self) -> int:
        """Elements between consecutive rows of :attr:`table`."""
        return self.table.stride(0)


def cells_block(cells: int, cap: int = 128) -> int:
    """The power-of-two block (16 to ``cap``) that holds ``cells`` cells, or ``cap``."""
    return max(16, min(cap, next_power_of_2(max(cells, 1))))


def _pad_to(v: int, m: int) -> int:
    return -(-v // m) * m


def _store(dense: torch.Tensor, pixel_major: bool, dtype, device) -> torch.Tensor:
    """Lay ``dense`` ``(cells, pixels)`` out on ``device``: cell-major with rows padded to
    :data:`_ROW_ALIGN` elements, or pixel-major (rows of ``cells``, a multiple of 16)."""
    rows, pixels = dense.shape
    if pixel_major:
        out = dense.t().contiguous()
    else:
        out = torch.zeros(rows, _pad_to(pixels, _ROW_ALIGN), dtype=torch.float64)
        out[:, :pixels] = dense
    return out.to(dtype).to(device)


def _indicator(length: int, bins) -> torch.Tensor:
    """``(sum(bins), length)`` 0/1: pixel ``l`` lies in pooling window ``k`` (bin by bin)."""
    return (geometry.stacked_pool_matrix(length, tuple(bins)) > 0).double()


@functools.lru_cache(maxsize=64)
def pool_table(height: int, width: int, bins: tuple, dtype, device, pixel_major: bool) -> CellTable:
    """The 0/1 cell table of the pooling cells of ``bins`` (cells bin by bin, row-major)."""
    rows, cols, blocks = _indicator(height, bins), _indicator(width, bins), []
    offset = 0
    for b in bins:
        r = rows[offset : offset + b]  # (b, H)
        c = cols[offset : offset + b]  # (b, W)
        blocks.append(torch.einsum("kh,lw->klhw", r, c).reshape(b * b, height * width))
        offset += b
    dense = torch.cat(blocks)
    total = dense.shape[0]
    cells_pad = _pad_to(total, cells_block(total))
    full = torch.zeros(cells_pad, height * width, dtype=torch.float64)
    full[:total] = dense
    area = torch.ones(cells_pad, dtype=torch.float64)
    area[:total] = dense.sum(1)
    area_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    return CellTable(
        _store(full, pixel_major, dtype, device),
        area.to(area_dtype).to(device),
        (total,),
        cells_pad,
    )


@functools.lru_cache(maxsize=64)
def bilinear_table(
    out_h: int, out_w: int, sizes: tuple, align_corners: bool, dtype, device, pixel_major: bool
) -> CellTable:
    """The bilinear weights of every branch of ``sizes`` ``((h_b, w_b), ...)`` in each pixel.

    Group ``b`` (rows ``b * cells_pad`` on) holds branch ``b``'s ``h_b * w_b`` cells, row-major.
    """
    cells = tuple(h * w for h, w in sizes)
    most = max(cells, default=1)  # no branches: an empty table (kernel 2 then only copies x)
    cells_pad = _pad_to(most, cells_block(most))
    dense = torch.zeros(max(len(sizes), 1) * cells_pad, out_h * out_w, dtype=torch.float64)
    for b, (h, w) in enumerate(sizes):
        a = geometry.interp_matrix(out_h, h, align_corners)  # (H, h)
        c = geometry.interp_matrix(out_w, w, align_corners)  # (W, w)
        block = torch.einsum("hi,wj->ijhw", a, c).reshape(h * w, out_h * out_w)
        dense[b * cells_pad : b * cells_pad + h * w] = block
    return CellTable(_store(dense, pixel_major, dtype, device), None, cells, cells_pad)
