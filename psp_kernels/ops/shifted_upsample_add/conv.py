"""The concat-free convolution: ``conv3x3(cat([x, up(y_1), ..., up(y_B)]), W)`` without the concat.

Convolution is linear, so the conv over the concat splits into the real 3x3 conv of ``x`` with
its weight slice ``W_x`` (the only full-resolution work), plus, per branch ``b`` and tap
``(di, dj)``, the 1x1 product of that tap's weight slice with ``y_b`` at the branch's own
``b x b`` resolution, upsampled and shifted by the tap (zero outside the map: exactly the conv's
zero padding). :func:`~psp_kernels.shifted_upsample_add` adds those nine shifted upsamplings per
branch to the ``x`` half in one pass over the output. The result is the same function (float64
agrees to ~1e-13), with the pyramid half of the conv's FLOPs gone and no ``C + sum R`` channel
tensor built or saved for backward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .op import shifted_upsample_add

__all__ = ["concat_free_conv", "split_concat_conv"]


def split_concat_conv(
    x: torch.Tensor,
    branches: Sequence[torch.Tensor],
    weight: torch.Tensor,
    *,
    conv2d: Callable[..., torch.Tensor] = F.conv2d,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The two halves of ``conv3x3(cat([x] + [up(y) for y in branches]), weight, padding=1)``.

    Returns ``(base, maps)``: ``base = conv2d(x, weight[:, :C], padding=1)`` at full resolution,
    and per branch ``y`` of ``R`` channels the ``(N, 9, O, h, w)`` products of its nine tap
    slices with ``y`` (tap ``t = 3 * (di + 1) + (dj + 1)``), the ``maps`` that
    :func:`~psp_kernels.shifted_upsample_add` takes. ``conv2d`` computes the full-resolution
    half (``F.conv2d`` by default; a caller may pass another implementation of it).
    """
    n, c = x.shape[:2]
    o = weight.shape[0]
    expected = c + sum(y.shape[1] for y in branches)
    if weight.dim() != 4 or weight.shape[1] != expected or tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(
            f"weight must have shape (O, {expected}, 3, 3) for x with {c} channels and branches "
            f"with {expected - c}, got {tuple(weight.shape)}"
        )
    base = conv2d(x, weight[:, :c], padding=1)
    maps = []
    start = c
    for y in branches:
        r = y.shape[1]
        # (O, R, 3, 3) -> (9 * O, R, 1, 1): tap t = 3 * (di + 1) + (dj + 1) -> channel block t
        taps = weight[:, start : start + r].permute(2, 3, 0, 1).reshape(9 * o, r, 1, 1)
        maps.append(F.conv2d(y, taps).view(n, 9, o, y.shape[-2], y.shape[-1]))
        start += r
    return base, maps


def concat_free_conv(x, branches, weight, *, align_corners=True, backend="auto"):
    """Return ``F.conv2d(cat([x] + [up(y) for y in branches], 1), weight, padding=1)``, concat-free.

    Args:
        x: ``(N, C, H, W)`` feature map (the first ``C`` input channels of the conv).
        branches: low-resolution maps ``(N, R_i, h_i, w_i)``, upsampled bilinearly to ``H x W``
            (with ``align_corners``) in the concat; here they are never upsampled channel-wise.
        weight: ``(O, C + sum R_i, 3, 3)``, the bias-free 3x3 conv weight (stride 1, padding 1).
        backend: passed to :func:`~psp_kernels.shifted_upsample_add`.

    Differentiable in ``x``, every branch and ``weight``; raises ``ValueError`` when ``weight``
    does not fit ``x`` and ``branches``.
    """
    base, maps = split_concat_conv(x, branches, weight)
    if not maps:
        return base
    return shifted_upsample_add(base, maps, align_corners=align_corners, backend=backend)
