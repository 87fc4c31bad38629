"""Fused Triton kernels for PSPNet's pyramid pooling module.

>>> import psp_kernels
>>> ys = psp_kernels.pyramid_pool_conv(x, weights, bins=(1, 2, 3, 6))   # pool + 1x1 conv, all bins
>>> out = psp_kernels.upsample_concat(x, ys, align_corners=True)        # upsample + concat
>>> loss = psp_kernels.upsample_cross_entropy(logits, labels)           # upsample + cross-entropy

``psp_kernels.reference`` holds the same functions in plain PyTorch: the definition of correct.
The implementations live in ``psp_kernels.ops`` (one package per op: kernels, configs, launch,
op registration) around the shared policy of ``psp_kernels.ops.utils``.
"""

from . import geometry, reference
from ._backend import interpreting, resolve_backend
from .ops.pyramid_pool_conv.op import pyramid_pool_conv
from .ops.pyramid_pooling.op import pyramid_pooling
from .ops.shifted_upsample_add.conv import concat_free_conv, concat_free_pays, split_concat_conv
from .ops.shifted_upsample_add.op import shifted_upsample_add
from .ops.upsample_concat.op import upsample_concat
from .ops.upsample_cross_entropy.op import upsample_cross_entropy

__all__ = [
    "pyramid_pool_conv",
    "upsample_concat",
    "pyramid_pooling",
    "shifted_upsample_add",
    "upsample_cross_entropy",
    "concat_free_conv",
    "split_concat_conv",
    "concat_free_pays",
    "reference",
    "geometry",
    "interpreting",
    "resolve_backend",
]
__version__ = "0.1.0"
