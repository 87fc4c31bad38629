"""The official hszhao/semseg PPM layout, converted to :class:`pspnet.PPM` (a module swap), and
CSAIL's UPerNet PPM, recognised and left unconverted.

The official PPM's only child is ``features``, a ``ModuleList`` of ``Sequential(
AdaptiveAvgPool2d(b), Conv2d(C, R, 1, bias=False), BatchNorm2d(R), ReLU)``; its concat is
``[x, up(y_1), ...]`` with ``align_corners=True``, and the classifier's conv over it lives in the
model's own forward, so only the PPM is converted (kernel 1, then kernel 2).

The layout says nothing of the forward (forks of it upsample with ``align_corners=False`` or put
``x`` last), so before the swap :func:`refusal` runs the module and :class:`pspnet.PPM` on a small
float64 probe input and keeps the module where they differ; a module with hooks (in it, or
registered globally) is kept too, as the swap would drop them.

CSAIL's (``semantic-segmentation-pytorch``) ``PPMDeepsup`` / ``UPerNet`` keep ``ppm_pooling``
(the pools) and ``ppm_conv`` (conv + BatchNorm + ReLU) apart and run the conv, norm and ReLU
*after* the upsampling, on the full-resolution map: that does not map onto a pyramid computed
at the bins' resolution.
"""

from __future__ import annotations

import copy
import itertools

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..hooks import first_hooked, global_hooks
from ..ppm import PPM, _bin_of

__all__ = ["is_official_ppm", "refusal", "to_fused", "csail_reason"]

#: The probe input's batch, height and width (its channels are the module's), and how far, relative
#: to the largest output, the module's output may be from :class:`pspnet.PPM`'s on it.
PROBE_SIZE = (2, 7, 9)
PROBE_TOL = 1e-9


def is_official_ppm(module: nn.Module) -> bool:
    """True for a module laid out like the official PPM (only child: ``features``)."""
    if isinstance(module, PPM):
        return False
    children = dict(module.named_children())
    features = children.get("features")
    if set(children) != {"features"} or not isinstance(features, nn.ModuleList):
        return False
    if len(features) == 0:
        return False
    in_dims = set()
    for f in features:
        if not isinstance(f, nn.Sequential) or len(f) != 4:
            return False
        pool, conv, bn, act = f
        if not isinstance(pool, nn.AdaptiveAvgPool2d) or _bin_of(pool) is None:
            return False
        if not (
            type(conv) is nn.Conv2d
            and conv.kernel_size == (1, 1)
            and conv.stride == (1, 1)
            and conv.padding == (0, 0)
            and conv.dilation == (1, 1)
            and conv.groups == 1
            and conv.bias is None
        ):
            return False
        if not isinstance(bn, _BatchNorm) or bn.num_features != conv.out_channels:
            return False
        if type(act) is not nn.ReLU:
            return False
        in_dims.add(conv.in_channels)
    return len(in_dims) == 1


def refusal(module: nn.Module) -> str | None:
    """Why an official-layout ``module`` (:func:`is_official_ppm`) is not swapped for
    :class:`pspnet.PPM`, or ``None``: it has hooks, or its forward computes something else (see
    :func:`_probe`)."""
    if global_hooks():
        return "module hooks are registered globally: the swap would skip them on its submodules"
    hooks = first_hooked(module.modules(), module)
    return hooks if hooks is not None else _probe(module)


def _probe_twin(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """A float64 CPU copy of ``module`` in eval mode with random weights and statistics: its own
    tensors are replaced in the copy (not copied, so not read), and ``module`` is untouched."""
    memo = {}
    for t in itertools.chain(module.parameters(), module.buffers()):
        if t.is_floating_point():
            new = torch.randn(t.shape, generator=generator, dtype=torch.float64)
        else:
            new = torch.zeros(t.shape, dtype=t.dtype)
        memo[id(t)] = nn.Parameter(new, t.requires_grad) if isinstance(t, nn.Parameter) else new
    twin = copy.deepcopy(module, memo).eval()
    for f in twin.features:
        if f[2].running_var is not None:
            f[2].running_var.abs_().add_(0.5)  # a variance
    return twin


def _probe(module: nn.Module) -> str | None:
    """Whether ``module``'s forward is the official PPM's maths: on a copy with random weights
    (:func:`_probe_twin`) and a random input of ``PROBE_SIZE``, its output against
    :class:`pspnet.PPM`'s over the copy's ``features``; ``None``, or why not. The global random
    state is not used."""
    generator = torch.Generator().manual_seed(0)
    try:
        twin = _probe_twin(module, generator)
        n, h, w = PROBE_SIZE
        c = twin.features[0][1].in_channels
        x = torch.randn(n, c, h, w, generator=generator, dtype=torch.float64)
        with torch.no_grad():
            got = twin(x)
    except Exception as e:  # (any forward: one that needs other arguments, say)
        return f"its forward failed on a probe input ({type(e).__name__}: {e})"
    with torch.no_grad():
        want = PPM.from_features(twin.features).eval()(x)
    if not isinstance(got, torch.Tensor) or got.shape != want.shape:
        return "its forward does not return the concat of x and every branch"
    err = (got - want).abs().max().item()
    if not err <= PROBE_TOL * want.abs().max().item():  # (a NaN fails too)
        return (
            "its forward computes something else than the official PPM's cat([x, up(branch), "
            f"...]) with align_corners=True: {err:.3g} apart on a probe input"
        )
    return None


def to_fused(module: nn.Module) -> PPM:
    """The fused :class:`pspnet.PPM` over an official PPM's own ``features`` (weights shared)."""
    fused = PPM.from_features(module.features)
    fused.training = module.training  # not .train(): children keep their own flags
    return fused


def csail_reason(module: nn.Module) -> str | None:
    """Why a CSAIL-style PPM (``ppm_pooling`` + ``ppm_conv``) is left unconverted, or ``None``."""
    pooling = getattr(module, "ppm_pooling", None)
    convs = getattr(module, "ppm_conv", None)
    if not isinstance(pooling, nn.ModuleList) or not isinstance(convs, nn.ModuleList):
        return None
    if not any(isinstance(p, nn.AdaptiveAvgPool2d) for p in pooling):
        return None
    return (
        "its pyramid convs, BatchNorms and ReLUs run after the upsampling, on the full-resolution "
        "map (CSAIL layout), so they cannot run at the bins' resolution"
    )
