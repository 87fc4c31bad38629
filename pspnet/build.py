"""The models a Config describes (:class:`pspnet.PSPNet`, or :class:`TinyPSPNet` for CPU runs),
and the model a checkpoint describes (its saved Config, then its weights)."""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from .checkpoint import load_checkpoint, load_file
from .config import Config
from .errors import UserError, user_input
from .model import PSPNet, TinyPSPNet

__all__ = ["build_model", "saved_config", "model_from_checkpoint"]


def build_model(cfg: Config, classes: int | None = None) -> nn.Module:
    """The model described by ``cfg`` (``arch``: ``pspnet`` = :class:`pspnet.PSPNet`, ``tiny`` =
    :class:`TinyPSPNet`), with ``CrossEntropyLoss(ignore_index=cfg.ignore_index)``; settings the
    model refuses raise :class:`~pspnet.errors.UserError`."""
    with user_input(f"the config describes no valid {cfg.arch} model"):
        return _build_model(cfg, classes)


def _build_model(cfg: Config, classes: int | None) -> nn.Module:
    classes = int(classes or cfg.classes)
    if classes < 2:
        raise UserError(f"classes must be >= 2 (set --classes), got {classes}")
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


def saved_config(path) -> Config | None:
    """The Config stored in one of our checkpoints (``None`` for official / plain files or an
    unreadable path; errors are reported when the model is loaded)."""
    try:
        obj = load_file(path)
    except Exception:  # noqa: BLE001 - reported later by model_from_checkpoint
        return None
    if isinstance(obj, dict) and isinstance(obj.get("config"), dict):
        known = Config.__dataclass_fields__
        return Config.from_dict({k: v for k, v in obj["config"].items() if k in known})
    return None


def model_from_checkpoint(path, cfg: Config | None = None, map_location="cpu"):
    """``(model in eval mode, cfg, class_names)`` from a checkpoint.

    Ours carry their config (model shape, classes); for official / plain state_dict files
    ``cfg`` must describe the model (``arch``, ``layers``, ``classes``...). Structural keys
    (arch, layers, classes, bins, zoom_factor, use_ppm, tiny_width) come from the checkpoint.
    """
    path = Path(path)
    obj = load_file(path)  # FileNotFoundError / ValueError naming the file and the fault
    class_names = None
    if isinstance(obj, dict) and isinstance(obj.get("config"), dict):
        saved = Config.from_dict(
            {k: v for k, v in obj["config"].items() if k in Config.__dataclass_fields__}
        )
        keys = (
            "arch",
            "layers",
            "classes",
            "bins",
            "zoom_factor",
            "use_ppm",
            "tiny_width",
            "ignore_index",
        )
        structural = {k: getattr(saved, k) for k in keys}
        cfg = saved if cfg is None else cfg.replace(**structural)
        class_names = obj.get("class_names")
    elif cfg is None:
        raise UserError(f"{path} holds no config: pass --preset/--classes/--layers for it")
    del obj
    build_cfg = cfg.replace(pretrained=False, backbone_path=None)
    model = build_model(build_cfg)
    load_checkpoint(model, path, map_location=map_location)
    model.eval()
    return model, cfg, class_names
