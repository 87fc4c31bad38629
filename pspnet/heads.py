"""The concat-free PSP head: the head conv over ``cat([x, up(y_1), ...])`` without the concat.

The maths and the kernels are :func:`psp_kernels.concat_free_conv`'s; this adds the export path:
while exporting, the same split runs on the plain ops of :mod:`pspnet.export_ops`, exact at every
(symbolic) input size.
"""

from __future__ import annotations

import psp_kernels

from . import export_ops

__all__ = ["concat_free_conv3x3", "concat_free_conv"]


def concat_free_conv(x, branches, weight, *, align_corners=True, x_last=False, bias=None,
                     backend="auto"):  # fmt: skip
    """Return ``F.conv2d(cat, weight, bias, padding=k // 2)`` over the concat of ``x`` and the
    upsampled branches (``x`` first, or last with ``x_last``; ``k`` 3 or 1), concat-free.

    Args and result as :func:`psp_kernels.concat_free_conv` (``backend`` is passed to it).
    """
    if export_ops.exporting():  # plain ops exact at every (symbolic) size
        base, maps = psp_kernels.split_concat_conv(x, branches, weight, x_last=x_last, bias=bias)
        if not maps:
            return base
        return export_ops.shifted_upsample_add(base, maps, align_corners=align_corners)
    return psp_kernels.concat_free_conv(
        x, branches, weight, align_corners=align_corners, x_last=x_last, bias=bias, backend=backend
    )


def concat_free_conv3x3(x, branches, weight, *, align_corners=True, backend="auto"):
    """Return ``F.conv2d(cat([x] + [up(y) for y in branches]), weight, padding=1)``, concat-free.

    Args and result as :func:`psp_kernels.concat_free_conv` (``backend`` is passed to it).
    """
    return concat_free_conv(x, branches, weight, align_corners=align_corners, backend=backend)
