"""Kernel 1 (fused multi-bin adaptive average pooling + 1x1 conv) against the reference.

On CPU the Triton kernels run through the interpreter (tests/conftest.py sets TRITON_INTERPRET=1),
so sizes stay small; the largest maps only come with few channels.
"""

import pytest
import torch

import psp_kernels
from psp_kernels import reference
from psp_kernels.ops.pyramid_pool_conv import configs as ppc_configs
from tests.helpers import assert_close_to_reference as _assert_close
from tests.helpers import assert_compiled_matches, make_params, make_x, skip_unless_kernels_take

ON_CUDA = torch.cuda.is_available()


def _leaves(x, ws, sc, sh):
    return [x] + ws + (sc or []) + (sh or [])


def _run_case(device, dtype, n, c, h, w, bins, layout, scale, shift, relu, weight_4d):
    skip_unless_kernels_take(dtype, device)
    x = make_x(n, c, h, w, dtype, layout, device).requires_grad_(True)
    ws, sc, sh = make_params(c, bins, dtype, device, scale=scale, shift=shift, weight_4d=weight_4d)
    leaves = _leaves(x, ws, sc, sh)
    for t in leaves:
        t.requires_grad_(True)
    ys = psp_kernels.pyramid_pool_conv(x, ws, bins, scale=sc, shift=sh, relu=relu, backend="triton")
    ref = reference.pyramid_pool_conv(x, ws, bins, scale=sc, shift=sh, relu=relu)
    assert len(ys) == len(bins)
    for i, (y, r, b) in enumerate(zip(ys, ref, bins, strict=True)):
        assert y.shape == (n, ws[i].shape[0], b, b)
        _assert_close(y, r, dtype, f"y[{i}]")
    gs = [torch.randn_like(r) for r in ref]
    grads = torch.autograd.grad(ys, leaves, gs)
    ref_grads = torch.autograd.grad(ref, leaves, gs)
    names = ["x"] + [f"weights[{i}]" for i in range(len(ws))]
    names += [f"scale[{i}]" for i in range(len(sc or []))]
    names += [f"shift[{i}]" for i in range(len(sh or []))]
    for name, g, rg in zip(names, grads, ref_grads, strict=True):
        _assert_close(g, rg, dtype, f"grad {name}")
    assert grads[0].shape == x.shape
    for g, wt in zip(grads[1 : 1 + len(ws)], ws, strict=True):
        assert g.shape == wt.shape  # (R, C, 1, 1) stays 4D
    return x, grads


F64, F32 = torch.float64, torch.float32
# A covering set (not a product): every C, size, bins set, batch, layout, affine combination,
# relu and weight rank appears at least once.
# (dtype, N, C, H, W, bins, layout, scale, shift, relu, weight_4d)
CASES = [
    (F64, 3, 3, 13, 17, (1, 2, 3, 6), "contiguous", True, True, True, True),
    (F32, 1, 3, 97, 97, (1, 2, 3, 6), "channels_last", True, False, False, False),
    (F32, 1, 1, 1, 1, (1, 2, 3, 6), "contiguous", False, True, True, True),
    (F64, 1, 64, 5, 5, (6, 3, 2, 1), "channel_slice", False, False, True, False),
    (F32, 3, 130, 13, 17, (1,), "transposed", True, True, False, True),
    (F32, 1, 3, 61, 61, (6, 3, 2, 1), "contiguous", True, True, True, True),
    (F64, 3, 3, 7, 9, (4, 8, 16), "channels_last", True, True, True, False),
    (F32, 1, 64, 60, 60, (1, 2, 3, 6), "spatial_slice", False, False, False, True),
    (F32, 3, 130, 5, 5, (4, 8, 16), "contiguous", False, True, True, False),
    (F64, 1, 1, 97, 97, (1,), "transposed", False, False, False, False),
]


def _case_id(case):
    dtype, n, c, h, w, bins, layout, scale, shift, relu, w4 = case
    aff = ("s" if scale else "") + ("b" if shift else "")
    return (
        f"{str(dtype)[6:]}-n{n}-c{c}-{h}x{w}-bins{''.join(map(str, bins))}-{layout}"
        f"-{aff or 'noaffine'}{'-relu' if relu else ''}-w{'4d' if w4 else '2d'}"
    )


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_matches_reference(device, case):
    _run_case(device, *case)


def test_channels_last_gradient_keeps_layout(device):
    x, grads = _run_case(
        device, F32, 2, 16, 6, 7, (1, 2, 3), "channels_last", True, True, True, True
    )
    assert grads[0].is_contiguous(memory_format=torch.channels_last)


def test_split_rows_and_dx_row_blocks(device, monkeypatch):
    """The row-split path of stage 1 (used on GPUs at small batch) and short dx row blocks."""
    monkeypatch.setattr(ppc_configs, "FORCE_SPLITS", 4)
    monkeypatch.setattr(ppc_configs, "FORCE_DX_PIXELS", 32)
    high = F64 if device == "cpu" else F32  # float64: the interpreter only
    _run_case(device, high, 2, 5, 13, 11, (1, 2, 3, 6), "contiguous", True, True, True, True)
    _run_case(device, F32, 1, 3, 9, 10, (4, 8, 16), "spatial_slice", False, True, False, False)


def test_unused_outputs_and_no_grad_for_x(device):
    """Gradients when only some branches are used, and when x does not need a gradient."""
    high = F64 if device == "cpu" else F32  # float64: the interpreter only
    x = torch.randn(2, 4, 9, 8, dtype=high, device=device)
    ws, sc, sh = make_params(4, (1, 2, 3), high, device, scale=True, shift=True, weight_4d=False)
    for t in ws + sc + sh:
        t.requires_grad_(True)
    ys = psp_kernels.pyramid_pool_conv(x, ws, (1, 2, 3), scale=sc, shift=sh, backend="triton")
    ref = reference.pyramid_pool_conv(x, ws, (1, 2, 3), scale=sc, shift=sh)
    loss, ref_loss = (ys[1] ** 2).sum(), (ref[1] ** 2).sum()
    grads = torch.autograd.grad(loss, ws + sc + sh)
    ref_grads = torch.autograd.grad(ref_loss, ws + sc + sh, allow_unused=True)
    for g, rg in zip(grads, ref_grads, strict=True):
        _assert_close(g, torch.zeros_like(g) if rg is None else rg, high, "grad")
    assert grads[0].abs().max() == 0  # branch 0 unused


def test_gradcheck(device):
    if device == "cuda":
        pytest.skip("the CUDA kernels do not take float64; gradcheck runs through the interpreter")
    x = torch.randn(1, 2, 4, 5, dtype=F64, requires_grad=True)
    ws, sc, sh = make_params(2, (1, 2), F64, "cpu", scale=True, shift=True, weight_4d=False)
    ws = [w[:2].clone().requires_grad_(True) for w in ws]
    sc = [s[:2].clone().requires_grad_(True) for s in sc]
    sh = [s[:2].clone().requires_grad_(True) for s in sh]

    def fn(x, w0, w1, s0, s1, b0, b1):
        return tuple(
            psp_kernels.pyramid_pool_conv(
                x, [w0, w1], (1, 2), scale=[s0, s1], shift=[b0, b1], backend="triton"
            )
        )

    assert torch.autograd.gradcheck(fn, (x, *ws, *sc, *sh), eps=1e-6, atol=1e-8, fast_mode=True)


def test_opcheck(device):
    x = torch.randn(2, 3, 5, 4, dtype=F32, device=device, requires_grad=True)
    ws = [torch.randn(2, 3, device=device, requires_grad=True) for _ in range(2)]
    sc = [torch.rand(2, device=device, requires_grad=True) for _ in range(2)]
    sh = [torch.randn(2, device=device, requires_grad=True) for _ in range(2)]
    torch.library.opcheck(
        torch.ops.psp_kernels.pyramid_pool_conv_fwd.default, (x, ws, [1, 2], sc, sh, True)
    )
    ys, pooled = torch.ops.psp_kernels.pyramid_pool_conv_fwd(x, ws, [1, 2], sc, sh, True)
    gs = [torch.randn_like(y) for y in ys]
    detached = [[t.detach() for t in lst] for lst in (ys, ws, sc, sh)]
    ys_d, ws_d, sc_d, sh_d = detached
    args = (gs, ys_d, pooled.detach(), ws_d, sc_d, sh_d, [1, 2], True, 5, 4)
    torch.library.opcheck(torch.ops.psp_kernels.pyramid_pool_conv_bwd.default, (*args, False, True))


@pytest.mark.gpu
def test_deterministic(device):
    """Bitwise equal runs where programs run concurrently (a GPU). Under Triton's interpreter
    programs run one at a time, so equal runs there prove nothing: without a GPU, determinism is
    the workload report's "no atomics" gate on the compiled code (``test_analysis``)."""
    x = make_x(2, 40, 19, 23, F32, "contiguous", device).requires_grad_(True)
    ws, sc, sh = make_params(40, (1, 2, 3, 6), F32, device, scale=True, shift=True, weight_4d=True)
    leaves = _leaves(x, ws, sc, sh)
    for t in leaves:
        t.requires_grad_(True)
    gs = [
        torch.randn(2, w.shape[0], b, b, device=device)
        for w, b in zip(ws, (1, 2, 3, 6), strict=True)
    ]
    runs = []
    for _ in range(2):
        ys = psp_kernels.pyramid_pool_conv(
            x, ws, (1, 2, 3, 6), scale=sc, shift=sh, relu=True, backend="triton"
        )
        runs.append(list(ys) + list(torch.autograd.grad(ys, leaves, gs)))
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


def _compile_fn(x, w0, w1, s0, b1):
    ys = psp_kernels.pyramid_pool_conv(
        x, [w0, w1], (1, 3), scale=[s0, b1.abs() + 0.5], shift=[s0 * 0.1, b1], relu=True
    )
    return ys[0].sum() * 0.5 + (ys[1] * ys[1]).sum()


@pytest.mark.parametrize(
    "backend,dynamic", [("aot_eager", False), ("inductor", True)], ids=["static", "dynamic"]
)
def test_torch_compile_fullgraph(device, backend, dynamic):
    torch._dynamo.reset()
    compiled = torch.compile(_compile_fn, fullgraph=True, backend=backend, dynamic=dynamic)
    assert_compiled_matches(_compile_fn, compiled, device)


@pytest.mark.gpu
@pytest.mark.skipif(
    not ON_CUDA,
    reason="float16/bfloat16 kernels are checked on a GPU only "
    "(Triton's interpreter computes bfloat16 wrongly)",
)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", [(2, 512, 60, 60), (1, 130, 13, 17)])
def test_low_precision_parity_cuda(dtype, layout, shape):
    n, c, h, w = shape
    bins = (1, 2, 3, 6)
    x = make_x(n, c, h, w, dtype, layout, "cuda").requires_grad_(True)
    ws, sc, sh = make_params(c, bins, dtype, "cuda", scale=True, shift=True, weight_4d=True)
    leaves = _leaves(x, ws, sc, sh)
    for t in leaves:
        t.requires_grad_(True)
    ys = psp_kernels.pyramid_pool_conv(x, ws, bins, scale=sc, shift=sh, relu=True)
    leaves64 = [t.detach().double().requires_grad_(True) for t in leaves]
    x64, rest = leaves64[0], leaves64[1:]
    ws64, sc64, sh64 = rest[:4], rest[4:8], rest[8:]
    ref = reference.pyramid_pool_conv(x64, ws64, bins, scale=sc64, shift=sh64, relu=True)
    for y, r in zip(ys, ref, strict=True):
        _assert_close(y.double(), r, dtype, "y")
    gs = [torch.randn_like(r) for r in ref]
    grads = torch.autograd.grad(ys, leaves, [g.to(dtype) for g in gs])
    ref_grads = torch.autograd.grad(ref, leaves64, gs)
    for g, rg in zip(grads, ref_grads, strict=True):
        _assert_close(g.double(), rg, dtype, "grad")
