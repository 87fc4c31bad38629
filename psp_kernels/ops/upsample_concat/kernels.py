"""Triton kernels of ``upsample_concat`` (kernel 2): bilinear upsampling of the branches + concat.

Forward: one launch writes the whole ``(N, C + sum R_i, H, W)`` output. The launcher packs the
(tiny) branches into one contiguous ``(N, P)`` buffer and describes the output channels as a table
of channel blocks (each inside one segment: the copy of ``x`` or one branch). A program copies a
tile of ``x`` or computes a tile of one upsampled branch from four gathered taps per pixel, with
PyTorch's source coordinates (``geometry.tap_table``) and fp32 math.

Backward: every branch gradient is a gather: cell ``(i, j)`` sums ``wy[h, i] * wx[w, j] * g[h, w]``
over the output pixels whose taps touch it. A program owns (branch channel block, cell block) of
one sample, loops over the output rectangle that touches its cells (taps are monotone, so it is
one rectangle) and accumulates ``g_tile @ weight_tile`` with ``tl.dot``, the weight tile built on
the fly from the tap tables. Fixed summation order, no atomics: deterministic.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["_upsample_concat_fwd_kernel", "_upsample_concat_bwd_kernel"]


@triton.jit
def _upsample_concat_fwd_kernel(
    x_ptr,
    y_ptr,
    out_ptr,
    blocks_ptr,
    rtap_ptr,
    rlam_ptr,
    ctap_ptr,
    clam_ptr,
    H,
    W,
    P,
    n_hw_blocks,
    stride_xn,
    stride_xc,
    stride_xh,
    stride_xw,
    stride_on,
    stride_oc,
    stride_oh,
    stride_ow,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
):
    # program_id(0) -> (row of the channel-block table, block of BLOCK_HW output pixels);
    # program_id(1) -> sample n.
    pid = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    blk = pid // n_hw_blocks
    pid_hw = pid % n_hw_blocks

    row = blocks_ptr + blk.to(tl.int64) * 8
    seg = tl.load(row + 0)
    out_c0 = tl.load(row + 1)
    nc = tl.load(row + 2)
    src0 = tl.load(row + 3)

    offs_c = tl.arange(0, BLOCK_C)
    offs_hw = pid_hw * BLOCK_HW + tl.arange(0, BLOCK_HW)
    mask_c = offs_c < nc
    mask_hw = offs_hw < H * W
    mask = mask_c[:, None] & mask_hw[None, :]
    h = (offs_hw // W).to(tl.int64)
    w = (offs_hw % W).to(tl.int64)

    out_offs = (
        n * stride_on
        + (out_c0 + offs_c)[:, None] * stride_oc
        + (h * stride_oh + w * stride_ow)[None, :]
    )
    if seg < 0:
        # Copy of x into the first C channels.
        x_offs = (
            n * stride_xn
            + (src0 + offs_c)[:, None] * stride_xc
            + (h * stride_xh + w * stride_xw)[None, :]
        )
        v = tl.load(x_ptr + x_offs, mask=mask)
        tl.store(out_ptr + out_offs, v, mask=mask)
    else:
        # Bilinear upsampling of branch `seg` (packed, contiguous (R, hb, wb) per sample).
        hb = tl.load(row + 4)
        wb = tl.load(row + 5)
        acc_ty = rlam_ptr.dtype.element_ty
        r0 = tl.load(rtap_ptr + seg * 2 * H + h, mask=mask_hw, other=0).to(tl.int64)
        r1 = tl.load(rtap_ptr + seg * 2 * H + H + h, mask=mask_hw, other=0).to(tl.int64)
        rl = tl.load(rlam_ptr + seg * H + h, mask=mask_hw, other=0.0)
        c0 = tl.load(ctap_ptr + seg * 2 * W + w, mask=mask_hw, other=0).to(tl.int64)
        c1 = tl.load(ctap_ptr + seg * 2 * W + W + w, mask=mask_hw, other=0).to(tl.int64)
        cl = tl.load(clam_ptr + seg * W + w, mask=mask_hw, other=0.0)
        base = y_ptr + n * P + src0 + offs_c[:, None].to(tl.int64) * (hb * wb)
        v00 = tl.load(base + (r0 * wb + c0)[None, :], mask=mask, other=0.0).to(acc_ty)
        v01 = tl.load(base + (r0 * wb + c1)[None, :], mask=mask, other=0.0).to(acc_ty)
        v10 = tl.load(base + (r1 * wb + c0)[None, :], mask=mask, other=0.0).to(acc_ty)
        v11 = tl.load(base + (r1 * wb + c1)[None, :], mask=mask, other=0.0).to(acc_ty)
        rl = rl[None, :]
        cl = cl[None, :]
        # Same association as PyTorch's kernel: h0 * (w0 * v00 + w1 * v01) + h1 * (...).
        top = (1.0 - cl) * v00 + cl * v01
        bottom = (1.0 - cl) * v10 + cl * v11
        res = (1.0 - rl) * top + rl * bottom
        tl.store(out_ptr + out_offs, res.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _upsample_concat_bwd_kernel(
    g_ptr,
    dy_ptr,
    work_ptr,
    rtap_ptr,
    rlam_ptr,
    ctap_ptr,
    clam_ptr,
    H,
    W,
    P,
    stride_gn,
    stride_gc,
    stride_gh,
    stride_gw,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    BLOCK_CELLS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    USE_DOT: tl.constexpr,
):
    # program_id(0) -> one work item (branch s, block of its channels, block of its cells);
    # program_id(1) -> sample n. The program writes dy for those cells and channels, gathering
    # from the output rectangle [hs, he) x [ws, we) whose bilinear taps touch them.
    item = work_ptr + tl.program_id(0).to(tl.int64) * 16
    n = tl.program_id(1).to(tl.int64)
    s = tl.load(item + 0)
    g_c0 = tl.load(item + 1)
    nc = tl.load(item + 2)
    dst0 = tl.load(item + 3)
    hb = tl.load(item + 4)
    wb = tl.load(item + 5)
    i_lo = tl.load(item + 6)
    n_i = tl.load(item + 7)
    j_lo = tl.load(item + 8)
    n_j = tl.load(item + 9)
    hs = tl.load(item + 10)
    he = tl.load(item + 11)
    ws = tl.load(item + 12)
    we = tl.load(item + 13)
    acc_ty = rlam_ptr.dtype.element_ty

    offs_c = tl.arange(0, BLOCK_C)
    mask_c = offs_c < nc
    offs_k = tl.arange(0, BLOCK_CELLS)
    mask_k = offs_k < n_i * n_j
    ci = i_lo + offs_k // n_j
    cj = j_lo + offs_k % n_j

    width = we - ws
    total = (he - hs) * width
    g_base = g_ptr + n * stride_gn + (g_c0 + offs_c)[:, None].to(tl.int64) * stride_gc
    acc = tl.zeros((BLOCK_C, BLOCK_CELLS), dtype=acc_ty)
    for t0 in range(0, total, BLOCK_HW):
        t = t0 + tl.arange(0, BLOCK_HW)
        mask_t = t < total
        h = hs + t // width
        w = ws + t % width
        g = tl.load(
            g_base + (h * stride_gh + w * stride_gw)[None, :],
            mask=mask_c[:, None] & mask_t[None, :],
            other=0.0,
        ).to(acc_ty)
        r0 = tl.load(rtap_ptr + s * 2 * H + h, mask=mask_t, other=-1)
        r1 = tl.load(rtap_ptr + s * 2 * H + H + h, mask=mask_t, other=-1)
        rl = tl.load(rlam_ptr + s * H + h, mask=mask_t, other=0.0)
        c0 = tl.load(ctap_ptr + s * 2 * W + w, mask=mask_t, other=-1)
        c1 = tl.load(ctap_ptr + s * 2 * W + W + w, mask=mask_t, other=-1)
        cl = tl.load(clam_ptr + s * W + w, mask=mask_t, other=0.0)
        # (BLOCK_HW, BLOCK_CELLS) interpolation weights; both taps add when they coincide.
        wy = tl.where(r0[:, None] == ci[None, :], 1.0 - rl[:, None], 0.0) + tl.where(
            r1[:, None] == ci[None, :], rl[:, None], 0.0
        )
        wx = tl.where(c0[:, None] == cj[None, :], 1.0 - cl[:, None], 0.0) + tl.where(
            c1[:, None] == cj[None, :], cl[:, None], 0.0
        )
        wt = (wy * wx).to(acc_ty)
        if USE_DOT:
            acc = tl.dot(g, wt, acc, input_precision=DOT_PRECISION, out_dtype=acc_ty)
        else:
            acc += tl.sum(g[:, :, None] * wt[None, :, :], axis=1)

    dy_offs = n * P + dst0 + offs_c[:, None].to(tl.int64) * (hb * wb) + (ci * wb + cj)[None, :]
    tl.store(
        dy_ptr + dy_offs,
        acc.to(dy_ptr.dtype.element_ty),
        mask=mask_c[:, None] & mask_k[None, :],
    )
