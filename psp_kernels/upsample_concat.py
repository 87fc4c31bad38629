"""Kernel 2: fused bilinear upsampling of the pyramid branches + concatenation with x.

Layout of this file: Triton kernels, then the launcher (input checks, block sizes), then the
``torch.library`` registration, then the public function.
"""

from __future__ import annotations

from . import reference
from ._backend import resolve_backend
from ._validate import check_upsample_concat


def upsample_concat(x, branches, *, align_corners=True, backend="auto"):
    """Return ``cat([x] + [bilinear(y_i, x.shape[-2:]) for y_i in branches], dim=1)``, fused."""
    branches = check_upsample_concat(x, branches)
    if resolve_backend(backend, x) == "reference":
        return reference.upsample_concat(x, branches, align_corners=align_corners)
    raise NotImplementedError("the Triton path of upsample_concat is not written yet")
