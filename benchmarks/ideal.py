"""The ideal-byte model behind "effective bandwidth": what a perfect implementation must move.

``e`` bytes per element, ``S = sum b^2`` cells over the ``nb`` bins, ``R`` channels per bin; tiny
terms such as BatchNorm vectors are left out. Every input read once, every output written once:
    ``kernel1 fwd``  x + weights (nb R C) + outputs (N R S).
    ``kernel1 bwd``  read grad_y (N R S), weights and the pooled x saved by the forward (N S C);
                     write grad_x (N C H W) and grad_W (nb R C). x itself need not be re-read.
    ``kernel2 fwd``  x + branches (N R S) + output (N (C + nb R) H W).
    ``kernel2 bwd``  read the branch channels of grad_out (N nb R H W), write grad_branches
                     (N R S). grad_x is a view of grad_out (torch.cat's backward returns one), so 0.
    ``ppm fwd``      x + conv weights + output (N (C + nb R) H W).
    ``ppm bwd``      read grad_out (N (C + nb R) H W), weights and the saved pooled x; write grad_x
                     (N C H W) and the weight gradients.
    ``loss fwd``     the logits (N K h w), the int64 labels and prediction (N H W, 8 bytes each),
                     and the float32 per-pixel logsumexp a backward needs (N H W, 4 bytes).
    ``loss bwd``     read the logits, labels and logsumexp; write the logits' gradient.
    ``fwd+bwd``      the sum of the two.
"""

from __future__ import annotations

from .grids import DTYPES, LossShape, Shape

__all__ = ["ideal_bytes"]


def ideal_bytes(case: str, pass_: str, s: Shape | LossShape) -> int | None:
    """Bytes a perfect implementation moves for ``case``/``pass_`` (see the module docstring)."""
    if case == "loss":
        logits = s.n * s.k * s.h * s.w * DTYPES[s.dtype].itemsize
        pixels = s.n * s.size[0] * s.size[1]
        fwd = logits + 8 * pixels + 8 * pixels + 4 * pixels
        bwd = logits + 8 * pixels + 4 * pixels + logits
        return fwd if pass_ == "fwd" else fwd + bwd
    if case not in ("kernel1", "kernel2", "ppm"):
        return None
    e = DTYPES[s.dtype].itemsize
    nb, cells = len(s.bins), sum(b * b for b in s.bins)
    x = s.n * s.c * s.h * s.w  # also the size of grad_x
    weights = nb * s.r * s.c  # also the size of grad_W
    small = s.n * s.r * cells  # all branch outputs (or their gradients)
    pooled = s.n * cells * s.c  # pooled x saved by the forward for grad_W
    out = s.n * (s.c + nb * s.r) * s.h * s.w  # PPM / upsample_concat output (or its gradient)
    branch_planes = s.n * nb * s.r * s.h * s.w  # the upsampled channels of out
    if case == "kernel1":
        fwd = x + weights + small
        bwd = (small + weights + pooled) + (x + weights)  # reads, then writes
    elif case == "kernel2":
        fwd = x + small + out
        bwd = branch_planes + small
    else:
        fwd = x + weights + out
        bwd = (out + weights + pooled) + (x + weights)
    return e * (fwd if pass_ == "fwd" else fwd + bwd)
