"""segmentation_models_pytorch's PSP modules (checked against segmentation-models-pytorch 0.6.0).

* ``PSPNet``'s ``PSPDecoder``: ``psp`` (``PSPModule``: ``PSPBlock`` branches,
  ``align_corners=True``, ``cat([..., x])``: x last; the bin-1 branch has a conv bias and no
  norm) and a 1x1 ``conv``
  (``Conv2dReLU``) after it, then dropout (``forward``);
* ``UPerNet``'s ``PSPModule``: ``blocks`` of ``AdaptiveAvgPool2d`` + ``Conv2dReLU``,
  ``align_corners=False``, ``cat([x, ...])`` and the 3x3 ``out_conv`` (``forward``).
"""

from __future__ import annotations

from .fused import Converted
from .registry import Head
from .units import fused_head

__all__ = ["HEADS"]


def _pspnet_parts(decoder):
    return list(decoder.psp.blocks), decoder.conv, True, True


def _upernet_parts(module):
    return list(module.blocks), module.out_conv, False, False


class FusedPSPDecoder(Converted):
    def forward(self, *args):
        # (one list of feature maps; older releases took them as separate arguments)
        features = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
        branches, post, x_last, ac = _pspnet_parts(self)
        x = fused_head(features[-1], branches, post, x_last=x_last, align_corners=ac)
        return self.dropout(x)


class FusedUPerNetPSPModule(Converted):
    def forward(self, feature):
        branches, post, x_last, ac = _upernet_parts(self)
        return fused_head(feature, branches, post, x_last=x_last, align_corners=ac)


HEADS = [
    Head("segmentation_models_pytorch", ("PSPDecoder",), "smp PSPNet decoder", "forward",
         FusedPSPDecoder, _pspnet_parts),
    Head("segmentation_models_pytorch", ("PSPModule",), "smp UPerNet PSPModule", "forward",
         FusedUPerNetPSPModule, _upernet_parts, module_path="upernet"),
]  # fmt: skip
