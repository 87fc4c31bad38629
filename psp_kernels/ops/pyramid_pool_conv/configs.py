"""Block sizes of kernel 1's launches, their ahead-of-time compile specs, and their traffic model.

The GPU configurations are the only ones the launcher can pick on a GPU; :func:`aot_specs`
lists exactly these for ``python -m psp_kernels.compile_check``, and the workload report
(``--workload``) compiles what a workload really launches with them. Under Triton's interpreter
the launcher picks few, large blocks (its cost is per program and per loop step, not per
element), unless ``ops.utils.GPU_TILES`` asks for the GPU ones (tests).
"""

from __future__ import annotations

import torch
import triton

from ..._aot import AotSpec, Traffic, dot_kind
from ..utils import (
    GPU_DTYPES,
    TRITON_DTYPE,
    clamp,
    dot_precision,
    gpu_tiles,
    next_power_of_2,
    tile_class,
)
from .kernels import _cells_conv_kernel, _cells_to_pixels_kernel, _pool_cells_kernel

#: Cell blocks the tables come in (``ops.tables.cells_block``): one configuration per block.
CELL_BLOCKS = (16, 32, 64, 128)

# Stage 1: BLOCK_C channels x BLOCK_P pixels of x per step, BLOCK_K cells. 16-bit: 64 x 128 x
# 2 B = 16 KB; float32 (tf32x3 dots hold three operand copies) 64 x 32 x 4 B = 8 KB. Chosen with
# the workload report: no spills on sm_80 / sm_90 (64 x 64 fp32 spilled on sm_80), two programs
# per SM on sm_90.
POOL_CONFIGS = {
    "16bit": dict(BLOCK_C=64, BLOCK_P=128, num_warps=8, num_stages=3),
    "fp32": dict(BLOCK_C=64, BLOCK_P=32, num_warps=8, num_stages=3),
}
# Stage 2: BLOCK_R output channels x BLOCK_M (sample, cell) columns, BLOCK_K input channels per
# step (weights 64 x 128 x 2 B), all bins of a group in one launch.
CONV_CONFIGS = {
    "16bit": dict(BLOCK_R=64, BLOCK_M=32, BLOCK_K=128, num_warps=8, num_stages=3),
    "fp32": dict(BLOCK_R=64, BLOCK_M=32, BLOCK_K=32, num_warps=4, num_stages=3),
}
# The dx gather: BLOCK_C channels x BLOCK_P pixels of dx per step. A 128-cell block (pyramids
# of more than 64 cells) takes the DX_LARGE tiles: with the default ones its table tiles
# overflowed shared memory (16-bit: 245760 B on sm_90) and its float32 dots spilled.
DX_CONFIGS = {
    "16bit": dict(BLOCK_C=64, BLOCK_P=128, num_warps=8, num_stages=3),
    "fp32": dict(BLOCK_C=64, BLOCK_P=32, num_warps=8, num_stages=3),
}
DX_LARGE = {
    "16bit": dict(BLOCK_C=64, BLOCK_P=64, num_warps=8, num_stages=3),
    "fp32": dict(BLOCK_C=64, BLOCK_P=16, num_warps=8, num_stages=3),
}
#: Bins per stage-2 launch (the kernel takes that many weight / scale / shift / output pointers).
GROUP = 4

#: Tests set these to force the pixel splits of stage 1 and the pixels per dx program (to cover
#: those paths under the interpreter, which otherwise picks one of each).
FORCE_SPLITS: int | None = None
FORCE_DX_PIXELS: int | None = None


def _with_cells(cfg: dict, block_k: int) -> dict:
    return dict(cfg, BLOCK_K=min(block_k, 128))


def _interpreter_tiles(c: int, hw: int, block_k: int) -> dict:
    return dict(
        BLOCK_C=clamp(next_power_of_2(c), 16, 128),
        BLOCK_P=clamp(next_power_of_2(hw), 16, 256),
        BLOCK_K=min(block_k, 128),
        num_warps=4,
        num_stages=1,
    )


def pool_config(c: int, hw: int, block_k: int, dtype: torch.dtype) -> dict:
    """Stage 1's blocks for ``c`` channels, ``hw`` pixels, cell blocks of ``block_k``."""
    if not gpu_tiles():
        return _interpreter_tiles(c, hw, block_k)
    return _with_cells(POOL_CONFIGS[tile_class(dtype)], block_k)


def dx_config(c: int, hw: int, block_k: int, dtype: torch.dtype) -> dict:
    """The dx gather's blocks."""
    if not gpu_tiles():
        return _interpreter_tiles(c, hw, block_k)
    return _with_cells(_dx_tiles(tile_class(dtype), block_k), block_k)


def _dx_tiles(cls: str, block_k: int) -> dict:
    return (DX_LARGE if block_k > 64 else DX_CONFIGS)[cls]


def conv_config(m: int, r: int, c: int, dtype: torch.dtype) -> dict:
    """Stage 2's blocks for at most ``m`` (sample, cell) columns, ``r`` outputs, ``c`` inputs."""
    if not gpu_tiles():
        return dict(
            BLOCK_R=clamp(next_power_of_2(r), 16, 128),
            BLOCK_M=clamp(next_power_of_2(m), 16, 128),
            BLOCK_K=clamp(next_power_of_2(c), 16, 128),
            num_warps=4,
            num_stages=1,
        )
    return dict(CONV_CONFIGS[tile_class(dtype)])


# ----------------------------------------------------------------------------------------------
# Ahead-of-time compile specifications (the generic check: every configuration, generic ints)
# ----------------------------------------------------------------------------------------------


def aot_specs() -> list[AotSpec]:
    """Every (kernel, configuration, dtype) the launchers can pick on a GPU, for compile_check."""
    specs = []
    divs = dict(XN_DIV=1, XC_DIV=1, ON_DIV=1, OC_DIV=1, HW_DIV=1)
    for dtype in GPU_DTYPES:
        t, cls, prec = TRITON_DTYPE[dtype], tile_class(dtype), dot_precision(dtype)
        ptr = f"*{t}"
        for block_k in CELL_BLOCKS:
            for copy_x in (False, True):
                specs.append(AotSpec.of(
                    f"pool_cells[{t},cells={block_k}{',copy_x' if copy_x else ''}]",
                    _pool_cells_kernel, dict(divs, COPY_X=copy_x, DOT_PRECISION=prec),
                    dict(x_ptr=ptr, t_ptr=ptr, area_ptr="*fp32", ws_ptr="*fp32", out_ptr=ptr),
                    _with_cells(POOL_CONFIGS[cls], block_k),
                ))  # fmt: skip
            for add in (False, True):
                specs.append(AotSpec.of(
                    f"cells_to_pixels[{t},cells={block_k}{',addend' if add else ''}]",
                    _cells_to_pixels_kernel,
                    dict(DN_DIV=1, DC_DIV=1, AN_DIV=1, AC_DIV=1, HW_DIV=1, HAS_ADDEND=add,
                         DOT_PRECISION=prec, NUM_K_BLOCKS=1),
                    dict(dp_ptr="*fp32", area_ptr="*fp32", t_ptr="*fp32", dx_ptr=ptr, add_ptr=ptr),
                    _with_cells(_dx_tiles(cls, block_k), block_k),
                ))  # fmt: skip
        pointers = {f"{k}{i}_ptr": ptr for k in "wsby" for i in range(GROUP)}
        pointers.update(ws_ptr="*fp32", tiles_ptr="*i32", pooled_ptr="*fp32")
        specs.append(AotSpec.of(
            f"cells_conv[{t}]", _cells_conv_kernel,
            dict(SPLITS=2, HAS_SCALE=True, HAS_SHIFT=True, RELU=True, WRITE_POOLED=True,
                 DOT_PRECISION=prec),
            pointers, CONV_CONFIGS[cls],
        ))  # fmt: skip
    return specs


# ----------------------------------------------------------------------------------------------
# Traffic model of each launch, for the workload report's cost model (estimates)
# ----------------------------------------------------------------------------------------------


def _pool_cells_traffic(launch) -> Traffic:
    a = launch.args
    x = a["x_ptr"]
    n, c = x.shape[0], x.shape[1]
    hw = a["HW"]
    steps = triton.cdiv(min(a["P_PER_SPLIT"], hw), a["BLOCK_P"])
    x_bytes = n * c * hw * x.itemsize
    copy = x_bytes if a["COPY_X"] else 0
    ws = a["ws_ptr"].nbytes
    table = a["t_ptr"].nbytes  # read from L2 by every program; from HBM once
    tile = a["BLOCK_C"] * a["BLOCK_P"] * a["BLOCK_K"]
    return Traffic(
        moved=a["NUM_K_BLOCKS"] * x_bytes + copy + ws + table,
        ideal=x_bytes + copy + n * a["TOTAL"] * c * 4,
        dot_flops=2.0 * launch.programs * steps * tile,
        dot_kind=dot_kind(a["DOT_PRECISION"], x.itemsize),
        steps=steps,
        step_tensor="x_ptr",
        fills_gpu=True,
    )


def _cells_conv_traffic(launch) -> Traffic:
    a = launch.args
    ws = a["ws_ptr"]
    weights = sum(a[f"w{i}_ptr"].nbytes for i in range(a["NUM_BINS"]))
    outputs = sum(a[f"y{i}_ptr"].nbytes for i in range(a["NUM_BINS"]))
    pooled = a["pooled_ptr"].nbytes if a["WRITE_POOLED"] else 0
    steps = triton.cdiv(a["C"], a["BLOCK_K"])
    tile = a["BLOCK_R"] * a["BLOCK_M"] * a["BLOCK_K"]
    itemsize = a["w0_ptr"].itemsize
    return Traffic(
        moved=weights + ws.nbytes + pooled + outputs,  # re-reads of the weights hit L2
        ideal=weights + ws.nbytes // a["SPLITS"] + outputs,
        dot_flops=2.0 * launch.programs * steps * tile,
        dot_kind=dot_kind(a["DOT_PRECISION"], itemsize),
        steps=steps,
        step_tensor="w0_ptr",
    )


def _cells_to_pixels_traffic(launch) -> Traffic:
    a = launch.args
    dx = a["dx_ptr"]
    n, c = dx.shape[0], dx.shape[1]
    dx_bytes = n * c * a["HW"] * dx.itemsize
    addend = dx_bytes if a["HAS_ADDEND"] else 0
    steps = triton.cdiv(a["P_PER_PROGRAM"], a["BLOCK_P"])
    moved = dx_bytes + addend + a["dp_ptr"].nbytes + a["t_ptr"].nbytes
    tile = a["BLOCK_C"] * a["BLOCK_P"] * a["BLOCK_K"] * a["NUM_K_BLOCKS"]
    step_tensor = "add_ptr" if a["HAS_ADDEND"] else "t_ptr"
    return Traffic(
        moved=moved,
        ideal=dx_bytes + addend + a["dp_ptr"].nbytes,
        dot_flops=2.0 * launch.programs * steps * tile,
        dot_kind=dot_kind(a["DOT_PRECISION"], 4),
        steps=steps,
        step_tensor=step_tensor,
        fills_gpu=True,
    )


TRAFFIC = {
    "_pool_cells_kernel": _pool_cells_traffic,
    "_cells_conv_kernel": _cells_conv_traffic,
    "_cells_to_pixels_kernel": _cells_to_pixels_traffic,
}
