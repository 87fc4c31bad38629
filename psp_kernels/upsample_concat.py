"""Kernel 2: fused bilinear upsampling of the pyramid branches + concatenation with x.

Forward: one launch writes the whole ``(N, C + sum R_i, H, W)`` output. The launcher packs the
(tiny) branches into one contiguous ``(N, P)`` buffer and describes the output channels as a table
of channel blocks (each inside one segment: the copy of ``x`` or one branch). A program copies a
tile of ``x`` or computes a tile of one upsampled branch from four gathered taps per pixel, with
PyTorch's source coordinates (``geometry.tap_table``: float64 on the host, stored as float32, or
float64 for float64 inputs) and fp32 math.

Backward: ``dx`` is a view of ``grad_out[:, :C]`` (taken by the autograd formula, not by a kernel).
Every branch gradient is a gather: cell ``(i, j)`` sums ``wy[h, i] * wx[w, j] * g[h, w]`` over the
output pixels whose taps touch it. A program owns (branch channel block, cell block) of one sample,
loops over the output rectangle that touches its cells (taps are monotone, so it is one rectangle)
and accumulates ``g_tile @ weight_tile`` with ``tl.dot``, the weight tile built on the fly from the
tap tables. Fixed summation order, no atomics: deterministic.

Layout of this file: Triton kernels, then the launchers (tables, block sizes), then the
``torch.library`` registration, then the public function.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import triton
import triton.language as tl

from . import geometry, reference
from ._aot import AotSpec
from ._backend import resolve_backend
from ._validate import check_upsample_concat

__all__ = ["upsample_concat", "aot_specs"]

# Columns of the forward channel-block table (int64).
_FWD_COLS = 8  # seg (-1: copy of x, s >= 0: branch s), out_c0, nc, src0, hb, wb, pad, pad
# Columns of the backward work-item table (int64).
_BWD_COLS = 16  # s, g_c0, nc, dst0, hb, wb, i_lo, n_i, j_lo, n_j, hs, he, ws, we, pad, pad


# --------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------

# (BLOCK_C, BLOCK_HW, num_warps) of the forward, by output layout: pixels fastest (NCHW) or
# channels fastest (NHWC). ~8-16 elements per thread keeps ptxas at 80-96 registers (sm_90).
_FWD_CONFIGS = {"nchw": (8, 256, 8), "nhwc": (32, 32, 4)}
# Backward tile: BLOCK_C x BLOCK_HW gradient tile times BLOCK_HW x BLOCK_CELLS weights.
_BWD_CONFIG = (32, 32, 32, True)  # BLOCK_C, BLOCK_HW, BLOCK_CELLS, USE_DOT (~170 regs)
# CPU tensors only run under Triton's interpreter, whose cost is per operation rather than per
# element: there, few programs with big tiles are much faster. Same kernels, same masks; the
# GPU configurations above are compiled ahead of time (aot_specs) and also run by the tests.
# The interpreter's tl.dot (numpy matmul) is slow when BLAS threads compete for the CPU, so it
# reduces a broadcast product instead (USE_DOT=False); the tests run the tl.dot path too.
_FWD_CONFIG_INTERPRETER = (8, 4096, 4)
_BWD_CONFIG_INTERPRETER = (8, 2048, 64, False)
_NUM_WARPS = 4
_NUM_STAGES = 2


def _lam_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _dot_precision(dtype: torch.dtype) -> str:
    # fp64 only runs under the interpreter; tf32x3 keeps fp32 accuracy on tensor cores.
    return "ieee" if dtype == torch.float64 else "tf32x3"


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


def _out_memory_format(x: torch.Tensor) -> torch.memory_format:
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


def _empty_output(x: torch.Tensor, c_total: int) -> torch.Tensor:
    n, _, h, w = x.shape
    return torch.empty(
        (n, c_total, h, w), dtype=x.dtype, device=x.device, memory_format=_out_memory_format(x)
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
        out = _empty_output(x, c_total)
    lam_dtype = _lam_dtype(x.dtype)
    rtap, rlam, ctap, clam = _tap_tables(
        hh, ww, tuple((h, w) for _, h, w in shapes), bool(align_corners), lam_dtype, x.device
    )
    if x.device.type == "cpu":
        block_c, block_hw, num_warps = _FWD_CONFIG_INTERPRETER
    else:
        layout = "nhwc" if out.stride(1) < out.stride(3) else "nchw"
        block_c, block_hw, num_warps = _FWD_CONFIGS[layout]
    table, n_rows = _fwd_table(c, shapes, block_c, bool(copy_x), x.device)
    packed = _pack(branches, n)
    if packed is None:
        packed = out  # never read: no branch rows
    n_hw_blocks = triton.cdiv(hh * ww, block_hw)
    grid = (n_rows * n_hw_blocks, n)
    _upsample_concat_fwd_kernel[grid](
        x, packed, out, table, rtap, rlam, ctap, clam,
        hh, ww, packed.shape[1] if branches else 0, n_hw_blocks,
        *x.stride(), *out.stride(),
        BLOCK_C=block_c, BLOCK_HW=block_hw, num_warps=num_warps, num_stages=_NUM_STAGES,
    )  # fmt: skip
    return out


def launch_backward(grad_branches, shapes, align_corners):
    """Branch gradients as one contiguous ``(N, P)`` buffer, from ``grad_out[:, C:]``."""
    n, _, hh, ww = grad_branches.shape
    p = sum(r * h * w for r, h, w in shapes)
    dy = torch.empty((n, p), dtype=grad_branches.dtype, device=grad_branches.device)
    if not shapes:
        return dy
    lam_dtype = _lam_dtype(grad_branches.dtype)
    rtap, rlam, ctap, clam = _tap_tables(
        hh, ww, tuple((h, w) for _, h, w in shapes), bool(align_corners), lam_dtype,
        grad_branches.device,
    )  # fmt: skip
    config = _BWD_CONFIG_INTERPRETER if grad_branches.device.type == "cpu" else _BWD_CONFIG
    block_c, block_hw, block_cells, use_dot = config
    table, n_rows = _bwd_table(
        hh, ww, shapes, bool(align_corners), block_c, block_cells, grad_branches.device
    )
    _upsample_concat_bwd_kernel[(n_rows, n)](
        grad_branches, dy, table, rtap, rlam, ctap, clam,
        hh, ww, p, *grad_branches.stride(),
        BLOCK_C=block_c, BLOCK_HW=block_hw, BLOCK_CELLS=block_cells,
        DOT_PRECISION=_dot_precision(grad_branches.dtype), USE_DOT=use_dot,
        num_warps=_NUM_WARPS, num_stages=_NUM_STAGES,
    )  # fmt: skip
    return dy


def aot_specs() -> list[AotSpec]:
    """Every kernel configuration the launchers can pick on a GPU (fp32, fp16, bf16)."""
    specs = []
    for name, ty in (("fp32", "*fp32"), ("fp16", "*fp16"), ("bf16", "*bf16")):
        for layout, (block_c, block_hw, num_warps) in _FWD_CONFIGS.items():
            specs.append(
                AotSpec(
                    name=f"upsample_concat_fwd[{name},{layout},BLOCK_C={block_c},BLOCK_HW={block_hw}]",
                    kernel=_upsample_concat_fwd_kernel,
                    signature={
                        "x_ptr": ty,
                        "y_ptr": ty,
                        "out_ptr": ty,
                        "blocks_ptr": "*i64",
                        "rtap_ptr": "*i32",
                        "rlam_ptr": "*fp32",
                        "ctap_ptr": "*i32",
                        "clam_ptr": "*fp32",
                        "H": "i32",
                        "W": "i32",
                        "P": "i64",
                        "n_hw_blocks": "i32",
                        "stride_xn": "i64",
                        "stride_xc": "i64",
                        "stride_xh": "i64",
                        "stride_xw": "i64",
                        "stride_on": "i64",
                        "stride_oc": "i64",
                        "stride_oh": "i64",
                        "stride_ow": "i64",
                    },  # fmt: skip
                    constexprs={"BLOCK_C": block_c, "BLOCK_HW": block_hw},
                    num_warps=num_warps,
                    num_stages=_NUM_STAGES,
                )
            )
        block_c, block_hw, block_cells, _ = _BWD_CONFIG
        specs.append(
            AotSpec(
                name=f"upsample_concat_bwd[{name},BLOCK_C={block_c},BLOCK_HW={block_hw},BLOCK_CELLS={block_cells}]",
                kernel=_upsample_concat_bwd_kernel,
                signature={
                    "g_ptr": ty,
                    "dy_ptr": ty,
                    "work_ptr": "*i64",
                    "rtap_ptr": "*i32",
                    "rlam_ptr": "*fp32",
                    "ctap_ptr": "*i32",
                    "clam_ptr": "*fp32",
                    "H": "i32",
                    "W": "i32",
                    "P": "i64",
                    "stride_gn": "i64",
                    "stride_gc": "i64",
                    "stride_gh": "i64",
                    "stride_gw": "i64",
                },  # fmt: skip
                constexprs={
                    "BLOCK_C": block_c,
                    "BLOCK_HW": block_hw,
                    "BLOCK_CELLS": block_cells,
                    "DOT_PRECISION": "tf32x3",
                    "USE_DOT": True,
                },
                num_warps=_NUM_WARPS,
                num_stages=_NUM_STAGES,
            )
        )
    return specs


# --------------------------------------------------------------------------------------------
# torch.library registration
# --------------------------------------------------------------------------------------------


@torch.library.custom_op("psp_kernels::upsample_concat", mutates_args=())
def _upsample_concat_op(
    x: torch.Tensor, branches: list[torch.Tensor], align_corners: bool
) -> torch.Tensor:
    return launch_forward(x, branches, align_corners)


@_upsample_concat_op.register_fake
def _(x, branches, align_corners):
    c_total = x.shape[1] + sum(b.shape[1] for b in branches)
    return _empty_output(x, c_total)


@torch.library.custom_op("psp_kernels::upsample_concat_backward", mutates_args=())
def _upsample_concat_backward_op(
    grad_branches: torch.Tensor, sizes: list[int], align_corners: bool
) -> torch.Tensor:
    shapes = tuple(tuple(int(v) for v in sizes[i : i + 3]) for i in range(0, len(sizes), 3))
    return launch_backward(grad_branches, shapes, align_corners)


@_upsample_concat_backward_op.register_fake
def _(grad_branches, sizes, align_corners):
    p = 0
    for i in range(0, len(sizes), 3):
        p = p + sizes[i] * sizes[i + 1] * sizes[i + 2]
    return grad_branches.new_empty((grad_branches.shape[0], p))


def _setup_context(ctx, inputs, output):
    x, branches, align_corners = inputs
    ctx.c = x.shape[1]
    ctx.align_corners = align_corners
    ctx.shapes = [tuple(b.shape) for b in branches]  # only the shapes are needed


def _backward(ctx, grad):
    c = ctx.c
    dx = grad[:, :c]  # a view: no copy
    if not ctx.shapes:
        return dx, [], None
    sizes = [v for shape in ctx.shapes for v in shape[1:]]
    packed = _upsample_concat_backward_op(grad[:, c:], sizes, ctx.align_corners)
    grads = []
    offset = 0
    for shape in ctx.shapes:
        size = shape[1] * shape[2] * shape[3]
        grads.append(packed[:, offset : offset + size].view(shape))
        offset += size
    return dx, grads, None


_upsample_concat_op.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------
# Public function
# --------------------------------------------------------------------------------------------


def upsample_concat(x, branches, *, align_corners=True, backend="auto"):
    """Return ``cat([x] + [bilinear(y_i, x.shape[-2:]) for y_i in branches], dim=1)``, fused.

    Args:
        x: ``(N, C, H, W)`` feature map, any strides.
        branches: tensors ``(N, R_i, h_i, w_i)`` of any spatial size (1x1 and larger than ``x``
            included), same dtype and device as ``x``.
        align_corners: PyTorch's ``align_corners`` of ``F.interpolate(mode="bilinear")``.
        backend: ``"auto"``, ``"triton"`` or ``"reference"`` (see ``psp_kernels.resolve_backend``).

    Returns:
        ``(N, C + sum R_i, H, W)`` in ``x``'s memory format (like ``torch.empty_like``),
        differentiable in ``x`` and every branch; ``dx`` of the backward is a view of the
        incoming gradient.
    """
    branches = check_upsample_concat(x, branches)
    if resolve_backend(backend, x) == "reference":
        return reference.upsample_concat(x, branches, align_corners=align_corners)
    return _upsample_concat_op(x, list(branches), bool(align_corners))
