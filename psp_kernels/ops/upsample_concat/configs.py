"""Block sizes of kernel 2's launches, their ahead-of-time compile specs, and traffic model."""

from __future__ import annotations

import torch
import triton

from ..._aot import AotSpec, Traffic, dot_kind
from ..utils import (
    GPU_DTYPES,
    TRITON_DTYPE,
    dot_precision,
    gpu_tiles,
    split_launch_options,
    tile_class,
)
from .kernels import _upsample_concat_bwd_kernel, _upsample_concat_fwd_kernel

#: Cell blocks of the bilinear tables (``ops.tables.cells_block``).
CELL_BLOCKS = (16, 32, 64, 128)
#: Most cells per tile on a GPU: a branch of more (bins of 9 and up) loops over 64-cell blocks
#: (forward) or takes one work row per block (backward); 128-cell tiles spilled (the backward's
#: by 1.6 KB, the float32 forward's on sm_80).
MAX_CELLS = 64
# Forward: a BLOCK_C x BLOCK_P output tile per step (64 x 64 x 2 B = 8 KB for 16-bit), the
# table tile (fp32) as big: 128-pixel tiles took 131 KB of shared memory, one program per SM.
FWD_CONFIGS = {
    "16bit": dict(BLOCK_C=64, BLOCK_P=64, num_warps=8, num_stages=3),
    "fp32": dict(BLOCK_C=64, BLOCK_P=32, num_warps=8, num_stages=3),
}
# Backward: a BLOCK_C x BLOCK_P tile of the gradient per step, all cells of a block of BLOCK_K.
BWD_CONFIGS = {
    "16bit": dict(BLOCK_C=32, BLOCK_P=128, num_warps=4, num_stages=3),
    "fp32": dict(BLOCK_C=32, BLOCK_P=64, num_warps=4, num_stages=3),
}
#: Branches per forward launch (the kernel takes that many branch pointers).
GROUP = 4
#: Tests set this to force the pixels per forward program (several pixel chunks).
FORCE_PIXELS: int | None = None


def _interpreter(cells_pad: int, num_k: bool) -> dict:
    cfg = dict(BLOCK_C=64, BLOCK_P=1024, BLOCK_K=min(cells_pad, 128), num_warps=4, num_stages=1)
    if num_k:
        cfg["NUM_K_BLOCKS"] = triton.cdiv(cells_pad, cfg["BLOCK_K"])
    return cfg


def fwd_config(dtype: torch.dtype, cells_pad: int) -> tuple[dict, dict]:
    """``(constexprs, options)`` of the forward for tables of ``cells_pad`` cells per branch."""
    if not gpu_tiles():
        return split_launch_options(_interpreter(cells_pad, True))
    cfg = dict(FWD_CONFIGS[tile_class(dtype)], BLOCK_K=min(cells_pad, MAX_CELLS))
    cfg["NUM_K_BLOCKS"] = triton.cdiv(cells_pad, cfg["BLOCK_K"])
    return split_launch_options(cfg)


def bwd_config(dtype: torch.dtype, cells_pad: int) -> tuple[dict, dict]:
    """``(constexprs, options)`` of the backward."""
    if not gpu_tiles():
        return split_launch_options(_interpreter(cells_pad, False))
    return split_launch_options(
        dict(BWD_CONFIGS[tile_class(dtype)], BLOCK_K=min(cells_pad, MAX_CELLS))
    )


def aot_specs() -> list[AotSpec]:
    """Every kernel configuration the launchers can pick on a GPU (fp32, fp16, bf16)."""
    specs = []
    for dtype in GPU_DTYPES:
        t, cls, prec = TRITON_DTYPE[dtype], tile_class(dtype), dot_precision(dtype)
        ptr = f"*{t}"
        for block_k in CELL_BLOCKS:
            tile_k = min(block_k, MAX_CELLS)
            specs.append(AotSpec.of(
                f"upsample_concat_fwd[{t},cells={block_k}]", _upsample_concat_fwd_kernel,
                dict(X_FLAT=True, O_FLAT=True, XN_DIV=1, XC_DIV=1, ON_DIV=1, OC_DIV=1, HW_DIV=1,
                     ROW_DIV=1, DOT_PRECISION=prec, NUM_K_BLOCKS=block_k // tile_k),
                dict({f"y{i}_ptr": ptr for i in range(GROUP)}, x_ptr=ptr, out_ptr=ptr,
                     t_ptr="*fp32", work_ptr="*i32"),
                dict(FWD_CONFIGS[cls], BLOCK_K=tile_k),
            ))  # fmt: skip
            specs.append(AotSpec.of(
                f"upsample_concat_bwd[{t},cells={block_k}]", _upsample_concat_bwd_kernel,
                dict(G_FLAT=True, GN_DIV=1, GC_DIV=1, HW_DIV=1, ROW_DIV=1, DOT_PRECISION=prec),
                dict(g_ptr=ptr, dy_ptr=ptr, t_ptr="*fp32", work_ptr="*i32"),
                dict(BWD_CONFIGS[cls], BLOCK_K=tile_k),
            ))  # fmt: skip
    return specs


# ----------------------------------------------------------------------------------------------
# Traffic model of each launch, for the workload report's cost model (estimates)
# ----------------------------------------------------------------------------------------------


def _fwd_traffic(launch) -> Traffic:
    a = launch.args
    out = a["out_ptr"]
    rows = a["work_ptr"].numel // 7
    n = launch.programs // (rows * a["NUM_P_BLOCKS"])
    channels = min(out.shape[1], rows * a["BLOCK_C"])  # ragged blocks: a slight overestimate
    written = n * channels * a["HW"] * out.itemsize
    copy = (
        n * a["x_ptr"].shape[1] * a["HW"] * out.itemsize
        if channels > out.shape[1] - a["x_ptr"].shape[1]
        else 0
    )
    steps = triton.cdiv(a["P_PER_PROGRAM"], a["BLOCK_P"])
    tile = a["BLOCK_C"] * a["BLOCK_P"] * a["BLOCK_K"] * a["NUM_K_BLOCKS"]
    moved = written + copy + a["t_ptr"].nbytes
    return Traffic(
        moved=moved,
        ideal=written + copy,
        dot_flops=2.0 * launch.programs * steps * tile,
        dot_kind=dot_kind(a["DOT_PRECISION"], 4),
        steps=steps,
        step_tensor="x_ptr" if copy else "t_ptr",
        fills_gpu=True,
    )


def _bwd_traffic(launch) -> Traffic:
    a = launch.args
    g, dy = a["g_ptr"], a["dy_ptr"]
    n = g.shape[0]
    rows = a["work_ptr"].numel // 7
    steps = triton.cdiv(a["HW"], a["BLOCK_P"])
    g_bytes = n * g.shape[1] * a["HW"] * g.itemsize
    blocks_per_channel = max(1, rows * a["BLOCK_C"] // max(g.shape[1], 1))  # cell blocks re-read g
    return Traffic(
        moved=g_bytes * blocks_per_channel + dy.nbytes + a["t_ptr"].nbytes,
        ideal=g_bytes + dy.nbytes,
        dot_flops=2.0 * launch.programs * steps * a["BLOCK_C"] * a["BLOCK_P"] * a["BLOCK_K"],
        dot_kind=dot_kind(a["DOT_PRECISION"], 4),
        steps=steps,
        step_tensor="g_ptr",
    )


TRAFFIC = {"_upsample_concat_fwd_kernel": _fwd_traffic, "_upsample_concat_bwd_kernel": _bwd_traffic}
