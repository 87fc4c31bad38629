"""The official optimisation recipe: parameter groups (backbone at the base LR, the new head layers
at ``head_lr_mult`` times it) and the per-iteration poly learning-rate schedule."""

from __future__ import annotations

import torch
import torch.nn as nn

from .runtime import unwrap

__all__ = ["HEAD_MODULES", "param_groups", "poly_lr", "PolyLR", "build_optimizer"]

HEAD_MODULES = ("ppm", "cls", "aux")


def param_groups(model: nn.Module, base_lr: float, head_lr_mult: float = 10.0) -> list[dict]:
    """The official parameter groups: backbone (``layer0..layer4``) at ``base_lr``, the new
    layers (``ppm``, ``cls``, ``aux``) at ``head_lr_mult * base_lr``.

    Each group carries ``lr_mult`` (1 or ``head_lr_mult``) and ``name``.
    """
    model = unwrap(model)
    backbone, head = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (head if name.split(".", 1)[0] in HEAD_MODULES else backbone).append(p)
    groups = [
        dict(params=backbone, lr=base_lr, lr_mult=1.0, name="backbone"),
        dict(params=head, lr=base_lr * head_lr_mult, lr_mult=head_lr_mult, name="head"),
    ]
    return [g for g in groups if g["params"]]


def poly_lr(base_lr: float, iteration: int, max_iter: int, power: float = 0.9) -> float:
    """``base_lr * (1 - iteration / max_iter) ** power`` (the official poly schedule)."""
    if max_iter <= 0:
        raise ValueError(f"max_iter must be > 0, got {max_iter}")
    frac = min(max(iteration, 0), max_iter) / max_iter
    return base_lr * (1.0 - frac) ** power


class PolyLR(torch.optim.lr_scheduler.LRScheduler):
    """Poly learning rate, per iteration: group ``g`` gets ``poly_lr(initial_lr_g, it, max_iter)``.

    Step ``i`` (0-based) of training uses ``poly_lr(base, i, max_iter)``, as the official code
    (which sets the LR for the next step after each step, starting from ``base_lr``).
    """

    def __init__(self, optimizer, max_iter: int, power: float = 0.9, last_epoch: int = -1):
        if max_iter <= 0:
            raise ValueError(f"max_iter must be > 0, got {max_iter}")
        self.max_iter = int(max_iter)
        self.power = float(power)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        return [poly_lr(b, self.last_epoch, self.max_iter, self.power) for b in self.base_lrs]

    def _get_closed_form_lr(self):
        return self.get_lr()


def build_optimizer(model: nn.Module, cfg, max_iter: int):
    """``(SGD optimizer, PolyLR scheduler)`` as ``cfg`` describes them (momentum, weight decay,
    base LR, head multiplier, poly power) over ``max_iter`` iterations."""
    optimizer = torch.optim.SGD(
        param_groups(model, cfg.base_lr, cfg.head_lr_mult),
        lr=cfg.base_lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
    )
    return optimizer, PolyLR(optimizer, max_iter=max_iter, power=cfg.power)
