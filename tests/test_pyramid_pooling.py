"""The fused PPM forward ``psp_kernels.pyramid_pooling`` (kernel 1 copies x) vs the reference.

The reference is the composition ``upsample_concat(x, pyramid_pool_conv(x, ...))`` of the plain
PyTorch functions. On CPU the kernels run through Triton's interpreter (tests/conftest.py), so the
sizes stay small.
"""

import pytest
import torch

import psp_kernels
import pspnet
from psp_kernels import reference
from psp_kernels.ops.pyramid_pool_conv import configs as ppc_configs
from psp_kernels.ops.pyramid_pool_conv import launch as ppc
from psp_kernels.ops.upsample_concat import launch as uc
from pspnet.testing import randomize_batchnorm
from tests.helpers import assert_close_to_reference as _assert_close
from tests.helpers import assert_compiled_matches, make_params, make_x

F32, F64 = torch.float32, torch.float64


#: output channels of bin i (small: the kernels run through the interpreter on CPU)
_RS = lambda i: 2 + i % 3  # noqa: E731


def _reference(x, ws, bins, sc, sh, relu, align_corners):
    ys = reference.pyramid_pool_conv(x, ws, bins, scale=sc, shift=sh, relu=relu)
    return reference.upsample_concat(x, ys, align_corners=align_corners)


@pytest.fixture
def spy_copy(monkeypatch):
    """Records kernel 2's ``copy_x`` flag (the copy of x must come from kernel 1), and fills
    every new output with NaN so that a pixel nobody writes cannot pass for a copied one."""
    calls = []
    real = uc.launch_forward
    real_empty = uc.empty_output
    monkeypatch.setattr(uc, "empty_output", lambda x, c: real_empty(x, c).fill_(float("nan")))

    def spy(x, branches, align_corners, out=None, copy_x=True):
        calls.append(copy_x)
        return real(x, branches, align_corners, out=out, copy_x=copy_x)

    monkeypatch.setattr(uc, "launch_forward", spy)
    return calls


@pytest.fixture
def spy_addend(monkeypatch):
    """Records whether each dx gather of kernel 1 got an addend (the fused PPM backward's
    ``grad[:, :C]``) and checks that the addend is a view of the output gradient, not a copy."""
    calls = []
    real = ppc.cells_to_pixels

    def spy(dp, bins, height, width, dx, addend=None):
        calls.append(addend)
        return real(dp, bins, height, width, dx, addend)

    monkeypatch.setattr(ppc, "cells_to_pixels", spy)
    return calls


def _make_grad(ref, layout):
    """An output gradient like ``ref`` in the given memory layout (the addend is its [:, :C])."""
    n, c, h, w = ref.shape
    kw = dict(dtype=ref.dtype, device=ref.device)
    if layout == "contiguous":
        g = torch.randn(n, c, h, w, **kw)
    elif layout == "channels_last":
        g = torch.randn(n, c, h, w, **kw).to(memory_format=torch.channels_last)
    elif layout == "transposed":  # H and W swapped in memory: no dense memory format
        g = torch.randn(n, c, w, h, **kw).transpose(2, 3)
    elif layout == "permuted":  # columns outermost, rows innermost
        g = torch.randn(w, n, c, h, **kw).permute(1, 2, 3, 0)
    elif layout == "expanded":  # stride 0 over the pixels (like the gradient of a mean)
        g = torch.randn(n, c, 1, 1, **kw).expand(n, c, h, w)
    else:
        raise AssertionError(layout)
    assert g.shape == ref.shape
    if layout not in ("contiguous", "channels_last"):
        assert not g.is_contiguous() and not g.is_contiguous(memory_format=torch.channels_last)
    return g


def _run_case(
    device,
    dtype,
    n,
    c,
    h,
    w,
    bins,
    layout,
    relu=True,
    affine=True,
    align=True,
    grad_layout="contiguous",
):
    x = make_x(n, c, h, w, dtype, layout, device)
    ws, sc, sh = make_params(c, bins, dtype, device, scale=affine, shift=affine, reductions=_RS)
    leaves = [x] + ws + (sc or []) + (sh or [])
    for t in leaves:
        t.requires_grad_(True)
    out = psp_kernels.pyramid_pooling(
        x, ws, bins, scale=sc, shift=sh, relu=relu, align_corners=align, backend="triton"
    )
    ref = _reference(x, ws, bins, sc, sh, relu, align)
    _assert_close(out, ref, dtype, "output")
    assert torch.equal(out[:, :c], x), "the copy of x must be exact"
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        assert out.is_contiguous(memory_format=torch.channels_last)
    else:
        assert out.is_contiguous()
    g = _make_grad(ref, grad_layout)
    grads = torch.autograd.grad(out, leaves, g)
    ref_grads = torch.autograd.grad(ref, leaves, g)
    names = ["x"] + [f"leaf{i}" for i in range(1, len(leaves))]
    for name, a, b in zip(names, grads, ref_grads, strict=True):
        _assert_close(a, b, dtype, f"grad {name}")
    # dx keeps x's memory format whatever the gradient's (autograd accepts any strides)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        assert grads[0].is_contiguous(memory_format=torch.channels_last)
    else:
        assert grads[0].is_contiguous()
    return out, grads


CASES = [
    # (dtype, n, c, h, w, bins, layout, splits, grad layout, dx rows): splits forces stage 1's row
    # split (batch 1 on GPUs), dx rows the rows per program of the dx gather (None: all rows)
    (F32, 2, 5, 13, 17, (1, 2, 3, 6), "contiguous", None, "contiguous", None),
    (F64, 2, 5, 13, 17, (1, 2, 3, 6), "contiguous", None, "transposed", 4),
    (F32, 1, 3, 61, 61, (1, 2, 3, 6), "contiguous", 4, "channels_last", 7),
    (F64, 2, 3, 9, 10, (4, 8, 16), "contiguous", None, "permuted", None),  # 336 cells: looped
    (F32, 1, 3, 9, 10, (4, 8, 16), "channels_last", 3, "transposed", 2),
    (F64, 1, 3, 11, 7, (16, 8), "strided", 4, "channels_last", 3),  # copying block not the first
    (F32, 2, 4, 12, 11, (16,), "channels_last", None, "expanded", None),  # copy-only rows
    (F64, 1, 4, 12, 11, (16,), "contiguous", 5, "permuted", 5),
]


@pytest.mark.parametrize("bins", [(1, 2, 3, 6), (4, 8)], ids=["50 cells", "80 cells"])
def test_gpu_tiles_under_interpreter(bins, device, monkeypatch):
    """The GPU tile sizes of every launch of the PPM, forward and backward, under the
    interpreter: PSPNet's pyramid, and one of more than 64 cells (one 128-cell block: the
    large dx gather tiles, and kernel 2's 64-cell blocks of the 8x8 branch)."""
    if device == "cuda":
        pytest.skip("the GPU configurations run natively on CUDA in the other tests")
    from psp_kernels.ops import utils as ops_utils
    from psp_kernels.ops.upsample_concat import configs as uc_configs

    monkeypatch.setattr(ops_utils, "GPU_TILES", True)
    # every launcher's grid-size hook forced: none asks for the SM count (a GPU)
    monkeypatch.setattr(ppc_configs, "FORCE_SPLITS", 2)
    monkeypatch.setattr(ppc_configs, "FORCE_DX_PIXELS", 96)
    monkeypatch.setattr(uc_configs, "FORCE_PIXELS", 128)
    assert (
        ppc_configs.dx_config(3, 11 * 13, 128, F32)["BLOCK_P"]
        == ppc_configs.DX_LARGE["fp32"]["BLOCK_P"]
    )
    _run_case(device, F32, 1, 67, 11, 13, bins, "contiguous")


def _case_id(c):
    return f"{c[0]}-{c[1:5]}-{c[5]}-{c[6]}-{c[7]}-grad_{c[8]}-dxrows{c[9]}"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_matches_reference(case, device, monkeypatch, spy_copy, spy_addend):
    dtype, n, c, h, w, bins, layout, splits, grad_layout, dx_rows = case
    if device == "cuda" and dtype == F64:
        pytest.skip("float64 runs the torch fallback on CUDA (test_fallback_copies_in_kernel_2)")
    monkeypatch.setattr(ppc_configs, "FORCE_SPLITS", splits)
    monkeypatch.setattr(ppc_configs, "FORCE_DX_PIXELS", dx_rows * w if dx_rows else None)
    _run_case(device, dtype, n, c, h, w, bins, layout, grad_layout=grad_layout)
    assert spy_copy == [False], "kernel 2 must not copy x again"
    # the backward's dx = grad[:, :C] + gather comes from one pass of the dx gather
    assert len(spy_addend) == 1 and spy_addend[0] is not None, "dx gather must add grad[:, :C]"
    assert spy_addend[0].shape == (n, c, h, w)


def test_addend_unfused_fallback(device, monkeypatch, spy_addend):
    """A gradient the kernel cannot address (over 2**31 per sample, another dtype) is added after
    the gather: same values."""
    monkeypatch.setattr(ppc, "can_add_in_kernel", lambda dx, addend: False)
    _run_case(device, F32, 2, 3, 8, 9, (1, 3), "channels_last", grad_layout="transposed")
    assert len(spy_addend) == 1 and spy_addend[0] is None


def test_addend_single_rounding(device):
    """dx = grad[:, :C] + gather is summed in fp32 and rounded to x's dtype once.

    bins (1,) on a 1 x 2 map: each pixel's gather is dp / 2 = 2**-11 - 2**-23, not a float16
    value. With the addend 1 + 2**-10 the exact sum lies just below the midpoint of two float16
    values (one rounding: 1 + 2**-10), while rounding the gather to float16 first (2**-11) and
    adding after lands on the midpoint, which ties to 1 + 2**-9."""
    if device == "cuda":
        pytest.skip("float16 dx dots use tf32 on GPUs, which rounds dp before the sum")
    f16 = torch.float16
    c = 16
    # dp = g * w = 2**-10 * (1 - 2**-6) * (1 + 2**-6) = 2**-10 - 2**-22, exact in fp32
    g = torch.full((1, 1, 1, 1), 2.0**-10 * (1 - 2.0**-6), dtype=f16, device=device)
    w = torch.full((1, c), 1 + 2.0**-6, dtype=f16, device=device)
    pooled = torch.zeros(1, 1, c, device=device)
    addend = torch.full((1, c, 2, 1), 1 + 2.0**-10, dtype=f16, device=device).transpose(2, 3)

    def bwd(dx_addend):
        args = ([g], [], pooled, [w], [], [], [1], False, 1, 2, False, True, dx_addend)
        return torch.ops.psp_kernels.pyramid_pool_conv_bwd(*args)[0]

    fused_dx = bwd(addend)
    two_roundings = bwd(None) + addend
    assert torch.equal(fused_dx, torch.full_like(fused_dx, 1 + 2.0**-10))
    assert torch.equal(two_roundings, torch.full_like(fused_dx, 1 + 2.0**-9))


def test_pyramid_pool_conv_backward_has_no_addend(device, spy_addend):
    """kernel 1's own op (and so the training-mode PPM, which calls it) gathers dx alone."""
    x = torch.randn(2, 4, 7, 6, device=device, requires_grad=True)
    ws, sc, sh = make_params(4, (1, 3), F32, device, reductions=_RS)
    ys = psp_kernels.pyramid_pool_conv(x, ws, (1, 3), scale=sc, shift=sh, relu=True)
    (dx,) = torch.autograd.grad(sum(y.sum() for y in ys), [x])
    ref = reference.pyramid_pool_conv(x, ws, (1, 3), scale=sc, shift=sh, relu=True)
    (ref_dx,) = torch.autograd.grad(sum(y.sum() for y in ref), [x])
    _assert_close(dx, ref_dx, F32, "grad x")
    assert spy_addend == [None]


def test_no_affine_no_relu_align_false(device):
    _run_case(device, F32, 2, 3, 8, 9, (2, 5), "contiguous", relu=False, affine=False, align=False)


def test_fallback_copies_in_kernel_2(device, monkeypatch, spy_copy):
    """Where kernel 1 cannot address the output (over 2**31 per sample), kernel 2 copies."""
    monkeypatch.setattr(ppc, "can_copy_into", lambda x, out: False)
    x = make_x(2, 4, 7, 6, F32, "channels_last", device)
    ws, sc, sh = make_params(4, (1, 3), F32, device, reductions=_RS)
    for t in [x] + ws + sc + sh:
        t.requires_grad_(True)
    out = psp_kernels.pyramid_pooling(x, ws, (1, 3), scale=sc, shift=sh, relu=True)
    ref = _reference(x, ws, (1, 3), sc, sh, True, True)
    _assert_close(out, ref, F32, "output")
    assert spy_copy == [True]
    g = torch.randn_like(ref)
    leaves = [x] + ws + sc + sh
    grads, ref_grads = torch.autograd.grad(out, leaves, g), torch.autograd.grad(ref, leaves, g)
    for a, b in zip(grads, ref_grads, strict=True):
        _assert_close(a, b, F32, "grad")


def test_no_grad_for_x_and_reference_backend(device):
    x = torch.randn(2, 4, 7, 8, dtype=F64, device=device)
    ws, sc, sh = make_params(4, (1, 2), F64, device, reductions=_RS)
    for t in ws + sc + sh:
        t.requires_grad_(True)
    out = psp_kernels.pyramid_pooling(x, ws, [1, 2], scale=sc, shift=sh, relu=True)
    ref = psp_kernels.pyramid_pooling(
        x, ws, [1, 2], scale=sc, shift=sh, relu=True, backend="reference"
    )
    _assert_close(out, ref, F64, "output")
    g = torch.randn_like(ref)
    params = ws + sc + sh
    grads, ref_grads = torch.autograd.grad(out, params, g), torch.autograd.grad(ref, params, g)
    for a, b in zip(grads, ref_grads, strict=True):
        _assert_close(a, b, F64, "grad")


def test_bad_input_raises():
    x = torch.randn(1, 4, 5, 5)
    with pytest.raises(ValueError, match="weights"):
        psp_kernels.pyramid_pooling(x, [torch.randn(2, 3)], (1,))
    with pytest.raises(ValueError, match="one tensor per bin"):
        psp_kernels.pyramid_pooling(x, [torch.randn(2, 4)], (1, 2))
    with pytest.raises(ValueError, match="backend"):
        psp_kernels.pyramid_pooling(x, [torch.randn(2, 4)], (1,), backend="cuda")


def test_gradcheck(device):
    if device == "cuda":
        pytest.skip("float64 runs through the torch fallback on CUDA; gradcheck runs on CPU")
    x = torch.randn(1, 2, 4, 5, dtype=F64, requires_grad=True)
    ws, sc, sh = make_params(2, (1, 2), F64, "cpu", reductions=_RS)
    leaves = [t.clone().requires_grad_(True) for t in ws + sc + sh]

    def fn(x, w0, w1, s0, s1, b0, b1):
        return psp_kernels.pyramid_pooling(
            x, [w0, w1], (1, 2), scale=[s0, s1], shift=[b0, b1], relu=True, backend="triton"
        )

    assert torch.autograd.gradcheck(fn, (x, *leaves), eps=1e-6, atol=1e-8, fast_mode=True)


def test_opcheck(device):
    x = torch.randn(2, 3, 5, 4, dtype=F32, device=device, requires_grad=True)
    ws = [torch.randn(2, 3, device=device, requires_grad=True) for _ in range(2)]
    sc = [torch.rand(2, device=device, requires_grad=True) for _ in range(2)]
    sh = [torch.randn(2, device=device, requires_grad=True) for _ in range(2)]
    torch.library.opcheck(
        torch.ops.psp_kernels.pyramid_pooling_fwd.default, (x, ws, [1, 2], sc, sh, True, True)
    )


@pytest.mark.gpu
def test_bitwise_deterministic(device):
    """Bitwise equal runs where programs run concurrently (a GPU). Under Triton's interpreter
    programs run one at a time, so equal runs there prove nothing: without a GPU, determinism is
    the workload report's "no atomics" gate on the compiled code (``test_analysis``)."""
    x = torch.randn(2, 6, 9, 11, device=device, requires_grad=True)
    ws, sc, sh = make_params(6, (1, 2, 3, 6), F32, device, reductions=_RS)
    leaves = [x] + [t.requires_grad_(True) for t in ws + sc + sh]
    runs = []
    for _ in range(2):
        out = psp_kernels.pyramid_pooling(x, ws, (1, 2, 3, 6), scale=sc, shift=sh, relu=True)
        g = torch.ones_like(out)
        runs.append([out] + list(torch.autograd.grad(out, leaves, g)))
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


def _compile_fn(x, w0, w1, s0, b1):
    out = psp_kernels.pyramid_pooling(
        x, [w0, w1], (1, 3), scale=[s0, b1.abs() + 0.5], shift=[s0 * 0.1, b1], relu=True
    )
    return (out * out).sum()


def test_compile_fullgraph_forward_backward(device):
    torch._dynamo.reset()
    compiled = torch.compile(_compile_fn, fullgraph=True, backend="inductor", dynamic=True)
    assert_compiled_matches(_compile_fn, compiled, device)


def test_ppm_eval_uses_the_fused_op(device, monkeypatch):
    """pspnet.PPM in eval: one pyramid_pooling call, equal to the two-op path."""
    ppm = randomize_batchnorm(pspnet.PPM(6, 3, (1, 2, 3, 6))).to(device)
    ppm.eval()
    calls = []
    real = psp_kernels.pyramid_pooling

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(psp_kernels, "pyramid_pooling", spy)
    x = torch.randn(2, 6, 11, 9, device=device)
    with torch.no_grad():
        got = ppm(x)
        plain = psp_kernels.upsample_concat(x, ppm.pyramid(x), align_corners=True)
    assert len(calls) == 1 and calls[0]["relu"] and calls[0]["align_corners"]
    _assert_close(got, plain, F32, "PPM eval output")
    ppm.train()
    with torch.no_grad():
        ppm(x)
    assert len(calls) == 1, "training keeps the two-op path"


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="float16/bfloat16 kernels are checked on a GPU only "
    "(Triton's interpreter computes bfloat16 wrongly)",
)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_low_precision_parity_cuda(dtype, layout):
    """The fused PPM forward and backward in low precision against a float64 reference."""
    bins = (1, 2, 3, 6)
    x = make_x(2, 64, 30, 30, dtype, layout, "cuda")
    ws, sc, sh = make_params(64, bins, dtype, "cuda", reductions=lambda i: 16)
    leaves = [x, *ws, *sc, *sh]
    for t in leaves:
        t.requires_grad_(True)
    out = psp_kernels.pyramid_pooling(x, ws, bins, scale=sc, shift=sh, relu=True)
    leaves64 = [t.detach().double().requires_grad_(True) for t in leaves]
    x64, rest = leaves64[0], leaves64[1:]
    ref = _reference(x64, rest[:4], bins, rest[4:8], rest[8:], True, True)
    _assert_close(out.double(), ref, dtype, "output")
    g = torch.randn_like(ref)
    grads = torch.autograd.grad(out, leaves, g.to(dtype))
    ref_grads = torch.autograd.grad(ref, leaves64, g)
    for i, (a, b) in enumerate(zip(grads, ref_grads, strict=True)):
        _assert_close(a.double(), b, dtype, f"grad {i}")
