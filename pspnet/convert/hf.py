"""transformers' UperNet heads (checked against transformers 5.25).

* ``UperNetHead`` (``UperNetForSemanticSegmentation``: ConvNeXt, Swin, DINOv2... backbones):
  ``psp_modules`` (blocks of ``AdaptiveAvgPool2d`` + ``UperNetConvModule``, upsampled with its
  ``align_corners``, False), ``cat([x, ...])`` and the 3x3 ``bottleneck`` in ``psp_forward``;
* ``BeitUperHead`` and its copy ``Data2VecVisionUperHead``: ``psp_modules.blocks`` (pooling + a
  conv layer, upsampled with ``align_corners=False``), the 3x3 ``psp_bottleneck`` (``bottleneck``
  in older releases) in ``psp_forward``.
"""

from __future__ import annotations

from .fused import Converted
from .registry import Head
from .units import Parts, unless_hooked

__all__ = ["HEADS"]


def _branch_modules(ppm):
    blocks = getattr(ppm, "blocks", None)
    return list(blocks) if blocks is not None else list(ppm.children())


def _upernet_parts(head) -> Parts:
    ppm = head.psp_modules
    return Parts(ppm, _branch_modules(ppm), head.bottleneck, False, ppm.align_corners)


def _beit_parts(head) -> Parts:
    ppm = head.psp_modules
    post = getattr(head, "psp_bottleneck", None) or head.bottleneck
    return Parts(ppm, _branch_modules(ppm), post, False, getattr(ppm, "align_corners", False))


class FusedUperNetHead(Converted):
    @unless_hooked(_upernet_parts)
    def psp_forward(self, inputs):
        return _upernet_parts(self).fused(inputs[-1])


class FusedBeitUperHead(Converted):
    @unless_hooked(_beit_parts)
    def psp_forward(self, hidden_states):
        return _beit_parts(self).fused(hidden_states[-1])


HEADS = [
    Head("transformers", ("UperNetHead",), "transformers UperNetHead", "psp_forward",
         FusedUperNetHead, _upernet_parts, pyramid=("UperNetPyramidPoolingModule",)),
    Head("transformers", ("BeitUperHead", "Data2VecVisionUperHead"),
         "transformers BeitUperHead", "psp_forward", FusedBeitUperHead, _beit_parts,
         pyramid=("BeitPyramidPoolingModule", "Data2VecVisionPyramidPoolingModule")),
]  # fmt: skip
