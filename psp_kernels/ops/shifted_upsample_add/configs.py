"""Tile sizes of the concat-free head op's launches, and their ahead-of-time compile specs."""

from __future__ import annotations

import itertools

import torch
import triton

from ..._aot import AotSpec, Traffic, dot_kind
from ..utils import (
    GPU_DTYPES,
    TRITON_DTYPE,
    dot_precision,
    next_power_of_2,
    tile_class,
    tl_acc_dtype,
)
from .kernels import (
    _shifted_upsample_add_bwd_kernel,
    _shifted_upsample_add_bwd_plane_kernel,
    _shifted_upsample_add_fwd_kernel,
)

#: Largest ``K = 3 * sum(h_b)`` (and ``J = 3 * sum(w_b)``) the kernels take in one tile (bins up
#: to a sum of 21, e.g. 1, 2, 3, 6, 8); larger pyramids use the separable PyTorch path. One tile
#: width for every pyramid that fits (PSPNet's 1, 2, 3, 6 has K = J = 36): a single compiled
#: configuration per dtype; the zero columns cost nothing measurable.
MAX_K = 64
#: The tile width of the one-tap form (a 1x1 conv after the concat: no shifts, ``K = sum(h_b)``,
#: 12 for bins 1, 2, 3, 6) when its pyramid fits, per dtype class: a quarter (16-bit) or a
#: sixteenth (float32) of the three-tap form's dot work. From the workload report: 16-wide
#: 16-bit NCHW backward tiles spill on sm_90, 32-wide float32 channels_last ones on sm_80.
#: Larger one-tap pyramids take :data:`MAX_K`.
ONE_TAP_K = {"16bit": 32, "fp32": 16}


def tile_width(taps: int, k: int, j: int, dtype: torch.dtype = torch.float32) -> int:
    """``K_PAD`` (= ``J_PAD``) of a pyramid with ``taps`` (9 or 1) taps whose dense tile has
    ``k`` rows and ``j`` columns (at most :data:`MAX_K`), for inputs of ``dtype``."""
    width = ONE_TAP_K[tile_class(dtype)]
    return width if taps == 1 and max(k, j) <= width else MAX_K


#: Tiles and warps per direction, dtype class ("16bit", "fp32") and layout ("nchw", "nhwc"):
#: ``BLOCK_O`` channels per program (the forward always takes 4), ``BLOCK_H`` rows per step,
#: ``BLOCK_W`` columns per program (forward) or per step (backward), warps. Chosen from the
#: workload report (``python -m psp_kernels.compile_check --workload head --ci``): the largest
#: tiles that compile without spills on sm_80 and sm_90. The backward's accumulators are
#: ``BLOCK_O`` float32 (MAX_K x MAX_K) tiles, so it takes 2 channels where that keeps 8-byte
#: or wider accesses (NCHW rows; float32 channels_last) and 4 otherwise. 64-row forward tiles
#: do not compile for sm_90 channels_last (a Triton layout pass fails), hence 32 there.
FWD = {
    ("16bit", "nchw"): dict(BLOCK_H=64, BLOCK_W=32, num_warps=8),
    ("16bit", "nhwc"): dict(BLOCK_H=32, BLOCK_W=32, num_warps=4),
    ("fp32", "nchw"): dict(BLOCK_H=64, BLOCK_W=16, num_warps=4),
    ("fp32", "nhwc"): dict(BLOCK_H=64, BLOCK_W=16, num_warps=4),
}
BWD = {
    ("16bit", "nchw"): dict(BLOCK_O=2, BLOCK_H=64, BLOCK_W=32, num_warps=8),
    ("16bit", "nhwc"): dict(BLOCK_O=4, BLOCK_H=32, BLOCK_W=16, num_warps=8),
    ("fp32", "nchw"): dict(BLOCK_O=2, BLOCK_H=16, BLOCK_W=16, num_warps=4),
    ("fp32", "nhwc"): dict(BLOCK_O=2, BLOCK_H=16, BLOCK_W=16, num_warps=4),
}

#: The backward for planes that fit one tile (``_shifted_upsample_add_bwd_plane_kernel``):
#: BLOCK_H x BLOCK_W covers the whole plane (PSPNet's 60x60), a program loops over several
#: blocks of BLOCK_O channels (``groups``). Keys as :data:`BWD`; a missing key, or a larger
#: plane, takes :data:`BWD`'s tiled kernel. Only 16-bit NCHW: float32's three-pass dots spill
#: at 64 x 64 on sm_80, and channels_last would need 8 channels per block for 16-byte loads
#: (two give 4-byte ones), whose eight float32 (K_PAD, J_PAD) results do not fit.
BWD_PLANE = {
    ("16bit", "nchw"): dict(
        BLOCK_O=2, BLOCK_H=64, BLOCK_W=64, W_TILES=1, num_warps=8, num_stages=3
    ),
    ("16bit", "nhwc"): dict(
        BLOCK_O=4, BLOCK_H=64, BLOCK_W=16, W_TILES=4, num_warps=8, num_stages=2
    ),
}
#: Oldest architecture (compute capability) each :data:`BWD_PLANE` entry is for (a missing key:
#: every one): channels_last's four float32 (K_PAD, J_PAD) sums spill on sm_80 (240 B), not on
#: sm_90, whose tensor-core accumulators live in fewer registers.
PLANE_MIN_ARCH = {("16bit", "nhwc"): 90}
#: Tests set this to force the channel blocks per program of the plane backward.
FORCE_GROUPS: int | None = None


def plane_groups(blocks: int, samples: int, sms: int) -> int:
    """Channel blocks per program of the plane backward (1, 2, 4 or 8): of the choices that
    leave a program for every SM, the most whose busiest SM has at most 10% more blocks than
    the best choice's (waves of programs are whole). Long loops keep loads in flight; balance
    keeps every SM busy to the end."""
    if FORCE_GROUPS is not None:
        return FORCE_GROUPS

    def programs(groups):
        return samples * triton.cdiv(blocks, groups)

    def busiest(groups):  # blocks of the SM that runs the most programs
        return triton.cdiv(programs(groups), sms) * groups

    choices = [g for g in (1, 2, 4, 8) if g == 1 or programs(g) >= sms]
    best = min(busiest(g) for g in choices)
    return max(g for g in choices if busiest(g) <= 1.1 * best)


def plane_tiles(
    dtype: torch.dtype, layout: str, height: int, width: int, arch: int | None = None
) -> dict | None:
    """:data:`BWD_PLANE`'s tiles for a ``height x width`` plane on compute capability ``arch``
    (``None``: the interpreter, any), or ``None`` (the tiled kernel)."""
    key = (tile_class(dtype), layout)
    tiles = BWD_PLANE.get(key)
    if tiles is None or height > tiles["BLOCK_H"] or width > tiles["BLOCK_W"] * tiles["W_TILES"]:
        return None
    if arch is not None and arch < PLANE_MIN_ARCH.get(key, 0):
        return None
    return tiles


def meta(
    dtype: torch.dtype, total: int, direction: str = "fwd", layout: str = "nchw", width: int = MAX_K
) -> dict:
    """Constexprs and launch options of the ``direction`` ("fwd" / "bwd" / "bwd_plane") kernel for inputs of
    ``dtype`` in ``layout`` ("nchw" / "nhwc"), ``total`` packed values per channel, tiles of
    ``width`` (:func:`tile_width`) rows and columns."""
    table = {"fwd": FWD, "bwd": BWD, "bwd_plane": BWD_PLANE}[direction]
    tiles = table[tile_class(dtype), layout]
    return dict(
        tiles, K_PAD=width, J_PAD=width, T_PAD=next_power_of_2(total + 1),
        PRECISION=dot_precision(dtype), ACC=tl_acc_dtype(dtype),
    )  # fmt: skip


def aot_specs() -> list[AotSpec]:
    """Every configuration the launcher can pick for PSPNet's pyramid, one per dtype: the 3x3 form
    (450 packed values per channel: T_PAD = 512) and the one-tap form (50: T_PAD = 64, tiles of
    :data:`ONE_TAP_K`), for compile_check."""
    specs = []
    for dtype in GPU_DTYPES:
        ty = TRITON_DTYPE[dtype]
        i32 = "i32"
        common = {"ahat_ptr": "*fp32", "bhat_ptr": "*fp32", "O": i32, "H": i32, "W": i32,
                  "WIDTH": i32, "NUM_O_BLOCKS": i32, "stride_ah": i32, "stride_bw_": i32}  # fmt: skip
        fwd = dict(common, base_ptr=f"*{ty}", v_ptr=f"*{ty}", out_ptr=f"*{ty}", gidx_ptr="*i32",
                   NUM_W_BLOCKS=i32, **{f"stride_{k}": i32 for k in
                   ("bn", "bo", "bh", "bw", "vn", "vo", "on", "oo", "oh", "ow")})  # fmt: skip
        bwd = dict(common, grad_ptr=f"*{ty}", dv_ptr=f"*{ty}", cidx_ptr="*i32",
                   **{f"stride_{k}": i32 for k in ("gn", "go", "gh", "gw", "dvn", "dvo")})  # fmt: skip
        for layout, (form, total, width) in itertools.product(
            ("nchw", "nhwc"), (("", 450, MAX_K), ("1tap,", 50, ONE_TAP_K[tile_class(dtype)]))
        ):
            divs = dict(V_DIV=1, W_DIV=1, CHANNELS_FAST=layout == "nhwc")
            fwd_c = dict(meta(dtype, total, "fwd", layout, width), BN_DIV=1, BO_DIV=1, BH_DIV=1,
                         ON_DIV=1, OO_DIV=1, OH_DIV=1, **divs)  # fmt: skip
            bwd_c = dict(meta(dtype, total, "bwd", layout, width), GN_DIV=1, GO_DIV=1, GH_DIV=1,
                         **divs)  # fmt: skip
            variants = [("fwd", _shifted_upsample_add_fwd_kernel, fwd, fwd_c),
                        ("bwd", _shifted_upsample_add_bwd_kernel, bwd, bwd_c)]  # fmt: skip
            if (tile_class(dtype), layout) in BWD_PLANE:
                plane_c = dict(meta(dtype, total, "bwd_plane", layout, width), GN_DIV=1,
                               GO_DIV=1, GH_DIV=1, **divs)  # fmt: skip
                variants.append(("bwd_plane", _shifted_upsample_add_bwd_plane_kernel,
                                 dict(bwd, GROUPS=i32), plane_c))  # fmt: skip
            for label, kernel, sig, c in variants:
                num_warps, num_stages = c.pop("num_warps"), c.pop("num_stages", 3)
                specs.append(AotSpec(f"shifted_upsample_add_{label}[{form}{ty},{layout}]", kernel, sig,
                                     c, num_warps=num_warps, num_stages=num_stages))  # fmt: skip
    return specs


# ----------------------------------------------------------------------------------------------
# Traffic model of each launch, for the workload report's cost model (estimates)
# ----------------------------------------------------------------------------------------------


def _fwd_traffic(launch) -> Traffic:
    a = launch.args
    base = a["base_ptr"]
    h_steps = triton.cdiv(a["H"], a["BLOCK_H"])
    k, j, bw, bo = a["K_PAD"], a["J_PAD"], a["BLOCK_W"], 4
    moved = base.nbytes + a["out_ptr"].nbytes + a["v_ptr"].nbytes
    flops = launch.programs * bo * (2.0 * k * j * bw + h_steps * 2.0 * a["BLOCK_H"] * k * bw)
    return Traffic(
        moved=moved,
        ideal=moved,
        dot_flops=flops,
        dot_kind=dot_kind(a["PRECISION"], 4),
        steps=1 + h_steps,
        loop_steps=h_steps,
        step_tensor="base_ptr",
    )


def _bwd_traffic(launch) -> Traffic:
    a = launch.args
    grad = a["grad_ptr"]
    w_steps = triton.cdiv(a["W"], a["BLOCK_W"])
    steps = w_steps * triton.cdiv(a["H"], a["BLOCK_H"])
    k, j, bh, bw, bo = a["K_PAD"], a["J_PAD"], a["BLOCK_H"], a["BLOCK_W"], a["BLOCK_O"]
    moved = grad.nbytes + a["dv_ptr"].nbytes
    flops = launch.programs * bo * (steps * 2.0 * k * bh * bw + w_steps * 2.0 * k * bw * j)
    return Traffic(
        moved=moved,
        ideal=moved,
        dot_flops=flops,
        dot_kind=dot_kind(a["PRECISION"], 4),
        steps=steps,
        step_tensor="grad_ptr",
        loop_steps=triton.cdiv(a["H"], bh),  # the row loop, inside the column loop
    )


def _bwd_plane_traffic(launch) -> Traffic:
    a = launch.args
    grad = a["grad_ptr"]
    k, j, bh, bw, bo = a["K_PAD"], a["J_PAD"], a["BLOCK_H"], a["BLOCK_W"], a["BLOCK_O"]
    moved = grad.nbytes + a["dv_ptr"].nbytes
    flops = launch.programs * a["GROUPS"] * bo * (2.0 * k * bh * bw + 2.0 * k * bw * j)
    return Traffic(
        moved=moved,
        ideal=moved,
        dot_flops=flops,
        dot_kind=dot_kind(a["PRECISION"], 4),
        steps=a["GROUPS"],
        step_tensor="grad_ptr",
    )


TRAFFIC = {
    "_shifted_upsample_add_fwd_kernel": _fwd_traffic,
    "_shifted_upsample_add_bwd_kernel": _bwd_traffic,
    "_shifted_upsample_add_bwd_plane_kernel": _bwd_plane_traffic,
}
