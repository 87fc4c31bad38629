"""How a supported head is described, recognised and converted (the per-library modules list them).

A :class:`Head` names a library class by its module path and name (the library is never
imported), the method of it that builds the concat, the mixin that replaces that method, and
where the head keeps its parts. :func:`try_convert` checks one module against it and converts it
in place, or says why it cannot.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch.nn as nn

from ..hooks import first_hooked
from .fused import convert_in_place
from .units import Parts, bypassed, check_head

__all__ = ["Head", "Unsupported", "library_class", "try_convert"]


@dataclasses.dataclass(frozen=True)
class Head:
    """A supported head.

    Attributes:
        library: top-level package of the class (``"mmseg"``, ``"transformers"``, ...).
        names: class names (a copy under another name counts, e.g. Data2VecVision's of BEiT's).
        label: how the log names it.
        method: the method of the class that builds the concat, replaced by ``mixin``'s.
        mixin: a :class:`~pspnet.convert.fused.Converted` subclass defining ``method``.
        parts: ``parts(module) -> Parts`` (:class:`~pspnet.convert.units.Parts`).
        module_path: a substring the class's module path must contain (when names repeat
            within a library, as smp's two ``PSPModule`` classes).
        pyramid: class names, in ``library``, of the pyramid module ``method`` calls
            (``parts(module).pyramid``; ``()`` where the head is its own pyramid): the fused
            method skips its forward, so it must be that class's own.
        pyramid_path: a substring the pyramid class's module path must contain.
    """

    library: str
    names: tuple[str, ...]
    label: str
    method: str
    mixin: type
    parts: Callable[[nn.Module], Parts]
    module_path: str = ""
    pyramid: tuple[str, ...] = ()
    pyramid_path: str = ""


@dataclasses.dataclass(frozen=True)
class Unsupported:
    """A pyramid-pooling layout that is recognised but whose maths does not map."""

    library: str
    names: tuple[str, ...]
    label: str
    reason: str


def library_class(module: nn.Module, library: str, names, module_path: str = "") -> type | None:
    """The class of ``module``'s MRO named one of ``names`` in ``library`` (by module path)."""
    for cls in type(module).__mro__:
        mod = cls.__module__ or ""
        if cls.__name__ in names and mod.split(".")[0] == library and module_path in mod:
            return cls
    return None


def _keeps(module: nn.Module, base: type | None, method: str) -> bool:
    """Whether ``module``'s class runs ``base``'s own ``method`` (no subclass overrides it)."""
    return base is not None and getattr(type(module), method, None) is getattr(base, method, None)


def try_convert(module: nn.Module, head: Head) -> str | None:
    """Convert ``module`` (a ``head.names`` instance) in place; ``None``, or why it was left."""
    base = library_class(module, head.library, head.names, head.module_path)
    if not _keeps(module, base, head.method):
        return f"{type(module).__name__} overrides {head.method}, which the converter replaces"
    try:
        parts = head.parts(module)
    except AttributeError as e:
        return f"its parts are not where {head.label} keeps them ({e})"
    if head.pyramid:
        pyramid = library_class(parts.pyramid, head.library, head.pyramid, head.pyramid_path)
        if not _keeps(parts.pyramid, pyramid, "forward"):
            return (
                f"its pyramid is a {type(parts.pyramid).__name__}, not a {head.library} "
                f"{' / '.join(head.pyramid)} running that class's own forward"
            )
    got = check_head(parts.branches, parts.post)
    if isinstance(got, str):
        return got
    hooks = first_hooked(bypassed(parts), module)
    if hooks is not None:
        return hooks
    convert_in_place(module, head.mixin)
    return None


def describe(module: nn.Module, head: Head) -> str:
    """What the converted ``module`` runs, for the log."""
    parts = head.parts(module)
    got, post = check_head(parts.branches, parts.post)
    k = post.conv.kernel_size[0]
    return (
        f"bins {tuple(b for b, _ in got)} on kernel 1, the {k}x{k} conv after the concat "
        f"concat-free (x {'last' if parts.x_last else 'first'}, "
        f"align_corners={parts.align_corners})"
    )
