"""Launchers of the concat-free head op: tap tables, packing, grids.

:func:`launch_forward` / :func:`launch_backward` are the custom ops' implementations; they
always launch the kernels (the public function decided the backend, with :func:`kernel_limit`).
"""

from __future__ import annotations

import functools

import torch
import triton

from ..target import launch
from ..utils import (
    acc_dtype,
    compute_arch,
    device_guard,
    gpu_tiles,
    num_sms,
    pow2_divisor,
    sample_fits_int32,
)
from . import configs
from .kernels import (
    _shifted_upsample_add_bwd_kernel,
    _shifted_upsample_add_bwd_plane_kernel,
    _shifted_upsample_add_fwd_kernel,
)
from .separable import dense_tables

__all__ = ["map_sizes", "kernel_limit", "launch_forward", "launch_backward"]


@functools.lru_cache(maxsize=128)
def _tables(height, width, sizes, align_corners, dtype, device, taps=9, pad=configs.MAX_K):
    *tensors, total = dense_tables(height, width, sizes, align_corners, dtype, taps, pad)
    return (*(t.to(device) for t in tensors), total)


def _tile_width(sizes, taps: int, dtype: torch.dtype) -> int:
    s = 3 if taps == 9 else 1
    k, j = s * sum(h for h, _ in sizes), s * sum(w for _, w in sizes)
    return configs.tile_width(taps, k, j, dtype)


def map_sizes(maps) -> tuple:
    return tuple((int(m.shape[-2]), int(m.shape[-1])) for m in maps)


def kernel_limit(sizes, taps: int = 9, base: torch.Tensor | None = None) -> str | None:
    """Why maps of these ``(h, w)`` sizes exceed the kernels' single K/J tile, or ``base`` (its
    output and gradient, contiguous or laid out as ``base``) has offsets inside a sample beyond
    int32, else ``None``."""
    s = 3 if taps == 9 else 1
    k, j = s * sum(h for h, _ in sizes), s * sum(w for _, w in sizes)
    if k > configs.MAX_K or j > configs.MAX_K:
        return (
            f"maps of sizes {sizes} exceed the kernel's tile ({s} * sum(h) and {s} * sum(w) "
            f"must be <= {configs.MAX_K})"
        )
    if base is not None and (not sample_fits_int32(base) or base[0].numel() >= 2**31):
        return "a sample of base has offsets beyond int32"
    return None


def _packed_width(total: int) -> int:
    """Elements per (sample, channel) of the packed maps: ``total`` padded to 16 bytes (8 of
    16-bit values), so every channel's row starts aligned for vector loads."""
    return -(-total // 8) * 8


def _pack(maps, total: int) -> torch.Tensor:
    """``(N, O, width)``: every map's taps and cells, per sample and channel, contiguous."""
    n, _, o = maps[0].shape[:3]
    packed = torch.cat([m.transpose(1, 2).reshape(n, o, -1) for m in maps], 2)
    return torch.nn.functional.pad(packed, (0, _packed_width(total) - total))


def _hints(t: torch.Tensor, name: str) -> dict:
    """Divisibility hints of the sample, channel and row strides of an (N, O, H, W) tensor."""
    return {
        f"{name}N_DIV": pow2_divisor(t.stride(0)),
        f"{name}O_DIV": pow2_divisor(t.stride(1)),
        f"{name}H_DIV": pow2_divisor(t.stride(2)),
    }


def _channels_fast(t: torch.Tensor) -> bool:
    """Whether the kernels' tiles run along channels (channels_last) rather than columns."""
    return t.stride(1) < t.stride(3)


def _layout(t: torch.Tensor) -> str:
    """The tile-config key of ``t``'s memory layout."""
    return "nhwc" if _channels_fast(t) else "nchw"


def launch_forward(base, maps, align_corners):
    n, o, height, width = base.shape
    taps, sizes = maps[0].shape[1], map_sizes(maps)
    pad = _tile_width(sizes, taps, base.dtype)
    ahat, bhat, gidx, _, total = _tables(
        height, width, sizes, align_corners, acc_dtype(base.dtype), base.device, taps, pad
    )
    v = _pack(maps, total)
    out = torch.empty_like(base)
    meta = configs.meta(base.dtype, total, "fwd", _layout(base), pad)
    num_o_blocks = triton.cdiv(o, 4)
    num_w_blocks = triton.cdiv(width, meta["BLOCK_W"])
    hints = dict(_hints(base, "B"), **_hints(out, "O"), CHANNELS_FAST=_channels_fast(base))
    with device_guard(base=base, maps=v):
        launch(
            _shifted_upsample_add_fwd_kernel,
            (n * num_o_blocks * num_w_blocks,),
            base, v, out, ahat, bhat, gidx,
            o, height, width, v.shape[2], num_o_blocks, num_w_blocks,
            *base.stride(), v.stride(0), v.stride(1), *out.stride(),
            ahat.stride(0), bhat.stride(0),
            V_DIV=pow2_divisor(v.stride(1)), W_DIV=pow2_divisor(width), **hints, **meta,
        )  # fmt: skip
    return out


def launch_backward(grad, sizes, align_corners, taps=9):
    n, o, height, width = grad.shape
    pad = _tile_width(sizes, taps, grad.dtype)
    ahat, bhat, _, cidx, total = _tables(
        height, width, sizes, align_corners, acc_dtype(grad.dtype), grad.device, taps, pad
    )
    dv = torch.empty(n, o, _packed_width(total), dtype=grad.dtype, device=grad.device)
    layout = _layout(grad)
    if not sample_fits_int32(grad):  # (kernel_limit checked a contiguous one fits)
        grad = grad.contiguous()
    gpu = gpu_tiles()
    arch = compute_arch(grad.device) if gpu else None
    plane = configs.plane_tiles(grad.dtype, layout, height, width, arch)
    meta = configs.meta(grad.dtype, total, "bwd" if plane is None else "bwd_plane", layout, pad)
    num_o_blocks = triton.cdiv(o, meta["BLOCK_O"])
    hints = dict(_hints(grad, "G"), CHANNELS_FAST=_channels_fast(grad))
    args = (
        o, height, width, dv.shape[2], num_o_blocks,
        *grad.stride(), dv.stride(0), dv.stride(1), ahat.stride(0), bhat.stride(0),
    )  # fmt: skip
    consts = dict(V_DIV=pow2_divisor(dv.stride(1)), W_DIV=pow2_divisor(width), **hints, **meta)
    with device_guard(grad=grad):
        if plane is None:
            launch(
                _shifted_upsample_add_bwd_kernel, (n * num_o_blocks,),
                grad, dv, ahat, bhat, cidx, *args, **consts,
            )  # fmt: skip
        else:
            sms = num_sms(grad.device) if gpu else 1  # interpreter: few programs
            groups = configs.plane_groups(num_o_blocks, n, sms)
            grid = (n * triton.cdiv(num_o_blocks, groups),)
            launch(
                _shifted_upsample_add_bwd_plane_kernel, grid,
                grad, dv, ahat, bhat, cidx, *args[:5], groups, *args[5:], **consts,
            )  # fmt: skip
    grads, start = [], 0
    for h, w in sizes:
        size = taps * h * w
        grads.append(dv[:, :, start : start + size].reshape(n, o, taps, h, w).transpose(1, 2))
        start += size
    return grads
