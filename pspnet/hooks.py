"""The hooks a fused computation would skip: those of the modules whose forward it does not call.

A converted head (:mod:`pspnet.convert`) reads its modules' weights instead of calling them, and
the model's fused loss computes its criterion without calling it, so the module's forward
hooks, forward pre-hooks and backward hooks would not run; ``torch.nn.utils.weight_norm``,
``spectral_norm`` and ``torch.nn.utils.prune`` recompute the weight in a forward pre-hook, so
skipping it would even compute with a stale weight. Module hooks registered globally
(``torch.nn.modules.module.register_module_forward_hook`` and the like) apply to every call of
every module, the skipped ones included.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch.nn as nn
from torch.nn.modules import module as _torch_module

__all__ = ["hook_kinds", "global_hooks", "hooked", "first_hooked"]

#: The per-module hook registries a module's call runs, with how a message names them.
_KINDS = (
    ("_forward_pre_hooks", "forward pre-hooks"),
    ("_forward_hooks", "forward hooks"),
    ("_backward_pre_hooks", "backward pre-hooks"),
    ("_backward_hooks", "backward hooks"),
)


def hook_kinds(module: nn.Module) -> list[str]:
    """The kinds of hooks registered on ``module`` (empty when it has none)."""
    return [label for attr, label in _KINDS if getattr(module, attr, None)]


def global_hooks() -> bool:
    """Whether module hooks are registered globally (they run on every module's call)."""
    m = _torch_module
    return bool(
        m._global_forward_pre_hooks
        or m._global_forward_hooks
        or m._global_backward_pre_hooks
        or m._global_backward_hooks
    )


def hooked(modules: Iterable[nn.Module]) -> bool:
    """Whether skipping the forward of ``modules`` would skip a hook (theirs or a global one)."""
    return global_hooks() or any(hook_kinds(m) for m in modules)


def first_hooked(modules: Iterable[nn.Module], root: nn.Module) -> str | None:
    """Why the first of ``modules`` that has hooks may not be skipped, naming it by its path in
    ``root``; ``None`` when none has hooks."""
    for m in modules:
        kinds = hook_kinds(m)
        if kinds:
            names = {id(sub): name for name, sub in root.named_modules()}
            where = names.get(id(m)) or "the module itself"
            return (
                f"{where} ({type(m).__name__}) has {' and '.join(kinds)}, which the fused "
                "computation would skip"
            )
    return None
