"""Triton kernels of ``pyramid_pool_conv`` (kernel 1): multi-bin adaptive average pooling + 1x1 conv.

Design (byte counts in ``/work/shared/DESIGN.md``): the pooling of every bin is one GEMM over the
flat pixels of ``x``, ``sums (C x cells) = x (C x H*W) @ T (H*W x cells)``, with ``T`` the 0/1
per-pixel cell table of ``psp_kernels.ops.tables`` (exact in every dtype), so ``x`` is read
once, in 16-byte vectors along whichever of pixels (NCHW) or channels (channels_last) is
contiguous, software-pipelined into shared memory, and reduced on the tensor cores.

* Stage 1, ``_pool_cells_kernel``: a program owns one sample, one block of channels, one block
  of cells and one split of the pixels; it streams its pixels in chunks of ``BLOCK_P`` and
  accumulates ``x_tile @ T_tile`` in fp32, then stores the means of its split to a small fp32
  workspace ``(N, splits, cells, C)``. The launcher splits the pixels so that the grid fills the
  GPU at any batch; the splits are summed in a fixed order by stage 2 (deterministic). With
  ``COPY_X`` (the fused PPM forward) the programs of cell block 0 also store every x tile they
  load into ``out[:, :C]``: the PPM forward reads x once and writes its output once.
* Stage 2, ``_cells_conv_kernel``: the 1x1 conv of every bin in one launch, on the tensor cores:
  each program owns one (bin, output-channel block, (sample, cell) block) tile of
  ``y_b = W_b (R x C) @ pooled_b^T (C x N*cells)``, sums the stage-1 splits in order while it
  loads ``pooled``, applies the affine/ReLU epilogue and stores ``y_b`` in x's dtype. With
  several splits, the programs of the first output-channel block also store the summed means
  (``pooled``, saved for backward). Up to ``GROUP`` bins per launch (their pointers are
  arguments); no split-K: deterministic by construction.
* Backward dx, ``_cells_to_pixels_kernel``: ``dx (C x H*W) = (dp / area) (C x cells) @ T^T``, a
  gather: each program loads its cell gradients once and writes its pixels once (no atomics),
  in 16-byte vectors. With ``HAS_ADDEND`` (the fused PPM backward) each tile starts from
  ``grad[:, :C]`` of the PPM output gradient as the fp32 accumulator: ``dx = grad[:, :C] +
  gather`` in one pass and one rounding.

Addressing: x, out, dx and the addend are read as ``(N, C, pixels)``: one pixel stride when
their rows follow each other (``*_FLAT``: contiguous and channels_last tensors and their slices,
the fast path), else row and column strides from ``p = h * W + w`` (any other strides). ``*_DIV`` constexprs are the launcher's proof of the divisibility of strides and sizes
(powers of two up to 16) that Triton's JIT cannot see (it only knows "divisible by 16"), so that
the compiler may vectorize, e.g. NCHW planes of 90 x 90 pixels in 8-byte vectors.

Accuracy: ``T`` is exactly 0/1, so stage 1's only rounding is that of the fp32 accumulation.
Stage 2 rounds the means to x's dtype for 16-bit inputs, like the reference, which pools in x's
dtype before its conv. Limitation: because pooling is a dense product over all cells of a block,
a non-finite value in ``x`` makes every cell of its channel non-finite (``0 * inf = nan``),
whereas PyTorch only spoils the cells that contain it.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..utils import pixel_offsets, select4

__all__ = ["_pool_cells_kernel", "_cells_conv_kernel", "_cells_to_pixels_kernel"]


@triton.jit
def _pool_cells_kernel(
    x_ptr,
    t_ptr,
    area_ptr,
    ws_ptr,
    out_ptr,
    C,
    W,
    HW,
    TOTAL,
    P_PER_SPLIT,
    NUM_C_BLOCKS,
    NUM_K_BLOCKS,
    stride_xn,
    stride_xc,
    stride_xh,
    stride_xp,
    stride_tk,
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
    COPY_X: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """ws[n, split, k, c] = (sum over the split's pixels p of x[n, c, p] * T[k, p]) / area[k]."""
    # program id 0 -> (sample n, channel block, cell block), the cell block fastest so that the
    #                 programs that read the same x tile run next to each other (L2 reuse);
    # program id 1 -> split of the pixels.
    pid = tl.program_id(0)
    split = tl.program_id(1)
    pid_k = pid % NUM_K_BLOCKS
    pid_nc = pid // NUM_K_BLOCKS
    pid_c = pid_nc % NUM_C_BLOCKS
    n = pid_nc // NUM_C_BLOCKS
    acc_dtype = ws_ptr.dtype.element_ty

    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    # int32 offsets inside a sample (the launcher checks the extent), int64 sample bases
    x_base = x_ptr + tl.multiple_of(n.to(tl.int64) * stride_xn, XN_DIV)
    x_c = tl.multiple_of(offs_c * stride_xc, XC_DIV)
    t_k = offs_k * stride_tk
    p_begin = split * P_PER_SPLIT
    p_end = tl.multiple_of(tl.minimum(p_begin + P_PER_SPLIT, HW), HW_DIV)
    if COPY_X:
        copier = pid_k == 0  # one cell block writes the copy, the others only pool
        o_base = out_ptr + tl.multiple_of(n.to(tl.int64) * stride_on, ON_DIV)
        o_c = tl.multiple_of(offs_c * stride_oc, OC_DIV)

    acc = tl.zeros((BLOCK_C, BLOCK_K), dtype=acc_dtype)
    for p0 in range(p_begin, p_end, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        mask_p = offs_p < p_end
        mask = mask_c[:, None] & mask_p[None, :]
        x_p = pixel_offsets(offs_p, W, stride_xh, stride_xp, X_FLAT)
        x = tl.load(x_base + x_c[:, None] + x_p[None, :], mask=mask, other=0.0)
        t = tl.load(t_ptr + t_k[None, :] + offs_p[:, None], mask=mask_p[:, None], other=0.0)
        acc = tl.dot(x, t, acc, input_precision=DOT_PRECISION, out_dtype=acc_dtype)
        if COPY_X:
            o_p = pixel_offsets(offs_p, W, stride_oh, stride_op, O_FLAT)
            tl.store(o_base + o_c[:, None] + o_p[None, :], x, mask=mask & copier)

    mean = acc / tl.load(area_ptr + offs_k)[None, :]
    ws_row = (n.to(tl.int64) * tl.num_programs(1) + split) * TOTAL + offs_k
    ws = ws_ptr + ws_row[None, :] * C + offs_c[:, None]
    tl.store(ws, mean, mask=mask_c[:, None] & (offs_k < TOTAL)[None, :])


@triton.jit
def _cells_conv_kernel(
    ws_ptr,
    tiles_ptr,
    pooled_ptr,
    w0_ptr,
    w1_ptr,
    w2_ptr,
    w3_ptr,
    s0_ptr,
    s1_ptr,
    s2_ptr,
    s3_ptr,
    b0_ptr,
    b1_ptr,
    b2_ptr,
    b3_ptr,
    y0_ptr,
    y1_ptr,
    y2_ptr,
    y3_ptr,
    N,
    C,
    TOTAL,
    NUM_BINS,
    SPLITS: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
    RELU: tl.constexpr,
    WRITE_POOLED: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """y_b[n, r, cell] = act(scale_b[r] * sum_c W_b[r, c] * pooled[n, off_b + cell, c] + shift_b[r]).

    ``pooled[n] = sum_s ws[n, s]`` (the stage-1 splits, summed in order). Each program's tile is a
    row of the int32 ``tiles`` table: (bin slot 0-3, first cell of the bin, its cells, its R,
    first output channel r0, first column m0 of the columns ``m = n * cells + cell``). Slots
    past ``NUM_BINS`` hold dummy pointers, never read.
    """
    # program id 0 -> one (bin, output-channel block, (sample, cell) block) tile.
    row = tiles_ptr + tl.program_id(0) * 6
    slot = tl.load(row)
    cell_off = tl.load(row + 1)
    cells = tl.load(row + 2)
    R = tl.load(row + 3)
    r0 = tl.load(row + 4)
    m0 = tl.load(row + 5)
    w_ptr = select4(slot, w0_ptr, w1_ptr, w2_ptr, w3_ptr)
    y_ptr = select4(slot, y0_ptr, y1_ptr, y2_ptr, y3_ptr)
    acc_dtype = ws_ptr.dtype.element_ty

    offs_r = r0 + tl.arange(0, BLOCK_R)
    mask_r = offs_r < R
    offs_m = m0 + tl.arange(0, BLOCK_M)
    mask_m = offs_m < N * cells
    n = offs_m // cells
    cell = offs_m - n * cells
    # row of (sample, split 0, cell) in the (N, SPLITS, TOTAL, C) workspace
    ws_row = (n.to(tl.int64) * SPLITS * TOTAL + cell_off + cell) * C
    w_row = offs_r.to(tl.int64) * C  # the weights are contiguous (R, C)

    acc = tl.zeros((BLOCK_R, BLOCK_M), dtype=acc_dtype)
    for c0 in range(0, C, BLOCK_K):
        offs_c = c0 + tl.arange(0, BLOCK_K)
        mask_c = offs_c < C
        w = tl.load(
            w_ptr + w_row[:, None] + offs_c[None, :],
            mask=mask_r[:, None] & mask_c[None, :],
            other=0.0,
        )
        p_mask = mask_c[:, None] & mask_m[None, :]
        p = tl.load(ws_ptr + ws_row[None, :] + offs_c[:, None], mask=p_mask, other=0.0)
        # the splits summed in a fixed order (deterministic): unrolled for a few (their loads
        # pipelined with the rest), a loop for many (one pipelined buffer each would overflow
        # shared memory at batch 1, where stage 1 splits rows the most)
        if SPLITS <= 4:
            for s in tl.static_range(1, SPLITS):
                p += tl.load(
                    ws_ptr + ws_row[None, :] + s * TOTAL * C + offs_c[:, None],
                    mask=p_mask,
                    other=0.0,
                )
        else:
            for s in range(1, SPLITS):
                p += tl.load(
                    ws_ptr + ws_row[None, :] + s * TOTAL * C + offs_c[:, None],
                    mask=p_mask,
                    other=0.0,
                )
        if WRITE_POOLED:
            if r0 == 0:  # one R block stores the summed means, saved for backward
                pooled_row = (n.to(tl.int64) * TOTAL + cell_off + cell) * C
                tl.store(pooled_ptr + pooled_row[None, :] + offs_c[:, None], p, mask=p_mask)
        # 16-bit inputs: the means rounded to x's dtype, like the reference's pooled tensor
        acc = tl.dot(w, p.to(w.dtype), acc, input_precision=DOT_PRECISION, out_dtype=acc_dtype)

    if HAS_SCALE:
        s_ptr = select4(slot, s0_ptr, s1_ptr, s2_ptr, s3_ptr)
        acc = acc * tl.load(s_ptr + offs_r, mask=mask_r, other=0.0).to(acc_dtype)[:, None]
    if HAS_SHIFT:
        b_ptr = select4(slot, b0_ptr, b1_ptr, b2_ptr, b3_ptr)
        acc = acc + tl.load(b_ptr + offs_r, mask=mask_r, other=0.0).to(acc_dtype)[:, None]
    if RELU:  # rounding is monotone and keeps 0: same values as relu after the cast
        acc = tl.maximum(acc, 0.0)
    y_off = (n.to(tl.int64) * R * cells + cell)[None, :] + (offs_r * cells)[:, None]
    tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=mask_r[:, None] & mask_m[None, :])


@triton.jit
def _cells_to_pixels_kernel(
    dp_ptr,
    area_ptr,
    t_ptr,
    dx_ptr,
    add_ptr,
    C,
    W,
    HW,
    TOTAL,
    P_PER_PROGRAM,
    NUM_C_BLOCKS,
    NUM_P_BLOCKS,
    stride_tp,
    stride_dn,
    stride_dc,
    stride_dh,
    stride_dp,
    stride_an,
    stride_ac,
    stride_ah,
    stride_ap,
    D_FLAT: tl.constexpr,
    A_FLAT: tl.constexpr,
    DN_DIV: tl.constexpr,
    DC_DIV: tl.constexpr,
    AN_DIV: tl.constexpr,
    AC_DIV: tl.constexpr,
    HW_DIV: tl.constexpr,
    HAS_ADDEND: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_K: tl.constexpr,
    NUM_K_BLOCKS: tl.constexpr,
):
    """dx[n, c, p] = (add[n, c, p] +) sum_k dp[n, k, c] / area[k] * T[p, k] (pixel-major T)."""
    # program id 0 -> (sample n, channel block, block of P_PER_PROGRAM pixels), pixels fastest.
    pid = tl.program_id(0)
    pid_p = pid % NUM_P_BLOCKS
    pid_nc = pid // NUM_P_BLOCKS
    pid_c = pid_nc % NUM_C_BLOCKS
    n = pid_nc // NUM_C_BLOCKS
    acc_dtype = dp_ptr.dtype.element_ty

    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    dp_base = dp_ptr + n.to(tl.int64) * TOTAL * C  # then int32 offsets (TOTAL * C < 2**31)
    dx_base = dx_ptr + tl.multiple_of(n.to(tl.int64) * stride_dn, DN_DIV)
    dx_c = tl.multiple_of(offs_c * stride_dc, DC_DIV)
    if HAS_ADDEND:
        add_base = add_ptr + tl.multiple_of(n.to(tl.int64) * stride_an, AN_DIV)
        add_c = tl.multiple_of(offs_c * stride_ac, AC_DIV)
    p_begin = pid_p * P_PER_PROGRAM
    p_end = tl.multiple_of(tl.minimum(p_begin + P_PER_PROGRAM, HW), HW_DIV)

    # the cell gradients / area of the first cell block stay in registers for every pixel chunk
    offs_k = tl.arange(0, BLOCK_K)
    dp0 = tl.load(
        dp_base + offs_k[None, :] * C + offs_c[:, None],
        mask=mask_c[:, None] & (offs_k < TOTAL)[None, :],
        other=0.0,
    )
    dp0 = dp0 / tl.load(area_ptr + offs_k)[None, :]
    for p0 in range(p_begin, p_end, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        mask_p = offs_p < p_end
        mask = mask_c[:, None] & mask_p[None, :]
        if HAS_ADDEND:
            a_p = pixel_offsets(offs_p, W, stride_ah, stride_ap, A_FLAT)
            acc = tl.load(add_base + add_c[:, None] + a_p[None, :], mask=mask, other=0.0).to(
                acc_dtype
            )
        else:
            acc = tl.zeros((BLOCK_C, BLOCK_P), dtype=acc_dtype)
        t = tl.load(
            t_ptr + offs_p[None, :] * stride_tp + offs_k[:, None], mask=mask_p[None, :], other=0.0
        )
        acc = tl.dot(dp0, t, acc, input_precision=DOT_PRECISION, out_dtype=acc_dtype)
        for kb in range(1, NUM_K_BLOCKS):  # more cells than one block (many or large bins)
            offs_kb = kb * BLOCK_K + tl.arange(0, BLOCK_K)
            dpk = tl.load(
                dp_base + offs_kb[None, :] * C + offs_c[:, None],
                mask=mask_c[:, None] & (offs_kb < TOTAL)[None, :],
                other=0.0,
            )
            dpk = dpk / tl.load(area_ptr + offs_kb)[None, :]
            t = tl.load(
                t_ptr + offs_p[None, :] * stride_tp + offs_kb[:, None],
                mask=mask_p[None, :],
                other=0.0,
            )
            acc = tl.dot(dpk, t, acc, input_precision=DOT_PRECISION, out_dtype=acc_dtype)
        d_p = pixel_offsets(offs_p, W, stride_dh, stride_dp, D_FLAT)
        tl.store(dx_base + dx_c[:, None] + d_p[None, :], acc.to(dx_ptr.dtype.element_ty), mask=mask)
