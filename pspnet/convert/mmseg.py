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
from .units import fused_head

__all__ = ["HEADS", "UNSUPPORTED"]


def _fused_ppm(x, ppm, post, x_last=False):
    return fused_head(x, list(ppm), post, x_last=x_last, align_corners=ppm.align_corners)


class FusedPSPHead(Converted):
    def _forward_feature(self, inputs):
        return _fused_ppm(self._transform_inputs(inputs), self.psp_modules, self.bottleneck)


class FusedUPerHead(Converted):
    def psp_forward(self, inputs):
        return _fused_ppm(inputs[-1], self.psp_modules, self.bottleneck)


class FusedGlobalFeatureExtractor(Converted):
    def forward(self, x):
        x = self.bottleneck3(self.bottleneck2(self.bottleneck1(x)))
        return _fused_ppm(x, self.ppm, self.out)


class FusedICNet(Converted):
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
        x = _fused_ppm(x, self.psp_modules, self.psp_bottleneck, x_last=True)
        outs.append(self.conv_sub4(x))
        return outs


def _parts(ppm: str, post: str, x_last: bool = False):
    def parts(module):
        p = getattr(module, ppm)
        return list(p), getattr(module, post), x_last, p.align_corners

    return parts


HEADS = [
    Head("mmseg", ("PSPHead",), "mmseg PSPHead", "_forward_feature", FusedPSPHead,
         _parts("psp_modules", "bottleneck")),
    Head("mmseg", ("UPerHead",), "mmseg UPerHead", "psp_forward", FusedUPerHead,
         _parts("psp_modules", "bottleneck")),
    Head("mmseg", ("ICNet",), "mmseg ICNet", "forward", FusedICNet,
         _parts("psp_modules", "psp_bottleneck", x_last=True)),
    Head("mmseg", ("GlobalFeatureExtractor",), "mmseg Fast-SCNN GlobalFeatureExtractor",
         "forward", FusedGlobalFeatureExtractor, _parts("ppm", "out")),
]  # fmt: skip

UNSUPPORTED = [
    Unsupported("mmseg", ("DAPPM", "PAPPM"), "mmseg DAPPM/PAPPM",
                "its branches pool with strided AvgPool2d windows through pre-activation convs "
                "and are refined by 3x3 convs after the upsampling"),
]  # fmt: skip
