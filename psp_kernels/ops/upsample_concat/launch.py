"""Launchers of kernel 2: tap tables, channel-block / work-item tables and grids.

:func:`launch_forward` and :func:`launch_backward` are the op's implementations (``op.py``
registers them); they always launch the kernels (the backend was decided before).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import triton

from ... import geometry
from ..utils import acc_dtype, device_guard, dot_precision
from . import configs
from .kernels import _upsample_concat_bwd_kernel, _upsample_concat_fwd_kernel

__all__ = ["launch_forward", "launch_backward", "empty_output", "out_memory_format"]

# Columns of the forward channel-block table (int64).
_FWD_COLS = 8  # seg (-1: copy of x, s >= 0: branch s), out_c0, nc, src0, hb, wb, pad, pad
# Columns of the backward work-item table (int64).
_BWD_COLS = 16  # s, g_c0, nc, dst0, hb, wb, i_lo, n_i, j_lo, n_j, hs, he, ws, we, pad, pad


@functools.lru_cache(maxsize=128)
def _tap_tables(out_h, out_w, sizes, align_corners, lam_dtype, device):
    """Concatenated tap tables of all branches: row i0/i1 (nb, 2, H), row lam (nb, H), same for W."""
    if not sizes:
        dummy_i = torch.zeros(2, dtype=torch.int32, device=device)
        dummy_f = torch.zeros(1, dtype=lam_dtype, device=device)
        return dummy_i, dummy_f, dummy_i, dummy_f
    rt, rl, ct, cl = [], [], [], []
    for h, w in sizes:
        idx, lam = geometry.tap_table(out_h, h, align_corners, None, lam_dtype)
        rt.append(idx.reshape(-1))
        rl.append(lam)
        idx, lam = geometry.tap_table(out_w, w, align_corners, None, lam_dtype)
        ct.append(idx.reshape(-1))
        cl.append(lam)
    return tuple(torch.cat(t).to(device) for t in (rt, rl, ct, cl))


@functools.lru_cache(maxsize=128)
def _fwd_table(c, shapes, block_c, copy_x, device):
    """Channel-block table of the forward: one int64 row of _FWD_COLS per program row."""
    rows = []
    if copy_x:
        for c0 in range(0, c, block_c):
            rows.append((-1, c0, min(block_c, c - c0), c0, 0, 0, 0, 0))
    out_c = c
    packed = 0
    for s, (r, hb, wb) in enumerate(shapes):
        for c0 in range(0, r, block_c):
            rows.append((s, out_c + c0, min(block_c, r - c0), packed + c0 * hb * wb, hb, wb, 0, 0))
        out_c += r
        packed += r * hb * wb
    if not rows:
        rows.append((-1, 0, 0, 0, 0, 0, 0, 0))
    return torch.tensor(rows, dtype=torch.int64).reshape(-1).to(device), len(rows)


def _touching(i0, i1, lo, hi_incl):
    """Output range [start, end) whose taps (i0, i1 monotone) touch source indices [lo, hi_incl]."""
    start = int(np.searchsorted(i1, lo, side="left"))
    end = int(np.searchsorted(i0, hi_incl, side="right"))
    return start, max(start, end)


@functools.lru_cache(maxsize=128)
def _bwd_table(out_h, out_w, shapes, align_corners, block_c, block_cells, device):
    """Work items of the backward: one int64 row of _BWD_COLS per program."""
    rows = []
    g_c = 0
    packed = 0
    for s, (r, hb, wb) in enumerate(shapes):
        ri0, ri1, _ = geometry.bilinear_taps(out_h, hb, align_corners)
        ci0, ci1, _ = geometry.bilinear_taps(out_w, wb, align_corners)
        ri0, ri1, ci0, ci1 = (np.asarray(v) for v in (ri0, ri1, ci0, ci1))
        cell_blocks = []
        if wb <= block_cells:
            rows_per = block_cells // wb
            for i_lo in range(0, hb, rows_per):
                cell_blocks.append((i_lo, min(rows_per, hb - i_lo), 0, wb))
        else:
            for i_lo in range(hb):
                for j_lo in range(0, wb, block_cells):
                    cell_blocks.append((i_lo, 1, j_lo, min(block_cells, wb - j_lo)))
        for i_lo, n_i, j_lo, n_j in cell_blocks:
            hs, he = _touching(ri0, ri1, i_lo, i_lo + n_i - 1)
            ws, we = _touching(ci0, ci1, j_lo, j_lo + n_j - 1)
            for c0 in range(0, r, block_c):
                rows.append(
                    (s, g_c + c0, min(block_c, r - c0), packed + c0 * hb * wb, hb, wb,
                     i_lo, n_i, j_lo, n_j, hs, he, ws, we, 0, 0)
                )  # fmt: skip
        g_c += r
        packed += r * hb * wb
    return torch.tensor(rows, dtype=torch.int64).reshape(-1).to(device), len(rows)


def out_memory_format(x: torch.Tensor) -> torch.memory_format:
    """The memory format ``torch.empty_like(x)`` would give (contiguous when ambiguous)."""
    if x.is_contiguous():
        return torch.contiguous_format
    if x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    # Not dense: empty_like falls back to the suggested format, channels_last when the channel
    # stride is the smallest of (C, H, W) and H is outermost among them.
    sc, sh, sw = x.stride(1), x.stride(2), x.stride(3)
    if sc < sw < sh or (sc <= sw and sw <= sh and x.shape[3] == 1 and sc < sh):
        return torch.channels_last
    return torch.contiguous_format


def empty_output(x: torch.Tensor, c_total: int) -> torch.Tensor:
    n, _, h, w = x.shape
    return torch.empty(
        (n, c_total, h, w), dtype=x.dtype, device=x.device, memory_format=out_memory_format(x)
    )


def _pack(branches, n):
    """The branches as one contiguous (N, P) buffer (P = sum R_i h_i w_i)."""
    if not branches:
        return None
    if len(branches) == 1:
        return branches[0].reshape(n, -1).contiguous()
    return torch.cat([b.reshape(n, -1) for b in branches], 1)


def launch_forward(x, branches, align_corners, out=None, copy_x=True):
    """Write ``upsample_concat(x, branches)`` into ``out`` (allocated when ``None``).

    With ``copy_x=False`` the first ``C`` channels of ``out`` are left untouched (for a producer
    that already wrote the copy of ``x``, e.g. kernel 1 while it reads ``x``).
    """
    n, c, hh, ww = x.shape
    shapes = tuple((int(b.shape[1]), int(b.shape[2]), int(b.shape[3])) for b in branches)
    c_total = c + sum(r for r, _, _ in shapes)
    if out is None:
        out = empty_output(x, c_total)
    lam_dtype = acc_dtype(x.dtype)
    rtap, rlam, ctap, clam = _tap_tables(
        hh, ww, tuple((h, w) for _, h, w in shapes), bool(align_corners), lam_dtype, x.device
    )
    layout = "nhwc" if out.stride(1) < out.stride(3) else "nchw"
    block_c, block_hw, num_warps = configs.fwd_config(layout)
    table, n_rows = _fwd_table(c, shapes, block_c, bool(copy_x), x.device)
    packed = _pack(branches, n)
    if packed is None:
        packed = out  # never read: no branch rows
    n_hw_blocks = triton.cdiv(hh * ww, block_hw)
    grid = (n_rows * n_hw_blocks, n)
    with device_guard(x=x, out=out, branches=packed):
        _upsample_concat_fwd_kernel[grid](
            x, packed, out, table, rtap, rlam, ctap, clam,
            hh, ww, packed.shape[1] if branches else 0, n_hw_blocks,
            *x.stride(), *out.stride(),
            BLOCK_C=block_c, BLOCK_HW=block_hw, num_warps=num_warps, num_stages=configs.NUM_STAGES,
        )  # fmt: skip
    return out


def launch_backward(grad_branches, shapes, align_corners):
    """Branch gradients as one contiguous ``(N, P)`` buffer, from ``grad_out[:, C:]``."""
    n, _, hh, ww = grad_branches.shape
    p = sum(r * h * w for r, h, w in shapes)
    dy = torch.empty((n, p), dtype=grad_branches.dtype, device=grad_branches.device)
    if not shapes:
        return dy
    lam_dtype = acc_dtype(grad_branches.dtype)
    rtap, rlam, ctap, clam = _tap_tables(
        hh, ww, tuple((h, w) for _, h, w in shapes), bool(align_corners), lam_dtype,
        grad_branches.device,
    )  # fmt: skip
    block_c, block_hw, block_cells, use_dot = configs.bwd_config()
    table, n_rows = _bwd_table(
        hh, ww, shapes, bool(align_corners), block_c, block_cells, grad_branches.device
    )
    with device_guard(grad_branches=grad_branches):
        _upsample_concat_bwd_kernel[(n_rows, n)](
            grad_branches, dy, table, rtap, rlam, ctap, clam,
            hh, ww, p, *grad_branches.stride(),
            BLOCK_C=block_c, BLOCK_HW=block_hw, BLOCK_CELLS=block_cells,
            DOT_PRECISION=dot_precision(grad_branches.dtype), USE_DOT=use_dot,
            num_warps=configs.NUM_WARPS, num_stages=configs.NUM_STAGES,
        )  # fmt: skip
    return dy
