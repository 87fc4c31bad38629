"""The concat-free convolution: ``conv(cat([x, up(y_1), ..., up(y_B)]), W)`` without the concat.

Convolution is linear, so the conv over the concat splits into the real conv of ``x`` with its
weight slice ``W_x`` (the only full-resolution work), plus, per branch ``b`` and tap
``(di, dj)``, the 1x1 product of that tap's weight slice with ``y_b`` at the branch's own
``b x b`` resolution, upsampled and shifted by the tap (zero outside the map: exactly the conv's
zero padding). :func:`~psp_kernels.shifted_upsample_add` adds those shifted upsamplings per
branch to the ``x`` half in one pass over the output. The result is the same function (float64
agrees to ~1e-13), with the pyramid half of the conv's FLOPs gone and no ``C + sum R`` channel
tensor built or saved for backward.

The conv is a 3x3 (padding 1: nine taps) or a 1x1 (the one-tap form: no shifts, a ninth of the
low-resolution work), and ``x`` comes first in the concat (PSPNet, UPerNet) or last
(``cat([up(y_1), ..., x])``: only the weight slices move).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ..._validate import check_concat_conv, check_upsample_concat
from .op import shifted_upsample_add

__all__ = ["concat_free_conv", "split_concat_conv", "concat_free_pays"]


def _split_weight(
    weight: torch.Tensor, c: int, rs: Sequence[int], x_last: bool
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The weight's input-channel blocks of ``x`` and of every branch, as views.

    One ``torch.split`` rather than a slice per block: its backward writes the weight's gradient
    once (a concat of the blocks' gradients), where a slice per block would each build a zero
    tensor of the whole weight's size for autograd to add up (five full-size tensors for PSPNet's
    ``512 x 4096 x 3 x 3`` bottleneck, 75 MB each in float32).
    """
    sizes = [*rs, c] if x_last else [c, *rs]
    blocks = list(torch.split(weight, sizes, dim=1))
    return (blocks.pop() if x_last else blocks.pop(0)), blocks


def split_concat_conv(
    x: torch.Tensor,
    branches: Sequence[torch.Tensor],
    weight: torch.Tensor,
    *,
    conv2d: Callable[..., torch.Tensor] = F.conv2d,
    x_last: bool = False,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The two halves of ``conv2d(cat, weight, bias, padding=k // 2)`` over
    ``cat = [x, up(y_1), ...]`` (or ``[up(y_1), ..., x]`` with ``x_last``), ``k`` 3 or 1.

    Returns ``(base, maps)``: ``base = conv2d(x, W_x, bias, padding=k // 2)`` at full resolution,
    and per branch ``y`` of ``R`` channels the ``(N, 9, O, h, w)`` products of its nine tap
    slices with ``y`` (tap ``t = 3 * (di + 1) + (dj + 1)``), or for a 1x1 conv the one-tap
    ``(N, 1, O, h, w)`` product: the ``maps`` that :func:`~psp_kernels.shifted_upsample_add`
    takes. ``conv2d`` computes the full-resolution half (``F.conv2d`` by default; a caller may
    pass another implementation of it). Raises ``ValueError`` when ``weight`` does not fit.
    """
    branches = check_upsample_concat(x, branches)
    k = check_concat_conv(x, branches, weight, bias)
    n, c = x.shape[:2]
    o, taps = weight.shape[0], k * k
    w_x, w_branches = _split_weight(weight, c, [y.shape[1] for y in branches], x_last)
    base = conv2d(x, w_x, bias, padding=k // 2)
    maps = []
    for y, w_y in zip(branches, w_branches, strict=True):
        r = y.shape[1]
        # (O, R, k, k) -> (k * k * O, R, 1, 1): tap t = 3 * (di + 1) + (dj + 1) -> block t
        w_taps = w_y.permute(2, 3, 0, 1).reshape(taps * o, r, 1, 1)
        maps.append(F.conv2d(y, w_taps.to(y.dtype)).view(n, taps, o, y.shape[-2], y.shape[-1]))
    return base, maps


def concat_free_conv(
    x, branches, weight, *, align_corners=True, backend="auto", x_last=False, bias=None
):
    """Return ``F.conv2d(cat, weight, bias, padding=k // 2)`` over the concat, concat-free.

    ``cat = [x, up(y_1), ..., up(y_B)]``, or ``[up(y_1), ..., up(y_B), x]`` with ``x_last``
    (``psp_kernels.reference.concat_free_conv`` is the definition with the concat).

    Args:
        x: ``(N, C, H, W)`` feature map.
        branches: low-resolution maps ``(N, R_i, h_i, w_i)``, upsampled bilinearly to ``H x W``
            (with ``align_corners``) in the concat; here they are never upsampled channel-wise.
        weight: ``(O, C + sum R_i, 3, 3)`` (stride 1, padding 1) or ``(O, C + sum R_i, 1, 1)``
            (the one-tap form).
        x_last: ``x`` is the last block of the concat's channels instead of the first.
        bias: optional ``(O,)`` bias of the conv.
        backend: passed to :func:`~psp_kernels.shifted_upsample_add`.

    Differentiable in ``x``, every branch, ``weight`` and ``bias``; raises ``ValueError`` when
    ``weight`` does not fit ``x`` and ``branches``.
    """
    base, maps = split_concat_conv(x, branches, weight, x_last=x_last, bias=bias)
    if not maps:
        return base
    return shifted_upsample_add(base, maps, align_corners=align_corners, backend=backend)


def concat_free_pays(x, branches, weight) -> bool:
    """Whether :func:`concat_free_conv` needs fewer multiply-adds than the conv over the concat.

    Per output channel, the concat's pyramid half costs ``H W k^2 sum R_i``; the concat-free
    form costs its low-resolution products ``k^2 sum R_i h_i w_i`` plus the upsample-add's two
    small products (``s`` taps per axis, ``s = k``): ``sum s^2 h_i w_i W`` and
    ``H W s sum h_i``. The concat-free form wins by orders of magnitude on maps larger than the
    pyramid; on a map smaller than the largest bin (a 1/32 map of a small image) the plain
    concat can be cheaper. Only shapes are read.
    """
    height, width = x.shape[-2:]
    k = weight.shape[-1]
    s = 3 if k == 3 else 1
    concat = height * width * k * k * sum(y.shape[1] for y in branches)
    free = sum(
        k * k * y.shape[1] * y.shape[-2] * y.shape[-1] + s * s * y.shape[-2] * y.shape[-1] * width
        for y in branches
    )
    free += height * width * s * sum(y.shape[-2] for y in branches)
    return free < concat
