"""Geometry shared by the kernels, the reference and the tests.

Two pieces of geometry define the pyramid pooling module exactly as PyTorch computes it:

* adaptive average pooling windows: cell ``k`` of ``b`` cells over ``L`` pixels spans
  ``[floor(k * L / b), ceil((k + 1) * L / b))``; windows overlap when ``b`` does not divide ``L``
  and repeat pixels when ``b > L``;
* bilinear interpolation taps: output index ``i`` of ``out`` reads source indices ``i0`` and
  ``i1 = min(i0 + 1, in - 1)`` with weights ``1 - lam`` and ``lam``, where the source coordinate is
  ``i * (in - 1) / (out - 1)`` (``align_corners=True``, 0 when ``out == 1``) or
  ``max((i + 0.5) * in / out - 0.5, 0)`` (``align_corners=False``).

The Triton launchers turn these into small integer/float tables (cached per size and device) that
the kernels read; the tests turn them into dense matrices to check the kernels independently of
``torch.nn.functional``.
"""

from __future__ import annotations

import functools

import torch

__all__ = [
    "pool_window",
    "pool_windows",
    "pool_matrix",
    "cell_table",
    "bilinear_source",
    "bilinear_taps",
    "interp_matrix",
    "tap_table",
    "shifted_interp_matrices",
    "CONV_TAPS",
]

#: The nine taps ``(di, dj)`` of a 3x3 convolution with padding 1, in weight order: tap
#: ``t = 3 * (di + 1) + (dj + 1)`` reads input pixel ``(h + di, w + dj)`` for output ``(h, w)``.
CONV_TAPS = tuple((di, dj) for di in (-1, 0, 1) for dj in (-1, 0, 1))


def pool_window(k: int, length: int, bins: int) -> tuple[int, int]:
    """Return ``(start, end)`` of cell ``k`` when ``length`` pixels are pooled into ``bins`` cells."""
    start = (k * length) // bins
    end = -((-(k + 1) * length) // bins)  # ceil((k + 1) * length / bins)
    return start, end


def pool_windows(length: int, bins: int) -> list[tuple[int, int]]:
    """Return the ``bins`` pooling windows ``[(start, end), ...]`` over ``length`` pixels."""
    return [pool_window(k, length, bins) for k in range(bins)]


def pool_matrix(length: int, bins: int, dtype=torch.float64) -> torch.Tensor:
    """Return the ``(bins, length)`` window-averaging matrix ``P`` with ``P @ v`` the pooled ``v``."""
    m = torch.zeros(bins, length, dtype=dtype)
    for k, (s, e) in enumerate(pool_windows(length, bins)):
        m[k, s:e] = 1.0 / (e - s)
    return m


@functools.lru_cache(maxsize=256)
def _cell_table_cpu(height: int, width: int, bins: tuple[int, ...]) -> torch.Tensor:
    rows = []
    for b in bins:
        row_windows = pool_windows(height, b)
        col_windows = pool_windows(width, b)
        for rs, re in row_windows:
            for cs, ce in col_windows:
                rows.append((rs, re, cs, ce))
    return torch.tensor(rows, dtype=torch.int32).t().contiguous()


def cell_table(height: int, width: int, bins, device=None) -> torch.Tensor:
    """Return the pooling cells of all bins as an int32 ``(4, sum(b * b))`` table.

    Rows are ``row_start, row_end, col_start, col_end``; cells are ordered bin by bin (in the order
    of ``bins``), each bin row-major (``cell = k * b + l``). Cached per size, bins and device.
    """
    table = _cell_table_cpu(int(height), int(width), tuple(int(b) for b in bins))
    if device is None or torch.device(device).type == "cpu":
        return table
    return _cell_table_on(
        int(height), int(width), tuple(int(b) for b in bins), torch.device(device)
    )


@functools.lru_cache(maxsize=256)
def _cell_table_on(height, width, bins, device):
    return _cell_table_cpu(height, width, bins).to(device)


def bilinear_source(out_size: int, in_size: int, align_corners: bool, device=None):
    """Return tensors ``(i0, i1, lam)`` of PyTorch's bilinear taps along one axis.

    Output ``i`` = ``(1 - lam[i]) * src[i0[i]] + lam[i] * src[i1[i]]``; indices are int64, ``lam`` is
    float64. Built from tensor operations only, so it also traces under ``torch.compile``.
    """
    if out_size < 1 or in_size < 1:
        raise ValueError(f"sizes must be positive, got out_size={out_size}, in_size={in_size}")
    i = torch.arange(out_size, dtype=torch.float64, device=device)
    if align_corners:
        scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
        src = i * scale
    else:
        src = ((i + 0.5) * (in_size / out_size) - 0.5).clamp_min(0.0)
    i0 = src.floor().long().clamp_max(in_size - 1)
    i1 = (i0 + 1).clamp_max(in_size - 1)
    return i0, i1, src - i0


def bilinear_taps(out_size: int, in_size: int, align_corners: bool):
    """Return :func:`bilinear_source` as Python lists ``(i0, i1, lam)``."""
    return tuple(t.tolist() for t in bilinear_source(out_size, in_size, align_corners))


def interp_matrix(
    out_size: int, in_size: int, align_corners: bool, dtype=torch.float64, device=None
):
    """Return the ``(out_size, in_size)`` bilinear interpolation matrix along one axis."""
    i0, i1, lam = bilinear_source(out_size, in_size, align_corners, device)
    m = torch.zeros(out_size, in_size, dtype=torch.float64, device=device)
    m = m.scatter_add(1, i0[:, None], (1.0 - lam)[:, None]).scatter_add(
        1, i1[:, None], lam[:, None]
    )
    return m.to(dtype)


@functools.lru_cache(maxsize=256)
def _tap_table_cpu(out_size, in_size, align_corners, dtype):
    i0, i1, lam = bilinear_taps(out_size, in_size, align_corners)
    idx = torch.tensor([i0, i1], dtype=torch.int32)
    return idx, torch.tensor(lam, dtype=dtype)


@functools.lru_cache(maxsize=256)
def _tap_table_on(out_size, in_size, align_corners, dtype, device):
    idx, lam = _tap_table_cpu(out_size, in_size, align_corners, dtype)
    return idx.to(device), lam.to(device)


def tap_table(out_size: int, in_size: int, align_corners: bool, device=None, dtype=torch.float32):
    """Return ``(idx, lam)``: int32 ``(2, out_size)`` source indices ``i0, i1`` and ``lam`` weights.

    ``dtype`` is the weights' dtype (float32 for float32/16 inputs, float64 for float64 inputs).
    Cached per size, mode, dtype and device.
    """
    key = (int(out_size), int(in_size), bool(align_corners), dtype)
    if device is None or torch.device(device).type == "cpu":
        return _tap_table_cpu(*key)
    return _tap_table_on(*key, torch.device(device))


def shifted_interp_matrices(
    out_size: int, in_size: int, align_corners: bool, dtype=torch.float64, device=None
):
    """Return ``(3, out_size, in_size)``: the interpolation matrix with rows shifted by -1, 0, +1.

    Entry ``[d + 1, i]`` is row ``i + d`` of :func:`interp_matrix` (zero where ``i + d`` falls
    outside ``[0, out_size)``): the upsampled map read at offset ``d`` with a 3x3 convolution's
    zero padding. Tensor operations only (traces under ``torch.compile``).
    """
    m = interp_matrix(out_size, in_size, align_corners, dtype, device)
    zero = m.new_zeros(1, in_size)
    return torch.stack([torch.cat([zero, m[:-1]]), m, torch.cat([m[1:], zero])])
