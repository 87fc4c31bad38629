"""The models a Config describes (:class:`pspnet.PSPNet`, or :class:`TinyPSPNet` for CPU runs),
and the model a checkpoint describes (its saved Config, then its weights)."""

from __future__ import annotations

import torch.nn as nn

from .checkpoint import Checkpoint, read_checkpoint
from .config import Config
from .errors import UserError, user_input
from .model import PSPNet, TinyPSPNet
from .state_dict import apply_state_dict

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


def _config_of(ckpt: Checkpoint) -> Config | None:
    """The Config a checkpoint carries (None for official / plain weights); keys this version
    does not know are left out, values are checked as in a config file."""
    saved = ckpt.config
    if saved is None:
        return None
    known = {k: v for k, v in saved.items() if k in Config.__dataclass_fields__}
    with user_input(f"the config saved in {str(ckpt.path)!r}"):
        return Config.from_dict(known)


def saved_config(path) -> Config | None:
    """The Config stored in one of our checkpoints (``None`` for official / plain files). Reads
    the file's structure only (no tensor data); a bad file raises the errors of
    :func:`pspnet.safe_load.safe_load`."""
    return _config_of(read_checkpoint(path, map_location="meta", verify=False))


#: the settings that define the model's shape: a checkpoint's own replace those of the caller
STRUCTURAL_KEYS = (
    "arch", "layers", "classes", "bins", "zoom_factor", "use_ppm", "tiny_width", "ignore_index",
)  # fmt: skip


def model_from_checkpoint(path, cfg: Config | None = None, map_location="cpu"):
    """``(model in eval mode, cfg, class_names)`` from a checkpoint, read once.

    Ours carry their config (model shape, classes); for official / plain state_dict files
    ``cfg`` must describe the model (``arch``, ``layers``, ``classes``...). Structural keys
    (:data:`STRUCTURAL_KEYS`) come from the checkpoint.
    """
    ckpt = read_checkpoint(path, map_location=map_location)  # errors name the file and fault
    saved = _config_of(ckpt)
    class_names = None
    if saved is not None:
        structural = {k: getattr(saved, k) for k in STRUCTURAL_KEYS}
        cfg = saved if cfg is None else cfg.replace(**structural)
        class_names = ckpt.class_names
    elif cfg is None:
        raise UserError(f"{path} holds no config: pass --preset/--classes/--layers for it")
    build_cfg = cfg.replace(pretrained=False, backbone_path=None)
    model = build_model(build_cfg)
    apply_state_dict(model, ckpt.state_dict(), source=repr(str(path)))
    model.eval()
    return model, cfg, class_names
