"""``torch.library`` registration of the fused PPM forward and the public ``pyramid_pooling``.

Backward: the existing backward ops of the two kernels. Kernel 2's gives the branch gradients
from ``grad[:, C:]`` (a gather); kernel 1's gives the weight/scale/shift gradients and its ``dx``
gather, which is handed ``grad[:, :C]`` (a strided view of the output gradient, any memory
format) as an addend: the gather loads it as the fp32 accumulator of each dx tile, so
``dx = grad[:, :C] + gather`` is written in one pass and rounded once. Deterministic like both
kernels (no atomics). The autograd plumbing is kernel 1's (``pyramid_pool_conv.op``).
"""

from __future__ import annotations

import torch

from ... import reference
from ..._backend import resolve_backend
from ..._validate import check_pyramid_pool_conv
from ..pyramid_pool_conv import op as kernel1
from ..pyramid_pool_conv.launch import kernel_limit
from ..target import custom_op, register_fake
from ..upsample_concat import op as kernel2
from ..upsample_concat.launch import empty_output
from .launch import launch_forward

__all__ = ["pyramid_pooling"]


@custom_op("psp_kernels::pyramid_pooling_fwd")
def _fwd_op(
    x: torch.Tensor,
    weights: list[torch.Tensor],
    bins: list[int],
    scale: list[torch.Tensor],
    shift: list[torch.Tensor],
    relu: bool,
    align_corners: bool,
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """Returns ``(out, ys, pooled)``; ``ys`` and ``pooled`` are kept for the backward."""
    return launch_forward(x, weights, [int(b) for b in bins], scale, shift, relu, align_corners)


@register_fake(_fwd_op)
def _fwd_fake(x, weights, bins, scale, shift, relu, align_corners):
    ys, pooled = kernel1.fwd_fake(x, weights, bins, scale, shift, relu)
    c_total = x.shape[1] + sum(w.shape[0] for w in weights)
    return empty_output(x, c_total), ys, pooled


def _setup_context(ctx, inputs, output):
    x, weights, bins, scale, shift, relu, align_corners = inputs
    _, ys, pooled = output
    kernel1.save_for_backward(ctx, x, weights, bins, scale, shift, relu, ys, pooled)
    ctx.align_corners = bool(align_corners)
    ctx.shapes = [tuple(y.shape[1:]) for y in ys]
    ctx.mark_non_differentiable(pooled, *ys)


def _backward(ctx, grad, grad_ys, grad_pooled):
    pooled, weights, scale, shift, ys = kernel1.saved_params(ctx)
    c = ctx.c
    # kernel 2's backward: the branch gradients, gathered from grad[:, C:]
    grads = kernel2.unpack_branch_grads(grad[:, c:], ctx.shapes, ctx.align_corners)
    # kernel 1's backward: weight/scale/shift gradients and its dx gather, which also adds the
    # pass-through gradient grad[:, :C] (a strided view, read in place) in the same pass
    dx, dws, dscales, dshifts = kernel1.backward_op(
        ctx, grads, pooled, weights, scale, shift, ys, dx_addend=grad[:, :c]
    )
    return dx, dws, None, dscales, dshifts, None, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def pyramid_pooling(
    x,
    weights,
    bins=(1, 2, 3, 6),
    *,
    scale=None,
    shift=None,
    relu=False,
    align_corners=True,
    backend="auto",
):
    """The pyramid pooling module's forward in one read of ``x`` and one write of the output.

    Equal to ``upsample_concat(x, pyramid_pool_conv(x, weights, bins, scale=scale, shift=shift,
    relu=relu), align_corners=align_corners)``: kernel 1 also copies ``x`` into the output's
    first ``C`` channels while it reads ``x`` for the pooling, so ``x`` is read once.

    Args:
        x: ``(N, C, H, W)`` feature map, any strides (channels_last is read in place).
        weights: one ``(R_i, C)`` or ``(R_i, C, 1, 1)`` 1x1 convolution weight per bin.
        bins: output sizes of the adaptive average pooling, one per weight, any order.
        scale, shift: optional per-bin ``(R_i,)`` tensors: ``y = conv * scale + shift``
            (an eval-mode BatchNorm folded in).
        relu: apply ReLU to each branch (after scale/shift).
        align_corners: ``align_corners`` of the bilinear upsampling.
        backend: ``"auto"``, ``"triton"`` or ``"reference"`` (see ``psp_kernels.resolve_backend``).

    Returns:
        ``(N, C + sum R_i, H, W)`` in x's dtype and memory format (like ``torch.empty_like``):
        ``cat([x] + [bilinear(y_i, (H, W)) for y_i in branches], 1)``. Differentiable in ``x``,
        ``weights``, ``scale`` and ``shift``; deterministic (no atomics).

    Example:
        >>> out = pyramid_pooling(x, [w1, w2, w3, w6], (1, 2, 3, 6), scale=s, shift=t, relu=True)
    """
    weights, bins, scale, shift = check_pyramid_pool_conv(x, weights, bins, scale, shift)
    if resolve_backend(backend, x, kernel_limit=kernel_limit(x)) == "reference":
        ys = kernel1.plain_pyramid_pool_conv(x, weights, bins, scale, shift, relu, backend)
        return reference.upsample_concat(x, ys, align_corners=align_corners)
    out, _, _ = _fwd_op(
        x,
        list(weights),
        list(bins),
        list(scale or []),
        list(shift or []),
        bool(relu),
        bool(align_corners),
    )
    return out
