"""``torch.library`` registration of kernel 2 and the public ``upsample_concat``.

Backward: ``dx`` is a view of ``grad_out[:, :C]`` (taken by the autograd formula, not by a
kernel); the branch gradients come from the backward op (a gather, deterministic).
"""

from __future__ import annotations

import torch

from ... import reference
from ..._backend import resolve_backend
from ..._validate import check_upsample_concat
from ..target import custom_op, register_fake
from .launch import empty_output, kernel_limit, launch_backward, launch_forward

__all__ = ["upsample_concat", "unpack_branch_grads"]


@custom_op("psp_kernels::upsample_concat")
def _upsample_concat_op(
    x: torch.Tensor, branches: list[torch.Tensor], align_corners: bool
) -> torch.Tensor:
    return launch_forward(x, branches, align_corners)


@register_fake(_upsample_concat_op)
def _(x, branches, align_corners):
    c_total = x.shape[1] + sum(b.shape[1] for b in branches)
    return empty_output(x, c_total)


@custom_op("psp_kernels::upsample_concat_backward")
def _upsample_concat_backward_op(
    grad_branches: torch.Tensor, sizes: list[int], align_corners: bool
) -> torch.Tensor:
    shapes = tuple(tuple(int(v) for v in sizes[i : i + 3]) for i in range(0, len(sizes), 3))
    return launch_backward(grad_branches, shapes, align_corners)


@register_fake(_upsample_concat_backward_op)
def _(grad_branches, sizes, align_corners):
    p = 0
    for i in range(0, len(sizes), 3):
        p = p + sizes[i] * sizes[i + 1] * sizes[i + 2]
    return grad_branches.new_empty((grad_branches.shape[0], p))


def unpack_branch_grads(grad_branches, shapes, align_corners) -> list[torch.Tensor]:
    """The branch gradients ``(N, R_i, h_i, w_i)`` from ``grad_out[:, C:]``, by the backward op.

    ``shapes``: ``[(R_i, h_i, w_i)]``. Shared with ``pyramid_pooling``'s backward.
    """
    sizes = [int(v) for shape in shapes for v in shape]
    packed = torch.ops.psp_kernels.upsample_concat_backward(grad_branches, sizes, align_corners)
    grads, offset = [], 0
    for r, h, w in shapes:
        grads.append(packed[:, offset : offset + r * h * w].view(-1, r, h, w))
        offset += r * h * w
    return grads


def _setup_context(ctx, inputs, output):
    x, branches, align_corners = inputs
    ctx.c = x.shape[1]
    ctx.align_corners = align_corners
    ctx.shapes = [tuple(b.shape) for b in branches]  # only the shapes are needed


def _backward(ctx, grad):
    c = ctx.c
    dx = grad[:, :c]  # a view: no copy
    if not ctx.shapes:
        return dx, [], None
    shapes = [tuple(shape[1:]) for shape in ctx.shapes]
    return dx, unpack_branch_grads(grad[:, c:], shapes, ctx.align_corners), None


_upsample_concat_op.register_autograd(_backward, setup_context=_setup_context)


def upsample_concat(x, branches, *, align_corners=True, backend="auto"):
    """Return ``cat([x] + [bilinear(y_i, x.shape[-2:]) for y_i in branches], dim=1)``, fused.

    Args:
        x: ``(N, C, H, W)`` feature map, any strides.
        branches: tensors ``(N, R_i, h_i, w_i)`` of any spatial size (1x1 and larger than ``x``
            included), same dtype and device as ``x``.
        align_corners: PyTorch's ``align_corners`` of ``F.interpolate(mode="bilinear")``.
        backend: ``"auto"``, ``"triton"`` or ``"reference"`` (see ``psp_kernels.resolve_backend``).

    Returns:
        ``(N, C + sum R_i, H, W)`` in ``x``'s memory format (like ``torch.empty_like``),
        differentiable in ``x`` and every branch; ``dx`` of the backward is a view of the
        incoming gradient.
    """
    branches = check_upsample_concat(x, branches)
    limit = kernel_limit(x, [tuple(b.shape[-2:]) for b in branches])
    if resolve_backend(backend, x, kernel_limit=limit) == "reference":
        return reference.upsample_concat(x, branches, align_corners=align_corners)
    return _upsample_concat_op(x, list(branches), bool(align_corners))
