"""Kernel 1: fused multi-bin adaptive average pooling + 1x1 convolution.

Layout of this file: Triton kernels, then the launcher (input checks, block sizes), then the
``torch.library`` registration, then the public function.

Design (byte counts in ``/work/shared/DESIGN.md``):

* Forward stage 1, ``_pool_cells_kernel``: every pooling cell of every bin (``TOTAL`` cells, 50 for
  bins 1, 2, 3, 6) is a row of one int32 cell table. A program owns one sample, one block of
  channels and one block of cells; it streams over the image rows (only those its cells cover),
  builds the 0/1 "pixel is in cell" indicator of a row from a row-independent column part and one
  compare per cell, and accumulates ``indicator @ x_row_tile`` with ``tl.dot`` in fp32. (Rows
  rather than flattened ``H * W`` tiles: the flattened version needs a div/mod and a 2D compare
  set per element and spilled registers on sm_80/sm_90.) With ``TOTAL <= 64`` there is a single
  cell block, so ``x`` is read exactly once for all bins. The cell means go to a small fp32
  workspace ``(N, TOTAL, C)`` (~400 KB per image at C=2048). When the batch alone cannot fill the
  GPU (batch 1), the rows are split over a second grid axis; each split writes its own partial
  means and they are summed in a fixed order afterwards (``torch.sum`` over the split axis), so
  the result stays deterministic.
* Stage 1 with ``COPY_X`` (the fused PPM forward, ``psp_kernels.pyramid_pooling``): the programs
  of one cell block (the one whose cells cover the most rows, all of them whenever a whole bin
  fits in a block) also store every x tile they load into ``out[:, :C]`` of the PPM output, and
  copy without a dot the rows of their split their cells do not cover; the other cell blocks
  only pool. Every pixel of x is copied exactly once, also in the row-split mode, and kernel 2
  then writes only the branches: the PPM forward reads x once and writes its output once.
* Forward stage 2, ``_cells_conv_kernel``: one small launch per bin computes the 1x1 convolution as a
  GEMM ``W_b (R x C) @ pooled_b^T (C x N*b*b)`` over the workspace, with the affine/ReLU epilogue,
  and stores ``y_b`` in x's dtype. The reduction over ``C`` stays inside one program (no split-K),
  so there are no atomics and no cross-program reduction: deterministic by construction. We chose
  a second launch over an "arrival counter" in stage 1 because the workspace is tiny (it stays in
  L2) and the weights dominate the bytes of this stage anyway.
* Backward: the tiny parts (ReLU mask, scale/shift gradients, ``dW_b = dz_b^T pooled_b`` and
  ``dpooled_b = dz_b W_b``) are plain fp32 torch matmuls on ``N x TOTAL`` rows. The big part,
  ``dx``, is ``_cells_to_pixels_kernel``: each program owns a few image rows x a column block x a
  channel block, loads ``dpooled / area`` once, and per row computes ``indicator @ dp_tile`` and
  stores it once (a gather: no atomics). With ``HAS_ADDEND`` (the fused PPM backward,
  ``psp_kernels.pyramid_pooling``) each row tile starts from ``grad[:, :C]`` of the PPM output
  gradient (read in place, any strides) as the fp32 accumulator: ``dx = grad[:, :C] + gather``
  in one pass and one rounding. ``pyramid_pool_conv``'s own backward passes no addend.

Accuracy: the indicator is exactly 0/1 in every dtype. For float32 the heavy dots use Triton's
``"tf32x3"`` input precision instead of ``"ieee"``: with an exact 0/1 operand only the other
operand's rounding remains (about 2**-22 relative), far inside the 1e-5 contract, while it keeps
the tensor cores (``"ieee"`` would fall back to FMA and make stage 1 compute-bound at C=2048).
float16/bfloat16 use the native tensor-core dot with fp32 accumulation; float64 (interpreter only)
uses ``"ieee"`` and float64 accumulation.

Limitation: because pooling is a dense dot over all cells of a block, a non-finite value (inf or
NaN) in ``x`` makes every cell of its channel non-finite (``0 * inf = nan``), whereas PyTorch only
spoils the cells that contain it.
"""

from __future__ import annotations

import functools
import inspect

import torch
import triton
import triton.language as tl

from . import geometry, reference
from ._aot import AotSpec
from ._backend import interpreting, resolve_backend
from ._validate import check_pyramid_pool_conv

__all__ = ["pyramid_pool_conv", "aot_specs"]


# ----------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# Launcher: configurations, checks, block sizes
# ----------------------------------------------------------------------------------------------

# The configurations the launchers can pick on a GPU; ``aot_specs`` compiles exactly these.
# Stage 1 and the dx gather: 16 cells (bins like (1,), (1, 2, 3)) or 64 (bins (1, 2, 3, 6));
# more cells loop over cell blocks. num_warps/stages were chosen so that no configuration spills
# registers on sm_80 or sm_90 (python -m psp_kernels.compile_check).
_POOL_CONFIGS = {
    ("16bit", 16): dict(BLOCK_CELLS=16, BLOCK_W=64, BLOCK_C=64, num_warps=4, num_stages=3),
    ("16bit", 64): dict(BLOCK_CELLS=64, BLOCK_W=64, BLOCK_C=64, num_warps=8, num_stages=3),
    # float32: tf32x3 dots hold three operand copies: narrower pixel tiles
    ("fp32", 16): dict(BLOCK_CELLS=16, BLOCK_W=32, BLOCK_C=64, num_warps=4, num_stages=3),
    ("fp32", 64): dict(BLOCK_CELLS=64, BLOCK_W=32, BLOCK_C=64, num_warps=8, num_stages=2),
}
# Stage 1 with COPY_X (the fused PPM forward, ``pyramid_pooling``): the same, except fp32 with 64
# cells, whose copy store pushed sm_80 past 255 registers (16 spills): half the channels per
# program (212 registers on sm_80, 193 on sm_90; rows stay 32 columns = 128 B wide).
_POOL_COPY_CONFIGS = dict(_POOL_CONFIGS)
_POOL_COPY_CONFIGS[("fp32", 64)] = dict(
    BLOCK_CELLS=64, BLOCK_W=32, BLOCK_C=32, num_warps=8, num_stages=2
)
_DX_CONFIGS = {
    ("16bit", 16): dict(BLOCK_CELLS=16, BLOCK_W=64, BLOCK_C=64, num_warps=4, num_stages=2),
    ("16bit", 64): dict(BLOCK_CELLS=64, BLOCK_W=64, BLOCK_C=64, num_warps=8, num_stages=2),
    ("fp32", 16): dict(BLOCK_CELLS=16, BLOCK_W=64, BLOCK_C=64, num_warps=4, num_stages=2),
    ("fp32", 64): dict(BLOCK_CELLS=64, BLOCK_W=64, BLOCK_C=64, num_warps=8, num_stages=2),
}
# The dx gather with HAS_ADDEND (the fused PPM backward, ``pyramid_pooling``: dx = grad[:, :C] +
# gather in one pass): the addend tile is loaded as the dot's accumulator. Same blocks, except
# fp32 with 64 cells, which spilled on sm_80 at BLOCK_C=64 (48 spill stores one cell block, 20
# looped): half the channels per program (186 / 225 registers on sm_80, 171 / 211 on sm_90).
_DX_ADD_CONFIGS = dict(_DX_CONFIGS)
_DX_ADD_CONFIGS[("fp32", 64)] = dict(
    BLOCK_CELLS=64, BLOCK_W=64, BLOCK_C=32, num_warps=8, num_stages=2
)
# Stage 2: few (sample, cell) columns (bin 1 and 2 at small batch) or many.
_CONV_CONFIGS = {
    "narrow": dict(BLOCK_R=64, BLOCK_M=16, BLOCK_C=64, num_warps=4, num_stages=3),
    "wide": dict(BLOCK_R=64, BLOCK_M=32, BLOCK_C=32, num_warps=4, num_stages=2),
}
_GPU_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_TRITON_DTYPE = {
    torch.float32: "fp32",
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.float64: "fp64",
}

# Tests set these to force the row splitting of stage 1 and the rows per program of the dx
# gather (to cover those paths under the interpreter, which otherwise picks one of each).
_FORCE_SPLITS: int | None = None
_FORCE_DX_ROWS: int | None = None


def _next_pow2(v: int) -> int:
    return 1 << max(int(v) - 1, 0).bit_length()


def _clamp(v: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, v))


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _heavy_dot_precision(dtype: torch.dtype) -> str:
    """input_precision of the indicator dots (stage 1 and dx): see the module docstring."""
    if dtype == torch.float64:
        return "ieee"
    if dtype == torch.float32:
        return "tf32x3"
    return "tf32"  # fp16/bf16: ignored for 16-bit operands; fp32 operands (dx): tf32 is enough


def _total_cells(bins) -> int:
    return sum(int(b) * int(b) for b in bins)


def _cell_offsets(bins) -> list[int]:
    offs, acc = [], 0
    for b in bins:
        offs.append(acc)
        acc += int(b) * int(b)
    return offs


@functools.lru_cache(maxsize=16)
def _num_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _sample_extent_fits_int32(t: torch.Tensor) -> bool:
    """The kernels address inside one sample with int32 offsets (64-bit sample and row bases)."""
    return (
        sum((size - 1) * abs(stride) for size, stride in zip(t.shape[1:], t.stride()[1:])) < 2**31
    )


def _uses_triton(x: torch.Tensor) -> bool:
    """Whether the op implementation launches the Triton kernels for a tensor like ``x``.

    Elsewhere (CPU without the interpreter, float64 on CUDA, a single sample over 2**31
    elements) the op runs its plain-torch path, which gives the same results.
    """
    if not _sample_extent_fits_int32(x):
        return False
    if x.device.type == "cuda":
        return x.dtype in _GPU_DTYPES
    return x.device.type == "cpu" and interpreting()


def _interp_cells_block(total: int) -> int:
    return _clamp(_next_pow2(total), 16, 64)


def _dtype_class(dtype: torch.dtype) -> str:
    return "fp32" if dtype == torch.float32 else "16bit"


def _pool_config(total: int, c: int, w: int, dtype: torch.dtype, copy_x: bool = False) -> dict:
    if interpreting():
        # the interpreter pays per program and per loop step, not per element: few, large blocks
        return dict(
            BLOCK_CELLS=_interp_cells_block(total),
            BLOCK_W=_clamp(_next_pow2(w), 16, 128),
            BLOCK_C=_clamp(_next_pow2(c), 16, 128),
            num_warps=4,
            num_stages=1,
        )
    configs = _POOL_COPY_CONFIGS if copy_x else _POOL_CONFIGS
    return configs[(_dtype_class(dtype), 16 if total <= 16 else 64)]


def _dx_config(total: int, c: int, w: int, dtype: torch.dtype, addend: bool = False) -> dict:
    if interpreting():
        return dict(
            BLOCK_CELLS=_interp_cells_block(total),
            BLOCK_W=_clamp(_next_pow2(w), 16, 128),
            BLOCK_C=_clamp(_next_pow2(c), 16, 128),
            num_warps=4,
            num_stages=1,
        )
    configs = _DX_ADD_CONFIGS if addend else _DX_CONFIGS
    return configs[(_dtype_class(dtype), 16 if total <= 16 else 64)]


def _conv_config(m: int, r: int, c: int) -> dict:
    if interpreting():
        return dict(
            BLOCK_R=_clamp(_next_pow2(r), 16, 128),
            BLOCK_M=_clamp(_next_pow2(m), 16, 128),
            BLOCK_C=_clamp(_next_pow2(c), 16, 128),
            num_warps=4,
            num_stages=1,
        )
    return _CONV_CONFIGS["narrow" if m <= 16 else "wide"]


def _launch_opts(cfg: dict) -> tuple[dict, dict]:
    meta = {k: v for k, v in cfg.items() if k not in ("num_warps", "num_stages")}
    return meta, dict(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])


@functools.lru_cache(maxsize=256)
def _copy_cell_block(height: int, width: int, bins: tuple[int, ...], block_cells: int) -> int:
    """The cell block whose cells cover the most image rows (all of them when a whole bin fits
    in one block): its programs write the copy of x and read only the rows they pool anyway."""
    table = geometry.cell_table(height, width, bins)
    best, best_rows = 0, -1
    for k0 in range(0, table.shape[1], block_cells):
        rows = int(table[1, k0 : k0 + block_cells].max()) - int(
            table[0, k0 : k0 + block_cells].min()
        )
        if rows > best_rows:
            best, best_rows = k0 // block_cells, rows
    return best


def _pool_cells(
    x: torch.Tensor, bins: tuple[int, ...], out: torch.Tensor | None = None
) -> torch.Tensor:
    """Stage 1: the (N, TOTAL, C) cell means of x (fp32, or fp64 for fp64 input).

    With ``out`` (an ``(N, C', H, W)`` tensor, ``C' >= C``, same dtype and device, any strides
    within int32 per sample: see :func:`_can_copy_into`), ``x`` is also copied into
    ``out[:, :C]`` by the same programs that read it for the pooling.
    """
    n, c, h, w = x.shape
    total = _total_cells(bins)
    cells = geometry.cell_table(h, w, bins, x.device)
    meta, opts = _launch_opts(_pool_config(total, c, w, x.dtype, copy_x=out is not None))
    num_c_blocks = triton.cdiv(c, meta["BLOCK_C"])
    num_cell_blocks = triton.cdiv(total, meta["BLOCK_CELLS"])
    programs = n * num_c_blocks * num_cell_blocks
    if _FORCE_SPLITS is not None:
        splits = _FORCE_SPLITS
    elif x.device.type == "cuda" and num_cell_blocks == 1:
        # fill the GPU (two programs per SM) when the batch alone does not, >= 8 rows per split
        want = 2 * _num_sms(x.device.index if x.device.index is not None else 0)
        splits = min(triton.cdiv(want, programs), max(h // 8, 1)) if programs < want else 1
    else:
        splits = 1
    rows_per_split = triton.cdiv(h, _clamp(splits, 1, h))
    splits = triton.cdiv(h, rows_per_split)  # no empty split
    ws = torch.empty((n, splits, total, c), device=x.device, dtype=_acc_dtype(x.dtype))
    # axis 0 may hold 2**31 - 1 programs; axis 1 (splits <= H) stays small in practice
    grid = (programs, splits)
    _pool_cells_kernel[grid](
        x,
        cells,
        ws,
        c,
        h,
        w,
        total,
        rows_per_split,
        num_c_blocks,
        num_cell_blocks,
        *x.stride(),
        out if out is not None else x,  # dummy pointer without the copy (never written)
        _copy_cell_block(h, w, tuple(bins), meta["BLOCK_CELLS"]) if out is not None else 0,
        *(out.stride() if out is not None else x.stride()),
        DOT_PRECISION=_heavy_dot_precision(x.dtype),
        COPY_X=out is not None,
        **meta,
        **opts,
    )
    if splits == 1:
        return ws.view(n, total, c)
    return ws.sum(dim=1)  # fixed-order reduction over the splits: deterministic


def _can_copy_into(x: torch.Tensor, out: torch.Tensor) -> bool:
    """Whether stage 1 can write x's copy into ``out[:, :C]`` (else the caller copies x)."""
    return (
        _uses_triton(x)
        and _sample_extent_fits_int32(out)
        and out.dim() == 4
        and out.dtype == x.dtype
        and out.device == x.device
        and out.shape[0] == x.shape[0]
        and out.shape[1] >= x.shape[1]
        and out.shape[2:] == x.shape[2:]
    )


def _cells_conv(pooled, weight, scale, shift, relu, b, cell_offset, out_dtype):
    """Stage 2 for one bin: y (N, R, b, b) in out_dtype from the pooled workspace."""
    n, total, c = pooled.shape
    r = weight.shape[0]
    cells = b * b
    m = n * cells
    y = torch.empty((n, r, b, b), device=pooled.device, dtype=out_dtype)
    meta, opts = _launch_opts(_conv_config(m, r, c))
    # the many (sample, cell) blocks on axis 0 (limit 2**31 - 1), the R blocks on axis 1
    grid = (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(r, meta["BLOCK_R"]))
    _cells_conv_kernel[grid](
        pooled,
        weight,
        scale if scale is not None else weight,  # dummy pointer when absent (never read)
        shift if shift is not None else weight,
        y,
        r,
        c,
        m,
        cells,
        cell_offset,
        total,
        weight.stride(0),
        weight.stride(1),
        HAS_SCALE=scale is not None,
        HAS_SHIFT=shift is not None,
        RELU=bool(relu),
        **meta,
        **opts,
    )
    return y


def _cells_to_pixels(
    dp: torch.Tensor,
    bins,
    height: int,
    width: int,
    dx: torch.Tensor,
    addend: torch.Tensor | None = None,
) -> None:
    """dx = the gather of dp (N, TOTAL, C) cell gradients (not yet divided by area) to pixels.

    ``addend``: optional ``(N, C, H, W)`` tensor, any strides within int32 per sample (see
    :func:`_can_add_in_kernel`): then ``dx = addend + gather``, summed in fp32 and rounded once.
    """
    n, total, c = dp.shape
    cells = geometry.cell_table(height, width, bins, dp.device)
    meta, opts = _launch_opts(_dx_config(total, c, width, dx.dtype, addend=addend is not None))
    num_w_blocks = triton.cdiv(width, meta["BLOCK_W"])
    num_c_blocks = triton.cdiv(c, meta["BLOCK_C"])
    if _FORCE_DX_ROWS is not None:
        rows = _FORCE_DX_ROWS
    elif dp.device.type == "cuda":
        # about four programs per SM, 1 to 16 rows each (a program reuses its cell tile per row)
        want = 4 * _num_sms(dp.device.index if dp.device.index is not None else 0)
        rows = triton.cdiv(n * height * num_w_blocks * num_c_blocks, want)
    else:
        rows = height  # interpreter: as few programs as possible
    rows = _clamp(rows, 1, 16 if dp.device.type == "cuda" else height)
    num_row_blocks = triton.cdiv(height, rows)
    grid = (n * num_row_blocks * num_w_blocks, num_c_blocks)
    _cells_to_pixels_kernel[grid](
        dp,
        cells,
        dx,
        c,
        height,
        width,
        total,
        rows,
        num_row_blocks,
        num_w_blocks,
        *dx.stride(),
        addend if addend is not None else dx,  # dummy pointer without the addend (never read)
        *(addend.stride() if addend is not None else dx.stride()),
        DOT_PRECISION=_heavy_dot_precision(dx.dtype),
        ONE_CELL_BLOCK=total <= meta["BLOCK_CELLS"],
        HAS_ADDEND=addend is not None,
        **meta,
        **opts,
    )


def _can_add_in_kernel(dx: torch.Tensor, addend: torch.Tensor) -> bool:
    """Whether the dx gather can add ``addend`` in its pass (else the caller adds it)."""
    return (
        _sample_extent_fits_int32(addend)
        and addend.shape == dx.shape
        and addend.dtype == dx.dtype
        and addend.device == dx.device
    )


# Plain-torch fallbacks of the two ops, used where the kernels cannot run (CPU without the
# interpreter, float64 on CUDA). Same outputs and layouts as the Triton path.


def _pool_cells_torch(x: torch.Tensor, bins) -> torch.Tensor:
    xa = x.to(_acc_dtype(x.dtype))
    parts = [torch.nn.functional.adaptive_avg_pool2d(xa, b).flatten(2) for b in bins]
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous()


def _cells_to_pixels_torch(dp: torch.Tensor, bins, height: int, width: int) -> torch.Tensor:
    out = None
    for b, off in zip(bins, _cell_offsets(bins)):
        dpb = dp[:, off : off + b * b, :].reshape(dp.shape[0], b, b, dp.shape[2])
        pr = geometry.pool_matrix(height, b, dtype=dp.dtype).to(dp.device)
        pc = geometry.pool_matrix(width, b, dtype=dp.dtype).to(dp.device)
        part = torch.einsum("kh,nklc,lw->nchw", pr, dpb, pc)
        out = part if out is None else out + part
    return out


def _check_launch(x: torch.Tensor, weights, bins, scale, shift) -> None:
    """Cheap invariants of the op's arguments (the public function validated them fully)."""
    if x.dim() != 4:
        raise ValueError(f"x must have shape (N, C, H, W), got {tuple(x.shape)}")
    if len(weights) != len(bins):
        raise ValueError(
            f"weights must have one tensor per bin, got {len(weights)} for {len(bins)} bins"
        )
    for name, lst in (("scale", scale), ("shift", shift)):
        if len(lst) not in (0, len(bins)):
            raise ValueError(f"{name} must be empty or have one tensor per bin, got {len(lst)}")
    for i, w in enumerate(weights):
        if w.dim() != 2 or w.shape[1] != x.shape[1]:
            raise ValueError(
                f"weights[{i}] must be a 2D (R, {x.shape[1]}) view, got {tuple(w.shape)}"
            )


def launch_forward(x, weights, bins, scale, shift, relu, out=None):
    """The op's forward: ``(ys, pooled, copied)``.

    ``out``: optional ``(N, C', H, W)`` output of the whole PPM; when the Triton path runs
    (:func:`_can_copy_into`), stage 1 writes ``x`` into ``out[:, :C]`` while it reads ``x`` for
    the pooling and ``copied`` is True; otherwise ``out`` is untouched and ``copied`` is False.
    """
    bins = [int(b) for b in bins]
    _check_launch(x, weights, bins, scale, shift)
    triton_path = _uses_triton(x)
    copied = out is not None and _can_copy_into(x, out)
    if triton_path:
        pooled = _pool_cells(x, tuple(bins), out if copied else None)
    else:
        pooled = _pool_cells_torch(x, bins)
    ys = []
    for i, (b, off) in enumerate(zip(bins, _cell_offsets(bins))):
        s = scale[i] if scale else None
        t = shift[i] if shift else None
        if triton_path:
            ys.append(_cells_conv(pooled, weights[i], s, t, relu, b, off, x.dtype))
            continue
        pb = pooled[:, off : off + b * b, :]
        z = torch.matmul(pb, weights[i].to(pooled.dtype).t()).transpose(1, 2)
        if s is not None:
            z = z * s.to(pooled.dtype)[:, None]
        if t is not None:
            z = z + t.to(pooled.dtype)[:, None]
        y = z.to(x.dtype)
        if relu:
            y = torch.relu(y)
        ys.append(y.reshape(x.shape[0], -1, b, b).contiguous())
    return ys, pooled, copied


# ----------------------------------------------------------------------------------------------
# torch.library registration
# ----------------------------------------------------------------------------------------------


@torch.library.custom_op("psp_kernels::pyramid_pool_conv_fwd", mutates_args=())
def _fwd_op(
    x: torch.Tensor,
    weights: list[torch.Tensor],
    bins: list[int],
    scale: list[torch.Tensor],
    shift: list[torch.Tensor],
    relu: bool,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Returns ``(ys, pooled)``: the outputs and the (N, TOTAL, C) cell means (for backward)."""
    ys, pooled, _ = launch_forward(x, weights, bins, scale, shift, relu)
    return ys, pooled


@_fwd_op.register_fake
def _fwd_fake(x, weights, bins, scale, shift, relu):
    n, c = x.shape[0], x.shape[1]
    ys = [x.new_empty((n, w.shape[0], b, b)) for w, b in zip(weights, bins)]
    pooled = x.new_empty((n, _total_cells(bins), c), dtype=_acc_dtype(x.dtype))
    return ys, pooled


@torch.library.custom_op("psp_kernels::pyramid_pool_conv_bwd", mutates_args=())
def _bwd_op(
    grads: list[torch.Tensor],
    ys: list[torch.Tensor],
    pooled: torch.Tensor,
    weights: list[torch.Tensor],
    scale: list[torch.Tensor],
    shift: list[torch.Tensor],
    bins: list[int],
    relu: bool,
    height: int,
    width: int,
    channels_last: bool,
    need_dx: bool,
    dx_addend: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Returns ``(dx, dweights, dscale, dshift)``; dx is empty when ``need_dx`` is False.

    ``ys`` are the forward outputs when ``relu`` (for the mask), else an empty list.
    ``dx_addend``: optional ``(N, C, H, W)`` gradient of any strides added to dx (the fused PPM
    backward passes ``grad[:, :C]``): the gather writes ``dx_addend + gather`` in one pass, summed
    in fp32 and rounded once. ``pyramid_pool_conv``'s own backward passes none.
    """
    bins = [int(b) for b in bins]
    n, total, c = pooled.shape
    acc = pooled.dtype
    out_dtype = weights[0].dtype
    dp = torch.empty((n, total, c), device=pooled.device, dtype=acc)
    dws, dscales, dshifts = [], [], []
    for i, (b, off) in enumerate(zip(bins, _cell_offsets(bins))):
        g = grads[i].to(acc).reshape(n, -1, b * b)  # (N, R, cells)
        if relu:
            g = g * (ys[i].reshape(n, -1, b * b) > 0)
        pb = pooled[:, off : off + b * b, :]  # (N, cells, C)
        w = weights[i].to(acc)  # (R, C)
        if shift:
            dshifts.append(g.sum(dim=(0, 2)).to(shift[i].dtype))
        if scale:
            z = torch.matmul(pb, w.t()).transpose(1, 2)  # pre-affine conv (N, R, cells)
            dscales.append((g * z).sum(dim=(0, 2)).to(scale[i].dtype))
            g = g * scale[i].to(acc)[:, None]
        dws.append(torch.einsum("nrk,nkc->rc", g, pb).to(weights[i].dtype))
        dp[:, off : off + b * b, :] = torch.matmul(g.transpose(1, 2), w)
    if not need_dx:
        dx = pooled.new_empty((0,), dtype=out_dtype)
    else:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        dx = torch.empty(
            (n, c, height, width), device=pooled.device, dtype=out_dtype, memory_format=fmt
        )
        # dx's dtype is x's dtype: decide the path from a tensor of that dtype
        if _uses_triton(dx):
            fuse = dx_addend is not None and _can_add_in_kernel(dx, dx_addend)
            _cells_to_pixels(dp, tuple(bins), height, width, dx, dx_addend if fuse else None)
            if dx_addend is not None and not fuse:  # rare: a huge or mismatched gradient view
                dx.add_(dx_addend)
        else:
            gathered = _cells_to_pixels_torch(dp, bins, height, width)
            if dx_addend is not None:
                gathered = gathered + dx_addend.to(acc)  # fp32 sum, one rounding below
            dx.copy_(gathered)
    return dx, dws, dscales, dshifts


@_bwd_op.register_fake
def _bwd_fake(
    grads,
    ys,
    pooled,
    weights,
    scale,
    shift,
    bins,
    relu,
    height,
    width,
    channels_last,
    need_dx,
    dx_addend=None,
):
    n, _, c = pooled.shape
    out_dtype = weights[0].dtype
    if need_dx:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        dx = torch.empty(
            (n, c, height, width), device=pooled.device, dtype=out_dtype, memory_format=fmt
        )
    else:
        dx = pooled.new_empty((0,), dtype=out_dtype)
    dws = [torch.empty_like(w) for w in weights]
    dscales = [torch.empty_like(s) for s in scale]
    dshifts = [torch.empty_like(t) for t in shift]
    return dx, dws, dscales, dshifts


def _setup_context(ctx, inputs, output):
    x, weights, bins, scale, shift, relu = inputs
    ys, pooled = output
    ctx.bins = list(bins)
    ctx.relu = bool(relu)
    ctx.nw, ctx.ns, ctx.nt = len(weights), len(scale), len(shift)
    ctx.height, ctx.width = x.shape[2], x.shape[3]
    ctx.channels_last = (not x.is_contiguous()) and x.is_contiguous(
        memory_format=torch.channels_last
    )
    saved_ys = list(ys) if relu else []
    ctx.save_for_backward(pooled, *weights, *scale, *shift, *saved_ys)
    ctx.mark_non_differentiable(pooled)


def _backward(ctx, grad_ys, grad_pooled):
    saved = list(ctx.saved_tensors)
    pooled = saved[0]
    i = 1
    weights = saved[i : i + ctx.nw]
    i += ctx.nw
    scale = saved[i : i + ctx.ns]
    i += ctx.ns
    shift = saved[i : i + ctx.nt]
    i += ctx.nt
    ys = saved[i:]
    grads = []
    for g, w, b in zip(grad_ys, weights, ctx.bins):
        if g is None:
            g = pooled.new_zeros((pooled.shape[0], w.shape[0], b, b), dtype=w.dtype)
        grads.append(g)
    need_dx = bool(ctx.needs_input_grad[0])
    dx, dws, dscales, dshifts = torch.ops.psp_kernels.pyramid_pool_conv_bwd(
        grads,
        ys,
        pooled,
        weights,
        scale,
        shift,
        ctx.bins,
        ctx.relu,
        ctx.height,
        ctx.width,
        ctx.channels_last,
        need_dx,
    )
    return (
        dx if need_dx else None,
        list(dws),
        None,
        list(dscales),  # an empty list for an empty scale list (same structure as the input)
        list(dshifts),
        None,
    )


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------
# Ahead-of-time compile specifications
# ----------------------------------------------------------------------------------------------


def _spec_signature(kernel, constexprs: dict, pointers: dict) -> dict:
    """Types of every non-constexpr argument: ``pointers`` by name, ``"i32"`` for the ints."""
    names = [p for p in inspect.signature(getattr(kernel, "fn", kernel)).parameters]
    return {k: pointers.get(k, "i32") for k in names if k not in constexprs}


def aot_specs() -> list[AotSpec]:
    """Every (kernel, configuration, dtype) the launchers can pick on a GPU, for compile_check."""
    specs = []
    for dtype in _GPU_DTYPES:
        t = _TRITON_DTYPE[dtype]
        prec = _heavy_dot_precision(dtype)
        for key in _POOL_CONFIGS:
            if key[0] != _dtype_class(dtype):
                continue
            # COPY_X: the fused PPM forward (pyramid_pooling) also writes x's copy into out
            for copy_x in (False, True):
                meta, opts = _launch_opts((_POOL_COPY_CONFIGS if copy_x else _POOL_CONFIGS)[key])
                constexprs = dict(DOT_PRECISION=prec, COPY_X=copy_x, **meta)
                pointers = {"x_ptr": f"*{t}", "cells_ptr": "*i32", "ws_ptr": "*fp32"}
                pointers["out_ptr"] = f"*{t}"
                specs.append(
                    AotSpec(
                        name=f"pool_cells[{t},cells={key[1]}{',copy_x' if copy_x else ''}]",
                        kernel=_pool_cells_kernel,
                        signature=_spec_signature(_pool_cells_kernel, constexprs, pointers),
                        constexprs=constexprs,
                        **opts,
                    )
                )
        for key, cfg in _CONV_CONFIGS.items():
            meta, opts = _launch_opts(cfg)
            constexprs = dict(HAS_SCALE=True, HAS_SHIFT=True, RELU=True, **meta)
            pointers = {"pooled_ptr": "*fp32", "w_ptr": f"*{t}", "scale_ptr": f"*{t}"}
            pointers.update(shift_ptr=f"*{t}", y_ptr=f"*{t}")
            specs.append(
                AotSpec(
                    name=f"cells_conv[{t},{key}]",
                    kernel=_cells_conv_kernel,
                    signature=_spec_signature(_cells_conv_kernel, constexprs, pointers),
                    constexprs=constexprs,
                    **opts,
                )
            )
        for (cls, cells), _ in _DX_CONFIGS.items():
            if cls != _dtype_class(dtype):
                continue
            # 16 cells: bins (1,), (1, 2, 3): one cell block; 64: (1, 2, 3, 6) one block, or
            # more cells looping over blocks: compile both paths for the 64-cell configuration.
            # HAS_ADDEND: the fused PPM backward (pyramid_pooling) adds grad[:, :C] in the pass.
            for has_addend in (False, True):
                cfg = (_DX_ADD_CONFIGS if has_addend else _DX_CONFIGS)[(cls, cells)]
                meta, opts = _launch_opts(cfg)
                for one_block in (True, False) if cells == 64 else (True,):
                    constexprs = dict(
                        DOT_PRECISION=prec, ONE_CELL_BLOCK=one_block, HAS_ADDEND=has_addend, **meta
                    )
                    pointers = {"dp_ptr": "*fp32", "cells_ptr": "*i32", "dx_ptr": f"*{t}"}
                    pointers["add_ptr"] = f"*{t}"
                    tags = ("" if one_block else ",looped") + (",addend" if has_addend else "")
                    specs.append(
                        AotSpec(
                            name=f"cells_to_pixels[{t},cells={cells}{tags}]",
                            kernel=_cells_to_pixels_kernel,
                            signature=_spec_signature(
                                _cells_to_pixels_kernel, constexprs, pointers
                            ),
                            constexprs=constexprs,
                            **opts,
                        )
                    )
    return specs


# ----------------------------------------------------------------------------------------------
# Public function
# ----------------------------------------------------------------------------------------------


def pyramid_pool_conv(
    x, weights, bins=(1, 2, 3, 6), *, scale=None, shift=None, relu=False, backend="auto"
):
    """Pool ``x`` at every bin size and apply each bin's bias-free 1x1 convolution, fused.

    Args:
        x: ``(N, C, H, W)`` feature map, any strides (channels_last is read in place).
        weights: one ``(R_i, C)`` or ``(R_i, C, 1, 1)`` weight per bin.
        bins: output sizes of the adaptive average pooling, one per weight, any order.
        scale, shift: optional per-bin ``(R_i,)`` tensors: ``y = conv * scale + shift``
            (an eval-mode BatchNorm folded in); either may be given alone.
        relu: apply ReLU last.
        backend: ``"auto"`` (Triton on CUDA, or on CPU with ``TRITON_INTERPRET=1``; the
            reference otherwise), ``"triton"`` or ``"reference"``.

    Returns:
        ``[y_i]``, ``y_i`` of shape ``(N, R_i, b_i, b_i)`` in x's dtype, equal to
        ``act(scale_i * conv1x1(adaptive_avg_pool2d(x, b_i), W_i) + shift_i)``. Differentiable in
        ``x``, ``weights``, ``scale`` and ``shift``; deterministic (no atomics).

    Example:
        >>> ys = pyramid_pool_conv(x, [w1, w2, w3, w6], bins=(1, 2, 3, 6), relu=True)
    """
    weights, bins, scale, shift = check_pyramid_pool_conv(x, weights, bins, scale, shift)
    if resolve_backend(backend, x) == "reference":
        return reference.pyramid_pool_conv(x, weights, bins, scale=scale, shift=shift, relu=relu)
    ys, _ = torch.ops.psp_kernels.pyramid_pool_conv_fwd(
        x, list(weights), list(bins), list(scale or []), list(shift or []), bool(relu)
    )
    return list(ys)
