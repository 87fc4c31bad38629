"""Launcher of the fused PPM forward: kernel 1 with ``COPY_X``, then kernel 2 for the branches only.

Bytes per image at C=2048, 60x60, fp32 with four 512-channel branches: read x once (29.5 MB) +
write the (4096, 60, 60) output once (59.0 MB) = 88.5 MB, instead of 118 MB for the two ops one
after the other (kernel 2 reads x a second time). The pooled workspace (0.4 MB) and the 1x1
weights (16.8 MB in fp32, read once per batch, not per image) come on top of both.
"""

from __future__ import annotations

from ..pyramid_pool_conv import launch as kernel1
from ..upsample_concat import launch as kernel2

__all__ = ["launch_forward"]


def launch_forward(x, weights, bins, scale, shift, relu, align_corners):
    """``(out, ys, pooled)``: the PPM output, the branch outputs and kernel 1's cell means.

    Stage 1 of kernel 1 writes ``out[:, :C]`` while it reads ``x``; where it cannot address
    ``out`` (see ``pyramid_pool_conv.launch.can_copy_into``), kernel 2 writes the copy.
    """
    c_total = x.shape[1] + sum(int(w.shape[0]) for w in weights)
    out = kernel2.empty_output(x, c_total)
    ys, pooled, copied = kernel1.launch_forward(x, weights, bins, scale, shift, relu, out=out)
    kernel2.launch_forward(x, ys, bool(align_corners), out=out, copy_x=not copied)
    return out, ys, pooled
