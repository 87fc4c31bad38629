"""The concat-free head op in plain PyTorch as two small matrix products (its CPU path).

Also home of :func:`pyramid_matrices`, the dense ``[S_d A_b]`` matrices that the kernels' tables
are built from too.
"""

from __future__ import annotations

import torch

from ...geometry import interp_matrix, shifted_interp_matrices

__all__ = ["pyramid_matrices", "separable_shifted_upsample_add"]


def pyramid_matrices(height, width, sizes, align_corners, dtype, device=None, taps=9):
    """``(ahat, bhat)``: ``[S_di A_b]`` of shape ``(H, 3 sum h_b)`` and ``[S_dj B_b]`` ``(W, 3 sum w_b)``.

    Column ``3 * (offset of map b) + (d + 1) * h_b + i`` is low-res row ``i`` of map ``b`` read at
    shift ``d``. With ``taps=1`` (the one-tap form) there are no shifts: ``[A_b]`` ``(H, sum h_b)``
    and ``[B_b]`` ``(W, sum w_b)``. Shared by the kernels' tables and the separable PyTorch path.
    """
    a_parts, b_parts = [], []
    for h, w in sizes:
        if taps == 1:
            a_parts.append(interp_matrix(height, h, align_corners, dtype, device))
            b_parts.append(interp_matrix(width, w, align_corners, dtype, device))
            continue
        sa = shifted_interp_matrices(height, h, align_corners, dtype, device)  # (3, H, h)
        sb = shifted_interp_matrices(width, w, align_corners, dtype, device)  # (3, W, w)
        a_parts.append(sa.transpose(0, 1).reshape(height, 3 * h))
        b_parts.append(sb.transpose(0, 1).reshape(width, 3 * w))
    return torch.cat(a_parts, 1), torch.cat(b_parts, 1)


def separable_shifted_upsample_add(base, maps, align_corners=True):
    """The same function as ``reference.shifted_upsample_add`` as two small matrix products.

    ``out = base + ahat @ M`` with ``ahat = [S_di A_b]`` (``H x 3 sum h_b``) and
    ``M = [V_(b,di,dj)] @ [S_dj B_b]^T``: a few MFLOP instead of nine full-resolution
    upsamplings per map (one-tap maps: ``[A_b]`` and ``[B_b]``, no shifts). Faster than the
    reference on CPU; differentiable by autograd; traces under ``torch.compile``.
    """
    height, width = base.shape[-2:]
    n, o = base.shape[:2]
    taps = maps[0].shape[1]
    s = 3 if taps == 9 else 1  # taps per axis
    sizes = [tuple(m.shape[-2:]) for m in maps]
    ahat, bhat = pyramid_matrices(
        height, width, sizes, align_corners, base.dtype, base.device, taps
    )
    m_parts, col = [], 0
    for m, (h, w) in zip(maps, sizes):
        # (N, 9, O, h, w) -> (N, O, (di, bi), (dj, bj)), then interpolate + shift the columns
        v = m.reshape(n, s, s, o, h, w).permute(0, 3, 1, 4, 2, 5).reshape(n, o, s * h, s * w)
        m_parts.append(torch.matmul(v, bhat[:, col : col + s * w].t()))
        col += s * w
    return base + torch.matmul(ahat, torch.cat(m_parts, 2))
