"""Tile sizes of the concat-free head op's launches, and their ahead-of-time compile specs."""

from __future__ import annotations

import torch
import triton

from ..._aot import AotSpec, Traffic, dot_kind
from ..utils import GPU_DTYPES, TRITON_DTYPE, dot_precision, tl_acc_dtype
from .kernels import _shifted_upsample_add_bwd_kernel, _shifted_upsample_add_fwd_kernel

#: Largest ``K = 3 * sum(h_b)`` (and ``J = 3 * sum(w_b)``) the kernels take in one tile (bins up
#: to a sum of 21, e.g. 1, 2, 3, 6, 8); larger pyramids use the separable PyTorch path. One tile
#: width for every pyramid that fits (PSPNet's 1, 2, 3, 6 has K = J = 36): a single compiled
#: configuration per dtype; the zero columns cost nothing measurable.
MAX_K = 64
BLOCK_H = 32
BLOCK_W = 32
NUM_WARPS = 8


def meta(dtype: torch.dtype) -> dict:
    """Constexprs and launch options of both kernels for inputs of ``dtype``."""
    return dict(
        BLOCK_H=BLOCK_H, BLOCK_W=BLOCK_W, K_PAD=MAX_K, J_PAD=MAX_K,
        PRECISION=dot_precision(dtype), ACC=tl_acc_dtype(dtype), num_warps=NUM_WARPS,
    )  # fmt: skip


def aot_specs() -> list[AotSpec]:
    """Every configuration the launcher can pick (one per dtype), for compile_check."""
    specs = []
    for dtype in GPU_DTYPES:
        ty = TRITON_DTYPE[dtype]
        consts = meta(dtype)
        num_warps = consts.pop("num_warps")
        tables = {"ahat_ptr": "*fp32", "bhat_ptr": "*fp32", "k_ptr": "*i32", "j_ptr": "*i32",
                  "O": "i32", "H": "i32", "W": "i32", "K": "i32", "J": "i32",
                  "stride_ah": "i32", "stride_bw_": "i32", "stride_k": "i32", "stride_j": "i32"}  # fmt: skip
        i64 = "i64"
        fwd = dict(tables, base_ptr=f"*{ty}", v_ptr=f"*{ty}", out_ptr=f"*{ty}",
                   stride_bn=i64, stride_bo=i64, stride_bh=i64, stride_bw=i64, stride_vn=i64,
                   stride_vo=i64, stride_on=i64, stride_oo=i64, stride_oh=i64, stride_ow=i64)  # fmt: skip
        bwd = dict(tables, grad_ptr=f"*{ty}", dv_ptr=f"*{ty}", stride_gn=i64, stride_go=i64,
                   stride_gh=i64, stride_gw=i64, stride_dvn=i64, stride_dvo=i64)  # fmt: skip
        for label, kernel, sig in (("fwd", _shifted_upsample_add_fwd_kernel, fwd),
                                   ("bwd", _shifted_upsample_add_bwd_kernel, bwd)):  # fmt: skip
            specs.append(AotSpec(f"shifted_upsample_add_{label}[{ty}]", kernel, sig, consts,
                                 num_warps=num_warps))  # fmt: skip
    return specs


# ----------------------------------------------------------------------------------------------
# Traffic model of each launch, for the workload report's cost model (estimates)
# ----------------------------------------------------------------------------------------------


def _fwd_traffic(launch) -> Traffic:
    a = launch.args
    base = a["base_ptr"]
    h_steps = triton.cdiv(a["H"], a["BLOCK_H"])
    k, j, bw = a["K_PAD"], a["J_PAD"], a["BLOCK_W"]
    moved = base.nbytes + a["out_ptr"].nbytes + a["v_ptr"].nbytes
    flops = launch.programs * (2.0 * k * j * bw + h_steps * 2.0 * a["BLOCK_H"] * k * bw)
    return Traffic(
        moved=moved,
        ideal=moved,
        dot_flops=flops,
        dot_kind=dot_kind(a["PRECISION"], 4),
        steps=1 + h_steps,
        step_bytes=a["BLOCK_H"] * bw * base.itemsize,
        step_tensor="base_ptr",
    )


def _bwd_traffic(launch) -> Traffic:
    a = launch.args
    grad = a["grad_ptr"]
    w_steps = triton.cdiv(a["W"], a["BLOCK_W"])
    steps = w_steps * triton.cdiv(a["H"], a["BLOCK_H"])
    k, j, bh, bw = a["K_PAD"], a["J_PAD"], a["BLOCK_H"], a["BLOCK_W"]
    moved = grad.nbytes + a["dv_ptr"].nbytes
    flops = launch.programs * (steps * 2.0 * k * bh * bw + w_steps * 2.0 * k * bw * j)
    return Traffic(
        moved=moved,
        ideal=moved,
        dot_flops=flops,
        dot_kind=dot_kind(a["PRECISION"], 4),
        steps=steps,
        step_bytes=bh * bw * grad.itemsize,
        step_tensor="grad_ptr",
    )


TRAFFIC = {
    "_shifted_upsample_add_fwd_kernel": _fwd_traffic,
    "_shifted_upsample_add_bwd_kernel": _bwd_traffic,
}
