"""Block sizes of kernel 1's launches, and their ahead-of-time compile specifications.

The GPU configurations are the only ones the launcher can pick on a GPU; :func:`aot_specs`
lists exactly these for ``python -m psp_kernels.compile_check``. Under Triton's interpreter the
launcher picks few, large blocks instead (its cost is per program and per loop step, not per
element); tests can force the GPU ones there too.
"""

from __future__ import annotations

import inspect

import torch
import triton

from ..._aot import AotSpec, Traffic, dot_kind
from ..utils import GPU_DTYPES, TRITON_DTYPE, clamp, dot_precision, interpreting, next_power_of_2
from ..utils import split_launch_options as launch_options
from .kernels import _cells_conv_kernel, _cells_to_pixels_kernel, _pool_cells_kernel

# Stage 1 and the dx gather: 16 cells (bins like (1,), (1, 2, 3)) or 64 (bins (1, 2, 3, 6));
# more cells loop over cell blocks. num_warps/stages were chosen so that no configuration spills
# registers on sm_80 or sm_90 (python -m psp_kernels.compile_check).
POOL_CONFIGS = {
    ("16bit", 16): dict(BLOCK_CELLS=16, BLOCK_W=64, BLOCK_C=64, num_warps=4, num_stages=3),
    ("16bit", 64): dict(BLOCK_CELLS=64, BLOCK_W=64, BLOCK_C=64, num_warps=8, num_stages=3),
    # float32: tf32x3 dots hold three operand copies: narrower pixel tiles
    ("fp32", 16): dict(BLOCK_CELLS=16, BLOCK_W=32, BLOCK_C=64, num_warps=4, num_stages=3),
    ("fp32", 64): dict(BLOCK_CELLS=64, BLOCK_W=32, BLOCK_C=64, num_warps=8, num_stages=2),
}
# Stage 1 with COPY_X (the fused PPM forward, ``pyramid_pooling``): the same, except fp32 with 64
# cells, whose copy store pushed sm_80 past 255 registers (16 spills): half the channels per
# program (212 registers on sm_80, 193 on sm_90; rows stay 32 columns = 128 B wide).
POOL_COPY_CONFIGS = dict(POOL_CONFIGS)
POOL_COPY_CONFIGS[("fp32", 64)] = dict(
    BLOCK_CELLS=64, BLOCK_W=32, BLOCK_C=32, num_warps=8, num_stages=2
)
DX_CONFIGS = {
    ("16bit", 16): dict(BLOCK_CELLS=16, BLOCK_W=64, BLOCK_C=64, num_warps=4, num_stages=2),
    ("16bit", 64): dict(BLOCK_CELLS=64, BLOCK_W=64, BLOCK_C=64, num_warps=8, num_stages=2),
    ("fp32", 16): dict(BLOCK_CELLS=16, BLOCK_W=64, BLOCK_C=64, num_warps=4, num_stages=2),
    ("fp32", 64): dict(BLOCK_CELLS=64, BLOCK_W=64, BLOCK_C=64, num_warps=8, num_stages=2),
}
# The dx gather with HAS_ADDEND (the fused PPM backward, ``pyramid_pooling``: dx = grad[:, :C] +
# gather in one pass): the addend tile is loaded as the dot's accumulator. Same blocks, except
# fp32 with 64 cells, which spilled on sm_80 at BLOCK_C=64 (48 spill stores one cell block, 20
# looped): half the channels per program (186 / 225 registers on sm_80, 171 / 211 on sm_90).
DX_ADD_CONFIGS = dict(DX_CONFIGS)
DX_ADD_CONFIGS[("fp32", 64)] = dict(
    BLOCK_CELLS=64, BLOCK_W=64, BLOCK_C=32, num_warps=8, num_stages=2
)
# Stage 2: few (sample, cell) columns (bin 1 and 2 at small batch) or many.
CONV_CONFIGS = {
    "narrow": dict(BLOCK_R=64, BLOCK_M=16, BLOCK_C=64, num_warps=4, num_stages=3),
    "wide": dict(BLOCK_R=64, BLOCK_M=32, BLOCK_C=32, num_warps=4, num_stages=2),
}

#: Tests set these to force the row splitting of stage 1 and the rows per program of the dx
#: gather (to cover those paths under the interpreter, which otherwise picks one of each).
FORCE_SPLITS: int | None = None
FORCE_DX_ROWS: int | None = None


def _interp_cells_block(total: int) -> int:
    return clamp(next_power_of_2(total), 16, 64)


def _dtype_class(dtype: torch.dtype) -> str:
    return "fp32" if dtype == torch.float32 else "16bit"


def _interpreter_tiles(total: int, c: int, w: int) -> dict:
    """The interpreter pays per program and per loop step, not per element: few, large blocks."""
    return dict(
        BLOCK_CELLS=_interp_cells_block(total),
        BLOCK_W=clamp(next_power_of_2(w), 16, 128),
        BLOCK_C=clamp(next_power_of_2(c), 16, 128),
        num_warps=4,
        num_stages=1,
    )


def pool_config(total: int, c: int, w: int, dtype: torch.dtype, copy_x: bool = False) -> dict:
    """Stage 1's blocks for ``total`` cells, ``c`` channels, rows of ``w`` pixels."""
    if interpreting():
        return _interpreter_tiles(total, c, w)
    configs = POOL_COPY_CONFIGS if copy_x else POOL_CONFIGS
    return configs[(_dtype_class(dtype), 16 if total <= 16 else 64)]


def dx_config(total: int, c: int, w: int, dtype: torch.dtype, addend: bool = False) -> dict:
    """The dx gather's blocks (``addend``: the fused PPM backward's ``HAS_ADDEND`` variant)."""
    if interpreting():
        return _interpreter_tiles(total, c, w)
    configs = DX_ADD_CONFIGS if addend else DX_CONFIGS
    return configs[(_dtype_class(dtype), 16 if total <= 16 else 64)]


def conv_config(m: int, r: int, c: int) -> dict:
    """Stage 2's blocks for ``m`` (sample, cell) columns, ``r`` outputs, ``c`` inputs."""
    if interpreting():
        return dict(
            BLOCK_R=clamp(next_power_of_2(r), 16, 128),
            BLOCK_M=clamp(next_power_of_2(m), 16, 128),
            BLOCK_C=clamp(next_power_of_2(c), 16, 128),
            num_warps=4,
            num_stages=1,
        )
    return CONV_CONFIGS["narrow" if m <= 16 else "wide"]


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
    for dtype in GPU_DTYPES:
        t = TRITON_DTYPE[dtype]
        prec = dot_precision(dtype)
        for key in POOL_CONFIGS:
            if key[0] != _dtype_class(dtype):
                continue
            # COPY_X: the fused PPM forward (pyramid_pooling) also writes x's copy into out
            for copy_x in (False, True):
                meta, opts = launch_options((POOL_COPY_CONFIGS if copy_x else POOL_CONFIGS)[key])
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
        for key, cfg in CONV_CONFIGS.items():
            meta, opts = launch_options(cfg)
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
        for cls, cells in DX_CONFIGS:
            if cls != _dtype_class(dtype):
                continue
            # 16 cells: bins (1,), (1, 2, 3): one cell block; 64: (1, 2, 3, 6) one block, or
            # more cells looping over blocks: compile both paths for the 64-cell configuration.
            # HAS_ADDEND: the fused PPM backward (pyramid_pooling) adds grad[:, :C] in the pass.
            for has_addend in (False, True):
                cfg = (DX_ADD_CONFIGS if has_addend else DX_CONFIGS)[(cls, cells)]
                meta, opts = launch_options(cfg)
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
# Traffic model of each launch, for the workload report's cost model (estimates)
# ----------------------------------------------------------------------------------------------


def _pool_cells_traffic(launch) -> Traffic:
    a = launch.args
    x = a["x_ptr"]
    n, c, h, w = x.shape
    rows = min(a["ROWS_PER_SPLIT"], h)
    steps = rows * triton.cdiv(w, a["BLOCK_W"])
    copy = x.nbytes if a["COPY_X"] else 0
    pooled = n * a["TOTAL"] * c * 4
    tile = a["BLOCK_CELLS"] * a["BLOCK_W"] * a["BLOCK_C"]
    return Traffic(
        moved=a["NUM_CELL_BLOCKS"] * x.nbytes + a["ws_ptr"].nbytes + copy,
        ideal=x.nbytes + pooled + copy,
        dot_flops=2.0 * launch.programs * steps * tile,
        dot_kind=dot_kind(a["DOT_PRECISION"], x.itemsize),
        steps=steps,
        step_bytes=a["BLOCK_W"] * a["BLOCK_C"] * x.itemsize,
        step_tensor="x_ptr",
        fills_gpu=a["NUM_CELL_BLOCKS"] == 1,
    )


def _cells_conv_traffic(launch) -> Traffic:
    a = launch.args
    weight, pooled_bytes = a["w_ptr"], a["M"] * a["C"] * 4
    steps = triton.cdiv(a["C"], a["BLOCK_C"])
    moved = weight.nbytes + pooled_bytes + a["y_ptr"].nbytes  # re-reads hit L2
    return Traffic(
        moved=moved,
        ideal=moved,
        dot_flops=2.0 * launch.programs * steps * a["BLOCK_R"] * a["BLOCK_M"] * a["BLOCK_C"],
        dot_kind="fp32",  # input_precision="ieee"
        steps=steps,
        step_bytes=a["BLOCK_C"] * (a["BLOCK_R"] * weight.itemsize + a["BLOCK_M"] * 4),
        step_tensor="w_ptr",
    )


def _cells_to_pixels_traffic(launch) -> Traffic:
    a = launch.args
    dx = a["dx_ptr"]
    rows = a["ROWS_PER_PROGRAM"]
    blocks = 1 if a["ONE_CELL_BLOCK"] else triton.cdiv(a["TOTAL"], a["BLOCK_CELLS"])
    addend = dx.nbytes if a["HAS_ADDEND"] else 0
    moved = dx.nbytes + addend + a["dp_ptr"].nbytes
    tile = a["BLOCK_W"] * a["BLOCK_C"] * a["BLOCK_CELLS"]
    if a["HAS_ADDEND"]:
        steps, step_bytes, step_tensor = rows, a["BLOCK_W"] * a["BLOCK_C"] * dx.itemsize, "add_ptr"
    else:
        steps, step_bytes, step_tensor = 1, a["BLOCK_CELLS"] * a["BLOCK_C"] * 4, "dp_ptr"
    if not a["ONE_CELL_BLOCK"]:
        steps = rows * blocks
    return Traffic(
        moved=moved,
        ideal=moved,
        dot_flops=2.0 * launch.programs * rows * blocks * tile,
        dot_kind=dot_kind(a["DOT_PRECISION"], 4),
        steps=steps,
        step_bytes=step_bytes,
        step_tensor=step_tensor,
    )


TRAFFIC = {
    "_pool_cells_kernel": _pool_cells_traffic,
    "_cells_conv_kernel": _cells_conv_traffic,
    "_cells_to_pixels_kernel": _cells_to_pixels_traffic,
}
