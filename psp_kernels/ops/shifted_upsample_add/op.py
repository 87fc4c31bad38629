"""``torch.library`` registration of the concat-free head op and the public ``shifted_upsample_add``."""

from __future__ import annotations

import torch

from ... import reference
from ..._backend import resolve_backend
from ..._validate import check_backend, check_shifted_upsample_add
from ..target import custom_op, register_fake
from .launch import kernel_limit, launch_backward, launch_forward, map_sizes
from .separable import separable_shifted_upsample_add

__all__ = ["shifted_upsample_add"]


@custom_op("psp_kernels::shifted_upsample_add_fwd")
def _fwd_op(base: torch.Tensor, maps: list[torch.Tensor], align_corners: bool) -> torch.Tensor:
    return launch_forward(base, maps, align_corners)


@register_fake(_fwd_op)
def _(base, maps, align_corners):
    return torch.empty_like(base)


@custom_op("psp_kernels::shifted_upsample_add_bwd")
def _bwd_op(
    grad: torch.Tensor, sizes: list[int], align_corners: bool, taps: int
) -> list[torch.Tensor]:
    pairs = tuple(zip(sizes[0::2], sizes[1::2]))
    # the gradients are views of one packed buffer: outputs of a custom op may not alias
    return [
        g.clone(memory_format=torch.contiguous_format)
        for g in launch_backward(grad, pairs, align_corners, taps)
    ]


@register_fake(_bwd_op)
def _(grad, sizes, align_corners, taps):
    n, o = grad.shape[:2]
    return [grad.new_empty(n, taps, o, h, w) for h, w in zip(sizes[0::2], sizes[1::2])]


def _setup_context(ctx, inputs, output):
    _, maps, align_corners = inputs
    ctx.sizes = [s for m in maps for s in m.shape[-2:]]
    ctx.align_corners = align_corners
    ctx.taps = maps[0].shape[1]


def _backward(ctx, grad):
    grad_maps = _bwd_op(grad, ctx.sizes, ctx.align_corners, ctx.taps)
    return grad, grad_maps, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def _setup_bwd_context(ctx, inputs, output):
    grad, _, align_corners, _ = inputs
    ctx.align_corners = align_corners
    ctx.grad_meta = (grad.shape, grad.dtype, grad.device)
    ctx.map_shapes = [g.shape for g in output]


def _backward_of_backward(ctx, grad_maps):
    """The backward is linear in ``grad`` (the maps' part of the forward, transposed), so its
    own gradient is the forward's maps' part applied to ``grad_maps``."""
    shape, dtype, device = ctx.grad_meta
    maps = [torch.zeros(s, dtype=dtype, device=device) if g is None else g
            for g, s in zip(grad_maps, ctx.map_shapes, strict=True)]  # fmt: skip
    base = torch.zeros(shape, dtype=dtype, device=device)
    return _fwd_op(base, maps, ctx.align_corners), None, None, None


_bwd_op.register_autograd(_backward_of_backward, setup_context=_setup_bwd_context)


def shifted_upsample_add(base, maps, *, align_corners=True, backend="auto"):
    """Return ``base`` plus the nine 3x3-shifted bilinear upsamplings of every map.

    Args:
        base: ``(N, O, H, W)``, typically the ``x``-half of the head's 3x3 convolution.
        maps: tensors ``(N, 9, O, h_i, w_i)``: tap ``t = 3 * (di + 1) + (dj + 1)`` of map ``i`` is
            the head conv's tap-``t`` weight slice applied (1x1) to pyramid branch ``i``. Or the
            one-tap form, every map ``(N, 1, O, h_i, w_i)`` (a 1x1 conv after the concat): each
            map upsampled and added, with no shifts (a ninth of the taps, smaller tiles).
        align_corners: bilinear mode of the upsampling.
        backend: ``"auto"`` (Triton on CUDA or under the interpreter, otherwise the separable
            PyTorch path), ``"triton"`` or ``"reference"`` (the literal definition).

    Differentiable in ``base`` and every map (twice: the backward is differentiable too);
    deterministic. A non-finite value in a map reaches its whole output channel (the kernels and
    the separable path interpolate with dense products, where ``0 * inf`` is ``nan``), not only
    the pixels its taps touch.
    """
    check_backend(backend)
    maps = check_shifted_upsample_add(base, maps)
    if backend == "reference":
        return reference.shifted_upsample_add(base, maps, align_corners=align_corners)
    limit = kernel_limit(map_sizes(maps), maps[0].shape[1], base)
    if resolve_backend(backend, base, kernel_limit=limit) == "triton":
        return _fwd_op(base, list(maps), bool(align_corners))
    return separable_shifted_upsample_add(base, maps, align_corners)
