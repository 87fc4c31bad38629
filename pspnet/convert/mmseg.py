"""mmsegmentation's pyramid pooling heads and backbones (checked against mmsegmentation 1.2.2).

``mmseg.models.decode_heads.psp_head.PPM`` (a ``ModuleList`` of ``Sequential(AdaptiveAvgPool2d,
ConvModule)``, upsampled with ``align_corners`` of the head) serves four places, each followed by
a ``ConvModule`` over the concat:

* ``PSPHead``: ``cat([x, ...])``, 3x3 ``bottleneck`` (``_forward_feature``);
* ``UPerHead``: the same on the last feature map (``psp_forward``);
* ``ICNet`` (backbone): ``cat([..., x])`` (x last), 3x3 ``psp_bottleneck`` (``forward``);
* Fast-SCNN's ``GlobalFeatureExtractor``: ``cat([x, ...])``, 3x3 ``out`` (``forward``).

DDRNet's ``DAPPM`` and PIDNet's ``PAPPM`` pool with strided average windows and refine the
branches with 3x3 convs after the upsampling: left unconverted.
"""

from __future__ import annotations

import torch.nn.functional as F

from .fused import Converted
from .registry import Head, Unsupported
from .units import Parts, unless_hooked

__all__ = ["HEADS", "UNSUPPORTED"]


def _parts(ppm: str, post: str, x_last: bool = False):
    def parts(module) -> Parts:
        p = getattr(module, ppm)
        return Parts(p, list(p), getattr(module, post), x_last, p.align_corners)

    return parts


_psp_parts = _parts("psp_modules", "bottleneck")
_icnet_parts = _parts("psp_modules", "psp_bottleneck", x_last=True)
_fast_scnn_parts = _parts("ppm", "out")


class FusedPSPHead(Converted):
    @unless_hooked(_psp_parts)
    def _forward_feature(self, inputs):
        return _psp_parts(self).fused(self._transform_inputs(inputs))


class FusedUPerHead(Converted):
    @unless_hooked(_psp_parts)
    def psp_forward(self, inputs):
        return _psp_parts(self).fused(inputs[-1])


class FusedGlobalFeatureExtractor(Converted):
    @unless_hooked(_fast_scnn_parts)
    def forward(self, x):
        x = self.bottleneck3(self.bottleneck2(self.bottleneck1(x)))
        return _fast_scnn_parts(self).fused(x)


class FusedICNet(Converted):
    @unless_hooked(_icnet_parts)
    def forward(self, x):
        def half(t):
            return F.interpolate(
                t, scale_factor=0.5, mode="bilinear", align_corners=self.align_corners
            )

        backbone = self.backbone
        outs = [self.conv_sub1(x)]
        x = backbone.layer1(backbone.maxpool(backbone.stem(half(x))))
        x = backbone.layer2(x)
        outs.append(self.conv_sub2(x))
        x = backbone.layer4(backbone.layer3(half(x)))
        x = _icnet_parts(self).fused(x)
        outs.append(self.conv_sub4(x))
        return outs


_PPM = ("PPM",)  # mmseg.models.decode_heads.psp_head.PPM: the pyramid of all four

HEADS = [
    Head("mmseg", ("PSPHead",), "mmseg PSPHead", "_forward_feature", FusedPSPHead, _psp_parts,
         pyramid=_PPM),
    Head("mmseg", ("UPerHead",), "mmseg UPerHead", "psp_forward", FusedUPerHead, _psp_parts,
         pyramid=_PPM),
    Head("mmseg", ("ICNet",), "mmseg ICNet", "forward", FusedICNet, _icnet_parts, pyramid=_PPM),
    Head("mmseg", ("GlobalFeatureExtractor",), "mmseg Fast-SCNN GlobalFeatureExtractor",
         "forward", FusedGlobalFeatureExtractor, _fast_scnn_parts, pyramid=_PPM),
]  # fmt: skip

UNSUPPORTED = [
    Unsupported("mmseg", ("DAPPM", "PAPPM"), "mmseg DAPPM/PAPPM",
                "its branches pool with strided AvgPool2d windows through pre-activation convs "
                "and are refined by 3x3 convs after the upsampling"),
]  # fmt: skip
