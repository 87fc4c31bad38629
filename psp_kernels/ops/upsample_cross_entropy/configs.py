"""Tiles of kernel 3's launches, their ahead-of-time compile specs, and traffic model."""

from __future__ import annotations

import inspect

import torch
import triton

from ..._aot import AotSpec, Traffic, dot_kind
from ..utils import GPU_DTYPES, TRITON_DTYPE, clamp, dot_precision, split_launch_options, tile_class
from .kernels import _upsample_ce_bwd_kernel, _upsample_ce_fwd_kernel

#: Widest logits the kernels take (columns): the backward holds a ``BLOCK_K x next_pow2(w)``
#: gradient row per source row it owns (PSPNet: 60 at 473, 90 at 713).
MAX_WIDTH = 128
#: GPU tiles: BLOCK_R output rows (one band at zoom 8) x BLOCK_W columns x BLOCK_K classes.
TILES = {
    "16bit": dict(BLOCK_K=16, BLOCK_R=8, BLOCK_W=64),
    "fp32": dict(BLOCK_K=16, BLOCK_R=8, BLOCK_W=64),
}
FWD_OPTIONS = {"16bit": dict(num_warps=8, num_stages=2), "fp32": dict(num_warps=8, num_stages=2)}
#: Tests set this to force the backward's source-row groups (several groups, on CPU tensors).
FORCE_GROUPS: int | None = None
BWD_OPTIONS = {"16bit": dict(num_warps=8, num_stages=2), "fp32": dict(num_warps=8, num_stages=2)}


def _band_rows(row_index: torch.Tensor) -> int:
    """The most output rows that share their two source rows."""
    i0 = row_index[0]
    return int(torch.unique_consecutive(i0, return_counts=True)[1].max())


def config(dtype: torch.dtype, classes: int, width: int, row_index, gpu: bool):
    """``(tiles, forward options, backward options)`` for these sizes.

    On a GPU the fixed :data:`TILES`; in the interpreter (``gpu`` false) few, large programs:
    all classes up to 64, all columns up to 128 and a whole band of rows in one tile.
    """
    if gpu:
        cls = tile_class(dtype)
        return dict(TILES[cls]), dict(FWD_OPTIONS[cls]), dict(BWD_OPTIONS[cls])
    tiles = dict(
        BLOCK_K=clamp(triton.next_power_of_2(classes), 16, 64),
        BLOCK_R=clamp(triton.next_power_of_2(_band_rows(row_index)), 1, 16),
        BLOCK_W=clamp(triton.next_power_of_2(width), 16, 128),
    )
    options = dict(num_warps=4, num_stages=1)
    return tiles, options, dict(options)


def _spec(name, kernel, constexprs, pointers, cfg) -> AotSpec:
    meta, opts = split_launch_options(cfg)
    constexprs = dict(constexprs, **meta)
    names = inspect.signature(kernel.fn).parameters
    signature = {k: pointers.get(k, "i32") for k in names if k not in constexprs}
    return AotSpec(name, kernel, signature, constexprs, opts["num_warps"], opts["num_stages"])


def aot_specs() -> list[AotSpec]:
    """Every kernel configuration the launchers pick on a GPU (fp32, fp16, bf16), at PSPNet's
    geometry (a 16-column window, 60-wide logits padded to 64)."""
    specs = []
    for dtype in GPU_DTYPES:
        t, cls, prec = TRITON_DTYPE[dtype], tile_class(dtype), dot_precision(dtype)
        common = dict(ZN_DIV=16, ZK_DIV=16, ZH_DIV=4, C_DIV=4, WS_DIV=4, TH_DIV=1,
                      DOT_PRECISION=prec, CW=16, **TILES[cls])  # fmt: skip
        ptrs = dict(z_ptr=f"*{t}", t_ptr="*i64", cw_ptr="*fp32", aw_ptr="*fp32", lam_ptr="*fp32",
                    item_ptr="*i32", clo_ptr="*i32", group_ptr="*i32", lse_ptr="*fp32",
                    pred_ptr="*i64", part_ptr="*fp32", scale_ptr="*fp32", dz_ptr=f"*{t}")  # fmt: skip
        for pred in (False, True):
            specs.append(_spec(
                f"upsample_ce_fwd[{t},pred={pred}]", _upsample_ce_fwd_kernel,
                dict(common, HAS_WEIGHT=False, WANT_PRED=pred), ptrs, FWD_OPTIONS[cls],
            ))  # fmt: skip
        specs.append(_spec(
            f"upsample_ce_bwd[{t}]", _upsample_ce_bwd_kernel,
            dict(common, HAS_WEIGHT=False, WP=64), ptrs, BWD_OPTIONS[cls],
        ))  # fmt: skip
    return specs


# ----------------------------------------------------------------------------------------------
# Traffic model of each launch, for the workload report's cost model (estimates)
# ----------------------------------------------------------------------------------------------


def _common(a) -> tuple[int, int, int]:
    """Bytes of the logits, of the target and of the float32 per-pixel logsumexp."""
    z, t, lse = a["z_ptr"], a["t_ptr"], a["lse_ptr"]
    return z.nbytes, t.nbytes, lse.nbytes


def _fwd_traffic(launch) -> Traffic:
    a = launch.args
    z_bytes, t_bytes, lse_bytes = _common(a)
    pred_bytes = a["pred_ptr"].nbytes if a["WANT_PRED"] else 0
    steps = triton.cdiv(a["K"], a["BLOCK_K"])
    per_step = 2 * 2.0 * a["BLOCK_K"] * a["CW"] * a["BLOCK_W"]  # two products per class block
    ideal = z_bytes + t_bytes + lse_bytes + pred_bytes
    return Traffic(
        moved=ideal + a["aw_ptr"].nbytes + a["part_ptr"].nbytes,  # logits re-reads hit L2
        ideal=ideal,
        dot_flops=launch.programs * steps * per_step,
        dot_kind=dot_kind(a["DOT_PRECISION"], 4),
        steps=steps,
        step_bytes=2 * a["BLOCK_K"] * a["CW"] * a["z_ptr"].itemsize,
        step_tensor="z_ptr",
    )


def _bwd_traffic(launch) -> Traffic:
    a = launch.args
    z_bytes, t_bytes, lse_bytes = _common(a)
    dz_bytes = a["dz_ptr"].nbytes
    items = a["item_ptr"].numel // 4
    groups = a["NUM_GROUPS"]
    # each group also walks the band before its first row (its rows reach that row too)
    item_steps = triton.cdiv(items, groups) + 1
    steps = item_steps * a["NUM_WT"]
    per_step = 2 * 2.0 * a["BLOCK_K"] * a["BLOCK_W"] * (a["CW"] + a["WP"])
    repeat = min(1.0 + groups / max(items, 1), 2.0)  # rows read twice at group boundaries
    ideal = z_bytes + t_bytes + lse_bytes + dz_bytes
    return Traffic(
        moved=int(z_bytes + (t_bytes + lse_bytes) * repeat + dz_bytes + a["aw_ptr"].nbytes),
        ideal=ideal,
        dot_flops=launch.programs * steps * per_step,
        dot_kind=dot_kind(a["DOT_PRECISION"], 4),
        steps=steps,
        step_bytes=2 * a["BLOCK_K"] * a["CW"] * a["z_ptr"].itemsize
        + a["BLOCK_R"] * a["BLOCK_W"] * (a["t_ptr"].itemsize + 4),
        step_tensor="z_ptr",
        loop_steps=a["NUM_WT"],
        fills_gpu=True,
    )


TRAFFIC = {"_upsample_ce_fwd_kernel": _fwd_traffic, "_upsample_ce_bwd_kernel": _bwd_traffic}
