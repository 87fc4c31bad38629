"""segmentation_models_pytorch's PSP modules (checked against segmentation-models-pytorch 0.6.0).

* ``PSPNet``'s ``PSPDecoder``: ``psp`` (``PSPModule``: ``PSPBlock`` branches,
  ``align_corners=True``, ``cat([..., x])``: x last; the bin-1 branch has a conv bias and no
  norm) and a 1x1 ``conv``
  (``Conv2dReLU``) after it, then dropout (``forward``);
* ``UPerNet``'s ``PSPModule``: ``blocks`` of ``AdaptiveAvgPool2d`` + ``Conv2dReLU``,
  ``align_corners=False``, ``cat([x, ...])`` and the ``out_conv`` (``forward``; 3x3 or 1x1 as
  the release builds it: the converter handles both).
"""

from __future__ import annotations

from .fused import Converted
from .registry import Head
from .units import Parts, unless_hooked

__all__ = ["HEADS"]


def _pspnet_parts(decoder) -> Parts:
    return Parts(decoder.psp, list(decoder.psp.blocks), decoder.conv, True, True)


def _upernet_parts(module) -> Parts:
    # (the module is the pyramid itself: its forward is the method replaced)
    return Parts(None, list(module.blocks), module.out_conv, False, False)


class FusedPSPDecoder(Converted):
    @unless_hooked(_pspnet_parts)
    def forward(self, *args):
        # (one list of feature maps; older releases took them as separate arguments)
        features = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
        return self.dropout(_pspnet_parts(self).fused(features[-1]))


class FusedUPerNetPSPModule(Converted):
    @unless_hooked(_upernet_parts)
    def forward(self, feature):
        return _upernet_parts(self).fused(feature)


HEADS = [
    Head("segmentation_models_pytorch", ("PSPDecoder",), "smp PSPNet decoder", "forward",
         FusedPSPDecoder, _pspnet_parts, pyramid=("PSPModule",), pyramid_path="pspnet"),
    Head("segmentation_models_pytorch", ("PSPModule",), "smp UPerNet PSPModule", "forward",
         FusedUPerNetPSPModule, _upernet_parts, module_path="upernet"),
]  # fmt: skip
