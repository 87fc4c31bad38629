"""What every supported head is made of, read from its modules, and the fused computation of it.

A PSP-style head is a list of pyramid branches, each ``AdaptiveAvgPool2d(b)`` followed by a *conv
unit* (a 1x1 ``Conv2d`` and then, in order, its norm and activation modules), whose outputs are
upsampled bilinearly and concatenated with the feature map ``x`` (first or last), and a conv unit
after the concat (a 3x3 or 1x1 ``Conv2d``, its norm, its activation). The libraries wrap these in
their own classes (mmcv's ``ConvModule``, transformers' ``UperNetConvModule`` / ``BeitConvLayer``,
smp's ``Conv2dReLU``, plain ``nn.Sequential``); :func:`conv_unit` and :func:`branch` read them
without importing the libraries, and return a reason instead where the maths does not map. The
fused computation reads the blocks, pools and convs instead of calling them (of a head's modules
it calls only norms and activations, and in eval not even the branches' ones), so each must run
its class's own forward: a subclass overriding it (a ``Sequential`` that scales its output, say)
is refused; :func:`bypassed` lists them for the hook checks (:mod:`.hooks`).

:func:`fused_head` computes the head with ``psp_kernels``:

* the branches: kernel 1 (``pyramid_pool_conv``, every bin from one read of ``x``) with each
  branch's eval BatchNorm (or conv bias: ``scale = 1``, ``shift = bias``) and ReLU folded into its
  epilogue; otherwise (training, other norms or activations) the bias-free products from kernel 1
  and each branch's own modules called on them as the original calls them, so BatchNorm running
  statistics update exactly (``SyncBatchNorm`` included) and batch size 1 in training raises in
  the bin-1 branch's BatchNorm as the original does;
* the conv after the concat: concat-free (``psp_kernels.concat_free_conv``, 3x3 or the one-tap
  1x1 form, ``x`` first or last) where :func:`psp_kernels.concat_free_pays` says so for these
  shapes, else the conv over the concat, the same function; its own norm and activation modules
  follow unchanged;
* while exporting, the plain formulation of :mod:`pspnet.export_ops`, exact at every size.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

import psp_kernels
from psp_kernels import reference

from .. import export_ops
from ..heads import concat_free_conv
from ..hooks import hooked
from ..ppm import _bin_of, _folded, _uses_batch_stats

__all__ = [
    "Parts",
    "Unit",
    "conv_unit",
    "branch",
    "branches",
    "check_head",
    "fused_head",
    "module_is",
    "plain",
    "bypassed",
    "unless_hooked",
]

#: Tests set this to force the conv after the concat concat-free (``True``) or over the concat
#: (``False``) instead of deciding from the shapes (``None``).
FORCE: bool | None = None

#: Conv units whose forward is their children in registration order (conv, norm, activation).
SEQUENTIAL_UNITS = {
    "transformers": ("UperNetConvModule", "BeitConvModule", "BeitConvLayer",
                     "Data2VecVisionConvModule", "Data2VecVisionConvLayer"),
    "segmentation_models_pytorch": ("Conv2dReLU",),
}  # fmt: skip
#: Pyramid branches whose forward is their children in order (the pooling, then a conv unit),
#: the upsampling left to the module around them.
BRANCH_BLOCKS = {
    "transformers": ("UperNetPyramidPoolingBlock", "BeitPyramidPoolingBlock",
                     "Data2VecVisionPyramidPoolingBlock"),
    "segmentation_models_pytorch": ("PSPBlock",),
}  # fmt: skip


def module_is(module: nn.Module, library: str, names) -> bool:
    """Whether ``module``'s own class is one of ``names`` defined in ``library`` (by module path:
    the library is never imported)."""
    cls = type(module)
    names = (names,) if isinstance(names, str) else names
    return cls.__name__ in names and cls.__module__.split(".")[0] == library


def plain(module: nn.Module, cls: type) -> bool:
    """Whether ``module`` is a ``cls`` running ``cls``'s own forward (not a subclass's override,
    which a fused computation skipping that forward would silently drop)."""
    return isinstance(module, cls) and type(module).forward is cls.forward


class Parts(NamedTuple):
    """Where a head keeps what :func:`fused_head` reads (a head's ``parts`` function gives it)."""

    #: The pyramid module the head's original method calls (its branches, upsampled), or
    #: ``None`` where the head is the pyramid itself.
    pyramid: nn.Module | None
    #: The branch modules, in concat order.
    branches: list[nn.Module]
    #: The conv unit after the concat.
    post: nn.Module
    #: Whether ``x`` comes last in the concat.
    x_last: bool
    align_corners: bool

    def fused(self, x: torch.Tensor) -> torch.Tensor:
        """The head's ``post(cat(...))`` on ``x`` by :func:`fused_head`."""
        return fused_head(
            x, self.branches, self.post, x_last=self.x_last, align_corners=self.align_corners
        )


@dataclasses.dataclass(frozen=True)
class Unit:
    """A ``Conv2d`` and the modules applied to its output, in order (norm, activation)."""

    conv: nn.Conv2d
    post: tuple[nn.Module, ...]

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        return self.finish(self.conv(y))

    def finish(self, y: torch.Tensor) -> torch.Tensor:
        """The modules after the conv on its output ``y``, each called as a module."""
        for m in self.post:
            y = m(y)
        return y


def conv_unit(module: nn.Module) -> Unit | str:
    """The :class:`Unit` of a library's conv block, or why it is not one."""
    if module_is(module, "mmcv", "ConvModule"):
        if tuple(module.order) != ("conv", "norm", "act"):
            return f"its ConvModule runs {module.order}, not conv -> norm -> act"
        if module.with_explicit_padding or module.with_spectral_norm:
            return "its ConvModule pads explicitly or uses spectral norm"
        post = ([module.norm] if module.with_norm else []) + (
            [module.activate] if module.with_activation else []
        )
        conv, post = module.conv, tuple(post)
    elif plain(module, nn.Sequential) or any(
        module_is(module, lib, names) for lib, names in SEQUENTIAL_UNITS.items()
    ):
        children = list(module.children())
        if not children:
            return f"{type(module).__name__} is empty"
        conv, post = children[0], tuple(children[1:])
    else:
        return f"{type(module).__name__} is not a conv block this converter knows"
    if not plain(conv, nn.Conv2d):
        return f"its conv is a {type(conv).__name__}, not a plain Conv2d"
    if conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.groups != 1:
        return "its conv is strided, dilated or grouped"
    if conv.padding_mode != "zeros":
        return f"its conv pads with {conv.padding_mode!r}"
    return Unit(conv, post)


def branch(module: nn.Module) -> tuple[int, Unit] | str:
    """``(bin, unit)`` of a pyramid branch (``AdaptiveAvgPool2d(bin)`` then a 1x1 conv unit)."""
    if plain(module, nn.Sequential) or any(
        module_is(module, lib, names) for lib, names in BRANCH_BLOCKS.items()
    ):
        children = list(module.children())
        if len(children) == 1 and plain(children[0], nn.Sequential):
            children = list(children[0].children())  # smp's PSPBlock: its `pool` Sequential
    else:
        return f"the branch {type(module).__name__} is not a pooling block this converter knows"
    if len(children) < 2 or not plain(children[0], nn.AdaptiveAvgPool2d):
        return "a branch does not start with a plain AdaptiveAvgPool2d"
    b = _bin_of(children[0])
    if b is None:
        return f"a branch pools to {children[0].output_size}, not a square bin"
    rest = children[1:]
    unit = conv_unit(rest[0]) if len(rest) == 1 else conv_unit(nn.Sequential(*rest))
    if isinstance(unit, str):
        return unit
    if unit.conv.kernel_size != (1, 1) or unit.conv.padding != (0, 0):
        return "a branch's conv is not a 1x1 conv without padding"
    return b, unit


def branches(modules) -> list[tuple[int, Unit]] | str:
    """Every branch of a pyramid (a list of branch modules), or the first reason one is not."""
    out = []
    for m in modules:
        got = branch(m)
        if isinstance(got, str):
            return got
        out.append(got)
    if not out:
        return "the pyramid has no branches"
    if len({u.conv.in_channels for _, u in out}) != 1:
        return "the branches read different channel counts"
    return out


def check_head(branch_modules, post_module) -> tuple[list[tuple[int, Unit]], Unit] | str:
    """The branches and the conv unit after the concat of a head, or why the maths does not map."""
    got = branches(branch_modules)
    if isinstance(got, str):
        return got
    post = conv_unit(post_module)
    if isinstance(post, str):
        return f"the conv after the concat: {post}"
    k, pad = post.conv.kernel_size, post.conv.padding
    if (k, pad) not in (((3, 3), (1, 1)), ((1, 1), (0, 0))):
        return f"the conv after the concat is {k} with padding {pad}, not 3x3/1 or 1x1/0"
    c = got[0][1].conv.in_channels
    if post.conv.in_channels != c + sum(u.conv.out_channels for _, u in got):
        return "the conv after the concat does not read x and every branch"
    return got, post


def _is_relu(m: nn.Module) -> bool:
    return type(m) is nn.ReLU


def _foldable_norm(m: nn.Module) -> bool:
    # (SyncBatchNorm has a forward of its own; the other BatchNorms share _BatchNorm's)
    return plain(m, _BatchNorm) or plain(m, nn.SyncBatchNorm)


def _folded_pyramid(units: list[Unit], dtype: torch.dtype):
    """``(weights, scale, shift, relu)`` with every branch's bias, eval BatchNorm and ReLU folded
    into kernel 1's epilogue, or ``None`` where a branch has anything else (or batch statistics)."""
    weights, scale, shift, relus = [], [], [], set()
    for u in units:
        post = [m for m in u.post if not plain(m, nn.Identity)]
        relu = bool(post) and _is_relu(post[-1])
        norms = post[:-1] if relu else post
        if len(norms) > 1 or (norms and not _foldable_norm(norms[0])):
            return None
        if norms and _uses_batch_stats(norms[0]):
            return None
        relus.add(relu)
        w = u.conv.weight
        s, t = (
            _folded(norms[0], dtype)
            if norms
            else (torch.ones(w.shape[0], dtype=dtype, device=w.device), None)
        )
        bias = u.conv.bias
        if bias is not None:
            bias = bias.to(dtype) * s
            t = bias if t is None else t + bias
        if t is None:
            t = torch.zeros(w.shape[0], dtype=dtype, device=w.device)
        weights.append(w.to(dtype))
        scale.append(s)
        shift.append(t)
    if len(relus) != 1:
        return None
    return weights, scale, shift, relus.pop()


def pyramid(x: torch.Tensor, parts: list[tuple[int, Unit]]) -> list[torch.Tensor]:
    """Every branch's output at its ``b x b`` resolution (see the module docstring)."""
    bins = tuple(b for b, _ in parts)
    units = [u for _, u in parts]
    if export_ops.exporting():  # plain ops exact at every (symbolic) size
        return [u(p) for u, p in zip(units, export_ops.adaptive_pools(x, bins))]
    folded = _folded_pyramid(units, x.dtype)
    if folded is not None:
        weights, scale, shift, relu = folded
        return psp_kernels.pyramid_pool_conv(x, weights, bins, scale=scale, shift=shift, relu=relu)
    ys = psp_kernels.pyramid_pool_conv(x, [u.conv.weight.to(x.dtype) for u in units], bins)
    out = []
    for u, y in zip(units, ys):
        if u.conv.bias is not None:
            y = y + u.conv.bias.to(y.dtype)[None, :, None, None]
        out.append(u.finish(y).to(x.dtype))
    return out


def fused_head(x, branch_modules, post_module, *, x_last: bool, align_corners: bool):
    """``post(cat([x] + [up(branch(x))]))`` (``x`` last with ``x_last``), fused: see the module
    docstring. The modules are read on every call (cheap), so nothing is cached on them."""
    got = check_head(branch_modules, post_module)
    if isinstance(got, str):  # converted heads were checked; a module changed since
        raise RuntimeError(f"this converted head no longer maps: {got}")
    parts, post = got
    ys = pyramid(x, parts)
    conv = post.conv
    pays = psp_kernels.concat_free_pays(x, ys, conv.weight) if FORCE is None else FORCE
    if export_ops.exporting() or pays:
        out = concat_free_conv(
            x, ys, conv.weight, align_corners=align_corners, x_last=x_last, bias=conv.bias
        )
    elif x_last:
        ups = [reference.upsample(y, x.shape[-2:], align_corners) for y in ys]
        out = conv(torch.cat(ups + [x], 1))
    else:
        out = conv(psp_kernels.upsample_concat(x, ys, align_corners=align_corners))
    return post.finish(out)


def bypassed(parts: Parts) -> Iterator[nn.Module]:
    """The modules whose forward :func:`fused_head` skips for ``parts``: the pyramid, every
    module of every branch (their norms and activations too: eval folds them), the conv unit
    after the concat and its conv (its norm and activation modules are called)."""
    if parts.pyramid is not None:
        yield parts.pyramid
    for b in parts.branches:
        yield from b.modules()
    yield parts.post
    post = conv_unit(parts.post)
    if isinstance(post, Unit):
        yield post.conv


def unless_hooked(parts_of: Callable[[nn.Module], Parts]):
    """Decorate a converted head's method (a :class:`~pspnet.convert.fused.Converted` mixin's,
    computing with ``parts_of(self)``): while a module it skips has hooks, or module hooks are
    registered globally, the original class's method runs instead, so every hook runs as it
    would unconverted (hooks may be added after the conversion, which refused hooked heads)."""

    def decorate(method):
        @functools.wraps(method)
        def run(self, *args, **kwargs):
            if hooked(bypassed(parts_of(self))):
                return getattr(self._psp_original, method.__name__)(self, *args, **kwargs)
            return method(self, *args, **kwargs)

        return run

    return decorate
