"""``torch.library`` registration of kernel 3 and the public ``upsample_cross_entropy``.

One forward op and one backward op, each with two implementations chosen by ``use_triton``:
the Triton kernels (CUDA, or CPU tensors through the interpreter) and the row-chunked PyTorch
formulation of :mod:`.separable` (CPU, and CUDA sizes the kernels do not take). Neither builds a
full-resolution tensor. The kernels' backward recomputes what it needs from the logits and the
per-pixel logsumexp the forward saves; the PyTorch path, when the logits need a gradient,
computes it in the forward from the same exponentials (for an upstream gradient of 1: the loss
is one number) and its backward only scales it.
"""

from __future__ import annotations

import torch

from ... import reference
from ..._backend import resolve_backend
from ..._validate import check_backend, check_upsample_cross_entropy
from ..target import custom_op, register_fake
from ..utils import acc_dtype
from . import separable
from .launch import kernel_limit, launch_backward, launch_forward

__all__ = ["upsample_cross_entropy"]


@custom_op("psp_kernels::upsample_cross_entropy_fwd")
def _fwd_op(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int,
    reduction: str,
    align_corners: bool,
    want_prediction: bool,
    use_triton: bool,
    with_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, lse, total_weight, prediction, basis)``: the loss in the logits' dtype, the
    per-pixel logsumexp ``(N, H, W)`` and the sum of the counted pixels' weights (accumulation
    dtype), the argmax ``(N, H, W)`` int64 (empty unless ``want_prediction``), and, with
    ``with_grad`` (the PyTorch path only), the loss's gradient for an upstream gradient of 1
    ``(N, K, h, w)`` in the accumulation dtype (else empty)."""
    args = (logits, target, weight, ignore_index, reduction, align_corners, want_prediction)
    if use_triton:
        return (*launch_forward(*args), logits.new_empty(0, dtype=acc_dtype(logits.dtype)))
    return separable.forward(*args, with_grad=with_grad)


@register_fake(_fwd_op)
def _(logits, target, weight, ignore_index, reduction, align_corners, want_prediction, use_triton,
      with_grad):  # fmt: skip
    n, (height, width) = logits.shape[0], target.shape[-2:]
    adt = acc_dtype(logits.dtype)
    pred_shape = (n, height, width) if want_prediction else (0,)
    basis_shape = tuple(logits.shape) if with_grad and not use_triton else (0,)
    return (
        logits.new_empty(()),
        logits.new_empty((n, height, width), dtype=adt),
        logits.new_empty((), dtype=adt),
        logits.new_empty(pred_shape, dtype=torch.long),
        logits.new_empty(basis_shape, dtype=adt),
    )


@custom_op("psp_kernels::upsample_cross_entropy_bwd")
def _bwd_op(
    grad: torch.Tensor,
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    lse: torch.Tensor,
    total_weight: torch.Tensor,
    basis: torch.Tensor,
    ignore_index: int,
    reduction: str,
    align_corners: bool,
    use_triton: bool,
) -> torch.Tensor:
    """The loss's gradient with respect to ``logits`` (``grad``: the loss's own gradient): the
    forward's ``basis`` scaled, or recomputed (the kernels' gather, or the PyTorch path)."""
    if basis.numel():
        return (basis * grad.to(basis.dtype)).to(logits.dtype)
    impl = launch_backward if use_triton else separable.backward
    return impl(grad, logits, target, weight, lse, total_weight, ignore_index, reduction,
                align_corners)  # fmt: skip


@register_fake(_bwd_op)
def _(grad, logits, target, weight, lse, total_weight, basis, ignore_index, reduction,
      align_corners, use_triton):  # fmt: skip
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    logits, target, weight, ignore_index, reduction, align_corners, _, use_triton, _ = inputs
    _, lse, total_weight, pred, basis = output
    ctx.save_for_backward(logits, target, weight, lse, total_weight, basis)
    ctx.options = (ignore_index, reduction, align_corners, use_triton)
    ctx.mark_non_differentiable(lse, total_weight, pred, basis)


def _backward(ctx, grad, *_):
    logits, target, weight, lse, total_weight, basis = ctx.saved_tensors
    ignore_index, reduction, align_corners, use_triton = ctx.options
    grad_logits = _bwd_op(grad, logits, target, weight, lse, total_weight, basis, ignore_index,
                          reduction, align_corners, use_triton)  # fmt: skip
    return (grad_logits, *(None,) * 8)


_fwd_op.register_autograd(_backward, setup_context=_setup_context)
# Under autocast the loss is computed in float32, as PyTorch's cross-entropy is: float32 logits
# (a copy at stride 8) and a float32 loss, which a GradScaler can scale without overflow.
for _device in ("cuda", "cpu"):
    torch.library.register_autocast(_fwd_op, _device, torch.float32)


def upsample_cross_entropy(
    logits,
    target,
    *,
    weight=None,
    ignore_index=-100,
    reduction="mean",
    align_corners=True,
    return_prediction=False,
    backend="auto",
):
    """The cross-entropy of bilinearly upsampled logits, without the upsampled logits.

    Equal to ``F.cross_entropy(F.interpolate(logits, target.shape[-2:], mode="bilinear",
    align_corners=align_corners), target, weight=weight, ignore_index=ignore_index,
    reduction=reduction)``, computed without ever building the ``(N, K, H, W)`` upsampled
    logits, their log-probabilities or their gradient.

    Args:
        logits: ``(N, K, h, w)`` class scores at low resolution, any strides; float16, bfloat16,
            float32 (accumulated in float32) or float64.
        target: ``(N, H, W)`` class indices in ``[0, K)`` (int64, int32, int16, int8 or uint8),
            at the resolution the loss is taken at (any ``H, W``).
        weight: optional ``(K,)`` per-class weights (any floating dtype).
        ignore_index: pixels with this label count neither in the loss nor in the mean.
        reduction: ``"mean"`` (the weighted mean over counted pixels: ``nan`` when none counts,
            as PyTorch) or ``"sum"``.
        align_corners: PyTorch's ``align_corners`` of the bilinear upsampling.
        return_prediction: also return the upsampled logits' argmax ``(N, H, W)`` (int64, the
            first maximum on ties, as ``torch.argmax``).
        backend: ``"auto"`` (Triton on CUDA or under the interpreter, else the row-chunked
            PyTorch path), ``"triton"`` or ``"reference"`` (the materialised definition).

    Returns:
        The loss (a 0-d tensor in the logits' dtype; float32 under autocast, like PyTorch's
        cross-entropy), or ``(loss, prediction)``. Differentiable
        in ``logits``; deterministic. A counted label outside ``[0, K)`` raises ``ValueError`` on
        the PyTorch path and gives a ``nan`` loss in the kernels (a check would synchronise the
        GPU).
    """
    check_backend(backend)
    check_upsample_cross_entropy(logits, target, weight, ignore_index, reduction)
    if backend == "reference":
        return reference.upsample_cross_entropy(
            logits, target, weight=weight, ignore_index=ignore_index, reduction=reduction,
            align_corners=align_corners, return_prediction=return_prediction,
        )  # fmt: skip
    limit = kernel_limit(logits, target)
    use_triton = resolve_backend(backend, logits, kernel_limit=limit) == "triton"
    # the PyTorch path computes the gradient with the loss when one will be asked for
    with_grad = not use_triton and torch.is_grad_enabled() and logits.requires_grad
    loss, _, _, pred, _ = _fwd_op(logits, target, weight, int(ignore_index), reduction,
                                  bool(align_corners), bool(return_prediction), use_triton,
                                  with_grad)  # fmt: skip
    return (loss, pred) if return_prediction else loss
