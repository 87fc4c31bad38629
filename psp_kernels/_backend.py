"""Choosing between the Triton kernels and the plain-PyTorch reference."""

from __future__ import annotations

import os

import torch

from ._validate import check_backend


def interpreting() -> bool:
    """True when Triton's interpreter is on (``TRITON_INTERPRET=1``), so kernels run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_backend(backend: str, x: torch.Tensor) -> str:
    """Return ``"triton"`` or ``"reference"`` for ``backend`` and an input on ``x.device``.

    ``"auto"`` picks Triton for CUDA tensors (except float64, which the GPU kernels do not
    support) and for CPU tensors when the interpreter is on; the reference otherwise.
    ``"triton"`` raises ``RuntimeError`` where Triton cannot run.
    """
    check_backend(backend)
    if backend == "reference":
        return "reference"
    on_cuda = x.device.type == "cuda"
    usable = (on_cuda and x.dtype != torch.float64) or (x.device.type == "cpu" and interpreting())
    if backend == "auto":
        return "triton" if usable else "reference"
    if not usable:
        if x.device.type == "cpu":
            raise RuntimeError(
                "backend='triton' needs a CUDA tensor, or TRITON_INTERPRET=1 set before triton is "
                "imported to run the kernels on CPU tensors; use backend='auto' or 'reference'"
            )
        raise RuntimeError(
            f"backend='triton' does not support {x.dtype} on {x.device}; "
            "use backend='auto' or 'reference'"
        )
    return "triton"
