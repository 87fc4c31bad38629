"""Triton kernels of ``pyramid_pool_conv`` (kernel 1): multi-bin adaptive average pooling + 1x1 conv.

Design (byte counts in ``/work/shared/DESIGN.md``):

* Forward stage 1, ``_pool_cells_kernel``: every pooling cell of every bin (``TOTAL`` cells, 50 for
  bins 1, 2, 3, 6) is a row of one int32 cell table. A program owns one sample, one block of
  channels and one block of cells; it streams over the image rows (only those its cells cover),
  builds the 0/1 "pixel is in cell" indicator of a row from a row-independent column part and one
  compare per cell, and accumulates ``indicator @ x_row_tile`` with ``tl.dot`` in fp32. With
  ``TOTAL <= 64`` there is a single cell block, so ``x`` is read exactly once for all bins. The
  cell means go to a small fp32 workspace ``(N, TOTAL, C)`` (~400 KB per image at C=2048). When
  the batch alone cannot fill the GPU (batch 1), the rows are split over a second grid axis; each
  split writes its own partial means and they are summed in a fixed order afterwards, so the
  result stays deterministic.
* Stage 1 with ``COPY_X`` (the fused PPM forward, ``psp_kernels.pyramid_pooling``): the programs
  of one cell block also store every x tile they load into ``out[:, :C]`` of the PPM output, and
  copy without a dot the rows of their split their cells do not cover. Every pixel of x is copied
  exactly once, and kernel 2 then writes only the branches: the PPM forward reads x once and
  writes its output once.
* Forward stage 2, ``_cells_conv_kernel``: one small launch per bin computes the 1x1 convolution as
  a GEMM ``W_b (R x C) @ pooled_b^T (C x N*b*b)`` over the workspace, with the affine/ReLU
  epilogue, and stores ``y_b`` in x's dtype. The reduction over ``C`` stays inside one program (no
  split-K): deterministic by construction.
* Backward dx, ``_cells_to_pixels_kernel``: each program owns a few image rows x a column block x
  a channel block, loads ``dpooled / area`` once, and per row computes ``indicator @ dp_tile`` and
  stores it once (a gather: no atomics). With ``HAS_ADDEND`` (the fused PPM backward) each row
  tile starts from ``grad[:, :C]`` of the PPM output gradient as the fp32 accumulator:
  ``dx = grad[:, :C] + gather`` in one pass and one rounding.

Accuracy: the indicator is exactly 0/1 in every dtype, so the dots' only rounding is that of the
other operand (see ``ops.utils.dot_precision``). Limitation: because pooling is a dense dot over
all cells of a block, a non-finite value in ``x`` makes every cell of its channel non-finite
(``0 * inf = nan``), whereas PyTorch only spoils the cells that contain it.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["_pool_cells_kernel", "_cells_conv_kernel", "_cells_to_pixels_kernel"]


@triton.jit
def _pool_cells_kernel(
    x_ptr,
    cells_ptr,
    ws_ptr,
    C,
    H,
    W,
    TOTAL,
    ROWS_PER_SPLIT,
    NUM_C_BLOCKS,
    NUM_CELL_BLOCKS,
    stride_xn,
    stride_xc,
    stride_xh,
    stride_xw,
    out_ptr,
    COPY_CELL_BLOCK,
    stride_on,
    stride_oc,
    stride_oh,
    stride_ow,
    DOT_PRECISION: tl.constexpr,
    COPY_X: tl.constexpr,
    BLOCK_CELLS: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """ws[n, split, cell, c] = (sum of x[n, c] over the cell's window, rows of the split) / area.

    The loop runs over image rows; the column part of the indicator (cell x column) does not
    depend on the row and is built once per column chunk, the row part is one compare per cell,
    so each step costs one select and one ``tl.dot`` (indicator @ x_row_tile).

    With ``COPY_X``, the programs of cell block ``COPY_CELL_BLOCK`` also store every x tile they
    load into ``out[n, c, h, w]`` (``out``'s own strides, x's dtype), so that ``x`` is read once
    for the pooling and for the copy into the first C channels of the PPM output. Those programs
    visit every row of their split: rows their cells do not cover are copied without a dot.
    """
    # program id 0 -> (sample n, channel block, cell block), the cell block fastest so that the
    #                 programs that read the same x tile run next to each other (L2 reuse);
    # program id 1 -> split of the image rows (only when the batch alone cannot fill the GPU).
    pid = tl.program_id(0)
    pid_split = tl.program_id(1)
    num_splits = tl.num_programs(1)
    pid_cell = pid % NUM_CELL_BLOCKS
    pid_nc = pid // NUM_CELL_BLOCKS
    pid_c = pid_nc % NUM_C_BLOCKS
    n = pid_nc // NUM_C_BLOCKS

    acc_dtype = ws_ptr.dtype.element_ty
    offs_k = pid_cell * BLOCK_CELLS + tl.arange(0, BLOCK_CELLS)
    mask_k = offs_k < TOTAL
    # padded cells get the empty window [0, 0): their indicator row is all zeros
    row_start = tl.load(cells_ptr + offs_k, mask=mask_k, other=0)
    row_end = tl.load(cells_ptr + TOTAL + offs_k, mask=mask_k, other=0)
    col_start = tl.load(cells_ptr + 2 * TOTAL + offs_k, mask=mask_k, other=0)
    col_end = tl.load(cells_ptr + 3 * TOTAL + offs_k, mask=mask_k, other=0)

    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    c_off = offs_c[None, :] * stride_xc  # int32 inside a sample: the launcher checks the extent

    # rows of this split that some cell of this block covers (cells are stored bin by bin,
    # row-major, so a block of many cells covers a band of rows: skip the others)
    h_begin = tl.maximum(pid_split * ROWS_PER_SPLIT, tl.min(tl.where(mask_k, row_start, H)))
    h_end = tl.minimum((pid_split + 1) * ROWS_PER_SPLIT, tl.max(row_end))
    h_end = tl.minimum(h_end, H)

    acc = tl.zeros((BLOCK_CELLS, BLOCK_C), dtype=acc_dtype)
    if COPY_X:
        copier = pid_cell == COPY_CELL_BLOCK
        # the split's rows outside [h_begin, h_end) (none when the copying block's cells cover
        # every row, which the launcher arranges when it can): copied by the copier, not pooled
        split_begin = pid_split * ROWS_PER_SPLIT
        split_end = tl.minimum(split_begin + ROWS_PER_SPLIT, H)
        out_c_off = offs_c[None, :] * stride_oc
        out_base = out_ptr + n.to(tl.int64) * stride_on
    for w0 in range(0, W, BLOCK_W):
        offs_w = w0 + tl.arange(0, BLOCK_W)
        mask_w = offs_w < W
        col_in = (offs_w[None, :] >= col_start[:, None]) & (offs_w[None, :] < col_end[:, None])
        x_mask = mask_w[:, None] & mask_c[None, :]
        # 64-bit pointer arithmetic: one row step at a time, no int32 row offset to overflow
        tile_off = offs_w[:, None] * stride_xw + c_off  # loop-invariant int32 offsets
        # scalar 64-bit row pointer, one row step at a time (no per-element 64-bit pointers)
        row_ptr = x_ptr + n.to(tl.int64) * stride_xn + h_begin.to(tl.int64) * stride_xh
        if COPY_X:
            out_off = offs_w[:, None] * stride_ow + out_c_off  # int32: the launcher checks out
            out_mask = x_mask & copier  # one cell block writes the copy, the others only pool
            out_row = out_base + h_begin.to(tl.int64) * stride_oh
        for h in range(h_begin, h_end):
            x_tile = tl.load(row_ptr + tile_off, mask=x_mask, other=0.0)
            row_ptr += stride_xh
            if COPY_X:
                tl.store(out_row + out_off, x_tile, mask=out_mask)
                out_row += stride_oh
            row_in = (h >= row_start) & (h < row_end)
            indicator = (col_in & row_in[:, None]).to(x_tile.dtype)  # exact 0/1
            acc = tl.dot(indicator, x_tile, acc, input_precision=DOT_PRECISION, out_dtype=acc_dtype)
        if COPY_X:
            if copier:
                # copy-only rows of the split above and below the band the cells cover
                x_row = x_ptr + n.to(tl.int64) * stride_xn + split_begin.to(tl.int64) * stride_xh
                out_row = out_base + split_begin.to(tl.int64) * stride_oh
                for _h in range(split_begin, tl.minimum(h_begin, split_end)):
                    x_tile = tl.load(x_row + tile_off, mask=x_mask)
                    tl.store(out_row + out_off, x_tile, mask=x_mask)
                    x_row += stride_xh
                    out_row += stride_oh
                h_low = tl.maximum(h_end, split_begin)
                x_row = x_ptr + n.to(tl.int64) * stride_xn + h_low.to(tl.int64) * stride_xh
                out_row = out_base + h_low.to(tl.int64) * stride_oh
                for _h in range(h_low, split_end):
                    x_tile = tl.load(x_row + tile_off, mask=x_mask)
                    tl.store(out_row + out_off, x_tile, mask=x_mask)
                    x_row += stride_xh
                    out_row += stride_oh

    area = ((row_end - row_start) * (col_end - col_start)).to(acc_dtype)
    area = tl.where(mask_k, area, 1.0)
    mean = acc / area[:, None]
    ws_row = (n.to(tl.int64) * num_splits + pid_split) * TOTAL + offs_k.to(tl.int64)
    tl.store(
        ws_ptr + ws_row[:, None] * C + offs_c[None, :],
        mean,
        mask=mask_k[:, None] & mask_c[None, :],
    )


@triton.jit
def _cells_conv_kernel(
    pooled_ptr,
    w_ptr,
    scale_ptr,
    shift_ptr,
    y_ptr,
    R,
    C,
    M,
    CELLS,
    CELL_OFFSET,
    TOTAL,
    stride_wr,
    stride_wc,
    HAS_SCALE: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
    RELU: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """y[n, r, cell] = act(scale[r] * sum_c W[r, c] * pooled[n, CELL_OFFSET + cell, c] + shift[r]).

    One bin per launch; the GEMM columns are the M = N * CELLS (sample, cell) pairs.
    """
    # program id 0 -> block of (sample, cell) columns; program id 1 -> block of output channels.
    pid_m = tl.program_id(0)
    pid_r = tl.program_id(1)
    acc_dtype = pooled_ptr.dtype.element_ty

    offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    mask_r = offs_r < R
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    n = offs_m // CELLS
    cell = offs_m - n * CELLS
    p_row = (n.to(tl.int64) * TOTAL + CELL_OFFSET + cell) * C
    w_row = offs_r.to(tl.int64) * stride_wr

    acc = tl.zeros((BLOCK_R, BLOCK_M), dtype=acc_dtype)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        w_tile = tl.load(
            w_ptr + w_row[:, None] + offs_c[None, :].to(tl.int64) * stride_wc,
            mask=mask_r[:, None] & mask_c[None, :],
            other=0.0,
        ).to(acc_dtype)
        p_tile = tl.load(
            pooled_ptr + p_row[None, :] + offs_c[:, None],
            mask=mask_c[:, None] & mask_m[None, :],
            other=0.0,
        )
        # the FLOPs here are tiny (N * TOTAL * C * R): full fp32 ("ieee") costs nothing
        acc = tl.dot(w_tile, p_tile, acc, input_precision="ieee", out_dtype=acc_dtype)

    if HAS_SCALE:
        s = tl.load(scale_ptr + offs_r, mask=mask_r, other=0.0).to(acc_dtype)
        acc = acc * s[:, None]
    if HAS_SHIFT:
        b = tl.load(shift_ptr + offs_r, mask=mask_r, other=0.0).to(acc_dtype)
        acc = acc + b[:, None]
    if RELU:  # rounding is monotone and keeps 0: same values as relu after the cast
        acc = tl.maximum(acc, 0.0)
    y = acc.to(y_ptr.dtype.element_ty)
    y_off = (
        (n.to(tl.int64) * R)[None, :] * CELLS + offs_r[:, None].to(tl.int64) * CELLS + cell[None, :]
    )
    tl.store(y_ptr + y_off, y, mask=mask_r[:, None] & mask_m[None, :])


@triton.jit
def _cells_to_pixels_kernel(
    dp_ptr,
    cells_ptr,
    dx_ptr,
    C,
    H,
    W,
    TOTAL,
    ROWS_PER_PROGRAM,
    NUM_ROW_BLOCKS,
    NUM_W_BLOCKS,
    stride_dn,
    stride_dc,
    stride_dh,
    stride_dw,
    add_ptr,
    stride_an,
    stride_ac,
    stride_ah,
    stride_aw,
    DOT_PRECISION: tl.constexpr,
    ONE_CELL_BLOCK: tl.constexpr,
    HAS_ADDEND: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_CELLS: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """dx[n, c, h, w] = sum over the cells k that contain (h, w) of dp[n, k, c] / area[k].

    A gather: each program owns ROWS_PER_PROGRAM image rows x BLOCK_W columns x BLOCK_C channels
    and writes every pixel of it once (no atomics). Per row: one select builds the indicator from
    the row-independent column part, and one ``tl.dot`` (indicator @ dp_tile) gives the row.

    With ``HAS_ADDEND`` (the fused PPM backward, ``psp_kernels.pyramid_pooling``), the row's
    ``add[n, c, h, w]`` tile (``add``'s own strides, any dtype) is loaded as the dot's fp32
    accumulator, so ``dx = add + gather`` is rounded to dx's dtype once and written in one pass.
    """
    # program id 0 -> (sample n, row block, column block), the column block fastest;
    # program id 1 -> channel block.
    pid = tl.program_id(0)
    pid_c = tl.program_id(1)
    pid_w = pid % NUM_W_BLOCKS
    pid_nr = pid // NUM_W_BLOCKS
    pid_r = pid_nr % NUM_ROW_BLOCKS
    n = pid_nr // NUM_ROW_BLOCKS
    acc_dtype = dp_ptr.dtype.element_ty

    offs_w = pid_w * BLOCK_W + tl.arange(0, BLOCK_W)
    mask_w = offs_w < W
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    dp_base = dp_ptr + n.to(tl.int64) * TOTAL * C  # then int32 offsets (TOTAL * C < 2**31)
    dx_mask = mask_w[:, None] & mask_c[None, :]
    h_begin = pid_r * ROWS_PER_PROGRAM
    h_end = tl.minimum(h_begin + ROWS_PER_PROGRAM, H)
    # scalar 64-bit row pointer, one row step at a time; int32 offsets inside the row
    row_ptr = dx_ptr + n.to(tl.int64) * stride_dn + h_begin.to(tl.int64) * stride_dh
    tile_off = offs_w[:, None] * stride_dw + offs_c[None, :] * stride_dc
    if HAS_ADDEND:  # same scheme: int32 offsets inside the row (the launcher checks add)
        add_row = add_ptr + n.to(tl.int64) * stride_an + h_begin.to(tl.int64) * stride_ah
        add_off = offs_w[:, None] * stride_aw + offs_c[None, :] * stride_ac

    if ONE_CELL_BLOCK:
        # every cell fits one block: the cell gradients and the column indicator are loaded and
        # built once and reused for every row of the program
        offs_k = tl.arange(0, BLOCK_CELLS)
        mask_k = offs_k < TOTAL
        row_start = tl.load(cells_ptr + offs_k, mask=mask_k, other=0)
        row_end = tl.load(cells_ptr + TOTAL + offs_k, mask=mask_k, other=0)
        col_start = tl.load(cells_ptr + 2 * TOTAL + offs_k, mask=mask_k, other=0)
        col_end = tl.load(cells_ptr + 3 * TOTAL + offs_k, mask=mask_k, other=0)
        area = ((row_end - row_start) * (col_end - col_start)).to(acc_dtype)
        area = tl.where(mask_k, area, 1.0)
        dp = tl.load(
            dp_base + offs_k[:, None] * C + offs_c[None, :],
            mask=mask_k[:, None] & mask_c[None, :],
            other=0.0,
        )
        dp = dp / area[:, None]
        col_in = (offs_w[:, None] >= col_start[None, :]) & (offs_w[:, None] < col_end[None, :])
        for h in range(h_begin, h_end):
            row_in = (h >= row_start) & (h < row_end)
            indicator = (col_in & row_in[None, :]).to(acc_dtype)
            if HAS_ADDEND:
                acc = tl.load(add_row + add_off, mask=dx_mask, other=0.0).to(acc_dtype)
                add_row += stride_ah
                acc = tl.dot(indicator, dp, acc, input_precision=DOT_PRECISION, out_dtype=acc_dtype)
            else:
                acc = tl.dot(indicator, dp, input_precision=DOT_PRECISION, out_dtype=acc_dtype)
            tl.store(row_ptr + tile_off, acc.to(dx_ptr.dtype.element_ty), mask=dx_mask)
            row_ptr += stride_dh
    else:
        for h in range(h_begin, h_end):
            if HAS_ADDEND:
                acc = tl.load(add_row + add_off, mask=dx_mask, other=0.0).to(acc_dtype)
                add_row += stride_ah
            else:
                acc = tl.zeros((BLOCK_W, BLOCK_C), dtype=acc_dtype)
            for k0 in range(0, TOTAL, BLOCK_CELLS):
                offs_k = k0 + tl.arange(0, BLOCK_CELLS)
                mask_k = offs_k < TOTAL
                row_start = tl.load(cells_ptr + offs_k, mask=mask_k, other=0)
                row_end = tl.load(cells_ptr + TOTAL + offs_k, mask=mask_k, other=0)
                row_in = (h >= row_start) & (h < row_end)
                if tl.max(row_in.to(tl.int32)) > 0:  # skip cell blocks that miss this row
                    col_start = tl.load(cells_ptr + 2 * TOTAL + offs_k, mask=mask_k, other=0)
                    col_end = tl.load(cells_ptr + 3 * TOTAL + offs_k, mask=mask_k, other=0)
                    area = ((row_end - row_start) * (col_end - col_start)).to(acc_dtype)
                    area = tl.where(mask_k, area, 1.0)
                    dp = tl.load(
                        dp_base + offs_k[:, None] * C + offs_c[None, :],
                        mask=mask_k[:, None] & mask_c[None, :],
                        other=0.0,
                    )
                    dp = dp / area[:, None]
                    inside = (
                        (offs_w[:, None] >= col_start[None, :])
                        & (offs_w[:, None] < col_end[None, :])
                        & row_in[None, :]
                    )
                    acc = tl.dot(
                        inside.to(acc_dtype),
                        dp,
                        acc,
                        input_precision=DOT_PRECISION,
                        out_dtype=acc_dtype,
                    )
            tl.store(row_ptr + tile_off, acc.to(dx_ptr.dtype.element_ty), mask=dx_mask)
            row_ptr += stride_dh
