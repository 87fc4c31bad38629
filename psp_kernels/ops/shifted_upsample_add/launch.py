"""Launchers of the concat-free head op: tap tables, packing, grids.

:func:`launch_forward` / :func:`launch_backward` are the custom ops' implementations; they
always launch the kernels (the public function decided the backend, with :func:`kernel_limit`).
"""

from __future__ import annotations

import functools

import torch
import triton

from ..utils import acc_dtype, device_guard
from . import configs
from .kernels import _shifted_upsample_add_bwd_kernel, _shifted_upsample_add_fwd_kernel
from .separable import pyramid_matrices

__all__ = ["map_sizes", "kernel_limit", "launch_forward", "launch_backward"]


@functools.lru_cache(maxsize=128)
def _tables_cpu(height, width, sizes, align_corners, dtype):
    """Dense padded ``ahat``/``bhat``, int32 row/column tables and the packed size per channel."""
    k_rows, j_rows = [], []
    offset = 0
    for b, (h, w) in enumerate(sizes):
        # row k = (b, di, bi); its tap-(di, dj) value (dj + 1 = 0, 1, 2) sits at
        # offset + (3 * (di + 1) + dj + 1) * h * w + bi * w + bj in the packed maps.
        k_rows += [
            (offset + 3 * di * h * w + bi * w, h * w, b) for di in range(3) for bi in range(h)
        ]
        j_rows += [(dj, bj, b) for dj in range(3) for bj in range(w)]
        offset += 9 * h * w
    ahat, bhat = pyramid_matrices(height, width, sizes, align_corners, dtype)
    k, j = ahat.shape[1], bhat.shape[1]
    ahat = torch.nn.functional.pad(ahat, (0, configs.MAX_K - k)).contiguous()
    bhat = torch.nn.functional.pad(bhat, (0, configs.MAX_K - j)).contiguous()
    k_table = torch.tensor(k_rows, dtype=torch.int32).t().contiguous()
    j_table = torch.tensor(j_rows, dtype=torch.int32).t().contiguous()
    return ahat, bhat, k_table, j_table, offset


@functools.lru_cache(maxsize=128)
def _tables(height, width, sizes, align_corners, dtype, device):
    *tensors, total = _tables_cpu(height, width, sizes, align_corners, dtype)
    return (*(t.to(device) for t in tensors), total)


def map_sizes(maps) -> tuple:
    return tuple((int(m.shape[-2]), int(m.shape[-1])) for m in maps)


def kernel_limit(sizes) -> str | None:
    """Why maps of these ``(h, w)`` sizes exceed the kernels' single K/J tile, else ``None``."""
    k, j = 3 * sum(h for h, _ in sizes), 3 * sum(w for _, w in sizes)
    if k <= configs.MAX_K and j <= configs.MAX_K:
        return None
    return (
        f"maps of sizes {sizes} exceed the kernel's tile (3 * sum(h) and 3 * sum(w) must be "
        f"<= {configs.MAX_K})"
    )


def _pack(maps) -> torch.Tensor:
    """``(N, O, sum 9*h*w)``: every map's taps and cells, per sample and channel, contiguous."""
    n, _, o = maps[0].shape[:3]
    return torch.cat([m.transpose(1, 2).reshape(n, o, -1) for m in maps], 2)


def launch_forward(base, maps, align_corners):
    n, o, height, width = base.shape
    ahat, bhat, k_tab, j_tab, _ = _tables(
        height, width, map_sizes(maps), align_corners, acc_dtype(base.dtype), base.device
    )
    v = _pack(maps)
    out = torch.empty_like(base)
    grid = (n * o, triton.cdiv(width, configs.BLOCK_W))
    with device_guard(base=base, maps=v):
        _shifted_upsample_add_fwd_kernel[grid](
            base, v, out, ahat, bhat, k_tab, j_tab,
            o, height, width, k_tab.shape[1], j_tab.shape[1],
            *base.stride(), v.stride(0), v.stride(1), *out.stride(),
            ahat.stride(0), bhat.stride(0), k_tab.stride(0), j_tab.stride(0),
            **configs.meta(base.dtype),
        )  # fmt: skip
    return out


def launch_backward(grad, sizes, align_corners):
    n, o, height, width = grad.shape
    ahat, bhat, k_tab, j_tab, total = _tables(
        height, width, sizes, align_corners, acc_dtype(grad.dtype), grad.device
    )
    dv = torch.empty(n, o, total, dtype=grad.dtype, device=grad.device)
    with device_guard(grad=grad):
        _shifted_upsample_add_bwd_kernel[(n * o,)](
            grad, dv, ahat, bhat, k_tab, j_tab,
            o, height, width, k_tab.shape[1], j_tab.shape[1],
            *grad.stride(), dv.stride(0), dv.stride(1),
            ahat.stride(0), bhat.stride(0), k_tab.stride(0), j_tab.stride(0),
            **configs.meta(grad.dtype),
        )  # fmt: skip
    grads, start = [], 0
    for h, w in sizes:
        size = 9 * h * w
        grads.append(dv[:, :, start : start + size].reshape(n, o, 9, h, w).transpose(1, 2))
        start += size
    return grads
