"""What the tests share: input makers and one tolerance check.

The tolerances themselves are the library's (:mod:`psp_kernels.testing`); the official PPM and
the BatchNorm randomiser, which the benchmarks use too, are :mod:`pspnet.testing`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from psp_kernels.testing import TOL

__all__ = [
    "Allocations",
    "assert_close",
    "assert_compiled_matches",
    "assert_close_to_reference",
    "make_params",
    "make_x",
    "skip_unless_kernels_take",
]

# ----------------------------------------------------------------------------------------------
# tolerances
# ----------------------------------------------------------------------------------------------


def assert_close(
    actual: torch.Tensor | None,
    expected: torch.Tensor | None,
    what: str = "",
    *,
    dtype: torch.dtype | None = None,
    tol: float | None = None,
    floor: float = 1e-30,
    nonzero: bool = False,
) -> None:
    """The one tolerance check: ``max|actual - expected| <= tol * max(max|expected|, floor)``.

    ``tol`` defaults to the contract's tolerance of ``dtype`` (default: ``expected``'s dtype);
    pass ``dtype`` to judge a low-precision result upcast to float64 against a float64
    reference. ``floor`` makes the bound absolute where ``expected`` is tiny; ``nonzero``
    also requires ``expected`` not to be all zeros (so the comparison means something). Shapes
    and dtypes must match; two ``None`` match (an unused gradient).
    """
    assert (actual is None) == (expected is None), f"{what}: one of the two is None"
    if actual is None:
        return
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} vs {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} vs {expected.dtype}"
    if tol is None:
        tol = TOL[dtype or expected.dtype]
    scale = expected.detach().abs().max().item() if expected.numel() else 0.0
    if nonzero:
        assert scale > 0, f"{what}: the expected tensor is all zeros"
    err = (actual.detach().double() - expected.detach().double()).abs().max().item()
    assert err <= tol * max(scale, floor) or err == 0.0, (
        f"{what}: max abs error {err:.3e} vs tolerance {tol} x {max(scale, floor):.3e}"
    )


def assert_close_to_reference(actual, expected, dtype, what):
    """``actual`` within ``dtype``'s contract tolerance of the reference ``expected``."""
    assert_close(actual, expected, what, dtype=dtype)


def skip_unless_kernels_take(dtype, device):
    """Skip a test that forces ``backend="triton"`` in ``dtype`` where the kernels cannot run it:
    float64 runs on the reference and the interpreter only, never on CUDA (the contract)."""
    import pytest

    if dtype == torch.float64 and str(device).startswith("cuda"):
        pytest.skip("the CUDA kernels do not take float64 (it runs through the interpreter in CI)")


def assert_compiled_matches(fn, compiled, device, sizes=((7, 9), (10, 6))) -> None:
    """``compiled`` (a ``torch.compile`` of ``fn(x, w0, w1, s0, b1)``: kernel 1's weights of two
    bins, a scale and a shift, 5 channels in) equals ``fn`` in value and gradients at each of
    ``sizes``, within float32's tolerance; a dynamic graph re-uses itself for the second size."""
    for h, w in sizes:
        x = torch.randn(2, 5, h, w, device=device, requires_grad=True)
        params = [
            torch.randn(4, 5, 1, 1, device=device),
            torch.randn(3, 5, device=device),
            torch.rand(4, device=device) + 0.5,
            torch.randn(3, device=device),
        ]
        leaves = [x] + [p.requires_grad_(True) for p in params]
        out = compiled(*leaves)
        grads = torch.autograd.grad(out, leaves)
        eager = fn(*leaves)
        eager_grads = torch.autograd.grad(eager, leaves)
        assert_close(out, eager, "compiled forward", dtype=torch.float32)
        for g, eg in zip(grads, eager_grads, strict=True):
            assert_close(g, eg, "compiled gradient", dtype=torch.float32)


# ----------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------


def make_x(n, c, h, w, dtype=torch.float32, layout="contiguous", device="cpu") -> torch.Tensor:
    """``x`` of shape ``(n, c, h, w)`` in the memory ``layout`` (values drawn independently of it):

    ``contiguous``; ``channels_last``; ``channel_slice`` (every other channel of a bigger
    tensor); ``spatial_slice`` (a crop: rows and columns strided by the full width);
    ``transposed`` (H and W swapped by a view, stride_h == 1); ``strided`` (every other channel
    of a crop: no dense memory format); ``sliced`` (every other channel, rows cropped).
    """
    kw = dict(dtype=dtype, device=device)
    if layout == "contiguous":
        x = torch.randn(n, c, h, w, **kw)
    elif layout == "channels_last":
        x = torch.randn(n, c, h, w, **kw).to(memory_format=torch.channels_last)
        assert x.stride(1) == 1 or c == 1
    elif layout == "channel_slice":
        x = torch.randn(n, 2 * c, h, w, **kw)[:, ::2]
    elif layout == "spatial_slice":
        x = torch.randn(n, c, h + 3, w + 5, **kw)[:, :, 1 : h + 1, 2 : w + 2]
    elif layout == "transposed":
        x = torch.randn(n, c, w, h, **kw).transpose(2, 3)
    elif layout == "strided":
        x = torch.randn(n, 2 * c, h + 2, w + 3, **kw)[:, ::2, 1 : h + 1, 2 : w + 2]
        assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    elif layout == "sliced":
        x = torch.randn(n, 2 * c, h + 2, w, **kw)[:, ::2, 1:-1]
    else:
        raise AssertionError(f"unknown layout {layout!r}")
    assert x.shape == (n, c, h, w)
    return x


def make_params(
    c: int,
    bins: Sequence[int],
    dtype=torch.float32,
    device="cpu",
    *,
    scale: bool = True,
    shift: bool = True,
    weight_4d: bool = False,
    reductions: Callable[[int], int] = lambda i: 3 + 2 * i,
):
    """Kernel 1's parameters ``(weights, scale, shift)``: ``reductions(i)`` output channels for
    bin ``i``, weights ``(R, C)`` (or ``(R, C, 1, 1)``) of unit-variance outputs, scale in
    ``[0.5, 1.5)``, shift around 0; ``scale`` / ``shift`` are ``None`` when not asked for."""
    rs = [reductions(i) for i in range(len(bins))]
    ws = [torch.randn(r, c, dtype=dtype, device=device) / c**0.5 for r in rs]
    if weight_4d:
        ws = [w[:, :, None, None].clone() for w in ws]
    sc = [torch.rand(r, dtype=dtype, device=device) + 0.5 for r in rs] if scale else None
    sh = [torch.randn(r, dtype=dtype, device=device) * 0.1 for r in rs] if shift else None
    return ws, sc, sh


# ----------------------------------------------------------------------------------------------
# allocations
# ----------------------------------------------------------------------------------------------


class Allocations(TorchDispatchMode):
    """Records the element count of every tensor an op returns (in this thread only)."""

    def __init__(self):
        super().__init__()
        self.numels = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.numels.append(t.numel())
        return out
