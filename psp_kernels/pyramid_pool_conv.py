"""Kernel 1: fused multi-bin adaptive average pooling + 1x1 convolution.

Layout of this file: Triton kernels, then the launcher (input checks, block sizes), then the
``torch.library`` registration, then the public function.
"""

from __future__ import annotations

from . import reference
from ._backend import resolve_backend
from ._validate import check_pyramid_pool_conv


def pyramid_pool_conv(
    x, weights, bins=(1, 2, 3, 6), *, scale=None, shift=None, relu=False, backend="auto"
):
    """Pool ``x`` at every bin size and apply each bin's bias-free 1x1 convolution, fused.

    Returns ``[y_i]``, ``y_i`` of shape ``(N, R_i, b_i, b_i)`` equal to
    ``act(scale_i * conv1x1(adaptive_avg_pool2d(x, b_i), W_i) + shift_i)``. See
    ``psp_kernels.reference.pyramid_pool_conv`` for the arguments.
    """
    weights, bins, scale, shift = check_pyramid_pool_conv(x, weights, bins, scale, shift)
    if resolve_backend(backend, x) == "reference":
        return reference.pyramid_pool_conv(x, weights, bins, scale=scale, shift=shift, relu=relu)
    raise NotImplementedError("the Triton path of pyramid_pool_conv is not written yet")
