"""The models a Config describes: :class:`pspnet.PSPNet`, or :class:`TinyPSPNet` for CPU runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch.nn as nn

from .model import PSPNet, TinyPSPNet

if TYPE_CHECKING:
    from .config import Config

__all__ = ["TinyPSPNet", "build_model"]


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
