"""Record the Triton launches of a workload without a GPU.

The public ops run on ``meta`` tensors that stand in for CUDA tensors (shapes, strides and dtypes
real, no data) inside :func:`psp_kernels.ops.target.simulating_gpu`: the launchers plan for the
simulated GPU (its SM count and compute capability, the GPU tile configurations) and hand every
launch to a :class:`Recorder` instead of running it, and the ``psp_kernels::`` custom ops run their
launchers on meta tensors too (see :mod:`psp_kernels.ops.target`). Nothing global is replaced:
the simulation is a context variable, so other threads and code outside the ``with`` block are
not affected. Meta tensors rather than ``FakeTensorMode`` CUDA tensors: the launchers build their
small index tables on the host from real values, which a fake-tensor mode would turn into
value-less fakes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import Iterator

import torch
from triton.runtime.jit import JITFunction

from ..ops.target import SimulatedGPU, simulating_gpu

#: Where a fresh allocation would start (PyTorch's caching allocator aligns blocks to 512 B).
_BASE_ADDRESS = 1 << 21


@dataclasses.dataclass(frozen=True)
class TensorArg:
    """A tensor argument of a recorded launch: its geometry, no data."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype
    storage_offset: int

    @classmethod
    def of(cls, t: torch.Tensor) -> TensorArg:
        return cls(tuple(t.shape), tuple(t.stride()), t.dtype, int(t.storage_offset()))

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        """Bytes of the elements it holds (a dense tensor's size)."""
        return self.numel * self.itemsize

    def contiguous_run(self) -> int:
        """Elements of the longest unit-stride dimension (1 when no dimension has stride 1)."""
        return max([s for s, st in zip(self.shape, self.stride) if st == 1] or [1])

    def widest_vector(self) -> int:
        """Bytes of the widest aligned vector access (a power of two, at most 16) a kernel could
        make along the unit-stride run of one (sample, channel) plane or one pixel's channels.

        Spatial dimensions that continue the run (an NCHW plane: ``h`` after ``w``; channels
        last: ``w`` after ``c``) merge into it; the batch dimension, and the channels of a
        planar layout, never do. Every other dimension's stride and the storage offset must
        keep each run's start aligned.
        """
        ndim = len(self.shape)
        mergeable = set(range(2, ndim)) if ndim >= 3 else {ndim - 1}
        if ndim >= 3 and self.stride[1] == 1:
            mergeable.add(1)
        dims = sorted((st, d) for d, (size, st) in enumerate(zip(self.shape, self.stride))
                      if size > 1)  # fmt: skip
        run, steps = 1, []
        for st, d in dims:
            if st == run and d in mergeable and not steps:
                run *= self.shape[d]
            else:
                steps.append(st)
        width = 16
        while width > self.itemsize and (
            run * self.itemsize < width
            or any((st * self.itemsize) % width for st in steps + [self.storage_offset])
        ):
            width //= 2
        return width


class _Pointer:
    """What Triton's JIT specialization sees of a tensor: its dtype and data address."""

    def __init__(self, arg: TensorArg):
        self.dtype = arg.dtype
        self._address = _BASE_ADDRESS + arg.storage_offset * arg.itemsize

    def data_ptr(self) -> int:
        return self._address


@dataclasses.dataclass
class Launch:
    """One recorded kernel launch.

    Attributes:
        kernel: the ``JITFunction``.
        grid: ``(x, y, z)`` program counts.
        args: every argument by name (tensors as :class:`TensorArg`), constexprs included.
        options: launch options (``num_warps``, ``num_stages``).
        step: which op / pass launched it (``"pyramid_pooling fwd"``...).
    """

    kernel: JITFunction
    grid: tuple[int, int, int]
    args: dict
    options: dict
    step: str = ""

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__

    @property
    def programs(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]

    def jit_args(self) -> list:
        """The positional arguments as Triton's JIT binder sees them (tensors as pointers)."""
        return [
            _Pointer(v) if isinstance(v, TensorArg) else v
            for name, v in self.args.items()
            if not self.kernel.params[self.kernel.arg_names.index(name)].is_constexpr
        ]

    def constexprs(self) -> dict:
        return {p.name: self.args[p.name] for p in self.kernel.params if p.is_constexpr}


def _grid(grid, bound: dict) -> tuple[int, int, int]:
    if callable(grid):
        grid = grid(bound)
    grid = tuple(int(g) for g in grid)
    return grid + (1,) * (3 - len(grid))


class Recorder:
    """The launches recorded so far; :meth:`step` labels the launches made inside it."""

    def __init__(self):
        self.launches: list[Launch] = []
        self._step = ""

    @contextlib.contextmanager
    def step(self, name: str):
        self._step = name
        try:
            yield
        finally:
            self._step = ""

    def record(self, kernel: JITFunction, grid, args, kwargs) -> None:
        """Record ``kernel[grid](*args, **kwargs)`` (the signature of ``SimulatedGPU.record``)."""
        kwargs = dict(kwargs)
        bound = dict(zip(kernel.arg_names, args))
        options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages") if k in kwargs}
        bound.update(kwargs)
        for p in kernel.params:  # constexpr defaults the launcher did not pass
            if p.name not in bound and p.default is not inspect.Parameter.empty:
                bound[p.name] = p.default
        args_out = {
            name: TensorArg.of(bound[name])
            if isinstance(bound[name], torch.Tensor)
            else bound[name]
            for name in kernel.arg_names
        }
        self.launches.append(Launch(kernel, _grid(grid, bound), args_out, options, self._step))


@contextlib.contextmanager
def recording(num_sms: int, arch: int = 90) -> Iterator[Recorder]:
    """Record instead of run every Triton launch made inside; yields the :class:`Recorder`.

    ``num_sms``: the SM count the launchers see (their grids fill that many SMs); ``arch``:
    the compute capability they see (``ops.utils.compute_arch``: per-architecture tiles).
    """
    recorder = Recorder()
    with simulating_gpu(SimulatedGPU(num_sms, arch, recorder.record)):
        yield recorder
