"""Launchers of kernel 1: cell tables, grids and block sizes around the Triton kernels.

:func:`launch_forward` and :func:`launch_backward` are the op's implementations (``op.py``
registers them); they always launch the kernels: the backend decision (``psp_kernels._backend``)
was taken before, with :func:`kernel_limit` for this op's own limit.
"""

from __future__ import annotations

import functools

import torch
import triton

from .. import tables
from ..target import launch
from ..utils import (
    acc_dtype,
    clamp,
    device_guard,
    dot_precision,
    gpu_tiles,
    num_sms,
    pixel_args,
    pow2_divisor,
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


def _splits(programs: int, hw: int, block_p: int, device: torch.device) -> int:
    """Pixel splits of stage 1: enough programs for about two waves of two programs per SM at
    any batch, at least two pixel chunks per split."""
    if configs.FORCE_SPLITS is not None:
        return configs.FORCE_SPLITS
    if not gpu_tiles():
        return 1  # the interpreter: as few programs as possible
    want = 4 * num_sms(device)
    return clamp(triton.cdiv(want, programs), 1, max(1, hw // (2 * block_p)))


def pool_cells(
    x: torch.Tensor, bins: tuple[int, ...], out: torch.Tensor | None = None
) -> tuple[torch.Tensor, int]:
    """Stage 1: ``(ws, splits)``, the ``(N, splits, TOTAL, C)`` fp32 (fp64) partial cell means.

    With ``out`` (an ``(N, C', H, W)`` tensor, ``C' >= C``, see
    :func:`can_copy_into`), ``x`` is also copied into ``out[:, :C]`` by the same programs that
    read it for the pooling.
    """
    n, c, h, w = x.shape
    hw, total = h * w, total_cells(bins)
    cells = tables.pool_table(h, w, tuple(bins), x.dtype, x.device, False)
    meta, opts = launch_options(configs.pool_config(c, hw, cells.cells_pad, x.dtype))
    num_c_blocks = triton.cdiv(c, meta["BLOCK_C"])
    num_k_blocks = cells.cells_pad // meta["BLOCK_K"]
    programs = n * num_c_blocks * num_k_blocks
    splits = _splits(programs, hw, meta["BLOCK_P"], x.device)
    per_split = triton.cdiv(triton.cdiv(hw, splits), meta["BLOCK_P"]) * meta["BLOCK_P"]
    splits = triton.cdiv(hw, per_split)  # no empty split
    ws = torch.empty((n, splits, total, c), device=x.device, dtype=acc_dtype(x.dtype))
    x_strides, xa = pixel_args(x)
    o = out[:, :c] if out is not None else x  # dummy without the copy (never written)
    o_strides, oa = pixel_args(o)
    with device_guard(x=x, out=out):
        launch(
            _pool_cells_kernel,
            (programs, splits),
            x, cells.table, cells.area, ws, o,
            c, w, hw, total, per_split, num_c_blocks, num_k_blocks,
            *x_strides, cells.stride, *o_strides,
            X_FLAT=xa["FLAT"], O_FLAT=oa["FLAT"], XN_DIV=xa["N_DIV"], XC_DIV=xa["C_DIV"],
            ON_DIV=oa["N_DIV"], OC_DIV=oa["C_DIV"], HW_DIV=pow2_divisor(hw),
            COPY_X=out is not None, DOT_PRECISION=dot_precision(x.dtype), **meta, **opts,
        )  # fmt: skip
    return ws, splits


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


@functools.lru_cache(maxsize=128)
def _conv_tiles(n, bins, rs, block_r, block_m, device):
    """Stage 2's int32 tile table: (slot, first cell, cells, R, r0, m0) per program."""
    rows, offset = [], 0
    for slot, (b, r) in enumerate(zip(bins, rs)):
        cells = b * b
        for r0 in range(0, r, block_r):
            for m0 in range(0, n * cells, block_m):
                rows.append((slot, offset, cells, r, r0, m0))
        offset += cells
    return torch.tensor(rows, dtype=torch.int32).reshape(-1).to(device), len(rows)


def cells_conv(ws, splits, weights, scale, shift, relu, bins, out_dtype, cell_offset, pooled):
    """Stage 2 for up to ``configs.GROUP`` bins: one ``(N, R_b, b, b)`` tensor per bin.

    ``cell_offset``: the first cell of these bins in ``ws``; ``pooled``: ``None``, or the
    ``(N, TOTAL, C)`` tensor this launch writes the summed means of its bins' cells into.
    """
    n, _, total, c = ws.shape
    ys = [torch.empty((n, w.shape[0], b, b), device=ws.device, dtype=out_dtype)
          for w, b in zip(weights, bins)]  # fmt: skip
    m = n * max(b * b for b in bins)
    meta, opts = launch_options(
        configs.conv_config(m, max(w.shape[0] for w in weights), c, out_dtype)
    )
    table, programs = _conv_tiles(
        n, tuple(bins), tuple(int(w.shape[0]) for w in weights), meta["BLOCK_R"],
        meta["BLOCK_M"], ws.device,
    )  # fmt: skip
    if cell_offset:  # later groups: their first cells within ws
        table = table.view(-1, 6).clone()
        table[:, 1] += cell_offset
        table = table.reshape(-1)

    def slots(values):
        values = list(values) + [values[0]] * (configs.GROUP - len(values))  # dummies
        return values

    w_args = slots([w.contiguous() for w in weights])
    # the kernel reads scale and shift as dense vectors: strided or expanded views are copied
    s_args = slots([t.contiguous() for t in scale] if scale else list(w_args))
    b_args = slots([t.contiguous() for t in shift] if shift else list(w_args))
    with device_guard(ws=ws, weights=w_args[0]):
        launch(
            _cells_conv_kernel,
            (programs,),
            ws, table, pooled if pooled is not None else ws,
            *w_args, *s_args, *b_args, *slots(ys),
            n, c, total, len(bins), SPLITS=splits,
            HAS_SCALE=bool(scale), HAS_SHIFT=bool(shift), RELU=bool(relu),
            WRITE_POOLED=pooled is not None, DOT_PRECISION=dot_precision(out_dtype), **meta, **opts,
        )  # fmt: skip
    return ys


def cells_to_pixels(
    dp: torch.Tensor,
    bins,
    height: int,
    width: int,
    dx: torch.Tensor,
    addend: torch.Tensor | None = None,
) -> None:
    """dx = the gather of dp (N, TOTAL, C) cell gradients (not yet divided by area) to pixels.

    ``addend``: optional ``(N, C, H, W)`` tensor of any strides within int32 per sample (see :func:`can_add_in_kernel`): then ``dx =
    addend + gather``, summed in fp32 and rounded once.
    """
    n, total, c = dp.shape
    hw = height * width
    cells = tables.pool_table(height, width, tuple(bins), dp.dtype, dp.device, True)
    meta, opts = launch_options(configs.dx_config(c, hw, cells.cells_pad, dx.dtype))
    num_c_blocks = triton.cdiv(c, meta["BLOCK_C"])
    if configs.FORCE_DX_PIXELS is not None:
        per_program = configs.FORCE_DX_PIXELS
    elif not gpu_tiles():
        per_program = hw  # the interpreter: as few programs as possible
    else:
        # about four programs per SM, at least one pixel chunk each
        chunks = triton.cdiv(hw, meta["BLOCK_P"])
        want = triton.cdiv(4 * num_sms(dp.device), n * num_c_blocks)
        per_program = triton.cdiv(chunks, clamp(want, 1, chunks)) * meta["BLOCK_P"]
    num_p_blocks = triton.cdiv(hw, per_program)
    d_strides, da = pixel_args(dx)
    a = addend if addend is not None else dx  # dummy without the addend (never read)
    a_strides, aa = pixel_args(a)
    with device_guard(dp=dp, dx=dx, addend=addend):
        launch(
            _cells_to_pixels_kernel,
            (n * num_c_blocks * num_p_blocks,),
            dp, cells.area, cells.table, dx, a,
            c, width, hw, total, per_program, num_c_blocks, num_p_blocks, cells.stride,
            *d_strides, *a_strides,
            D_FLAT=da["FLAT"], A_FLAT=aa["FLAT"], DN_DIV=da["N_DIV"], DC_DIV=da["C_DIV"],
            AN_DIV=aa["N_DIV"], AC_DIV=aa["C_DIV"], HW_DIV=pow2_divisor(hw),
            HAS_ADDEND=addend is not None, DOT_PRECISION=dot_precision(dx.dtype),
            NUM_K_BLOCKS=cells.cells_pad // meta["BLOCK_K"], **meta, **opts,
        )  # fmt: skip


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
    ws, splits = pool_cells(x, tuple(bins), out if copied else None)
    n, _, total, c = ws.shape
    # the summed means, saved for backward: stage 2 writes them when there are several splits
    pooled = ws.view(n, total, c) if splits == 1 else torch.empty_like(ws[:, 0])
    ys, offset = [], 0
    for g in range(0, len(bins), configs.GROUP):
        sl = slice(g, g + configs.GROUP)
        ys += cells_conv(
            ws, splits, weights[sl], scale[sl] if scale else [], shift[sl] if shift else [],
            relu, bins[sl], x.dtype, offset, pooled if splits > 1 else None,
        )  # fmt: skip
        offset += sum(b * b for b in bins[sl])
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
