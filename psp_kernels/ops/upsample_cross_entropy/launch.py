"""Launchers of kernel 3: the row items, column windows and row groups, the grids.

:func:`launch_forward` and :func:`launch_backward` are the custom ops' Triton implementations;
they always launch the kernels (the public function decided the backend, with
:func:`kernel_limit`).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import torch
import triton

from .. import tables
from ..target import launch
from ..utils import (
    acc_dtype,
    device_guard,
    dot_precision,
    gpu_tiles,
    num_sms,
    pow2_divisor,
    sample_fits_int32,
    tile_class,
)
from . import configs
from .kernels import _upsample_ce_bwd_kernel, _upsample_ce_fwd_kernel

__all__ = ["kernel_limit", "launch_forward", "launch_backward", "Plan", "plan"]


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: plans are cached
class Plan:
    """Everything the kernels read besides the tensors: tables, work lists, tiles."""

    rows: tables.AxisTable  # H <- h: taps per output row
    cols: tables.AxisTable  # W <- w: the dense column matrix
    items: torch.Tensor  # int32 (items, 4): i0, i1, first output row, rows
    num_items: int
    clo: torch.Tensor  # int32 (column tiles,): first source column of each tile's window
    num_wt: int
    window: int  # CW
    tiles: dict  # BLOCK_R, BLOCK_W
    fwd: dict  # BLOCK_K, num_warps, num_stages of the forward
    bwd: dict  # ... of the backward
    item_rows: tuple  # (i0, i1) per item, on the host (for the backward's groups)
    untouched: bool  # some source row has no tap: the gradient buffer starts at zero
    c_div: int  # the window starts' power-of-two divisor (at most 16)
    colgroups: torch.Tensor  # int32 (groups, 3): first and end column tile, first source column
    num_colgroups: int
    wp: int  # source columns per column group (a power of two)


def _items(index: torch.Tensor, block_r: int):
    """Bands of output rows with the same source rows, split into items of <= block_r rows."""
    i0, i1 = index.tolist()
    items, start = [], 0
    for r in range(1, len(i0) + 1):
        if r == len(i0) or i0[r] != i0[start]:
            for a in range(start, r, block_r):
                items.append((i0[start], i1[start], a, min(block_r, r - a)))
            start = r
    return items


def _windows(index: torch.Tensor, width: int, block_w: int, align: int):
    """Per column tile, the first source column (a multiple of ``align``) and the window size."""
    j0, j1 = index.tolist()
    starts, most = [], 1
    for a in range(0, width, block_w):
        lo = j0[a] // align * align
        hi = j1[min(a + block_w, width) - 1] + 1
        starts.append(lo)
        most = max(most, hi - lo)
    return starts, max(16, triton.next_power_of_2(most))


def _column_groups(index: torch.Tensor, width: int, block_w: int, w: int, wp: int):
    """The backward's column groups: ``wp`` source columns each, with the column tiles whose
    taps reach them ``(first tile, end tile, first source column)``."""
    j0, j1 = index.tolist()
    tiles = [(j0[a], j1[min(a + block_w, width) - 1]) for a in range(0, width, block_w)]
    out = []
    for c_a in range(0, w, wp):
        reach = [t for t, (lo, hi) in enumerate(tiles) if hi >= c_a and lo < c_a + wp]
        out.append((reach[0], reach[-1] + 1, c_a) if reach else (0, 0, c_a))
    return out


def _column_align(logits: torch.Tensor) -> int:
    """Window starts align to this many elements: 16-byte vectors where the rows allow it."""
    if logits.stride(3) != 1:
        return 1
    return min(pow2_divisor(logits.stride(2)), max(1, 16 // logits.element_size()))


@functools.lru_cache(maxsize=64)
def _plan(size, h, w, classes, dtype, align_corners, align, gpu, device) -> Plan:
    height, width = size
    adt = acc_dtype(dtype)
    cpu = torch.device("cpu")  # the work lists are built on the host, from the host tables
    row_taps = tables.axis_table(height, h, align_corners, adt, cpu).index
    col_taps = tables.axis_table(width, w, align_corners, adt, cpu).index
    tiles, fwd, bwd = configs.config(dtype, classes, width, row_taps, gpu)
    items = _items(row_taps, tiles["BLOCK_R"])
    starts, window = _windows(col_taps, width, tiles["BLOCK_W"], align)
    touched = {r for i0, i1, _, _ in items for r in (i0, i1)}
    wp = min(configs.COLUMNS[tile_class(dtype)], triton.next_power_of_2(w))
    colgroups = _column_groups(col_taps, width, tiles["BLOCK_W"], w, wp)
    return Plan(
        tables.axis_table(height, h, align_corners, adt, device),
        tables.axis_table(width, w, align_corners, adt, device),
        torch.tensor(items, dtype=torch.int32).to(device), len(items),
        torch.tensor(starts, dtype=torch.int32).to(device), len(starts), window,
        tiles, fwd, bwd, tuple((i0, i1) for i0, i1, _, _ in items),
        len(touched) < h, pow2_divisor(math.gcd(16, *starts)),
        torch.tensor(colgroups, dtype=torch.int32).to(device), len(colgroups), wp,
    )  # fmt: skip


def plan(logits: torch.Tensor, size, align_corners: bool) -> Plan:
    """The :class:`Plan` of ``logits`` upsampled to ``size`` (cached per geometry)."""
    h, w = logits.shape[-2:]
    return _plan(
        (int(size[0]), int(size[1])), int(h), int(w), int(logits.shape[1]), logits.dtype,
        bool(align_corners), _column_align(logits), gpu_tiles(), logits.device,
    )  # fmt: skip


def kernel_limit(logits: torch.Tensor, target: torch.Tensor) -> str | None:
    """Why the kernels cannot take these sizes (labels narrower than half the logits: a column
    tile's taps would span too many source columns; offsets beyond int32 within a sample), else
    ``None``."""
    if 2 * target.shape[2] < logits.shape[3]:
        return (
            f"target {target.shape[2]} columns wide for logits {logits.shape[3]} wide (the "
            "kernels take targets at least half as wide as the logits)"
        )
    if not (sample_fits_int32(logits) and sample_fits_int32(target)):
        return "a sample of logits or target has offsets beyond int32"
    if target.shape[1] * target.shape[2] >= 2**31:
        return "a target map of 2**31 pixels or more"
    return None


def _rows(logits: torch.Tensor) -> torch.Tensor:
    """``logits`` with unit column stride: the kernels read rows of source columns (vector
    loads); other layouts (channels_last: classes fastest) are copied first, at 1/64 of the
    full-resolution map's size."""
    return logits if logits.stride(3) == 1 or logits.shape[3] == 1 else logits.contiguous()


def _hints(logits, target, p: Plan) -> dict:
    """Divisibility of the strides and window starts, for vector loads."""
    return dict(
        ZN_DIV=pow2_divisor(logits.stride(0)),
        ZK_DIV=pow2_divisor(logits.stride(1)),
        ZH_DIV=pow2_divisor(logits.stride(2)),
        C_DIV=p.c_div,
        WS_DIV=pow2_divisor(logits.shape[3]),
        TH_DIV=pow2_divisor(target.stride(1)),
    )


def _weight_table(weight, logits):
    """The class weights in the accumulation dtype, or ``None``."""
    if weight is None:
        return None
    return weight.to(acc_dtype(logits.dtype)).contiguous()


def launch_forward(logits, target, weight, ignore_index, reduction, align_corners, want_prediction):
    """``(loss, lse, total_weight, prediction)`` (see ``op.py``), by the forward kernel."""
    logits = _rows(logits)
    n, k = logits.shape[:2]
    height, width = target.shape[-2:]
    p = plan(logits, (height, width), align_corners)
    adt = acc_dtype(logits.dtype)
    lse = torch.empty(n, height, width, dtype=adt, device=logits.device)
    pred = torch.empty((n, height, width) if want_prediction else (0,), dtype=torch.long,
                       device=logits.device)  # fmt: skip
    programs = n * p.num_items * p.num_wt
    parts = torch.empty(programs, 2, dtype=adt, device=logits.device)
    cw = _weight_table(weight, logits)
    with device_guard(logits=logits, target=target, weight=weight):
        launch(
            _upsample_ce_fwd_kernel, (programs,),
            logits, target, cw if cw is not None else lse, p.cols.matrix, p.rows.lam, p.items,
            p.clo, lse, pred if want_prediction else lse, parts,
            k, height, width, logits.shape[3], int(ignore_index), p.num_items, p.num_wt,
            *logits.stride(), *target.stride(), p.cols.matrix.stride(0),
            HAS_WEIGHT=cw is not None, WANT_PRED=bool(want_prediction),
            DOT_PRECISION=dot_precision(logits.dtype), **_hints(logits, target, p),
            CW=p.window, **p.tiles, **p.fwd,
        )  # fmt: skip
    total = parts.sum(0)  # a fixed-order reduction of the programs' partial sums
    loss = total[0] / total[1] if reduction == "mean" else total[0].clone()
    return loss.to(logits.dtype), lse, total[1].clone(), pred


def _groups(p: Plan, h: int, count: int):
    """Split the source rows into ``count`` groups: (first item, end item, first row, end row)."""
    bounds = [round(g * h / count) for g in range(count + 1)]
    out = []
    for s_a, s_b in zip(bounds[:-1], bounds[1:]):
        if s_b <= s_a:
            continue
        begin = next((i for i, (_, i1) in enumerate(p.item_rows) if i1 >= s_a), p.num_items)
        end = next((i for i, (i0, _) in enumerate(p.item_rows) if i0 >= s_b), p.num_items)
        out.append((begin, max(begin, end), s_a, s_b))
    return out


def _row_group_count(others: int, h: int, slots: int) -> int:
    """Row groups for the backward: at least one wave of ``slots`` resident programs (when the
    rows allow it), and the fewest serial steps: rounds of programs x (rows per group + the band
    before them). ``others``: programs per row group (samples x column groups x class blocks)."""
    best = None
    for g in range(1, h + 1):
        programs = others * g
        if programs < slots and g < h:
            continue
        cost = -(-programs // slots) * (-(-h // g) + 1)
        if best is None or cost < best[0]:
            best = (cost, g)
    return best[1]


@functools.lru_cache(maxsize=64)
def _group_table(p: Plan, h: int, count: int, device):
    rows = _groups(p, h, count)
    return torch.tensor(rows, dtype=torch.int32).to(device), len(rows)


def launch_backward(grad, logits, target, weight, lse, total_weight, ignore_index, reduction,
                    align_corners):  # fmt: skip
    """The logits' gradient ``(N, K, h, w)`` (contiguous, the logits' dtype), by the gather."""
    logits = _rows(logits)
    n, k, h, w = logits.shape
    height, width = target.shape[-2:]
    p = plan(logits, (height, width), align_corners)
    adt = acc_dtype(logits.dtype)
    scale = grad.to(adt)
    if reduction == "mean":
        scale = scale / total_weight.to(adt)
    num_kb = triton.cdiv(k, p.bwd["BLOCK_K"])
    count = configs.FORCE_GROUPS or 1  # the interpreter: one group (few programs)
    if gpu_tiles() and logits.device.type != "cpu" and not configs.FORCE_GROUPS:
        slots = configs.BWD_RESIDENT[tile_class(logits.dtype)] * num_sms(logits.device)
        count = _row_group_count(n * num_kb * p.num_colgroups, h, slots)
    groups, num_groups = _group_table(p, h, count, logits.device)
    programs = n * num_groups * p.num_colgroups * num_kb
    alloc = torch.zeros if p.untouched else torch.empty
    dz = alloc(n, k, h, w, dtype=logits.dtype, device=logits.device)
    cw = _weight_table(weight, logits)
    with device_guard(logits=logits, target=target, weight=weight, lse=lse):
        launch(
            _upsample_ce_bwd_kernel, (programs,),
            logits, target, cw if cw is not None else lse, p.cols.matrix, p.rows.lam, p.items,
            p.clo, groups, p.colgroups, lse, scale.reshape(1), dz,
            k, height, width, w, int(ignore_index), num_kb, num_groups, p.num_colgroups,
            *logits.stride(), *target.stride(), p.cols.matrix.stride(0), *dz.stride()[:3],
            HAS_WEIGHT=cw is not None, DOT_PRECISION=dot_precision(logits.dtype),
            **_hints(logits, target, p), DN_DIV=pow2_divisor(dz.stride(0)),
            DK_DIV=pow2_divisor(dz.stride(1)), DH_DIV=pow2_divisor(dz.stride(2)), CW=p.window,
            WP=p.wp, **p.tiles, **p.bwd,
        )  # fmt: skip
    return dz
