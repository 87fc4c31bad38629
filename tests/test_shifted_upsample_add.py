"""shifted_upsample_add (the concat-free head's op) against its reference."""

import pytest
import torch
import torch.nn.functional as F

from psp_kernels import reference, shifted_upsample_add
from psp_kernels.ops import utils as ops_utils
from psp_kernels.ops.shifted_upsample_add import configs, launch
from psp_kernels.ops.shifted_upsample_add.op import _bwd_op, _fwd_op
from psp_kernels.ops.shifted_upsample_add.separable import separable_shifted_upsample_add
from psp_kernels.ops.utils import tile_class
from tests.helpers import assert_close_to_reference, skip_unless_kernels_take

PSP_SIZES = [(1, 1), (2, 2), (3, 3), (6, 6)]
CASES = [
    # (N, O, H, W, map sizes, align_corners)
    (2, 3, 13, 17, PSP_SIZES, True),
    (1, 2, 13, 17, PSP_SIZES, False),
    (1, 2, 61, 61, [(1, 1), (6, 6)], True),
    (2, 2, 5, 4, [(7, 5), (1, 1)], False),  # a map larger than the output
    (1, 1, 1, 1, [(2, 3)], True),  # 1x1 output: every shifted tap but the centre falls outside
    (1, 3, 35, 33, [(3, 3), (8, 8)], False),
]


def _inputs(n, o, h, w, sizes, dtype, device, channels_last=False, taps=9):
    base = torch.randn(n, o, h, w, dtype=dtype, device=device)
    if channels_last:
        base = base.to(memory_format=torch.channels_last)
    maps = [torch.randn(n, taps, o, a, b, dtype=dtype, device=device) for a, b in sizes]
    return base.requires_grad_(), [m.requires_grad_() for m in maps]


def _check(out, grads, ref, ref_grads, dtype):
    assert_close_to_reference(out, ref, dtype, "output")
    for i, (g, r) in enumerate(zip(grads, ref_grads, strict=True)):
        assert_close_to_reference(g, r, dtype, f"gradient {i}")


@pytest.mark.parametrize("taps", [9, 1])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("path", ["triton", "separable"])
def test_matches_reference(case, dtype, path, taps, device):
    """Both forms: nine taps (a 3x3 conv after the concat) and the one-tap form (a 1x1 conv)."""
    n, o, h, w, sizes, ac = case
    if path == "triton":
        skip_unless_kernels_take(dtype, device)
    base, maps = _inputs(n, o, h, w, sizes, dtype, device, channels_last=(h == 13), taps=taps)
    if path == "triton":
        out = shifted_upsample_add(base, maps, align_corners=ac, backend="triton")
    else:
        out = separable_shifted_upsample_add(base, maps, ac)
    ref = reference.shifted_upsample_add(base, maps, align_corners=ac)
    grad = torch.randn_like(ref)
    grads = torch.autograd.grad(out, [base, *maps], grad)
    ref_grads = torch.autograd.grad(ref, [base, *maps], grad)
    _check(out, grads, ref, ref_grads, dtype)


def _distinct(table, more=frozenset()):
    return sorted({tuple(sorted(t.items())) for t in table.values()} | more)


_FWD_TILES = _distinct(configs.FWD)
_BWD_TILES = _distinct(
    configs.BWD,
    more={tuple(sorted(dict(t, BLOCK_O=o).items())) for t in configs.BWD.values() for o in (2, 4)},
)


@pytest.mark.parametrize(
    "table, tiles",
    [("FWD", dict(t)) for t in _FWD_TILES] + [("BWD", dict(t)) for t in _BWD_TILES],
    ids=str,
)
@pytest.mark.parametrize("channels_last, taps", [(False, 9), (True, 9), (False, 1), (True, 1)])
def test_every_tile_config(table, tiles, channels_last, taps, device, monkeypatch):
    """Each configuration the launchers can pick (backward: 2 or 4 channels per program),
    forced on float64, for both forms (the one-tap form's 16-wide tiles): a ragged channel
    block (5 channels) and maps wider than one column chunk and taller than one row step."""
    skip_unless_kernels_take(torch.float64, device)
    monkeypatch.setattr(configs, "BWD_PLANE", {})  # the tiled backward, whatever the plane
    for layout in ("nchw", "nhwc"):
        monkeypatch.setitem(getattr(configs, table), (tile_class(torch.float64), layout), tiles)
    base, maps = _inputs(1, 5, 37, 61, PSP_SIZES, torch.float64, device, channels_last, taps)
    _check_against_reference(base, maps)


_PLANE_TILES = _distinct(
    configs.BWD_PLANE,
    more={tuple(sorted(dict(t, BLOCK_O=o).items())) for t in configs.BWD_PLANE.values()
          for o in (2, 4)},
)  # fmt: skip


@pytest.mark.parametrize("tiles", [dict(t) for t in _PLANE_TILES], ids=str)
@pytest.mark.parametrize("groups, taps", [(1, 9), (3, 9), (3, 1)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_every_plane_config(tiles, groups, taps, channels_last, device, monkeypatch):
    """The one-tile-per-plane backward with each configuration (2 or 4 channels per block),
    one or three blocks per program (13 channels: a ragged block, and a last program with
    blocks past the last channel),
    on a plane that fills neither tile dimension; it must really be the kernel that runs."""
    skip_unless_kernels_take(torch.float64, device)
    for layout in ("nchw", "nhwc"):
        monkeypatch.setitem(configs.BWD_PLANE, (tile_class(torch.float64), layout), tiles)
    monkeypatch.setattr(configs, "FORCE_GROUPS", groups)
    launched = []
    kernel = launch._shifted_upsample_add_bwd_plane_kernel
    monkeypatch.setattr(
        launch, "_shifted_upsample_add_bwd_plane_kernel",
        _Spy(kernel, launched),
    )  # fmt: skip
    base, maps = _inputs(2, 13, 29, 45, PSP_SIZES, torch.float64, device, channels_last, taps)
    _check_against_reference(base, maps)
    blocks = -(-13 // tiles["BLOCK_O"])
    assert launched == [(2 * -(-blocks // groups),)]


class _Spy:
    """A kernel whose launches record their grids."""

    def __init__(self, kernel, grids):
        self.kernel, self.grids = kernel, grids

    def __getitem__(self, grid):
        self.grids.append(grid)
        return self.kernel[grid]


def _check_against_reference(base, maps):
    out = shifted_upsample_add(base, maps, align_corners=False, backend="triton")
    ref = reference.shifted_upsample_add(base, maps, align_corners=False)
    grad = torch.randn_like(ref)
    grads = torch.autograd.grad(out, [base, *maps], grad)
    ref_grads = torch.autograd.grad(ref, [base, *maps], grad)
    _check(out, grads, ref, ref_grads, torch.float64)


def test_equals_head_conv_over_concat(device):
    """The op reproduces the pyramid half of a 3x3 conv over the concat, zero padding included.

    float64 on CPU (the interpreter); float32 on CUDA against the same computed in float64."""
    n, c, r, o, h, w = 2, 4, 3, 5, 13, 11
    dtype = torch.float64 if device == "cpu" else torch.float32
    x = torch.randn(n, c, h, w, dtype=dtype, device=device)
    ys = [torch.randn(n, r, b, b, dtype=dtype, device=device) for b in (1, 2, 3, 6)]
    weight = torch.randn(o, c + 4 * r, 3, 3, dtype=dtype, device=device)
    cat = reference.upsample_concat(x.double(), [y.double() for y in ys], align_corners=True)
    expected = F.conv2d(cat, weight.double(), padding=1)
    maps = []
    for i, y in enumerate(ys):
        wb = weight[:, c + i * r : c + (i + 1) * r]  # (O, R, 3, 3)
        taps = wb.permute(2, 3, 0, 1).reshape(9 * o, r, 1, 1)
        maps.append(F.conv2d(y, taps).view(n, 9, o, *y.shape[-2:]))
    base = F.conv2d(x, weight[:, :c], padding=1)
    for backend in ("auto", "triton"):
        got = shifted_upsample_add(base, maps, align_corners=True, backend=backend)
        if dtype == torch.float64:
            assert (got - expected).abs().max().item() < 1e-10
        else:
            assert_close_to_reference(got.double(), expected, dtype, f"backend {backend}")


def test_non_contiguous_base(device):
    dtype = torch.float64 if device == "cpu" else torch.float32  # float64: the interpreter only
    base_full = torch.randn(2, 6, 9, 14, dtype=dtype, device=device)
    base = base_full[:, ::2, :, ::2]  # strided view
    maps = [torch.randn(2, 9, 3, 2, 2, dtype=dtype, device=device)]
    out = shifted_upsample_add(base, maps, align_corners=False, backend="triton")
    ref = reference.shifted_upsample_add(base, maps, align_corners=False)
    if dtype == torch.float64:
        assert (out - ref).abs().max().item() < 1e-10
    else:
        assert_close_to_reference(out, ref, dtype, "output")


@pytest.mark.parametrize(
    "check, align_corners",
    [(torch.autograd.gradcheck, False), (torch.autograd.gradgradcheck, True)],
    ids=["gradcheck", "gradgradcheck"],
)
@pytest.mark.parametrize("taps", [9, 1])
def test_gradcheck(taps, check, align_corners, device):
    """The gradients, and the backward's own (it is differentiable too: its gradient is the
    forward's maps' part)."""
    skip_unless_kernels_take(torch.float64, device)
    base, maps = _inputs(1, 1, 3, 4, [(1, 1), (2, 1)], torch.float64, device, taps=taps)
    fn = lambda b, *m: shifted_upsample_add(b, list(m), align_corners=align_corners,
                                            backend="triton")  # fmt: skip
    assert check(fn, (base, *maps), eps=1e-6, atol=1e-8, fast_mode=True)


def test_offsets_beyond_int32_take_the_other_path():
    """A sample of base with offsets past 2**31 (int32 inside the kernels) is not the kernels':
    ``kernel_limit`` names it, so ``auto`` takes the separable path and ``triton`` refuses."""
    sizes = [(1, 1), (2, 2)]
    fits = torch.empty_strided((1, 3, 2, 2), (12, 4, 2, 1), device="meta")
    wide = torch.empty_strided((1, 3, 2, 2), (0, 2**31 - 2**20, 2, 1), device="meta")
    big = torch.empty((1, 512, 2048, 2049), device="meta")
    assert launch.kernel_limit(sizes, 9, fits) is None
    assert "int32" in launch.kernel_limit(sizes, 9, wide)
    assert "int32" in launch.kernel_limit(sizes, 9, big)
    assert launch.kernel_limit(sizes, 9, big[:, :256]) is None


def test_gpu_tiles_backward_on_cpu(monkeypatch, device):
    """The GPU tiles' backward runs under the interpreter (no CUDA device asked for its SMs or
    architecture: one SM, every kernel variant), plane kernel included, equal to the reference."""
    if device == "cuda":
        pytest.skip("the GPU tiles run natively on CUDA in the other tests")
    monkeypatch.setattr(ops_utils, "GPU_TILES", True)
    launched = []
    kernel = launch._shifted_upsample_add_bwd_plane_kernel
    monkeypatch.setattr(launch, "_shifted_upsample_add_bwd_plane_kernel", _Spy(kernel, launched))
    for channels_last in (False, True):
        base, maps = _inputs(2, 3, 13, 17, [(1, 1), (3, 3), (6, 6)], torch.float64, device,
                             channels_last)  # fmt: skip
        out = shifted_upsample_add(base, maps, align_corners=False, backend="triton")
        ref = reference.shifted_upsample_add(base, maps, align_corners=False)
        g = torch.randn_like(out)
        got = torch.autograd.grad(out, [base, *maps], g)
        want = torch.autograd.grad(ref, [base, *maps], g)
        for a, b in zip(got, want, strict=True):
            assert (a - b).abs().max().item() < 1e-10
    assert len(launched) == 2  # the plane kernel, both layouts


@pytest.mark.parametrize("taps", [9, 1])
def test_opcheck(taps, device):
    base, maps = _inputs(1, 2, 5, 6, [(1, 1), (2, 2)], torch.float32, device, taps=taps)
    torch.library.opcheck(_fwd_op, (base, maps, True))
    grad = torch.randn(1, 2, 5, 6, device=device)
    torch.library.opcheck(_bwd_op, (grad, [1, 1, 2, 2], False, taps))


@pytest.mark.gpu
def test_deterministic(device):
    """Bitwise equal runs where programs run concurrently (a GPU). Under Triton's interpreter
    programs run one at a time, so equal runs there prove nothing: without a GPU, determinism is
    the workload report's "no atomics" gate on the compiled code (``test_analysis``)."""
    base, maps = _inputs(2, 3, 13, 17, PSP_SIZES, torch.float32, device)
    runs = []
    for _ in range(2):
        out = shifted_upsample_add(base, maps, backend="triton")
        runs.append((out, *torch.autograd.grad(out.square().sum(), [base, *maps])))
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dynamic, taps", [(False, 9), (True, 9), (True, 1)])
def test_compile_fullgraph(dynamic, taps, device):
    base, maps = _inputs(1, 2, 9, 7, [(1, 1), (3, 3)], torch.float32, device, taps=taps)

    def fn(b, m0, m1):
        return shifted_upsample_add(b, [m0, m1], backend="triton").square().sum()

    compiled = torch.compile(fn, fullgraph=True, dynamic=dynamic, backend="aot_eager")
    out = compiled(base, *maps)
    grads = torch.autograd.grad(out, [base, *maps])
    ref = fn(base, *maps)
    ref_grads = torch.autograd.grad(ref, [base, *maps])
    torch.testing.assert_close(out, ref)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r)


def test_separable_compiles_fullgraph(device):
    base, maps = _inputs(1, 2, 9, 7, [(1, 1), (3, 3)], torch.float32, device)
    fn = lambda b, m: separable_shifted_upsample_add(b, m, True)
    out = torch.compile(fn, fullgraph=True, backend="aot_eager")(base, maps)
    torch.testing.assert_close(out, fn(base, maps))


@pytest.mark.parametrize("width", [16, 32])
def test_one_tap_tile_widths(width, device, monkeypatch):
    """The one-tap form at each tile width the launchers pick (float32: 16, 16-bit: 32; float64
    in the interpreter takes the 16-bit one), forced: odd sizes, channels_last."""
    skip_unless_kernels_take(torch.float64, device)
    monkeypatch.setitem(configs.ONE_TAP_K, tile_class(torch.float64), width)
    base, maps = _inputs(2, 5, 13, 17, PSP_SIZES, torch.float64, device, True, taps=1)
    _check_against_reference(base, maps)


def test_one_tap_tiles():
    """The one-tap form takes narrower tiles while its pyramid fits (PSPNet's 12), the full
    width beyond; the three-tap form always the full width."""
    bf16, fp32 = torch.bfloat16, torch.float32
    assert configs.tile_width(1, 12, 12, fp32) == 16 and configs.tile_width(1, 12, 12, bf16) == 32
    assert configs.tile_width(1, 17, 12, fp32) == configs.MAX_K
    assert configs.tile_width(9, 12, 12, bf16) == configs.MAX_K
    assert launch.kernel_limit([(22, 22)], 9) is not None
    assert launch.kernel_limit([(22, 22)], 1) is None


def test_large_pyramid_falls_back(device):
    dtype = torch.float32 if device == "cuda" else torch.float64  # a dtype the kernels take
    base, maps = _inputs(1, 1, 8, 8, [(12, 12), (10, 10)], dtype, device)
    with pytest.raises(ValueError, match="exceed"):
        shifted_upsample_add(base, maps, backend="triton")
    out = shifted_upsample_add(base, maps, backend="auto")
    ref = reference.shifted_upsample_add(base, maps)
    if dtype == torch.float64:
        assert (out - ref).abs().max().item() < 1e-10
    else:
        assert_close_to_reference(out, ref, dtype, "output")


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda b, m: (b[0], m), ValueError, "base must have shape"),
        (lambda b, m: (b, [m[0][:, :8]]), ValueError, r"maps\[0\] must have shape"),
        (lambda b, m: (b, [m[0], m[0][:, :1]]), ValueError, r"maps\[1\] must have shape"),
        (lambda b, m: (b, [m[0][:, :, :1]]), ValueError, r"maps\[0\] must have shape"),
        (lambda b, m: (b, []), ValueError, "at least one"),
        (lambda b, m: (b, m[0]), TypeError, "list or tuple"),
        (lambda b, m: (b.int(), m), TypeError, "floating dtype"),
        (lambda b, m: (b, [m[0].double()]), TypeError, "dtype"),
    ],
)
def test_bad_input(make, error, match):
    base = torch.randn(1, 2, 4, 4)
    maps = [torch.randn(1, 9, 2, 2, 2)]
    args = make(base, maps)
    with pytest.raises(error, match=match):
        shifted_upsample_add(*args)
    with pytest.raises(error, match=match):
        reference.shifted_upsample_add(*args)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16/bf16 kernels run only on a GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_cuda(dtype):
    base, maps = _inputs(2, 64, 60, 60, PSP_SIZES, torch.float64, "cuda")
    ref = reference.shifted_upsample_add(base, maps)
    out = shifted_upsample_add(base.to(dtype), [m.to(dtype) for m in maps], backend="triton")
    assert_close_to_reference(out.double(), ref, dtype, "output")


def test_plane_kernel_choice():
    """Which backward a plane takes: 16-bit planes up to one tile, channels_last only from
    sm_90 on (its sm_80 build spills), float32 never; the tiled kernel otherwise."""
    bf16 = torch.bfloat16
    assert configs.plane_tiles(bf16, "nchw", 60, 60, 80) is not None
    assert configs.plane_tiles(bf16, "nchw", 65, 60, 90) is None  # taller than the tile
    assert configs.plane_tiles(bf16, "nhwc", 60, 60, 90) is not None
    assert configs.plane_tiles(bf16, "nhwc", 60, 60, 80) is None
    assert configs.plane_tiles(bf16, "nhwc", 60, 60) is not None  # the interpreter: any arch
    assert configs.plane_tiles(torch.float32, "nchw", 60, 60, 90) is None


def test_plane_groups():
    """Channel blocks per program: long loops where the waves stay balanced, a program for
    every SM, one block at batch 1."""
    assert configs.plane_groups(256, 8, 132) == 8  # 256 programs: 2 per SM, all alike
    assert configs.plane_groups(256, 8, 108) == 4  # 8 would leave the busiest SM 24 of 19
    assert configs.plane_groups(128, 8, 132) == 4  # 8 would leave 4 SMs idle
    assert configs.plane_groups(256, 1, 132) == 1
