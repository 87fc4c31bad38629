"""The whole pyramid pooling forward in one pass over x: kernel 1 + kernel 2, fused at the op level.

``pyramid_pooling(x, weights, bins, ...) == upsample_concat(x, pyramid_pool_conv(x, weights, bins,
...))``, but the copy of ``x`` into the first ``C`` channels of the output is written by kernel 1's
stage 1 (``_pool_cells_kernel`` with ``COPY_X``) from the very tiles it loads for the pooling, and
kernel 2 then only writes the upsampled branches (``launch_forward(..., copy_x=False)``). Bytes
per image at C=2048, 60x60, fp32 with four 512-channel branches: read x once (29.5 MB) + write the
(4096, 60, 60) output once (59.0 MB) = 88.5 MB, instead of 118 MB for the two ops one after the
other (kernel 2 reads x a second time). The pooled workspace (0.4 MB) and the 1x1 weights
(16.8 MB in fp32, read once per batch, not per image) come on top of both.

Backward: the existing backward ops of the two kernels. Kernel 2's gives the branch gradients
from ``grad[:, C:]`` (a gather), kernel 1's gives the weight/scale/shift gradients and its ``dx``
gather, which is handed ``grad[:, :C]`` (a strided view of the output gradient, any memory
format) as an addend: ``_cells_to_pixels_kernel`` with ``HAS_ADDEND`` loads it as the fp32
accumulator of each dx tile, so ``dx = grad[:, :C] + gather`` is written in one pass and rounded
once (no separate elementwise add: one x-sized read and write less). Deterministic like both
kernels (no atomics).

Layout of this file: the launcher, then the ``torch.library`` registration, then the public
function (the kernels are those of :mod:`psp_kernels.pyramid_pool_conv` and
:mod:`psp_kernels.upsample_concat`).
"""

from __future__ import annotations

import importlib

import torch

from . import reference
from ._backend import interpreting, resolve_backend
from ._validate import check_pyramid_pool_conv

__all__ = ["pyramid_pooling"]

# the op modules (the package's attributes of the same names are the public functions)
_ppc = importlib.import_module(f"{__package__}.pyramid_pool_conv")
_uc = importlib.import_module(f"{__package__}.upsample_concat")


# ----------------------------------------------------------------------------------------------
# Launcher
# ----------------------------------------------------------------------------------------------


def _kernels_run_on(x: torch.Tensor) -> bool:
    """Whether kernel 2's Triton kernel can run on x's device (CUDA, or CPU with the interpreter)."""
    return x.device.type == "cuda" or (x.device.type == "cpu" and interpreting())


def launch_forward(x, weights, bins, scale, shift, relu, align_corners):
    """``(out, ys, pooled)``: the PPM output, the branch outputs and kernel 1's cell means.

    Stage 1 of kernel 1 writes ``out[:, :C]`` while it reads ``x``; where it cannot (its
    plain-torch fallback: float64 on CUDA, a sample over 2**31 elements), kernel 2 writes the copy.
    """
    c_total = x.shape[1] + sum(int(w.shape[0]) for w in weights)
    out = _uc._empty_output(x, c_total)
    ys, pooled, copied = _ppc.launch_forward(x, weights, bins, scale, shift, relu, out=out)
    if _kernels_run_on(x):
        _uc.launch_forward(x, ys, bool(align_corners), out=out, copy_x=not copied)
    else:  # CPU without the interpreter (only reachable by calling the op directly)
        out.copy_(reference.upsample_concat(x, ys, align_corners=bool(align_corners)))
    return out, ys, pooled


# ----------------------------------------------------------------------------------------------
# torch.library registration
# ----------------------------------------------------------------------------------------------


@torch.library.custom_op("psp_kernels::pyramid_pooling_fwd", mutates_args=())
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


@_fwd_op.register_fake
def _fwd_fake(x, weights, bins, scale, shift, relu, align_corners):
    ys, pooled = _ppc._fwd_fake(x, weights, bins, scale, shift, relu)
    c_total = x.shape[1] + sum(w.shape[0] for w in weights)
    return _uc._empty_output(x, c_total), ys, pooled


def _setup_context(ctx, inputs, output):
    x, weights, bins, scale, shift, relu, align_corners = inputs
    _, ys, pooled = output
    ctx.bins = [int(b) for b in bins]
    ctx.relu = bool(relu)
    ctx.align_corners = bool(align_corners)
    ctx.nw, ctx.ns, ctx.nt = len(weights), len(scale), len(shift)
    ctx.c, ctx.height, ctx.width = x.shape[1], x.shape[2], x.shape[3]
    ctx.shapes = [tuple(y.shape[1:]) for y in ys]
    ctx.channels_last = (not x.is_contiguous()) and x.is_contiguous(
        memory_format=torch.channels_last
    )
    ctx.save_for_backward(pooled, *weights, *scale, *shift, *(list(ys) if relu else []))
    ctx.mark_non_differentiable(pooled, *ys)


def _backward(ctx, grad, grad_ys, grad_pooled):
    saved = list(ctx.saved_tensors)
    pooled = saved[0]
    i = 1
    weights = saved[i : i + ctx.nw]
    i += ctx.nw
    scale = saved[i : i + ctx.ns]
    i += ctx.ns
    shift = saved[i : i + ctx.nt]
    i += ctx.nt
    ys = saved[i:]
    c = ctx.c
    # kernel 2's backward: the branch gradients, packed (N, P), gathered from grad[:, C:]
    sizes = [v for shape in ctx.shapes for v in shape]
    packed = torch.ops.psp_kernels.upsample_concat_backward(grad[:, c:], sizes, ctx.align_corners)
    grads = []
    offset = 0
    for r, h, w in ctx.shapes:
        grads.append(packed[:, offset : offset + r * h * w].view(-1, r, h, w))
        offset += r * h * w
    # kernel 1's backward: weight/scale/shift gradients and its dx gather, which also adds the
    # pass-through gradient grad[:, :C] (a strided view, read in place) in the same pass
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
        grad[:, :c] if need_dx else None,
    )
    dx = dx if need_dx else None
    return dx, list(dws), None, list(dscales), list(dshifts), None, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------
# Public function
# ----------------------------------------------------------------------------------------------


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
    if resolve_backend(backend, x) == "reference":
        ys = reference.pyramid_pool_conv(x, weights, bins, scale=scale, shift=shift, relu=relu)
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
