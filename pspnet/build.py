"""The models a Config describes: :class:`pspnet.PSPNet`, or :class:`TinyPSPNet` for CPU runs."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

import torch.nn as nn

from .model import PSPNet

if TYPE_CHECKING:
    from .config import Config

__all__ = ["TinyPSPNet", "build_model"]


def _tiny_modules(width: int, bins, classes: int, dropout: float, use_ppm: bool):
    from .model import _head
    from .ppm import PPM
    from .resnet import Bottleneck, conv3x3

    w = int(width)
    if w < 1:
        raise ValueError(f"tiny_width must be >= 1, got {width}")
    layer0 = nn.Sequential(
        conv3x3(3, w, stride=2),
        nn.BatchNorm2d(w),
        nn.ReLU(inplace=True),
        conv3x3(w, w),
        nn.BatchNorm2d(w),
        nn.ReLU(inplace=True),
        conv3x3(w, 2 * w),
        nn.BatchNorm2d(2 * w),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )
    inplanes = 2 * w
    stages = []
    # (planes, stride, dilation): output stride 8 as PSPNet (layer3/layer4 dilated 2/4)
    for planes, stride, dilation in ((w, 1, 1), (2 * w, 2, 1), (4 * w, 1, 2), (8 * w, 1, 4)):
        out = planes * Bottleneck.expansion
        down = None
        if stride != 1 or inplanes != out:
            down = nn.Sequential(
                nn.Conv2d(inplanes, out, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out),
            )
        stages.append(nn.Sequential(Bottleneck(inplanes, planes, stride, down, dilation)))
        inplanes = out
    fea_dim = inplanes  # 32 * w
    if fea_dim % len(bins):
        raise ValueError(f"32 * tiny_width must be divisible by len(bins) = {len(bins)}")
    ppm = PPM(fea_dim, fea_dim // len(bins), bins) if use_ppm else None
    cls = _head(fea_dim * (2 if use_ppm else 1), 4 * w, classes, dropout)
    aux = _head(16 * w, 4 * w, classes, dropout)
    for m in [layer0, *stages]:
        for mod in m.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
    return layer0, stages, ppm, cls, aux


def _default_head() -> str:
    """PSPNet's default ``head`` (the official concat, or the concat-free fused head)."""
    p = inspect.signature(PSPNet.__init__).parameters.get("head")
    return p.default if p is not None else "concat"


def _model_heads() -> tuple:
    from . import model

    return tuple(getattr(model, "_HEADS", ("concat",)))


class TinyPSPNet(PSPNet):
    """A narrow PSPNet for CPU runs and tests: the same modules (``layer0..layer4``, ``ppm``,
    ``cls``, ``aux``), forward and losses as :class:`pspnet.PSPNet`, with a one-block-per-stage
    bottleneck ResNet of base width ``width`` (features ``32 * width`` instead of 2048)."""

    def __init__(
        self,
        classes: int = 2,
        width: int = 16,
        bins=(1, 2, 3, 6),
        dropout: float = 0.1,
        zoom_factor: int = 8,
        use_ppm: bool = True,
        criterion: nn.Module | None = None,
        aux_weight: float = 0.4,
        head: str | None = None,
    ):
        nn.Module.__init__(self)
        if head is None:
            head = _default_head()
        if classes < 2:
            raise ValueError(f"classes must be an int > 1, got {classes!r}")
        if zoom_factor not in (1, 2, 4, 8):
            raise ValueError(f"zoom_factor must be 1, 2, 4 or 8, got {zoom_factor!r}")
        self.layers = "tiny"
        self.bins = tuple(int(b) for b in bins)
        self.zoom_factor = zoom_factor
        self.use_ppm = bool(use_ppm)
        self.criterion = (
            criterion if criterion is not None else nn.CrossEntropyLoss(ignore_index=255)
        )
        self.aux_weight = float(aux_weight)
        if head not in _model_heads():
            raise ValueError(f"head must be one of {_model_heads()}, got {head!r}")
        self.head = head
        layer0, stages, ppm, cls, aux = _tiny_modules(
            width, self.bins, classes, dropout, self.use_ppm
        )
        self.layer0 = layer0
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        if ppm is not None:
            self.ppm = ppm
        self.cls, self.aux = cls, aux


def build_model(cfg: Config, classes: int | None = None) -> nn.Module:
    """The model described by ``cfg`` (``arch``: ``pspnet`` = :class:`pspnet.PSPNet`, ``tiny`` =
    :class:`TinyPSPNet`), with ``CrossEntropyLoss(ignore_index=cfg.ignore_index)``."""
    classes = int(classes or cfg.classes)
    if classes < 2:
        raise ValueError(f"classes must be >= 2 (set --classes), got {classes}")
    criterion = nn.CrossEntropyLoss(ignore_index=cfg.ignore_index)
    if cfg.arch == "tiny":
        return TinyPSPNet(
            classes=classes,
            width=cfg.tiny_width,
            bins=cfg.bins,
            dropout=cfg.dropout,
            zoom_factor=cfg.zoom_factor,
            use_ppm=cfg.use_ppm,
            criterion=criterion,
            aux_weight=cfg.aux_weight,
            head=cfg.head or None,
        )
    extra = {"head": cfg.head} if cfg.head else {}
    return PSPNet(
        layers=cfg.layers,
        bins=cfg.bins,
        dropout=cfg.dropout,
        classes=classes,
        zoom_factor=cfg.zoom_factor,
        use_ppm=cfg.use_ppm,
        criterion=criterion,
        pretrained=cfg.pretrained,
        aux_weight=cfg.aux_weight,
        backbone_path=cfg.backbone_path,
        **extra,
    )
