"""Launchers of kernel 2: the bilinear cell tables, the work tables and grids.

:func:`launch_forward` and :func:`launch_backward` are the op's implementations (``op.py``
registers them); they always launch the kernels (the backend was decided before, with
:func:`kernel_limit`).
"""

from __future__ import annotations

import functools
import math

import torch
import triton

from .. import tables
from ..target import launch
from ..utils import (
    clamp,
    device_guard,
    dot_precision,
    gpu_tiles,
    num_sms,
    pixel_args,
    pow2_divisor,
)
from . import configs
from .kernels import _upsample_concat_bwd_kernel, _upsample_concat_fwd_kernel

__all__ = ["launch_forward", "launch_backward", "empty_output", "out_memory_format", "kernel_limit"]

#: Largest bilinear table the kernels build (bytes); larger ones (branches of thousands of
#: cells on big maps) take the reference.
MAX_TABLE_BYTES = 256 * 2**20


def kernel_limit(x: torch.Tensor, branch_sizes) -> str | None:
    """Why kernel 2 cannot take these sizes (a bilinear table over 256 MiB), else ``None``."""
    sizes = [(int(h), int(w)) for h, w in branch_sizes]
    if not sizes:
        return None
    most = max(h * w for h, w in sizes)
    cells_pad = -(-most // tables.cells_block(most)) * tables.cells_block(most)
    nbytes = len(sizes) * cells_pad * x.shape[2] * x.shape[3] * 8
    if nbytes <= MAX_TABLE_BYTES:
        return None
    return f"branches of sizes {sizes} on a {x.shape[2]}x{x.shape[3]} map need a {nbytes >> 20} MiB table"


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


def _table(out_h, out_w, shapes, align_corners, dtype, device, pixel_major):
    sizes = tuple((h, w) for _, h, w in shapes)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    return tables.bilinear_table(out_h, out_w, sizes, bool(align_corners), acc, device, pixel_major)


@functools.lru_cache(maxsize=128)
def _fwd_rows(c, shapes, cells_pad, block_c, copy_x, device):
    """The forward's int32 work rows: (slot or -1, c0, channels, out c0, cells, k0, R), as a
    flat tensor, their count, and the divisibility of their channel counts and output starts."""
    rows = []
    if copy_x:
        rows += [(-1, c0, min(block_c, c - c0), c0, 0, 0, c) for c0 in range(0, c, block_c)]
    out_c = c
    for slot, (r, hb, wb) in enumerate(shapes):
        for c0 in range(0, r, block_c):
            rows.append((slot, c0, min(block_c, r - c0), out_c + c0, hb * wb, slot * cells_pad, r))
        out_c += r
    div = math.gcd(16, *(v for row in rows for v in (row[2], row[3])))
    return torch.tensor(rows, dtype=torch.int32).reshape(-1).to(device), len(rows), div


def _pixel_blocks(work_items: int, hw: int, block_p: int, device) -> int:
    """Pixels per program: about four programs per SM, at least one chunk each."""
    if not gpu_tiles():
        return hw  # the interpreter: as few programs as possible
    chunks = triton.cdiv(hw, block_p)
    want = clamp(triton.cdiv(4 * num_sms(device), work_items), 1, chunks)
    return triton.cdiv(chunks, want) * block_p


def _launch_group(x, branches, shapes, align_corners, out, out_c0, copy_x):
    n, c, hh, ww = x.shape
    hw = hh * ww
    cells = _table(hh, ww, shapes, align_corners, x.dtype, x.device, True)
    meta, opts = configs.fwd_config(x.dtype, cells.cells_pad)
    rows, n_rows, row_div = _fwd_rows(c, shapes, cells.cells_pad, meta["BLOCK_C"], copy_x, x.device)
    if out_c0 != c:  # a later group of branches: their output channels
        rows = rows.view(-1, 7).clone()
        rows[:, 3] += out_c0 - c
        rows = rows.reshape(-1)
        row_div = math.gcd(row_div, out_c0 - c)
    per_program = configs.FORCE_PIXELS or _pixel_blocks(n * n_rows, hw, meta["BLOCK_P"], x.device)
    num_p_blocks = triton.cdiv(hw, per_program)
    ys = [b.contiguous() for b in branches] or [out]  # dummy when only copying (never read)
    ys += [ys[0]] * (configs.GROUP - len(ys))
    x_strides, xa = pixel_args(x)
    o_strides, oa = pixel_args(out)
    with device_guard(x=x, out=out, branches=ys[0]):
        launch(
            _upsample_concat_fwd_kernel,
            (n * n_rows * num_p_blocks,),
            x, *ys, cells.table, out, rows,
            ww, hw, per_program, num_p_blocks, n_rows, cells.stride, *x_strides, *o_strides,
            X_FLAT=xa["FLAT"], O_FLAT=oa["FLAT"], XN_DIV=xa["N_DIV"], XC_DIV=xa["C_DIV"],
            ON_DIV=oa["N_DIV"], OC_DIV=oa["C_DIV"], HW_DIV=pow2_divisor(hw),
            ROW_DIV=pow2_divisor(row_div), DOT_PRECISION=dot_precision(x.dtype), **meta, **opts,
        )  # fmt: skip


def launch_forward(x, branches, align_corners, out=None, copy_x=True):
    """Write ``upsample_concat(x, branches)`` into ``out`` (allocated when ``None``).

    With ``copy_x=False`` the first ``C`` channels of ``out`` are left untouched (for a producer
    that already wrote the copy of ``x``, e.g. kernel 1 while it reads ``x``).
    """
    c = x.shape[1]
    shapes = tuple((int(b.shape[1]), int(b.shape[2]), int(b.shape[3])) for b in branches)
    if out is None:
        out = empty_output(x, c + sum(r for r, _, _ in shapes))
    out_c0 = c
    for g in range(0, max(len(shapes), 1), configs.GROUP):
        group = shapes[g : g + configs.GROUP]
        if group or copy_x:
            _launch_group(x, branches[g : g + configs.GROUP], group, align_corners, out, out_c0,
                          copy_x and g == 0)  # fmt: skip
        out_c0 += sum(r for r, _, _ in group)
    return out


@functools.lru_cache(maxsize=128)
def _bwd_rows(shapes, cells_pad, block_c, block_k, device):
    """The backward's int32 work rows: (g c0, channels, cells, k0, cell0, dst0, r0)."""
    rows, g_c, packed = [], 0, 0
    for slot, (r, hb, wb) in enumerate(shapes):
        cells = hb * wb
        for cell0 in range(0, cells, block_k):
            for c0 in range(0, r, block_c):
                rows.append((g_c + c0, min(block_c, r - c0), cells, slot * cells_pad + cell0,
                             cell0, packed, c0))  # fmt: skip
        g_c += r
        packed += r * cells
    div = math.gcd(16, *(v for row in rows for v in (row[0], row[1])))
    return torch.tensor(rows, dtype=torch.int32).reshape(-1).to(device), len(rows), div


def launch_backward(grad_branches, shapes, align_corners):
    """Branch gradients as one contiguous ``(N, P)`` buffer, from ``grad_out[:, C:]``."""
    n, _, hh, ww = grad_branches.shape
    p = sum(r * h * w for r, h, w in shapes)
    dy = torch.empty((n, p), dtype=grad_branches.dtype, device=grad_branches.device)
    if not shapes:
        return dy
    cells = _table(hh, ww, shapes, align_corners, grad_branches.dtype, grad_branches.device, False)
    meta, opts = configs.bwd_config(grad_branches.dtype, cells.cells_pad)
    rows, n_rows, row_div = _bwd_rows(shapes, cells.cells_pad, meta["BLOCK_C"], meta["BLOCK_K"],
                             grad_branches.device)  # fmt: skip
    g_strides, ga = pixel_args(grad_branches)
    with device_guard(grad_branches=grad_branches):
        launch(
            _upsample_concat_bwd_kernel,
            (n * n_rows,),
            grad_branches, cells.table, dy, rows,
            ww, hh * ww, p, n_rows, cells.stride, *g_strides,
            G_FLAT=ga["FLAT"], GN_DIV=ga["N_DIV"], GC_DIV=ga["C_DIV"], HW_DIV=pow2_divisor(hh * ww),
            ROW_DIV=pow2_divisor(row_div),
            DOT_PRECISION=dot_precision(grad_branches.dtype), **meta, **opts,
        )  # fmt: skip
    return dy
