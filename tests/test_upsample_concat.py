"""Kernel 2 (fused bilinear upsample + concat): Triton path against the plain-PyTorch reference.

On CPU the kernels run through Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1),
with the launcher's interpreter tile sizes; ``test_gpu_configs_under_interpreter`` also runs the
GPU tile sizes (tl.dot backward, several channel / cell / pixel blocks) on CPU.
"""

from __future__ import annotations

import pytest
import torch

import psp_kernels
from psp_kernels import reference
from psp_kernels.ops import utils as ops_utils
from psp_kernels.ops.upsample_concat import configs as uc_configs
from tests.helpers import assert_close_to_reference as _close

# (x shape, branch (R, h, w) list): every required size; big maps get few channels.
CASES = {
    "13x17": (
        (2, 3, 13, 17),
        [(2, 1, 1), (3, 2, 2), (2, 3, 3), (2, 6, 6), (2, 7, 5), (2, 19, 23)],  # last > output
    ),
    "61x61": ((1, 2, 61, 61), [(2, 1, 1), (1, 2, 2), (2, 3, 3), (1, 6, 6)]),
    "97x97": ((1, 1, 97, 97), [(1, 1, 1), (1, 3, 3), (1, 6, 6), (1, 7, 5)]),
}


def _make(case, dtype, device, requires_grad=False):
    shape, branch_shapes = CASES[case]
    n = shape[0]
    x = torch.randn(shape, dtype=dtype, device=device)
    branches = [torch.randn(n, *s, dtype=dtype, device=device) for s in branch_shapes]
    if requires_grad:
        x.requires_grad_()
        for b in branches:
            b.requires_grad_()
    return x, branches


def _fwd_bwd(fn, x, branches, grad, align_corners):
    xs = x.detach().clone().requires_grad_()
    bs = [b.detach().clone().requires_grad_() for b in branches]
    out = fn(xs, bs, align_corners=align_corners)
    grads = torch.autograd.grad(out, [xs, *bs], grad)
    return out, grads


def _triton(x, branches, align_corners=True):
    return psp_kernels.upsample_concat(x, branches, align_corners=align_corners, backend="triton")


def _reference(x, branches, align_corners=True):
    return reference.upsample_concat(x, branches, align_corners=align_corners)


def _check_against_reference(x, branches, align_corners, dtype):
    out = _triton(x, branches, align_corners)
    grad = torch.randn_like(out)
    got, got_grads = _fwd_bwd(_triton, x, branches, grad, align_corners)
    want, want_grads = _fwd_bwd(_reference, x, branches, grad, align_corners)
    assert got.shape == want.shape
    assert torch.equal(got[:, : x.shape[1]], x), "the copy of x must be exact"
    _close(got, want, dtype, "output")
    names = ["dx"] + [f"d branches[{i}] {tuple(b.shape)}" for i, b in enumerate(branches)]
    for name, g, w in zip(names, got_grads, want_grads, strict=True):
        assert g.shape == w.shape, name
        _close(g, w, dtype, name)
    return got


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize(
    "case,dtype",
    [
        ("13x17", torch.float32),
        ("13x17", torch.float64),
        ("61x61", torch.float32),
        ("61x61", torch.float64),
        ("97x97", torch.float32),
    ],
)
def test_matches_reference(case, dtype, align_corners, device):
    if dtype == torch.float64 and device == "cuda":
        pytest.skip("float64 runs on the reference and the interpreter only")
    x, branches = _make(case, dtype, device)
    _check_against_reference(x, branches, align_corners, dtype)


@pytest.mark.parametrize("layout", ["channels_last", "sliced"])
def test_strided_x_and_output_format(layout, device):
    base = torch.randn(2, 6, 13, 34, device=device)
    if layout == "channels_last":
        x = base.to(memory_format=torch.channels_last)
    else:
        x = base.to(memory_format=torch.channels_last)[:, 1:4, :, ::2]  # not dense at all
        assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    branches = [torch.randn(2, 2, s, s, device=device) for s in (1, 2, 6)]
    out = _check_against_reference(x, branches, True, torch.float32)
    like = torch.empty_like(x)
    for fmt in (torch.contiguous_format, torch.channels_last):
        assert out.is_contiguous(memory_format=fmt) == like.is_contiguous(memory_format=fmt)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_contiguous_in_contiguous_out(device):
    x = torch.randn(1, 3, 9, 11, device=device)
    out = _triton(x, [torch.randn(1, 2, 3, 3, device=device)])
    assert out.is_contiguous()


def test_gpu_configs_under_interpreter(monkeypatch, device):
    """Run the GPU tile sizes: several channel blocks, cell blocks, pixel chunks per program."""
    if device == "cuda":
        pytest.skip("the GPU configurations run natively on CUDA in the other tests")
    monkeypatch.setattr(ops_utils, "GPU_TILES", True)
    monkeypatch.setattr(uc_configs, "FORCE_PIXELS", 256)  # two 128-pixel chunks per program
    # 19x17 = 323 pixels: two programs of pixels, ragged; 70 channels: two 64-channel blocks;
    # 9x40 = 360 cells: six 64-cell blocks of a branch larger than BLOCK_K.
    x = torch.randn(1, 10, 19, 17)
    branches = [torch.randn(1, 70, 6, 6), torch.randn(1, 2, 9, 40), torch.randn(1, 3, 1, 1)]
    _check_against_reference(x, branches, False, torch.float32)
    _check_against_reference(x.to(memory_format=torch.channels_last), branches, True, torch.float32)
    _check_against_reference(x.double(), [b.double() for b in branches], True, torch.float64)


def test_no_branches(device):
    x = torch.randn(1, 3, 5, 7, device=device, requires_grad=True)
    out = _triton(x, [])
    assert torch.equal(out, x)
    (dx,) = torch.autograd.grad(out, [x], torch.ones_like(out))
    assert torch.equal(dx, torch.ones_like(x))


def test_dx_is_a_view_of_grad_out(device):
    x = torch.randn(1, 3, 7, 9, device=device, requires_grad=True)
    y = torch.randn(1, 2, 3, 3, device=device, requires_grad=True)
    out = _triton(x, [y])
    grad = torch.randn_like(out)
    dx, dy = torch.autograd.grad(out, [x, y], grad)
    assert dx.data_ptr() == grad.data_ptr(), "dx must be grad_out[:, :C], not a copy"
    assert dx.stride() == grad.stride()
    assert torch.equal(dx, grad[:, :3])


def test_gradcheck_float64(device):
    if device == "cuda":
        pytest.skip("float64 runs on the reference and the interpreter only")
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    branches = [
        torch.randn(1, 1, 1, 1, dtype=torch.float64, requires_grad=True),
        torch.randn(1, 2, 2, 3, dtype=torch.float64, requires_grad=True),
        torch.randn(1, 1, 7, 4, dtype=torch.float64, requires_grad=True),
    ]
    for align_corners in (True, False):

        def fn(x, *bs, align_corners=align_corners):
            return _triton(x, list(bs), align_corners)

        assert torch.autograd.gradcheck(fn, (x, *branches), fast_mode=True)


def test_opcheck(device):
    dtype = torch.float32 if device == "cuda" else torch.float64
    x = torch.randn(2, 3, 6, 7, dtype=dtype, device=device)
    branches = [torch.randn(2, 2, s, s, dtype=dtype, device=device) for s in (1, 3)]
    op = torch.ops.psp_kernels.upsample_concat.default
    result = torch.library.opcheck(op, (x, branches, True))
    assert all(v == "SUCCESS" for v in result.values()), result


def test_bitwise_deterministic(device):
    x = torch.randn(2, 3, 11, 13, device=device)
    branches = [torch.randn(2, 2, s, s, device=device) for s in (1, 3, 6)]
    grad = torch.randn(2, 9, 11, 13, device=device)
    out1, grads1 = _fwd_bwd(_triton, x, branches, grad, False)
    out2, grads2 = _fwd_bwd(_triton, x, branches, grad, False)
    assert torch.equal(out1, out2)
    for a, b in zip(grads1, grads2, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dynamic", [False, True])
def test_compile_fullgraph(dynamic, device):
    torch._dynamo.reset()
    x = torch.randn(2, 3, 9, 11, device=device)
    branches = [torch.randn(2, 2, s, s, device=device) for s in (1, 2, 6)]

    def fn(x, branches, align_corners=True):
        return psp_kernels.upsample_concat(x, branches, align_corners=align_corners)

    compiled = torch.compile(fn, fullgraph=True, dynamic=dynamic)
    grad = torch.randn(2, 9, 9, 11, device=device)
    want, want_grads = _fwd_bwd(fn, x, branches, grad, True)
    got, got_grads = _fwd_bwd(compiled, x, branches, grad, True)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_parity_cuda(dtype, device):
    if device != "cuda":
        pytest.skip("fp16/bf16 are checked on CUDA only (the interpreter computes bf16 wrongly)")
    x = torch.randn(2, 64, 61, 61, device=device)
    branches = [torch.randn(2, 16, s, s, device=device) for s in (1, 2, 3, 6)]
    grad = torch.randn(2, 128, 61, 61, device=device)
    want, want_grads = _fwd_bwd(
        _reference, x.double(), [b.double() for b in branches], grad.double(), True
    )
    low = [b.to(dtype) for b in branches]
    got, got_grads = _fwd_bwd(_triton, x.to(dtype), low, grad.to(dtype), True)
    for g, w in zip([got, *got_grads], [want, *want_grads], strict=True):
        _close(g.double(), w, dtype, "output / gradient")
