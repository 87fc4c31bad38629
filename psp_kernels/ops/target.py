"""The GPU the launchers plan for: the real one, or one simulated by the workload report.

The workload report (:mod:`psp_kernels.analysis.record`) reads what a GPU would run without one:
it drives the public ops on ``meta`` tensors that stand in for CUDA tensors, inside
:func:`simulating_gpu`. While a :class:`SimulatedGPU` is active in the current context (a
``contextvars.ContextVar``: other threads and tasks are not affected, and nothing global is
replaced):

* the backend choice treats every tensor as a CUDA tensor (``_backend``), and the launchers pick
  their GPU configurations (``utils.interpreting()`` is ``False``) for the simulated SM count and
  compute capability (``utils.num_sms`` / ``utils.compute_arch``);
* :func:`launch` hands each launch to the simulation's ``record`` callback instead of running it;
* the custom ops registered through :func:`custom_op` / :func:`register_fake` run their real
  implementation (the launchers) on meta tensors too, where torch would otherwise run the fake
  implementation and launch nothing.

Outside a simulation all three behave exactly as plain Triton and ``torch.library`` do.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from collections.abc import Callable, Iterator

import torch

__all__ = [
    "SimulatedGPU",
    "simulating_gpu",
    "simulated_gpu",
    "launch",
    "custom_op",
    "register_fake",
]


@dataclasses.dataclass(frozen=True)
class SimulatedGPU:
    """A GPU that launches are planned for but not run on.

    Attributes:
        num_sms: streaming multiprocessors the launchers size their grids for.
        arch: compute capability as one number (80: A100, 90: H100 / H200).
        record: called as ``record(kernel, grid, args, kwargs)`` for every launch, in place of
            ``kernel[grid](*args, **kwargs)``.
    """

    num_sms: int
    arch: int
    record: Callable[..., None]


_SIMULATED: contextvars.ContextVar[SimulatedGPU | None] = contextvars.ContextVar(
    "psp_kernels_simulated_gpu", default=None
)


# torch.compile cannot trace ContextVar.get; no simulation is ever active while it traces (the
# recorder runs the ops eagerly on meta tensors), so it may take the value read at trace time.
@torch.compiler.assume_constant_result
def simulated_gpu() -> SimulatedGPU | None:
    """The GPU being simulated in this context, or ``None`` (the usual case)."""
    return _SIMULATED.get()


@contextlib.contextmanager
def simulating_gpu(gpu: SimulatedGPU) -> Iterator[SimulatedGPU]:
    """Plan every launch made inside for ``gpu`` and record it instead of running it."""
    token = _SIMULATED.set(gpu)
    try:
        yield gpu
    finally:
        _SIMULATED.reset(token)


def launch(kernel, grid, *args, **kwargs) -> None:
    """``kernel[grid](*args, **kwargs)``, or the simulation's record of it (see the module doc)."""
    gpu = simulated_gpu()
    if gpu is not None:
        gpu.record(kernel, grid, args, kwargs)
        return
    kernel[grid](*args, **kwargs)


#: The real implementation of every custom op made by :func:`custom_op`, by op.
_REAL: dict[object, Callable] = {}


def custom_op(name: str) -> Callable:
    """``torch.library.custom_op(name, mutates_args=())``, remembering the real implementation
    for :func:`register_fake`."""

    def decorate(fn: Callable):
        op = torch.library.custom_op(name, mutates_args=())(fn)
        _REAL[op] = fn
        return op

    return decorate


def register_fake(op) -> Callable:
    """Decorator: ``op.register_fake(fake)``, except that while a GPU is simulated the op's real
    implementation runs instead (on meta tensors), so that its launches are recorded."""

    def decorate(fake: Callable) -> Callable:
        real = _REAL[op]

        @functools.wraps(fake)
        def fake_or_real(*args, **kwargs):
            return (real if simulated_gpu() is not None else fake)(*args, **kwargs)

        op.register_fake(fake_or_real)
        return fake

    return decorate
