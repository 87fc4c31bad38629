"""``torch.library`` registration of kernel 1 and the public ``pyramid_pool_conv``.

Two custom ops, each with a fake (meta) implementation, so ``torch.compile(fullgraph=True)``
traces them: ``psp_kernels::pyramid_pool_conv_fwd`` returns the branch outputs and the
``(N, TOTAL, C)`` cell means saved for backward, ``psp_kernels::pyramid_pool_conv_bwd`` the
gradients. :func:`save_for_backward` / :func:`saved_params` are the autograd plumbing shared with
``pyramid_pooling``, whose backward calls the same backward op.
"""

from __future__ import annotations

import torch

from ... import reference
from ..._backend import resolve_backend
from ..._validate import check_pyramid_pool_conv
from ..target import custom_op, register_fake
from ..utils import acc_dtype
from . import separable
from .launch import kernel_limit, launch_backward, launch_forward, total_cells

__all__ = [
    "pyramid_pool_conv",
    "plain_pyramid_pool_conv",
    "save_for_backward",
    "saved_params",
    "is_channels_last",
]


@custom_op("psp_kernels::pyramid_pool_conv_fwd")
def _fwd_op(
    x: torch.Tensor,
    weights: list[torch.Tensor],
    bins: list[int],
    scale: list[torch.Tensor],
    shift: list[torch.Tensor],
    relu: bool,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Returns ``(ys, pooled)``: the outputs and the (N, TOTAL, C) cell means (for backward)."""
    ys, pooled, _ = launch_forward(x, weights, bins, scale, shift, relu)
    return ys, pooled


@register_fake(_fwd_op)
def fwd_fake(x, weights, bins, scale, shift, relu):
    n, c = x.shape[0], x.shape[1]
    ys = [x.new_empty((n, w.shape[0], b, b)) for w, b in zip(weights, bins)]
    pooled = x.new_empty((n, total_cells(bins), c), dtype=acc_dtype(x.dtype))
    return ys, pooled


@custom_op("psp_kernels::pyramid_pool_conv_bwd")
def _bwd_op(
    grads: list[torch.Tensor],
    ys: list[torch.Tensor],
    pooled: torch.Tensor,
    weights: list[torch.Tensor],
    scale: list[torch.Tensor],
    shift: list[torch.Tensor],
    bins: list[int],
    relu: bool,
    height: int,
    width: int,
    channels_last: bool,
    need_dx: bool,
    dx_addend: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Returns ``(dx, dweights, dscale, dshift)``; dx is empty when ``need_dx`` is False.

    ``ys`` are the forward outputs when ``relu`` (for the mask), else an empty list.
    ``dx_addend``: optional ``(N, C, H, W)`` gradient of any strides added to dx (the fused PPM
    backward passes ``grad[:, :C]``): the gather writes ``dx_addend + gather`` in one pass, summed
    in fp32 and rounded once. ``pyramid_pool_conv``'s own backward passes none.
    """
    return launch_backward(
        grads, ys, pooled, weights, scale, shift, bins, relu, height, width, channels_last,
        need_dx, dx_addend,
    )  # fmt: skip


@register_fake(_bwd_op)
def _bwd_fake(
    grads,
    ys,
    pooled,
    weights,
    scale,
    shift,
    bins,
    relu,
    height,
    width,
    channels_last,
    need_dx,
    dx_addend=None,
):
    n, _, c = pooled.shape
    out_dtype = weights[0].dtype
    if need_dx:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        dx = torch.empty(
            (n, c, height, width), device=pooled.device, dtype=out_dtype, memory_format=fmt
        )
    else:
        dx = pooled.new_empty((0,), dtype=out_dtype)
    dws = [torch.empty_like(w) for w in weights]
    dscales = [torch.empty_like(s) for s in scale]
    dshifts = [torch.empty_like(t) for t in shift]
    return dx, dws, dscales, dshifts


# ----------------------------------------------------------------------------------------------
# Autograd plumbing, shared with pyramid_pooling
# ----------------------------------------------------------------------------------------------


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether dx should be allocated channels_last (x is channels_last and not contiguous)."""
    return (not x.is_contiguous()) and x.is_contiguous(memory_format=torch.channels_last)


def save_for_backward(ctx, x, weights, bins, scale, shift, relu, ys, pooled) -> None:
    """Save what kernel 1's backward op needs: cell means, parameters, and ys for the ReLU mask."""
    ctx.bins = [int(b) for b in bins]
    ctx.relu = bool(relu)
    ctx.nw, ctx.ns, ctx.nt = len(weights), len(scale), len(shift)
    ctx.c, ctx.height, ctx.width = x.shape[1], x.shape[2], x.shape[3]
    ctx.channels_last = is_channels_last(x)
    ctx.save_for_backward(pooled, *weights, *scale, *shift, *(list(ys) if relu else []))


def saved_params(ctx):
    """``(pooled, weights, scale, shift, ys)`` as saved by :func:`save_for_backward`."""
    pooled, *rest = ctx.saved_tensors
    weights = rest[: ctx.nw]
    scale = rest[ctx.nw : ctx.nw + ctx.ns]
    shift = rest[ctx.nw + ctx.ns : ctx.nw + ctx.ns + ctx.nt]
    ys = rest[ctx.nw + ctx.ns + ctx.nt :]
    return pooled, weights, scale, shift, ys


def backward_op(ctx, grads, pooled, weights, scale, shift, ys, dx_addend=None):
    """Call the backward op with the saved context: ``(dx or None, dws, dscales, dshifts)``."""
    need_dx = bool(ctx.needs_input_grad[0])
    dx, dws, dscales, dshifts = torch.ops.psp_kernels.pyramid_pool_conv_bwd(
        grads,
        ys,
        pooled,
        weights,
        scale,
        shift,
        ctx.bins,
        ctx.relu,
        ctx.height,
        ctx.width,
        ctx.channels_last,
        need_dx,
        dx_addend if need_dx else None,
    )
    return (dx if need_dx else None), list(dws), list(dscales), list(dshifts)


def _setup_context(ctx, inputs, output):
    x, weights, bins, scale, shift, relu = inputs
    ys, pooled = output
    save_for_backward(ctx, x, weights, bins, scale, shift, relu, ys, pooled)
    ctx.mark_non_differentiable(pooled)


def _backward(ctx, grad_ys, grad_pooled):
    pooled, weights, scale, shift, ys = saved_params(ctx)
    grads = []
    for g, w, b in zip(grad_ys, weights, ctx.bins):
        if g is None:
            g = pooled.new_zeros((pooled.shape[0], w.shape[0], b, b), dtype=w.dtype)
        grads.append(g)
    dx, dws, dscales, dshifts = backward_op(ctx, grads, pooled, weights, scale, shift, ys)
    # an empty list for an empty scale/shift list (same structure as the input)
    return dx, dws, None, dscales, dshifts, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def plain_pyramid_pool_conv(x, weights, bins, scale, shift, relu, backend):
    """The plain-PyTorch path (checked arguments): the literal reference for
    ``backend="reference"`` and off CPU, the stacked matrix products on CPU for float32/64."""
    if backend == "auto" and x.device.type == "cpu" and x.dtype in separable.MATMUL_DTYPES:
        return separable.pyramid_pool_conv(x, weights, bins, scale, shift, relu)
    return reference.pyramid_pool_conv(x, weights, bins, scale=scale, shift=shift, relu=relu)


def pyramid_pool_conv(
    x, weights, bins=(1, 2, 3, 6), *, scale=None, shift=None, relu=False, backend="auto"
):
    """Pool ``x`` at every bin size and apply each bin's bias-free 1x1 convolution, fused.

    Args:
        x: ``(N, C, H, W)`` feature map, any strides (channels_last is read in place).
        weights: one ``(R_i, C)`` or ``(R_i, C, 1, 1)`` weight per bin.
        bins: output sizes of the adaptive average pooling, one per weight, any order.
        scale, shift: optional per-bin ``(R_i,)`` tensors: ``y = conv * scale + shift``
            (an eval-mode BatchNorm folded in); either may be given alone.
        relu: apply ReLU last.
        backend: ``"auto"`` (Triton on CUDA, or on CPU with ``TRITON_INTERPRET=1``; otherwise
            on CPU the stacked pooling matrix products of :mod:`.separable` for float32/64, and
            the reference elsewhere), ``"triton"`` or ``"reference"`` (the literal definition).

    Returns:
        ``[y_i]``, ``y_i`` of shape ``(N, R_i, b_i, b_i)`` in x's dtype, equal to
        ``act(scale_i * conv1x1(adaptive_avg_pool2d(x, b_i), W_i) + shift_i)``. Differentiable in
        ``x``, ``weights``, ``scale`` and ``shift``; deterministic (no atomics).

    Example:
        >>> ys = pyramid_pool_conv(x, [w1, w2, w3, w6], bins=(1, 2, 3, 6), relu=True)
    """
    weights, bins, scale, shift = check_pyramid_pool_conv(x, weights, bins, scale, shift)
    if resolve_backend(backend, x, kernel_limit=kernel_limit(x)) == "reference":
        return plain_pyramid_pool_conv(x, weights, bins, scale, shift, relu, backend)
    ys, _ = _fwd_op(x, list(weights), list(bins), list(scale or []), list(shift or []), bool(relu))
    return list(ys)
