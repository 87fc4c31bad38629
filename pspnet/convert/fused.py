"""Converting a head in place: its class becomes a subclass that overrides the one method holding
the concat, nothing else changes.

A third-party head builds the concat inside one of its own methods (mmseg's
``PSPHead._forward_feature``, ``UPerHead.psp_forward``, ...), so the concat-free form needs that
method replaced. The module keeps its identity, submodules, parameters, buffers, hooks and
training flags: only ``type(module)`` changes, to ``fused_class(type(module), mixin)``, a
subclass (``isinstance`` checks still hold) whose method comes from ``mixin``. Converted modules
pickle (``torch.save(model)``, every pickle protocol), deep-copy and replicate
(``nn.DataParallel``) as converted ones: they are rebuilt from the original class and the mixin,
both found by name.

The head's own hooks run as before (it is still called). The replaced method reads the weights
of the pyramid, branch and conv modules instead of calling them, so their hooks would not run
(:mod:`.hooks`): a head where any of them has hooks is not converted, and a converted head runs
its original method instead while any of them has hooks (added after the conversion) or module
hooks are registered globally (:func:`.units.unless_hooked`).
"""

from __future__ import annotations

import copyreg

import torch.nn as nn

__all__ = ["Converted", "fused_class", "convert_in_place", "is_converted"]

_CLASSES: dict[tuple[type, type], type] = {}


class Converted:
    """Base of every mixin: marks a converted module and makes it picklable."""

    #: The library's own class (set on each fused class).
    _psp_original: type = object
    #: The mixin that replaced its method (set on each fused class).
    _psp_mixin: type = object

    def __reduce_ex__(self, protocol):
        # The fused class shares its name with the mixin, so pickle cannot find it by name:
        # every protocol rebuilds it from the two classes it is made of. Protocol 2's reduction
        # (``copyreg.__newobj__``) is taken for all: its state is what every protocol restores.
        reduced = super().__reduce_ex__(max(protocol, 2))
        if reduced[0] is not copyreg.__newobj__:  # the original class reduces itself
            return reduced
        _, args, *rest = reduced
        return (_new, (self._psp_original, self._psp_mixin, *args[1:]), *rest)


def _new(original: type, mixin: type, *args):
    cls = fused_class(original, mixin)
    return cls.__new__(cls, *args)


def fused_class(original: type, mixin: type) -> type:
    """The subclass of ``original`` whose methods ``mixin`` overrides (one per pair)."""
    key = (original, mixin)
    if key not in _CLASSES:
        _CLASSES[key] = type(
            f"Fused{original.__name__}",
            (mixin, original),
            {"_psp_original": original, "_psp_mixin": mixin, "__module__": mixin.__module__},
        )
    return _CLASSES[key]


def convert_in_place(module: nn.Module, mixin: type) -> nn.Module:
    """Give ``module`` the method(s) of ``mixin``; returns ``module``."""
    module.__class__ = fused_class(type(module), mixin)
    return module


def is_converted(module: nn.Module) -> bool:
    return isinstance(module, Converted)
