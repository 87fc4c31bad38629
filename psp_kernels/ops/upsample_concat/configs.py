"""Block sizes of kernel 2's launches, and their ahead-of-time compile specifications."""

from __future__ import annotations

import triton

from ..._aot import AotSpec, Traffic, dot_kind
from ..utils import GPU_DTYPES, TRITON_DTYPE, dot_precision, interpreting
from .kernels import _upsample_concat_bwd_kernel, _upsample_concat_fwd_kernel

# (BLOCK_C, BLOCK_HW, num_warps) of the forward, by output layout: pixels fastest (NCHW) or
# channels fastest (NHWC). ~8-16 elements per thread keeps ptxas at 80-96 registers (sm_90).
FWD_CONFIGS = {"nchw": (8, 256, 8), "nhwc": (32, 32, 4)}
# Backward tile: BLOCK_C x BLOCK_HW gradient tile times BLOCK_HW x BLOCK_CELLS weights.
BWD_CONFIG = (32, 32, 32, True)  # BLOCK_C, BLOCK_HW, BLOCK_CELLS, USE_DOT (~170 regs)
# Under Triton's interpreter, whose cost is per operation rather than per element, few programs
# with big tiles are much faster. Same kernels, same masks; the GPU configurations above are
# compiled ahead of time (aot_specs) and also run by the tests. The interpreter's tl.dot (numpy
# matmul) is slow when BLAS threads compete for the CPU, so it reduces a broadcast product
# instead (USE_DOT=False); the tests run the tl.dot path too.
FWD_CONFIG_INTERPRETER = (8, 4096, 4)
BWD_CONFIG_INTERPRETER = (8, 2048, 64, False)
NUM_WARPS = 4
NUM_STAGES = 2


def fwd_config(layout: str) -> tuple[int, int, int]:
    """``(BLOCK_C, BLOCK_HW, num_warps)`` of the forward for an ``"nchw"``/``"nhwc"`` output."""
    return FWD_CONFIG_INTERPRETER if interpreting() else FWD_CONFIGS[layout]


def bwd_config() -> tuple[int, int, int, bool]:
    """``(BLOCK_C, BLOCK_HW, BLOCK_CELLS, USE_DOT)`` of the backward."""
    return BWD_CONFIG_INTERPRETER if interpreting() else BWD_CONFIG


def aot_specs() -> list[AotSpec]:
    """Every kernel configuration the launchers can pick on a GPU (fp32, fp16, bf16)."""
    specs = []
    for dtype in GPU_DTYPES:
        name = TRITON_DTYPE[dtype]
        ty = f"*{name}"
        for layout, (block_c, block_hw, num_warps) in FWD_CONFIGS.items():
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
                    num_stages=NUM_STAGES,
                )
            )
        block_c, block_hw, block_cells, _ = BWD_CONFIG
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
                    "DOT_PRECISION": dot_precision(dtype),
                    "USE_DOT": True,
                },
                num_warps=NUM_WARPS,
                num_stages=NUM_STAGES,
            )
        )
    return specs


# ----------------------------------------------------------------------------------------------
# Traffic model of each launch, for the workload report's cost model (estimates)
# ----------------------------------------------------------------------------------------------


def _fwd_traffic(launch) -> Traffic:
    a = launch.args
    x, out = a["x_ptr"], a["out_ptr"]
    n, c_total, h, w = out.shape
    rows = a["blocks_ptr"].numel // 8
    channels = min(c_total, rows * a["BLOCK_C"])  # ragged blocks: a slight overestimate
    copy = x.nbytes if channels > c_total - x.shape[1] else 0  # the table has copy rows
    moved = n * channels * h * w * out.itemsize + copy + n * a["P"] * out.itemsize
    return Traffic(
        moved=moved,
        ideal=moved,
        steps=1,
        step_bytes=a["BLOCK_C"] * a["BLOCK_HW"] * out.itemsize,
        step_tensor="x_ptr",
    )


def _bwd_traffic(launch) -> Traffic:
    a = launch.args
    g, dy = a["g_ptr"], a["dy_ptr"]
    # the output rectangle touching a block of cells: the whole map for bins up to 3, about
    # 1/hb of it per row block of the larger bins; each of a program's steps is BLOCK_HW pixels
    steps = triton.cdiv(a["H"] * a["W"], a["BLOCK_HW"])
    moved = g.nbytes + dy.nbytes
    tile = a["BLOCK_C"] * a["BLOCK_HW"] * a["BLOCK_CELLS"]
    return Traffic(
        moved=moved,
        ideal=moved,
        dot_flops=2.0 * launch.programs * steps * tile,
        dot_kind=dot_kind(a["DOT_PRECISION"], 4),
        steps=steps,
        step_bytes=a["BLOCK_C"] * a["BLOCK_HW"] * g.itemsize,
        step_tensor="g_ptr",
    )


TRAFFIC = {"_upsample_concat_fwd_kernel": _fwd_traffic, "_upsample_concat_bwd_kernel": _bwd_traffic}
