"""Fused Triton kernels for PSPNet's pyramid pooling module.

>>> import psp_kernels
>>> ys = psp_kernels.pyramid_pool_conv(x, weights, bins=(1, 2, 3, 6))   # pool + 1x1 conv, all bins
>>> out = psp_kernels.upsample_concat(x, ys, align_corners=True)        # upsample + concat

``psp_kernels.reference`` holds the same functions in plain PyTorch: the definition of correct.
"""

from . import geometry, reference
from ._backend import interpreting, resolve_backend
from .pyramid_pool_conv import pyramid_pool_conv
from .pyramid_pooling import pyramid_pooling
from .shifted_upsample_add import shifted_upsample_add
from .upsample_concat import upsample_concat

__all__ = [
    "pyramid_pool_conv",
    "upsample_concat",
    "pyramid_pooling",
    "shifted_upsample_add",
    "reference",
    "geometry",
    "interpreting",
    "resolve_backend",
]
__version__ = "0.1.0"
