"""Plain-PyTorch definitions of the fused operations: the definition of correct.

Every function validates its input exactly like the fused path and is built only from
``F.adaptive_avg_pool2d``, ``F.conv2d``, ``F.interpolate``, ``torch.cat`` and ``F.cross_entropy``,
so they are differentiable, run on any device and trace under ``torch.compile``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._validate import (
    check_concat_conv,
    check_pyramid_pool_conv,
    check_shifted_upsample_add,
    check_upsample_concat,
    check_upsample_cross_entropy,
)
from .geometry import CONV_TAPS

__all__ = [
    "pyramid_pool_conv",
    "conv_epilogue",
    "upsample_concat",
    "upsample",
    "shifted_upsample_add",
    "concat_free_conv",
    "upsample_cross_entropy",
]


def pyramid_pool_conv(x, weights, bins=(1, 2, 3, 6), *, scale=None, shift=None, relu=False):
    """Pool ``x`` at every bin size and apply each bin's bias-free 1x1 convolution.

    Args:
        x: ``(N, C, H, W)`` feature map.
        weights: one ``(R_i, C)`` or ``(R_i, C, 1, 1)`` weight per bin.
        bins: output sizes of the adaptive average pooling, one per weight.
        scale, shift: optional per-bin ``(R_i,)`` tensors: ``y = conv * scale + shift``.
        relu: apply ReLU after the affine epilogue.

    Returns:
        ``[y_i]`` with ``y_i`` of shape ``(N, R_i, b_i, b_i)``.
    """
    weights, bins, scale, shift = check_pyramid_pool_conv(x, weights, bins, scale, shift)
    pooled = [F.adaptive_avg_pool2d(x, b) for b in bins]
    return conv_epilogue(pooled, weights, scale, shift, relu)


def conv_epilogue(pooled, weights, scale=None, shift=None, relu=False):
    """``act(scale_i * conv1x1(pooled_i, W_i) + shift_i)`` for every pooled map ``pooled_i``
    (checked arguments as :func:`pyramid_pool_conv` normalises them)."""
    outs = []
    for i, (p, w) in enumerate(zip(pooled, weights)):
        y = F.conv2d(p, w[:, :, None, None])
        if scale is not None:
            y = y * scale[i][None, :, None, None]
        if shift is not None:
            y = y + shift[i][None, :, None, None]
        if relu:
            y = F.relu(y)
        outs.append(y)
    return outs


def upsample(y: torch.Tensor, size, align_corners: bool) -> torch.Tensor:
    """Bilinearly resize ``y`` to ``size``.

    A 1x1 map is expanded instead of interpolated: the values are identical and it avoids an
    inductor CPU bug in the backward of bilinear upsampling from a 1x1 map.
    """
    if y.shape[-2:] == (1, 1):
        return y.expand(-1, -1, *size)
    return F.interpolate(y, size=tuple(size), mode="bilinear", align_corners=align_corners)


def upsample_concat(x, branches, *, align_corners=True):
    """Return ``cat([x] + [bilinear(y_i, x.shape[-2:]) for y_i in branches], dim=1)``."""
    branches = check_upsample_concat(x, branches)
    size = x.shape[-2:]
    return torch.cat([x] + [upsample(y, size, align_corners) for y in branches], 1)


def shifted_upsample_add(base, maps, *, align_corners=True):
    """Add the 3x3-conv-shifted bilinear upsamplings of every map's taps to ``base``.

    ``maps[i]`` has shape ``(N, 9, O, h_i, w_i)``; tap ``t = 3 * (di + 1) + (dj + 1)`` of it is
    upsampled to ``base``'s ``(H, W)`` and read at ``(h + di, w + dj)``, zero outside the map (the
    zero padding of a 3x3 convolution). Returns
    ``base + sum_i sum_t shift_t(upsample(maps[i][:, t]))``, a new tensor. The one-tap form
    (every map ``(N, 1, O, h_i, w_i)``, the centre tap only) returns
    ``base + sum_i upsample(maps[i][:, 0])``.

    This is the pyramid half of a 3x3 (or 1x1) convolution over ``cat([x, upsample(y_1), ...])``:
    with ``maps[i][:, t] = conv1x1(y_i, W_i[:, :, di + 1, dj + 1])`` it equals that convolution's
    contribution from the upsampled channels, computed at low resolution.
    """
    maps = check_shifted_upsample_add(base, maps)
    height, width = base.shape[-2:]
    out = base
    for m in maps:
        n, taps, o, h, w = m.shape
        up = upsample(m.reshape(n, taps * o, h, w), (height, width), align_corners)
        if taps == 1:
            out = out + up
            continue
        up = F.pad(up.view(n, taps, o, height, width), (1, 1, 1, 1))
        for t, (di, dj) in enumerate(CONV_TAPS):
            out = out + up[:, t, :, 1 + di : 1 + di + height, 1 + dj : 1 + dj + width]
    return out


def upsample_cross_entropy(
    logits,
    target,
    *,
    weight=None,
    ignore_index=-100,
    reduction="mean",
    align_corners=True,
    return_prediction=False,
):
    """``F.cross_entropy`` of the logits bilinearly upsampled to the target's size.

    ``logits``: ``(N, K, h, w)``; ``target``: ``(N, H, W)`` class indices. Returns
    ``F.cross_entropy(F.interpolate(logits, (H, W), mode="bilinear",
    align_corners=align_corners), target, weight=weight, ignore_index=ignore_index,
    reduction=reduction)``, and with ``return_prediction`` also the upsampled logits' argmax
    ``(N, H, W)``. Materialises the ``(N, K, H, W)`` upsampled logits (the fused op does not).
    """
    check_upsample_cross_entropy(logits, target, weight, ignore_index, reduction)
    up = F.interpolate(logits, size=tuple(target.shape[-2:]), mode="bilinear",
                       align_corners=align_corners)  # fmt: skip
    if weight is not None:
        weight = weight.to(up.dtype)
    loss = F.cross_entropy(
        up, target.long(), weight=weight, ignore_index=ignore_index, reduction=reduction
    )
    if return_prediction:
        return loss, up.detach().argmax(1)
    return loss


def concat_free_conv(x, branches, weight, *, align_corners=True, x_last=False, bias=None):
    """The convolution over the concat that ``psp_kernels.concat_free_conv`` computes without it.

    Returns ``F.conv2d(cat, weight, bias, padding=k // 2)`` with ``cat`` the concat of ``x`` and
    every branch upsampled bilinearly to ``x``'s size: ``[x, up(y_1), ...]``, or
    ``[up(y_1), ..., x]`` with ``x_last``. ``weight``: ``(O, C + sum R_i, k, k)``, ``k`` 3 or 1.
    """
    branches = check_upsample_concat(x, branches)
    k = check_concat_conv(x, branches, weight, bias)
    ups = [upsample(y, x.shape[-2:], align_corners) for y in branches]
    cat = torch.cat(ups + [x] if x_last else [x] + ups, 1)
    return F.conv2d(cat, weight, bias, padding=k // 2)
