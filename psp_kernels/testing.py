"""The contract's accuracy rule, for tests, benchmarks and users checking the ops on their GPU.

>>> from psp_kernels.testing import TOL, max_rel_error
>>> assert max_rel_error(out.double(), ref) <= TOL[out.dtype]   # ref: float64 reference
"""

from __future__ import annotations

import torch

__all__ = ["TOL", "max_rel_error"]

#: The contract's tolerances: max abs error relative to the reference's max abs (compare low
#: precision against a float64 reference).
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def max_rel_error(actual: torch.Tensor, expected: torch.Tensor, floor: float = 1e-30) -> float:
    """``max|actual - expected| / max(max|expected|, floor)``, computed in float64."""
    scale = expected.detach().abs().max().item() if expected.numel() else 0.0
    err = (actual.detach().double() - expected.detach().double()).abs().max().item()
    return err / max(scale, floor) if err else 0.0
