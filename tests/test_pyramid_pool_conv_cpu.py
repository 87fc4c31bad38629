"""Kernel 1's CPU path (stacked pooling matrix products) against the reference, and when it runs."""

import pytest
import torch

import psp_kernels
from psp_kernels import reference
from psp_kernels.ops.pyramid_pool_conv import separable
from tests.helpers import assert_close_to_reference, make_x

# the plain-PyTorch paths on CPU (the interpreter flag off; see conftest.plain_torch_cpu)
pytestmark = pytest.mark.usefixtures("plain_torch_cpu")

CASES = [
    # (n, c, h, w, bins, layout, dtype)
    (2, 5, 13, 9, (1, 2, 3, 6), "contiguous", torch.float64),
    (1, 4, 5, 3, (6, 1, 4), "contiguous", torch.float64),  # bins larger than the map
    (2, 6, 60, 61, (1, 2, 3, 6), "channels_last", torch.float64),
    (3, 8, 22, 17, (2, 3), "sliced", torch.float64),
    (2, 16, 33, 33, (1, 2, 3, 6), "contiguous", torch.float32),
    (2, 16, 33, 20, (1, 2, 3, 6), "channels_last", torch.float32),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("grad", [True, False])
def test_cpu_path_matches_reference(case, grad):
    n, c, h, w, bins, layout, dtype = case
    x = make_x(n, c, h, w, dtype, layout).requires_grad_(grad)
    ws = [torch.randn(3 + i, c, dtype=dtype, requires_grad=grad) for i in range(len(bins))]
    sc = [torch.rand(3 + i, dtype=dtype) + 0.5 for i in range(len(bins))]
    sh = [torch.randn(3 + i, dtype=dtype) for i in range(len(bins))]
    ys = psp_kernels.pyramid_pool_conv(x, ws, bins, scale=sc, shift=sh, relu=True)
    ref = reference.pyramid_pool_conv(x, ws, bins, scale=sc, shift=sh, relu=True)
    for i, (y, r) in enumerate(zip(ys, ref, strict=True)):
        assert_close_to_reference(y, r, dtype, f"y[{i}]")
    if grad:
        gs = [torch.randn_like(r) for r in ref]
        got = torch.autograd.grad(ys, [x, *ws], gs)
        want = torch.autograd.grad(ref, [x, *ws], gs)
        for name, g, r in zip(["x"] + [f"w{i}" for i in range(len(ws))], got, want, strict=True):
            assert_close_to_reference(g, r, dtype, f"grad {name}")


def _spy(monkeypatch):
    calls = []
    for name in ("stacked_pools", "_stacked_pools_channels_last"):
        real = getattr(separable, name)

        def spy(*args, _real=real, _name=name):
            calls.append(_name)
            return _real(*args)

        monkeypatch.setattr(separable, name, spy)
    return calls


def test_which_path_runs(monkeypatch):
    calls = _spy(monkeypatch)
    ws = [torch.randn(3, 4) for _ in range(4)]
    x = torch.randn(1, 4, 9, 9)
    psp_kernels.pyramid_pool_conv(x, ws)
    assert calls == ["stacked_pools"]  # auto, float32 on CPU: the matrix products
    calls.clear()
    psp_kernels.pyramid_pooling(x, ws)
    assert calls == ["stacked_pools"]  # the fused PPM forward's CPU path too
    calls.clear()
    psp_kernels.pyramid_pool_conv(x, ws, backend="reference")
    psp_kernels.pyramid_pool_conv(x.half(), [w.half() for w in ws])
    cl = x.contiguous(memory_format=torch.channels_last)
    psp_kernels.pyramid_pool_conv(cl, ws)  # no gradient: PyTorch's channels_last pooling
    assert calls == []  # the literal reference, low precision, channels_last forward
    psp_kernels.pyramid_pool_conv(cl.requires_grad_(), ws)
    assert calls == ["_stacked_pools_channels_last"]
