"""Launchers of kernel 1: cell tables, grids and block sizes around the Triton kernels.

:func:`launch_forward` and :func:`launch_backward` are the op's implementations (``op.py``
registers them); they always launch the kernels: the backend decision (``psp_kernels._backend``)
was taken before, with :func:`kernel_limit` for this op's own limit.
"""

from __future__ import annotations

import functools

import torch
import triton

from ... import geometry
from ..utils import (
    acc_dtype,
    clamp,
    device_guard,
    dot_precision,
    interpreting,
    num_sms,
    sample_fits_int32,
)
from ..utils import split_launch_options as launch_options
from . import configs
from .kernels import _cells_conv_kernel, _cells_to_pixels_kernel, _pool_cells_kernel

__all__ = [
    "kernel_limit",
    "total_cells",
    "cell_offsets",
    "launch_forward",
    "launch_backward",
    "can_copy_into",
    "can_add_in_kernel",
]


def kernel_limit(x: torch.Tensor) -> str | None:
    """Why kernel 1 cannot take ``x`` (offsets inside one sample over int32), else ``None``."""
    if sample_fits_int32(x):
        return None
    return f"one sample of x spans more than 2**31 elements (shape {tuple(x.shape)})"


def total_cells(bins) -> int:
    return sum(int(b) * int(b) for b in bins)


def cell_offsets(bins) -> list[int]:
    """Index of each bin's first cell in the (N, TOTAL, C) workspace (cells bin by bin)."""
    offs, acc = [], 0
    for b in bins:
        offs.append(acc)
        acc += int(b) * int(b)
    return offs


@functools.lru_cache(maxsize=256)
def _copy_cell_block(height: int, width: int, bins: tuple[int, ...], block_cells: int) -> int:
    """The cell block whose cells cover the most image rows (all of them when a whole bin fits
    in one block): its programs write the copy of x and read only the rows they pool anyway."""
    # the cells' row windows in table order (bin by bin, row-major); host ints, no tensors
    rows = [w for b in bins for w in geometry.pool_windows(height, b) for _ in range(b)]
    best, best_rows = 0, -1
    for k0 in range(0, len(rows), block_cells):
        block = rows[k0 : k0 + block_cells]
        covered = max(e for _, e in block) - min(s for s, _ in block)
        if covered > best_rows:
            best, best_rows = k0 // block_cells, covered
    return best


def pool_cells(
    x: torch.Tensor, bins: tuple[int, ...], out: torch.Tensor | None = None
) -> torch.Tensor:
    """Stage 1: the (N, TOTAL, C) cell means of x (fp32, or fp64 for fp64 input).

    With ``out`` (an ``(N, C', H, W)`` tensor, ``C' >= C``, same dtype and device, any strides
    within int32 per sample: see :func:`can_copy_into`), ``x`` is also copied into
    ``out[:, :C]`` by the same programs that read it for the pooling.
    """
    n, c, h, w = x.shape
    total = total_cells(bins)
    cells = geometry.cell_table(h, w, bins, x.device)
    meta, opts = launch_options(configs.pool_config(total, c, w, x.dtype, copy_x=out is not None))
    num_c_blocks = triton.cdiv(c, meta["BLOCK_C"])
    num_cell_blocks = triton.cdiv(total, meta["BLOCK_CELLS"])
    programs = n * num_c_blocks * num_cell_blocks
    if configs.FORCE_SPLITS is not None:
        splits = configs.FORCE_SPLITS
    elif not interpreting() and num_cell_blocks == 1:
        # fill the GPU (two programs per SM) when the batch alone does not, >= 8 rows per split
        want = 2 * num_sms(x.device)
        splits = min(triton.cdiv(want, programs), max(h // 8, 1)) if programs < want else 1
    else:
        splits = 1
    rows_per_split = triton.cdiv(h, clamp(splits, 1, h))
    splits = triton.cdiv(h, rows_per_split)  # no empty split
    ws = torch.empty((n, splits, total, c), device=x.device, dtype=acc_dtype(x.dtype))
    # axis 0 may hold 2**31 - 1 programs; axis 1 (splits <= H) stays small in practice
    grid = (programs, splits)
    with device_guard(x=x, out=out):
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
            DOT_PRECISION=dot_precision(x.dtype),
            COPY_X=out is not None,
            **meta,
            **opts,
        )
    if splits == 1:
        return ws.view(n, total, c)
    return ws.sum(dim=1)  # fixed-order reduction over the splits: deterministic


def can_copy_into(x: torch.Tensor, out: torch.Tensor) -> bool:
    """Whether stage 1 can write x's copy into ``out[:, :C]`` (else the caller copies x)."""
    return (
        sample_fits_int32(out)
        and out.dim() == 4
        and out.dtype == x.dtype
        and out.device == x.device
        and out.shape[0] == x.shape[0]
        and out.shape[1] >= x.shape[1]
        and out.shape[2:] == x.shape[2:]
    )


def cells_conv(pooled, weight, scale, shift, relu, b, cell_offset, out_dtype):
    """Stage 2 for one bin: y (N, R, b, b) in out_dtype from the pooled workspace."""
    n, total, c = pooled.shape
    r = weight.shape[0]
    cells = b * b
    m = n * cells
    y = torch.empty((n, r, b, b), device=pooled.device, dtype=out_dtype)
    meta, opts = launch_options(configs.conv_config(m, r, c))
    # the many (sample, cell) blocks on axis 0 (limit 2**31 - 1), the R blocks on axis 1
    grid = (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(r, meta["BLOCK_R"]))
    with device_guard(pooled=pooled, weight=weight, scale=scale, shift=shift):
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


def cells_to_pixels(
    dp: torch.Tensor,
    bins,
    height: int,
    width: int,
    dx: torch.Tensor,
    addend: torch.Tensor | None = None,
) -> None:
    """dx = the gather of dp (N, TOTAL, C) cell gradients (not yet divided by area) to pixels.

    ``addend``: optional ``(N, C, H, W)`` tensor, any strides within int32 per sample (see
    :func:`can_add_in_kernel`): then ``dx = addend + gather``, summed in fp32 and rounded once.
    """
    n, total, c = dp.shape
    cells = geometry.cell_table(height, width, bins, dp.device)
    cfg = configs.dx_config(total, c, width, dx.dtype, addend=addend is not None)
    meta, opts = launch_options(cfg)
    num_w_blocks = triton.cdiv(width, meta["BLOCK_W"])
    num_c_blocks = triton.cdiv(c, meta["BLOCK_C"])
    if configs.FORCE_DX_ROWS is not None:
        rows = configs.FORCE_DX_ROWS
    elif interpreting():
        rows = height  # as few programs as possible
    else:
        # about four programs per SM, 1 to 16 rows each (a program reuses its cell tile per row)
        want = 4 * num_sms(dp.device)
        rows = clamp(triton.cdiv(n * height * num_w_blocks * num_c_blocks, want), 1, 16)
    rows = clamp(rows, 1, height)
    num_row_blocks = triton.cdiv(height, rows)
    grid = (n * num_row_blocks * num_w_blocks, num_c_blocks)
    with device_guard(dp=dp, dx=dx, addend=addend):
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
            DOT_PRECISION=dot_precision(dx.dtype),
            ONE_CELL_BLOCK=total <= meta["BLOCK_CELLS"],
            HAS_ADDEND=addend is not None,
            **meta,
            **opts,
        )


def can_add_in_kernel(dx: torch.Tensor, addend: torch.Tensor) -> bool:
    """Whether the dx gather can add ``addend`` in its pass (else the caller adds it)."""
    return (
        sample_fits_int32(addend)
        and addend.shape == dx.shape
        and addend.dtype == dx.dtype
        and addend.device == dx.device
    )


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

    ``out``: optional ``(N, C', H, W)`` output of the whole PPM; when :func:`can_copy_into`
    allows it, stage 1 writes ``x`` into ``out[:, :C]`` while it reads ``x`` for the pooling and
    ``copied`` is True; otherwise ``out`` is untouched and ``copied`` is False.
    """
    bins = [int(b) for b in bins]
    _check_launch(x, weights, bins, scale, shift)
    copied = out is not None and can_copy_into(x, out)
    pooled = pool_cells(x, tuple(bins), out if copied else None)
    ys = []
    for i, (b, off) in enumerate(zip(bins, cell_offsets(bins))):
        s = scale[i] if scale else None
        t = shift[i] if shift else None
        ys.append(cells_conv(pooled, weights[i], s, t, relu, b, off, x.dtype))
    return ys, pooled, copied


def launch_backward(
    grads, ys, pooled, weights, scale, shift, bins, relu, height, width, channels_last, need_dx,
    dx_addend=None,
):  # fmt: skip
    """The op's backward: ``(dx, dweights, dscale, dshift)``; see ``op._bwd_op``.

    The tiny parts (ReLU mask, scale/shift gradients, ``dW_b = dz_b^T pooled_b`` and
    ``dpooled_b = dz_b W_b``) are fp32 torch matmuls on ``N x TOTAL`` rows; ``dx`` is the gather
    kernel, which also adds ``dx_addend`` in its pass when it can address it.
    """
    bins = [int(b) for b in bins]
    n, total, c = pooled.shape
    acc = pooled.dtype
    out_dtype = weights[0].dtype
    dp = torch.empty((n, total, c), device=pooled.device, dtype=acc)
    dws, dscales, dshifts = [], [], []
    for i, (b, off) in enumerate(zip(bins, cell_offsets(bins))):
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
        return pooled.new_empty((0,), dtype=out_dtype), dws, dscales, dshifts
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    dx = torch.empty(
        (n, c, height, width), device=pooled.device, dtype=out_dtype, memory_format=fmt
    )
    fuse = dx_addend is not None and can_add_in_kernel(dx, dx_addend)
    cells_to_pixels(dp, tuple(bins), height, width, dx, dx_addend if fuse else None)
    if dx_addend is not None and not fuse:  # rare: a huge or mismatched gradient view
        dx.add_(dx_addend)
    return dx, dws, dscales, dshifts
