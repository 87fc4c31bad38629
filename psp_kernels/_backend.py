"""Choosing between the Triton kernels and the plain-PyTorch reference: the one place it is decided.

Every public op calls :func:`resolve_backend` once with its input and, where the kernels have a
limit of their own (int32 offsets inside a sample, a tile size), the reason this input exceeds
it. The custom ops behind the public functions then always launch the kernels: they hold no
plain-PyTorch fallback of their own.
"""

from __future__ import annotations

import torch

from ._validate import check_backend
from .ops import utils
from .ops.target import simulated_gpu
from .ops.utils import interpreting

__all__ = ["interpreting", "resolve_backend"]


def _why_not_triton(x: torch.Tensor) -> str | None:
    """Why the Triton kernels cannot run on tensors like ``x`` here, or ``None`` when they can.

    While a GPU is simulated (``ops.target``: the workload report) every tensor counts as a CUDA
    tensor of a GPU dtype.
    """
    if simulated_gpu() is not None:
        return None
    if x.device.type == "cuda":
        if x.dtype not in utils.GPU_DTYPES:
            return f"backend='triton' does not support {x.dtype} on {x.device}"
        return None
    if x.device.type == "cpu" and interpreting():
        return None
    if x.device.type == "cpu":
        return (
            "backend='triton' needs a CUDA tensor, or TRITON_INTERPRET=1 set before triton is "
            "imported to run the kernels on CPU tensors"
        )
    return f"backend='triton' does not support tensors on {x.device}"


def resolve_backend(backend: str, x: torch.Tensor, *, kernel_limit: str | None = None) -> str:
    """Return ``"triton"`` or ``"reference"`` for ``backend`` and an input like ``x``.

    ``"auto"`` picks Triton for CUDA tensors (except float64, which the GPU kernels do not
    support) and for CPU tensors when the interpreter is on; the reference otherwise, and also
    when ``kernel_limit`` (an op's reason that this input exceeds its kernels) is given.
    ``"triton"`` raises ``RuntimeError`` where Triton cannot run, and ``ValueError`` (with
    ``kernel_limit``) where the input exceeds the kernels.
    """
    check_backend(backend)
    if backend == "reference":
        return "reference"
    why = _why_not_triton(x)
    if why is not None:
        if backend == "auto":
            return "reference"
        raise RuntimeError(f"{why}; use backend='auto' or 'reference'")
    if kernel_limit is not None:
        if backend == "auto":
            return "reference"
        raise ValueError(f"backend='triton': {kernel_limit}; use backend='auto'")
    return "triton"
