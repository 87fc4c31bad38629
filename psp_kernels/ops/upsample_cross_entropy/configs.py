"""Tiles of kernel 3's launches, their ahead-of-time compile specs, and traffic model."""

from __future__ import annotations

import torch
import triton

from ..._aot import AotSpec, Traffic, dot_kind
from ..utils import GPU_DTYPES, TRITON_DTYPE, clamp, dot_precision, tile_class
from .kernels import _upsample_ce_bwd_kernel, _upsample_ce_fwd_kernel

#: Source columns a backward program owns (wider logits split into column groups): it holds two
#: ``BLOCK_K x COLUMNS`` gradient rows.
COLUMNS = {"16bit": 16, "fp32": 64}
#: Backward programs resident per SM with its tiles (registers): the row groups fill this.
BWD_RESIDENT = {"16bit": 2, "fp32": 1}
#: GPU tiles shared by both kernels (the work items and column windows): BLOCK_R output rows
#: (one band at zoom 8) x BLOCK_W output columns.
TILES = {"16bit": dict(BLOCK_R=8, BLOCK_W=32), "fp32": dict(BLOCK_R=8, BLOCK_W=32)}
#: Forward: BLOCK_K classes per step (a 32 x 16 logits tile: 4 values per thread, vector loads).
FWD = {
    "16bit": dict(BLOCK_K=32, num_warps=4, num_stages=3),
    "fp32": dict(BLOCK_K=32, num_warps=4, num_stages=3),
}
#: Backward: BLOCK_K classes per program.
BWD = {
    "16bit": dict(BLOCK_K=32, num_warps=4, num_stages=3),
    "fp32": dict(BLOCK_K=32, num_warps=8, num_stages=3),
}
#: Tests set this to force the backward's source-row groups (several groups, on CPU tensors).
FORCE_GROUPS: int | None = None


def _band_rows(row_index: torch.Tensor) -> int:
    """The most output rows that share their two source rows."""
    i0 = row_index[0]
    return int(torch.unique_consecutive(i0, return_counts=True)[1].max())


def config(dtype: torch.dtype, classes: int, width: int, row_index, gpu: bool):
    """``(shared tiles, forward config, backward config)`` for these sizes; the configs hold
    ``BLOCK_K``, ``num_warps`` and ``num_stages``.

    On a GPU the fixed tables above; in the interpreter (``gpu`` false) few, large programs:
    all classes up to 64, all columns up to 128 and a whole band of rows in one tile.
    """
    if gpu:
        cls = tile_class(dtype)
        return dict(TILES[cls]), dict(FWD[cls]), dict(BWD[cls])
    tiles = dict(
        BLOCK_R=clamp(triton.next_power_of_2(_band_rows(row_index)), 1, 16),
        BLOCK_W=clamp(triton.next_power_of_2(width), 16, 128),
    )
    cfg = dict(BLOCK_K=clamp(triton.next_power_of_2(classes), 16, 64), num_warps=4, num_stages=1)
    return tiles, cfg, dict(cfg)


def aot_specs() -> list[AotSpec]:
    """Every kernel configuration the launchers pick on a GPU (fp32, fp16, bf16), at PSPNet's
    geometry (a 16-column window, 64-column groups in the backward)."""
    specs = []
    for dtype in GPU_DTYPES:
        t, cls, prec = TRITON_DTYPE[dtype], tile_class(dtype), dot_precision(dtype)
        common = dict(ZN_DIV=16, ZK_DIV=16, ZH_DIV=4, C_DIV=4, WS_DIV=4, TH_DIV=1,
                      DOT_PRECISION=prec, CW=16, **TILES[cls])  # fmt: skip
        ptrs = dict(z_ptr=f"*{t}", t_ptr="*i64", cw_ptr="*fp32", aw_ptr="*fp32", lam_ptr="*fp32",
                    item_ptr="*i32", clo_ptr="*i32", group_ptr="*i32", colgroup_ptr="*i32",
                    lse_ptr="*fp32",
                    pred_ptr="*i64", part_ptr="*fp32", scale_ptr="*fp32", dz_ptr=f"*{t}")  # fmt: skip
        for pred in (False, True):
            specs.append(AotSpec.of(
                f"upsample_ce_fwd[{t},pred={pred}]", _upsample_ce_fwd_kernel,
                dict(common, HAS_WEIGHT=False, WANT_PRED=pred), ptrs, FWD[cls],
            ))  # fmt: skip
        specs.append(AotSpec.of(
            f"upsample_ce_bwd[{t}]", _upsample_ce_bwd_kernel,
            dict(common, HAS_WEIGHT=False, DN_DIV=16, DK_DIV=16, DH_DIV=4, WP=COLUMNS[cls]), ptrs, BWD[cls],
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
    tile = a["BLOCK_R"] * a["BLOCK_W"]
    exps = steps * (a["BLOCK_K"] + 1) * tile + tile  # the block's values, the rescale, the log
    return Traffic(
        moved=ideal + a["aw_ptr"].nbytes + a["part_ptr"].nbytes,  # logits re-reads hit L2
        ideal=ideal,
        dot_flops=launch.programs * steps * per_step,
        dot_kind=dot_kind(a["DOT_PRECISION"], 4),
        steps=steps,
        step_tensor="z_ptr",
        sfu_ops=float(launch.programs * exps),
    )


def _bwd_traffic(launch) -> Traffic:
    a = launch.args
    z_bytes, t_bytes, lse_bytes = _common(a)
    dz_bytes = a["dz_ptr"].nbytes
    items = a["item_ptr"].numel // 4
    groups, colgroups = a["NUM_GROUPS"], a["NUM_COLGROUPS"]
    tiles = a["clo_ptr"].numel
    # each row group also walks the band before its first row, each column group the column
    # tile across its boundary
    item_steps = triton.cdiv(items, groups) + 1
    tile_steps = triton.cdiv(tiles, colgroups) + (1 if colgroups > 1 else 0)
    steps = item_steps * tile_steps
    per_step = 2 * 2.0 * a["BLOCK_K"] * a["BLOCK_W"] * (a["CW"] + a["WP"])
    repeat = min(1.0 + groups / max(items, 1), 2.0)  # rows read twice at group boundaries
    ideal = z_bytes + t_bytes + lse_bytes + dz_bytes
    return Traffic(
        moved=int(z_bytes + (t_bytes + lse_bytes) * repeat + dz_bytes + a["aw_ptr"].nbytes),
        ideal=ideal,
        dot_flops=launch.programs * steps * per_step,
        dot_kind=dot_kind(a["DOT_PRECISION"], 4),
        steps=steps,
        step_tensor="z_ptr",
        loop_steps=tile_steps,
        fills_gpu=True,
        sfu_ops=float(launch.programs) * steps * a["BLOCK_K"] * a["BLOCK_R"] * a["BLOCK_W"],
    )


TRAFFIC = {"_upsample_ce_fwd_kernel": _fwd_traffic, "_upsample_ce_bwd_kernel": _bwd_traffic}
