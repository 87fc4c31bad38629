"""The concat-free head op in plain PyTorch as two matrix products (its CPU path).

Also home of :func:`pyramid_matrices`, the dense ``[S_d A_b]`` matrices, and of
:func:`dense_tables`, the gather tables that the kernels use too.
"""

from __future__ import annotations

import functools

import torch

from ...geometry import interp_matrix, shifted_interp_matrices

__all__ = ["pyramid_matrices", "dense_tables", "separable_shifted_upsample_add"]


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


@functools.lru_cache(maxsize=128)
def dense_tables(height, width, sizes, align_corners, dtype, taps=9, pad=None):
    """Dense padded ``ahat``/``bhat``, the int32 gather tables and the packed size per channel.

    With ``s`` taps per axis (3, or 1 for the one-tap form), packed value
    ``offset_b + (s * di + dj) * h * w + bi * w + bj`` (tap ``(di, dj)``, 0-based, of map ``b``)
    belongs to row ``k = (b, di, bi)`` and column ``j = (b, dj, bj)`` of the dense
    block-diagonal tile. ``gidx[k * J_PAD + j]``: its packed index (or the always-zero padding
    slot ``T_PAD - 1``); ``cidx[t]``: the tile position ``k * J_PAD + j`` of packed value ``t``.
    ``pad``: ``K_PAD = J_PAD`` (the kernels': ``configs.tile_width``; ``None``: the tile's own
    rows and columns, the larger of the two). Tables on the CPU; shared by the kernels and
    :func:`separable_shifted_upsample_add`.
    """
    s = 3 if taps == 9 else 1
    if pad is None:
        pad = s * max(sum(h for h, _ in sizes), sum(w for _, w in sizes))
    total = sum(taps * h * w for h, w in sizes)
    t_pad = 1 << total.bit_length()  # a power of two > total: the last slot stays zero
    gidx = torch.full((pad, pad), t_pad - 1, dtype=torch.int32)
    cidx = torch.zeros(t_pad, dtype=torch.int32)
    offset = k0 = j0 = 0
    for h, w in sizes:
        for di in range(s):
            for bi in range(h):
                for dj in range(s):
                    for bj in range(w):
                        t = offset + (s * di + dj) * h * w + bi * w + bj
                        k, j = k0 + di * h + bi, j0 + dj * w + bj
                        gidx[k, j] = t
                        cidx[t] = k * pad + j
        offset += taps * h * w
        k0 += s * h
        j0 += s * w
    ahat, bhat = pyramid_matrices(height, width, sizes, align_corners, dtype, taps=taps)
    ahat = torch.nn.functional.pad(ahat, (0, pad - ahat.shape[1])).contiguous()
    bhat = torch.nn.functional.pad(bhat, (0, pad - bhat.shape[1])).contiguous()
    return ahat, bhat, gidx.reshape(-1), cidx, total


def separable_shifted_upsample_add(base, maps, align_corners=True):
    """The same function as ``reference.shifted_upsample_add`` as two matrix products.

    ``out = base + ahat @ (V @ bhat^T)`` per sample and channel, with ``ahat = [S_di A_b]``
    (``H x K``), ``bhat = [S_dj B_b]`` (``W x J``) and ``V`` the ``K x J`` block-diagonal tile
    of every map's taps and cells: a few MFLOP instead of nine full-resolution upsamplings per
    map (one-tap maps: ``[A_b]`` and ``[B_b]``, no shifts). In eager mode ``V`` is gathered from
    the packed maps with the kernels' table, so the whole op is two GEMMs over all channels:
    few large operations rather than one small product per map, because on a busy CPU each
    parallel region can stall on a descheduled thread (seen: seconds). Under ``torch.compile``
    (whose graphs fuse the small products anyway) the per-map products, built from tensor ops
    only. Differentiable by autograd.
    """
    if torch.compiler.is_compiling():
        return _per_map(base, maps, align_corners)
    height, width = base.shape[-2:]
    n, o = base.shape[:2]
    taps = maps[0].shape[1]
    sizes = tuple((int(m.shape[-2]), int(m.shape[-1])) for m in maps)
    ahat, bhat, gidx, _, total = dense_tables(height, width, sizes, align_corners, base.dtype, taps)
    pad, dev = ahat.shape[1], base.device
    packed = torch.cat([m.transpose(1, 2).reshape(n, o, -1) for m in maps], 2)
    # the table's padding entries point at the zero slots after the packed values
    packed = torch.nn.functional.pad(packed, (0, (1 << total.bit_length()) - total))
    v = packed[:, :, gidx.to(dev, torch.long)].view(n, o, pad, pad)
    return base + torch.matmul(ahat.to(dev), torch.matmul(v, bhat.to(dev).t()))


def _per_map(base, maps, align_corners):
    """:func:`separable_shifted_upsample_add` with one column product per map."""
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
