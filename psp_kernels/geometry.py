"""Geometry shared by the kernels' tables, the CPU paths, the reference and the tests.

Two pieces of geometry define the pyramid pooling module exactly as PyTorch computes it:

* adaptive average pooling windows: cell ``k`` of ``b`` cells over ``L`` pixels spans
  ``[floor(k * L / b), ceil((k + 1) * L / b))``; windows overlap when ``b`` does not divide ``L``
  and repeat pixels when ``b > L``;
* bilinear interpolation taps: output index ``i`` of ``out`` reads source indices ``i0`` and
  ``i1 = min(i0 + 1, in - 1)`` with weights ``1 - lam`` and ``lam``, where the source coordinate is
  ``i * (in - 1) / (out - 1)`` (``align_corners=True``, 0 when ``out == 1``) or
  ``max((i + 0.5) * in / out - 0.5, 0)`` (``align_corners=False``).

This module is the one place they are defined. The Triton launchers' per-pixel cell tables
(:mod:`psp_kernels.ops.tables`) and the CPU paths (the ``separable`` modules of the ops) are built
from these matrices; the tests check them against ``torch.nn.functional``; the export formulation
of the model package builds them inside exported graphs. Every builder (:func:`pool_bounds`,
:func:`stacked_pool_matrix`, :func:`interp_matrix`, :func:`shifted_interp_matrices`,
:func:`shifted_pyramid_matrix`) uses tensor operations only
(``arange``, integer arithmetic, compares, one division), so their sizes may be symbolic
(``torch.export`` dynamic shapes) and an exported graph computes them from the input's size
instead of holding tables of the example size.
"""

from __future__ import annotations

import torch

__all__ = [
    "pool_bounds",
    "pool_matrix",
    "stacked_pool_matrix",
    "interp_matrix",
    "shifted_interp_matrices",
    "shifted_pyramid_matrix",
    "apply_rows",
    "CONV_TAPS",
]

#: The nine taps ``(di, dj)`` of a 3x3 convolution with padding 1, in weight order: tap
#: ``t = 3 * (di + 1) + (dj + 1)`` reads input pixel ``(h + di, w + dj)`` for output ``(h, w)``.
CONV_TAPS = tuple((di, dj) for di in (-1, 0, 1) for dj in (-1, 0, 1))


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Arithmetic dtype of the pooling weights: float64 for float64, float32 otherwise (``1 / n``
    rounds to the same float32/16/bf16 value either way)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def pool_bounds(length, bins, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return int64 tensors ``(start, end)`` of the pooling cells of every bin in ``bins``, stacked.

    Cell ``k`` of bin ``b`` over ``length`` pixels spans ``[floor(k * length / b),
    ceil((k + 1) * length / b))``; the cells are ordered bin by bin (``sum(bins)`` entries).
    ``length`` may be a symbolic size (``torch.export``): only integer tensor arithmetic is used,
    so the bounds are computed in the graph, not baked in as constants.
    """
    bins = tuple(int(b) for b in bins)
    if not bins or min(bins) < 1:
        raise ValueError(f"bins must be positive ints, got {bins}")
    b = torch.tensor([v for v in bins for _ in range(v)], dtype=torch.int64, device=device)
    k = torch.tensor([i for v in bins for i in range(v)], dtype=torch.int64, device=device)
    start = torch.div(k * length, b, rounding_mode="floor")
    end = torch.div((k + 1) * length + b - 1, b, rounding_mode="floor")  # ceil, length >= 0
    return start, end


def stacked_pool_matrix(length, bins, dtype=torch.float64, device=None) -> torch.Tensor:
    """Return the ``(sum(bins), length)`` window-averaging matrix of all ``bins``, stacked.

    Row ``offset_b + k`` averages cell ``k`` of bin ``b`` (``1 / window size`` inside the window,
    0 outside), so ``P @ v`` pools ``v`` at every bin at once and, for a map ``x`` of shape
    ``(..., H, W)``, ``P_H[rows of b] @ x @ P_W[rows of b].T`` is ``adaptive_avg_pool2d(x, b)``.
    Built from ``arange``, integer arithmetic, compares and one division, so ``length`` may be
    symbolic: exported graphs compute it from the input size.
    """
    start, end = pool_bounds(length, bins, device)
    i = torch.arange(length, dtype=torch.int64, device=device)
    inside = (i[None, :] >= start[:, None]) & (i[None, :] < end[:, None])
    ct = _compute_dtype(dtype)
    return (inside.to(ct) / (end - start).to(ct)[:, None]).to(dtype)


def pool_matrix(length, bins: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """Return the ``(bins, length)`` window-averaging matrix ``P`` with ``P @ v`` the pooled ``v``."""
    return stacked_pool_matrix(length, (bins,), dtype, device)


def _check_sizes(out_size, in_size) -> None:
    if out_size < 1 or in_size < 1:
        raise ValueError(f"sizes must be positive, got out_size={out_size}, in_size={in_size}")


def _taps_at(i, out_size, in_size, align_corners: bool):
    """``(i0, i1, lam)`` of the output positions ``i`` (a float tensor) along one axis."""
    if align_corners:
        # (in - 1) / (out - 1), and 0 when out == 1 (i is then 0): no branch on a symbolic size
        src = i * ((in_size - 1) / torch.sym_max(out_size - 1, 1))
    else:
        src = ((i + 0.5) * (in_size / out_size) - 0.5).clamp_min(0.0)
    i0 = src.floor().long().clamp_max(in_size - 1)
    i1 = (i0 + 1).clamp_max(in_size - 1)
    return i0, i1, src - i0


def _interp_rows(i, out_size, in_size, align_corners: bool, device):
    """Rows ``i`` (float positions in ``[0, out_size)``) of the interpolation matrix, in ``i``'s dtype."""
    i0, i1, lam = _taps_at(i, out_size, in_size, align_corners)
    j = torch.arange(in_size, dtype=torch.int64, device=device)[None, :]
    lam = lam[:, None]
    return (j == i0[:, None]).to(lam.dtype) * (1.0 - lam) + (j == i1[:, None]).to(lam.dtype) * lam


def interp_matrix(
    out_size,
    in_size,
    align_corners: bool,
    dtype=torch.float64,
    device=None,
    *,
    taps_dtype=torch.float64,
) -> torch.Tensor:
    """Return the ``(out_size, in_size)`` bilinear interpolation matrix along one axis.

    ``A @ v`` is ``v`` resized bilinearly, so ``A_H @ y @ A_W.T`` is
    ``F.interpolate(y, (H, W), mode="bilinear", align_corners=align_corners)``. Built from
    compares of ``arange`` with the taps (no scatter), so the sizes may be symbolic. The taps are
    computed in ``taps_dtype`` (float64 by default; float32 keeps float64 out of exported graphs)
    and the matrix is then rounded to ``dtype``.
    """
    _check_sizes(out_size, in_size)
    i = torch.arange(out_size, dtype=taps_dtype, device=device)
    return _interp_rows(i, out_size, in_size, align_corners, device).to(dtype)


def shifted_interp_matrices(
    out_size,
    in_size,
    align_corners: bool,
    dtype=torch.float64,
    device=None,
    *,
    taps_dtype=torch.float64,
) -> torch.Tensor:
    """Return ``(3, out_size, in_size)``: the interpolation matrix with rows shifted by -1, 0, +1.

    Entry ``[d + 1, i]`` is row ``i + d`` of :func:`interp_matrix` (zero where ``i + d`` falls
    outside ``[0, out_size)``): the upsampled map read at offset ``d`` with a 3x3 convolution's
    zero padding. Tensor operations only, and no slicing by the size (traces under
    ``torch.compile`` and ``torch.export``, symbolic sizes included).
    """
    return _shifted_rows(out_size, in_size, align_corners, device, taps_dtype, 0).to(dtype)


def _shifted_rows(out_size, in_size, align_corners, device, taps_dtype, dim):
    """The rows shifted by -1, 0, +1 (:func:`shifted_interp_matrices`), stacked along ``dim``."""
    _check_sizes(out_size, in_size)
    i = torch.arange(out_size, dtype=taps_dtype, device=device)
    shifted = []
    for d in (-1, 0, 1):
        pos = i + d
        inside = ((pos >= 0) & (pos <= out_size - 1)).to(taps_dtype)[:, None]
        rows = _interp_rows(pos.clamp(0, out_size - 1), out_size, in_size, align_corners, device)
        shifted.append(rows * inside)
    return torch.stack(shifted, dim)


def shifted_pyramid_matrix(
    out_size,
    in_sizes,
    align_corners: bool,
    dtype=torch.float64,
    device=None,
    *,
    taps_dtype=torch.float64,
) -> torch.Tensor:
    """Return ``[S_d A_b]`` of shape ``(out_size, 3 * sum(in_sizes))``: every map's shifted
    interpolation matrices side by side.

    Column ``3 * offset_b + (d + 1) * in_b + i`` is source row ``i`` of map ``b`` upsampled to
    ``out_size`` and read at shift ``d`` (:func:`shifted_interp_matrices`). With one such matrix
    per axis, the concat-free head's nine shifted upsamplings of all maps are two matrix products.
    """
    parts = []
    for size in in_sizes:
        # (out, 3, in) -> (out, 3 * in): a view, built in this layout (no transpose + reshape copy,
        # which would make torch.export guard the symbolic size)
        rows = _shifted_rows(out_size, size, align_corners, device, taps_dtype, 1)
        parts.append(rows.reshape(out_size, 3 * size))
    return torch.cat(parts, 1).to(dtype)


def apply_rows(a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``a @ y`` for an axis matrix ``a`` ``(P, h)`` and maps ``y`` ``(N, C, h, w)``: ``(N, C, P, w)``.

    One ``bmm`` over the flattened ``N * C`` maps (as fast as ``torch.matmul`` on CPU):
    ``torch.matmul``'s broadcasting reshapes make ``torch.export`` guard symbolic sizes to differ
    from 1, which this avoids. Columns: ``torch.matmul(y, b.t())`` has no such guard.
    """
    n, c, h, w = y.shape
    out = torch.bmm(a.expand(n * c, a.shape[0], h), y.reshape(n * c, h, w))
    return out.view(n, c, a.shape[0], w)
