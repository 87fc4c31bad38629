"""Triton kernels of ``upsample_concat`` (kernel 2): bilinear upsampling of the branches + concat.

Bilinear upsampling of a ``b x b`` branch is a GEMM over its cells with the per-pixel bilinear
table ``T`` of ``psp_kernels.ops.tables`` (the weight of cell ``(i, j)`` in output pixel
``(h, w)``, PyTorch's exact source coordinates): ``out (R x H*W) = y (R x cells) @ T^T``. A
branch has at most a few dozen cells, so a program loads its ``y`` tile once and streams the
pixels, reading ``T`` from L2 and writing the output in 16-byte vectors along pixels (NCHW) or
channels (channels_last), on the tensor cores.

* Forward, ``_upsample_concat_fwd_kernel``: one launch writes the output's branch channels (up
  to ``GROUP`` branches, whose pointers are arguments) and, unless kernel 1 already did, the
  copy of ``x`` into the first ``C`` channels. A program owns one work item (the copy of a block
  of x's channels, or a block of one branch's channels) of one sample and a range of pixels.
* Backward, ``_upsample_concat_bwd_kernel``: every branch gradient is a gather,
  ``dy (R x cells) = g (R x H*W) @ T`` with ``g`` the branch's channels of the output gradient:
  a program owns one (sample, branch, channel block) and reads its part of ``g`` once, in
  vectors, pipelined, accumulating in fp32 on the tensor cores. Fixed summation order, no
  atomics: deterministic.

The tables are float32 (float64 for float64): 16-bit values are converted and multiplied in tf32
(their bilinear weights rounded to 11 bits, like a float16 weight, the output rounded once);
float32 uses tf32x3 (float32 accuracy). See ``kernel 1``'s module for the pixel addressing and
the ``*_DIV`` divisibility hints.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..utils import pixel_offsets, select4

__all__ = ["_upsample_concat_fwd_kernel", "_upsample_concat_bwd_kernel"]


@triton.jit
def _upsample_concat_fwd_kernel(
    x_ptr,
    y0_ptr,
    y1_ptr,
    y2_ptr,
    y3_ptr,
    t_ptr,
    out_ptr,
    work_ptr,
    W,
    HW,
    P_PER_PROGRAM,
    NUM_P_BLOCKS,
    NUM_ROWS,
    stride_tp,
    stride_xn,
    stride_xc,
    stride_xh,
    stride_xp,
    stride_on,
    stride_oc,
    stride_oh,
    stride_op,
    X_FLAT: tl.constexpr,
    O_FLAT: tl.constexpr,
    XN_DIV: tl.constexpr,
    XC_DIV: tl.constexpr,
    ON_DIV: tl.constexpr,
    OC_DIV: tl.constexpr,
    HW_DIV: tl.constexpr,
    ROW_DIV: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_K: tl.constexpr,
    NUM_K_BLOCKS: tl.constexpr,
):
    """out[n, oc0 + c, p] = x[n, c0 + c, p] (copy rows) or sum_k y_b[n, c0 + c, k] T[p, k0 + k].

    Work rows (int32): (branch slot, or -1 for the copy of x; first channel c0 of the source;
    its channels; the output channel of c0; the branch's cells; its first table column k0; the
    branch's channels R).
    """
    # program id 0 -> (sample n, work row, block of pixels), pixels fastest.
    pid = tl.program_id(0)
    pid_p = pid % NUM_P_BLOCKS
    pid_nr = pid // NUM_P_BLOCKS
    row = work_ptr + (pid_nr % NUM_ROWS) * 7
    n = pid_nr // NUM_ROWS
    seg = tl.load(row)
    c0 = tl.multiple_of(tl.load(row + 1), BLOCK_C)
    # ROW_DIV: the launcher's gcd of the rows' channel counts and output starts (vector masks)
    nc = tl.multiple_of(tl.load(row + 2), ROW_DIV)
    out_c0 = tl.multiple_of(tl.load(row + 3), ROW_DIV)

    offs_c = tl.arange(0, BLOCK_C)
    mask_c = offs_c < nc
    o_base = out_ptr + tl.multiple_of(n.to(tl.int64) * stride_on, ON_DIV)
    o_c = tl.multiple_of((out_c0 + offs_c) * stride_oc, OC_DIV)
    p_begin = pid_p * P_PER_PROGRAM
    p_end = tl.multiple_of(tl.minimum(p_begin + P_PER_PROGRAM, HW), HW_DIV)
    if seg < 0:  # the copy of x into the first C channels
        x_base = x_ptr + tl.multiple_of(n.to(tl.int64) * stride_xn, XN_DIV)
        x_c = tl.multiple_of((c0 + offs_c) * stride_xc, XC_DIV)
        for p0 in range(p_begin, p_end, BLOCK_P):
            offs_p = p0 + tl.arange(0, BLOCK_P)
            mask = mask_c[:, None] & (offs_p < p_end)[None, :]
            x_p = pixel_offsets(offs_p, W, stride_xh, stride_xp, X_FLAT)
            v = tl.load(x_base + x_c[:, None] + x_p[None, :], mask=mask)
            o_p = pixel_offsets(offs_p, W, stride_oh, stride_op, O_FLAT)
            tl.store(o_base + o_c[:, None] + o_p[None, :], v, mask=mask)
    else:
        cells = tl.load(row + 4)
        k0 = tl.multiple_of(tl.load(row + 5), 16)  # a multiple of the 16-cell blocks
        R = tl.load(row + 6)
        y_ptr = select4(seg, y0_ptr, y1_ptr, y2_ptr, y3_ptr)
        acc_dtype = t_ptr.dtype.element_ty
        # the branch tile (contiguous (N, R, cells)), loaded once for all the program's pixels
        offs_k = tl.arange(0, BLOCK_K)
        y_row = (n.to(tl.int64) * R + c0 + offs_c) * cells
        y = tl.load(
            y_ptr + y_row[:, None] + offs_k[None, :],
            mask=mask_c[:, None] & (offs_k < cells)[None, :],
            other=0.0,
        ).to(acc_dtype)
        for p0 in range(p_begin, p_end, BLOCK_P):
            offs_p = p0 + tl.arange(0, BLOCK_P)
            mask_p = offs_p < p_end
            t_p = offs_p[None, :] * stride_tp + k0
            t = tl.load(t_ptr + t_p + offs_k[:, None], mask=mask_p[None, :], other=0.0)
            v = tl.dot(y, t, input_precision=DOT_PRECISION, out_dtype=acc_dtype)
            for kb in range(1, NUM_K_BLOCKS):  # branches of more than BLOCK_K cells
                offs_kb = kb * BLOCK_K + tl.arange(0, BLOCK_K)
                y_kb = tl.load(
                    y_ptr + y_row[:, None] + offs_kb[None, :],
                    mask=mask_c[:, None] & (offs_kb < cells)[None, :],
                    other=0.0,
                ).to(acc_dtype)
                t = tl.load(t_ptr + t_p + offs_kb[:, None], mask=mask_p[None, :], other=0.0)
                v = tl.dot(y_kb, t, v, input_precision=DOT_PRECISION, out_dtype=acc_dtype)
            o_p = pixel_offsets(offs_p, W, stride_oh, stride_op, O_FLAT)
            tl.store(
                o_base + o_c[:, None] + o_p[None, :],
                v.to(out_ptr.dtype.element_ty),
                mask=mask_c[:, None] & mask_p[None, :],
            )


@triton.jit
def _upsample_concat_bwd_kernel(
    g_ptr,
    t_ptr,
    dy_ptr,
    work_ptr,
    W,
    HW,
    P,
    NUM_ROWS,
    stride_tk,
    stride_gn,
    stride_gc,
    stride_gh,
    stride_gp,
    G_FLAT: tl.constexpr,
    GN_DIV: tl.constexpr,
    GC_DIV: tl.constexpr,
    HW_DIV: tl.constexpr,
    ROW_DIV: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """dy[n, dst0 + (r0 + c) * cells + cell0 + k] = sum_p g[n, g_c0 + c, p] * T[k0 + k, p].

    ``T`` cell-major. Work rows (int32): (first channel g_c0 of the block in g, its channels,
    the branch's cells, the table row k0 of the block's first cell, that cell's index cell0 in
    the branch, the branch's first element dst0 in the packed (N, P) gradient, the block's
    first channel r0 in the branch).
    """
    # program id 0 -> (sample n, work row: a channel block and cell block of one branch).
    pid = tl.program_id(0)
    row = work_ptr + (pid % NUM_ROWS) * 7
    n = pid // NUM_ROWS
    # ROW_DIV: the launcher's gcd of the rows' channel starts and counts (vector masks)
    g_c0 = tl.multiple_of(tl.load(row), ROW_DIV)
    nc = tl.multiple_of(tl.load(row + 1), ROW_DIV)
    cells = tl.load(row + 2)
    k0 = tl.multiple_of(tl.load(row + 3), 16)
    cell0 = tl.load(row + 4)
    dst0 = tl.load(row + 5)
    r0 = tl.load(row + 6)
    acc_dtype = t_ptr.dtype.element_ty

    offs_c = tl.arange(0, BLOCK_C)
    mask_c = offs_c < nc
    offs_k = tl.arange(0, BLOCK_K)
    g_base = g_ptr + tl.multiple_of(n.to(tl.int64) * stride_gn, GN_DIV)
    g_c = tl.multiple_of((g_c0 + offs_c) * stride_gc, GC_DIV)
    t_k = (k0 + offs_k) * stride_tk
    # (HW // HW_DIV) * HW_DIV == HW: a hint on the argument itself would be dropped (it is no op)
    hw = (HW // HW_DIV) * HW_DIV
    acc = tl.zeros((BLOCK_C, BLOCK_K), dtype=acc_dtype)
    for p0 in range(0, hw, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        mask_p = offs_p < hw
        g_p = pixel_offsets(offs_p, W, stride_gh, stride_gp, G_FLAT)
        g = tl.load(
            g_base + g_c[:, None] + g_p[None, :], mask=mask_c[:, None] & mask_p[None, :], other=0.0
        )
        t = tl.load(t_ptr + t_k[None, :] + offs_p[:, None], mask=mask_p[:, None], other=0.0)
        acc = tl.dot(g.to(acc_dtype), t, acc, input_precision=DOT_PRECISION, out_dtype=acc_dtype)

    k = cell0 + offs_k
    dy = dy_ptr + n.to(tl.int64) * P + dst0 + ((r0 + offs_c) * cells)[:, None] + k[None, :]
    tl.store(dy, acc.to(dy_ptr.dtype.element_ty), mask=mask_c[:, None] & (k < cells)[None, :])
