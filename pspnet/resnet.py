"""Deep-stem (ResNet-v1c) bottleneck ResNets, with optional dilation, as used by PSPNet.

The layout matches the ImageNet backbones of the official hszhao/semseg code (``resnet50_v2.pth``,
``resnet101_v2.pth``, ``resnet152_v2.pth``): a "deep base" stem of three 3x3 convolutions
(``conv1``/``bn1``, ``conv2``/``bn2``, ``conv3``/``bn3``), then ``layer1..layer4`` of bottleneck
blocks with the stride on the 3x3 convolution (torchvision v1.5 style), then ``avgpool`` and
``fc``. Those files load strictly.

Dilation is chosen at construction (``strides``/``dilations`` per stage, or torchvision's
``replace_stride_with_dilation``). Unlike torchvision, every block of a dilated stage, the first
included, uses that stage's dilation: this is what the official PSPNet gets by editing
``conv2``/``downsample.0`` after construction, so weights, ``state_dict`` keys and numerics are the
same as the official model's.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import torch
import torch.nn as nn

__all__ = [
    "Bottleneck",
    "ResNet",
    "resnet50",
    "resnet101",
    "resnet152",
    "BACKBONE_FILES",
    "find_backbone",
    "load_backbone",
]

#: file names of the official ImageNet backbones, by depth
BACKBONE_FILES = {50: "resnet50_v2.pth", 101: "resnet101_v2.pth", 152: "resnet152_v2.pth"}

_LAYERS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}

# file names we already warned about (warn once per process and file)
_WARNED: set[str] = set()


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    """3x3 convolution without bias; padding equals dilation (keeps the size at stride 1)."""
    return nn.Conv2d(
        in_planes,
        out_planes,
        kernel_size=3,
        stride=stride,
        padding=dilation,
        dilation=dilation,
        bias=False,
    )


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries stride and dilation), 1x1 expand (x4), plus identity/projection."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride=stride, dilation=dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _stage_settings(strides, dilations, replace_stride_with_dilation):
    """Resolve the per-stage (stride, dilation) of layer1..layer4."""
    if replace_stride_with_dilation is not None:
        if strides is not None or dilations is not None:
            raise ValueError(
                "give either replace_stride_with_dilation or strides/dilations, not both"
            )
        flags = list(replace_stride_with_dilation)
        if len(flags) != 3:
            raise ValueError(
                "replace_stride_with_dilation must have 3 booleans (layer2, layer3, layer4), "
                f"got {replace_stride_with_dilation!r}"
            )
        strides, dilations, d = [1], [1], 1
        for flag in flags:
            if flag:
                d *= 2
                strides.append(1)
            else:
                strides.append(2)
            dilations.append(d)
    strides = (1, 2, 2, 2) if strides is None else tuple(strides)
    dilations = (1, 1, 1, 1) if dilations is None else tuple(dilations)
    for name, val in (("strides", strides), ("dilations", dilations)):
        if len(val) != 4 or not all(isinstance(v, int) and v >= 1 for v in val):
            raise ValueError(f"{name} must be 4 positive ints (layer1..layer4), got {val!r}")
    return strides, dilations


class ResNet(nn.Module):
    """Bottleneck ResNet with a deep (3x conv3x3) or classic (7x7) stem.

    Args:
        block: the residual block class (:class:`Bottleneck`).
        layers: blocks per stage, e.g. ``(3, 4, 6, 3)`` for ResNet-50.
        num_classes: size of the ``fc`` classifier (1000 for the ImageNet files).
        deep_base: deep stem ``conv1 3x3 3->64 s2, conv2 3x3 64->64, conv3 3x3 64->128`` (True,
            the official PSPNet backbone) or torchvision's ``7x7 3->64 s2`` stem (False).
        strides: stride of each stage ``layer1..layer4`` (default ``(1, 2, 2, 2)``).
        dilations: dilation of every block of each stage (default ``(1, 1, 1, 1)``); PSPNet uses
            ``strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4)`` (output stride 8).
        replace_stride_with_dilation: torchvision's spelling, 3 booleans for ``layer2..layer4``;
            ``[False, True, True]`` is the PSPNet setting.
        width: base width ``w`` (64 for the standard ResNets): the deep stem is
            ``3->w s2, w->w, w->2w`` (classic: ``7x7 3->w``) and ``layer1..layer4`` have
            ``w, 2w, 4w, 8w`` bottleneck planes (``4x`` that many output channels).
    """

    def __init__(
        self,
        block: type[Bottleneck],
        layers: Sequence[int],
        num_classes: int = 1000,
        deep_base: bool = True,
        strides: Sequence[int] | None = None,
        dilations: Sequence[int] | None = None,
        replace_stride_with_dilation: Sequence[bool] | None = None,
        width: int = 64,
    ):
        super().__init__()
        if len(layers) != 4 or not all(isinstance(n, int) and n >= 1 for n in layers):
            raise ValueError(f"layers must be 4 positive ints, got {layers!r}")
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive int, got {width!r}")
        strides, dilations = _stage_settings(strides, dilations, replace_stride_with_dilation)
        self.deep_base = bool(deep_base)
        w = width
        if self.deep_base:
            self.conv1 = conv3x3(3, w, stride=2)
            self.bn1 = nn.BatchNorm2d(w)
            self.conv2 = conv3x3(w, w)
            self.bn2 = nn.BatchNorm2d(w)
            self.conv3 = conv3x3(w, 2 * w)
            self.bn3 = nn.BatchNorm2d(2 * w)
            self.inplanes = 2 * w
        else:
            self.conv1 = nn.Conv2d(3, w, kernel_size=7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(w)
            self.inplanes = w
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, w, layers[0], strides[0], dilations[0])
        self.layer2 = self._make_layer(block, 2 * w, layers[1], strides[1], dilations[1])
        self.layer3 = self._make_layer(block, 4 * w, layers[2], strides[2], dilations[2])
        self.layer4 = self._make_layer(block, 8 * w, layers[3], strides[3], dilations[3])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8 * w * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block, planes: int, blocks: int, stride: int, dilation: int):
        downsample = None
        out_planes = planes * block.expansion
        if stride != 1 or self.inplanes != out_planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, out_planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )
        mods = [block(self.inplanes, planes, stride, downsample, dilation)]
        self.inplanes = planes * block.expansion
        mods += [block(self.inplanes, planes, dilation=dilation) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def stem(self) -> nn.Sequential:
        """The stem as one ``Sequential`` (sharing modules), in PSPNet's ``layer0`` order."""
        if self.deep_base:
            mods = [self.conv1, self.bn1, self.relu, self.conv2, self.bn2, self.relu]
            mods += [self.conv3, self.bn3, self.relu, self.maxpool]
        else:
            mods = [self.conv1, self.bn1, self.relu, self.maxpool]
        return nn.Sequential(*mods)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and ``layer1..layer4``: the feature map before pooling."""
        x = self.relu(self.bn1(self.conv1(x)))
        if self.deep_base:
            x = self.relu(self.bn2(self.conv2(x)))
            x = self.relu(self.bn3(self.conv3(x)))
        x = self.maxpool(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.forward_features(x))
        return self.fc(torch.flatten(x, 1))


def _search_dirs() -> list[str]:
    dirs = []
    home = os.environ.get("PSPNET_HOME")
    if home:
        dirs.append(home)
    dirs.append(os.path.join(os.path.expanduser("~"), ".cache", "pspnet"))
    dirs.append("initmodel")
    return dirs


def find_backbone(layers: int) -> tuple[str | None, list[str]]:
    """Look for the official ImageNet file of ResNet-``layers``.

    Looks in ``$PSPNET_HOME``, ``~/.cache/pspnet/`` and ``./initmodel/`` (in that order) for
    ``resnet{layers}_v2.pth``. Returns ``(path or None, [every path looked at])``.
    """
    if layers not in BACKBONE_FILES:
        raise ValueError(f"layers must be one of {sorted(BACKBONE_FILES)}, got {layers!r}")
    looked = [os.path.join(d, BACKBONE_FILES[layers]) for d in _search_dirs()]
    for p in looked:
        if os.path.isfile(p):
            return p, looked
    return None, looked


def load_backbone(model: ResNet, path: str | os.PathLike) -> ResNet:
    """Load an ImageNet ResNet ``state_dict`` file into ``model``, strictly.

    Accepts a plain ``state_dict`` or ``{'state_dict': ...}``/``{'model': ...}``, with or without
    ``module.``/``_orig_mod.`` prefixes (see :func:`pspnet.load_checkpoint`). Every key must
    match except the classifier ``fc.*``, which may be absent (PSPNet does not use it).
    """
    from .checkpoint import read_state_dict
    from .state_dict import apply_state_dict

    sd = read_state_dict(path)
    return apply_state_dict(model, sd, strict=True, source=repr(os.fspath(path)), optional=("fc.",))


def _resnet(layers: int, pretrained: bool, backbone_path, **kwargs) -> ResNet:
    if backbone_path is not None and not os.path.isfile(backbone_path):
        raise FileNotFoundError(f"backbone_path: no such file {os.fspath(backbone_path)!r}")
    model = ResNet(Bottleneck, _LAYERS[layers], **kwargs)
    if backbone_path is not None:
        return load_backbone(model, backbone_path)
    if pretrained:
        path, looked = find_backbone(layers)
        if path is not None:
            return load_backbone(model, path)
        name = BACKBONE_FILES[layers]
        if name not in _WARNED:
            _WARNED.add(name)
            warnings.warn(
                f"pretrained=True but no ImageNet backbone {name} was found (looked at: "
                f"{', '.join(looked)}); keeping the random initialisation. Put the file in one "
                "of those places or pass backbone_path=... (no download is attempted).",
                UserWarning,
                stacklevel=3,
            )
    return model


def resnet50(pretrained: bool = False, backbone_path=None, **kwargs) -> ResNet:
    """ResNet-50 (deep stem by default); ``pretrained`` loads ``resnet50_v2.pth`` if found.

    ``backbone_path`` names the file explicitly (it must exist). Other keyword arguments go to
    :class:`ResNet` (``deep_base``, ``strides``, ``dilations``, ``replace_stride_with_dilation``,
    ``num_classes``, ``width``). Without a file, ``pretrained=True`` warns once and keeps random
    weights.
    """
    return _resnet(50, pretrained, backbone_path, **kwargs)


def resnet101(pretrained: bool = False, backbone_path=None, **kwargs) -> ResNet:
    """ResNet-101; see :func:`resnet50` (file ``resnet101_v2.pth``)."""
    return _resnet(101, pretrained, backbone_path, **kwargs)


def resnet152(pretrained: bool = False, backbone_path=None, **kwargs) -> ResNet:
    """ResNet-152; see :func:`resnet50` (file ``resnet152_v2.pth``)."""
    return _resnet(152, pretrained, backbone_path, **kwargs)
