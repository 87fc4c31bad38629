"""psp_kernels.concat_free_conv in every form third-party heads need: a 3x3 or a 1x1 conv after
the concat, x first or last, with or without a bias, against the conv over the concat
(``psp_kernels.reference.concat_free_conv``), forward and every gradient; the export path; the
cost rule of ``concat_free_pays``."""

import itertools

import pytest
import torch

import psp_kernels
from psp_kernels import reference
from pspnet import export_ops
from pspnet.heads import concat_free_conv
from tests.helpers import Allocations, assert_close, skip_unless_kernels_take

FORMS = list(itertools.product((3, 1), (False, True), (False, True)))  # (k, x_last, bias)
CASES = [
    # (N, C, R, O, H, W, bins, align_corners, channels_last)
    (2, 5, 3, 4, 13, 17, (1, 2, 3, 6), False, True),
    (1, 3, 2, 3, 61, 61, (1, 2, 3, 6), True, False),  # batch 1
    (1, 2, 2, 2, 5, 4, (1, 6), True, False),  # a map smaller than the largest bin
]


def _inputs(case, k, bias, dtype, device):
    n, c, r, o, h, w, bins, ac, cl = case
    x = torch.randn(n, c, h, w, dtype=dtype, device=device)
    if cl:
        x = x.to(memory_format=torch.channels_last)
    ys = [torch.randn(n, r, b, b, dtype=dtype, device=device) for b in bins]
    weight = torch.randn(o, c + r * len(bins), k, k, dtype=dtype, device=device)
    b = torch.randn(o, dtype=dtype, device=device) if bias else None
    leaves = [x, *ys, weight] + ([b] if bias else [])
    for t in leaves:
        t.requires_grad_()
    return x, ys, weight, b, leaves


@pytest.mark.parametrize("k, x_last, bias", FORMS, ids=str)
@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("backend", ["triton", "auto"])
def test_matches_conv_over_concat(case, k, x_last, bias, backend, device):
    """float64 through the kernels (the interpreter without a GPU) and the separable CPU path."""
    dtype = torch.float64 if device == "cpu" else torch.float32
    if backend == "triton":
        skip_unless_kernels_take(dtype, device)
    x, ys, weight, b, leaves = _inputs(case, k, bias, dtype, device)
    ac = case[7]
    kw = dict(align_corners=ac, x_last=x_last, bias=b)
    ref = reference.concat_free_conv(x, ys, weight, **kw)
    if backend == "auto":
        from psp_kernels.ops import utils

        with pytest.MonkeyPatch.context() as mp:  # the separable CPU path
            mp.setattr(utils, "INTERPRETER", False)
            out = psp_kernels.concat_free_conv(x, ys, weight, backend=backend, **kw)
    else:
        out = psp_kernels.concat_free_conv(x, ys, weight, backend=backend, **kw)
    assert_close(out, ref, "output", nonzero=True)
    g = torch.randn_like(ref)
    for i, (a, e) in enumerate(
        zip(torch.autograd.grad(out, leaves, g), torch.autograd.grad(ref, leaves, g), strict=True)
    ):
        assert_close(a, e, f"gradient {i}", nonzero=True)


def test_x_last_moves_only_weight_slices():
    """x last is x first with the weight's input blocks rotated: the same maps, the same base."""
    x, ys, weight, _, _ = _inputs(CASES[0], 3, False, torch.float64, "cpu")
    c = x.shape[1]
    rotated = torch.cat([weight[:, c:], weight[:, :c]], 1)  # [branches..., x] order
    base_f, maps_f = psp_kernels.split_concat_conv(x, ys, weight)
    base_l, maps_l = psp_kernels.split_concat_conv(x, ys, rotated, x_last=True)
    assert torch.equal(base_f, base_l)
    assert all(torch.equal(a, b) for a, b in zip(maps_f, maps_l, strict=True))
    assert [m.shape[1] for m in maps_f] == [9] * 4 and c == 5


@pytest.mark.parametrize("x_last", [False, True])
def test_weight_gradient_built_once(x_last):
    """The weight's gradient is written once, not as one weight-sized tensor per block for
    autograd to add up (slicing the weight per block would make 1 + B of them); the same
    backward through slices shows that the count can fail."""
    x, ys, weight, _, _ = _inputs(CASES[0], 3, False, torch.float64, "cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a dispatch mode sees its own thread only
    try:
        out = psp_kernels.concat_free_conv(x, ys, weight, backend="reference", x_last=x_last)
        with Allocations() as mode:
            (grad,) = torch.autograd.grad(out.sum(), weight)
        sliced = sum(weight[:, i : i + 1].sum() for i in range(weight.shape[1]))
        with Allocations() as spread:
            torch.autograd.grad(sliced, weight)
    finally:
        torch.set_num_threads(threads)
    assert grad.shape == weight.shape
    assert mode.numels.count(weight.numel()) == 1, mode.numels
    assert spread.numels.count(weight.numel()) > 1


def test_one_tap_maps():
    x, ys, weight, _, _ = _inputs(CASES[0], 1, False, torch.float64, "cpu")
    _, maps = psp_kernels.split_concat_conv(x, ys, weight)
    assert [tuple(m.shape) for m in maps] == [(2, 1, 4, b, b) for b in (1, 2, 3, 6)]


@pytest.mark.parametrize("k, x_last, bias", FORMS, ids=str)
def test_export_formulation(k, x_last, bias, monkeypatch):
    """The plain ops used while exporting compute the same function."""
    x, ys, weight, b, _ = _inputs(CASES[0], k, bias, torch.float64, "cpu")
    monkeypatch.setattr(export_ops, "exporting", lambda: True)
    got = concat_free_conv(x, ys, weight, align_corners=False, x_last=x_last, bias=b)
    ref = reference.concat_free_conv(x, ys, weight, align_corners=False, x_last=x_last, bias=b)
    assert_close(got, ref, nonzero=True)


@pytest.mark.parametrize("k", [3, 1])
def test_export_is_exact_at_other_sizes(k, tmp_path):
    """A module using the 1x1 / x-last form exports with dynamic sizes and stays exact."""

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(3, 4 + 2 * 2, k, k))

        def forward(self, x):
            ys = [torch.nn.functional.adaptive_avg_pool2d(x[:, :2], b) for b in (1, 3)]
            return concat_free_conv(x, ys, self.weight, align_corners=False, x_last=True)

    head = Head().eval()
    dim = torch.export.Dim.DYNAMIC
    ep = torch.export.export(
        head, (torch.randn(1, 4, 12, 12),), dynamic_shapes={"x": {2: dim, 3: dim}}
    )
    for size in ((9, 9), (17, 11), (30, 25)):
        x = torch.randn(1, 4, *size)
        ys = [torch.nn.functional.adaptive_avg_pool2d(x[:, :2], b) for b in (1, 3)]
        ref = reference.concat_free_conv(x, ys, head.weight, align_corners=False, x_last=True)
        assert_close(ep.module()(x).detach(), ref.detach(), tol=1e-5)


def test_bad_weight_and_bias():
    x = torch.randn(1, 4, 5, 5)
    ys = [torch.randn(1, 2, 1, 1)]
    with pytest.raises(ValueError, match="weight must have shape"):
        psp_kernels.concat_free_conv(x, ys, torch.randn(3, 6, 5, 5))
    with pytest.raises(ValueError, match="weight must have shape"):
        psp_kernels.concat_free_conv(x, ys, torch.randn(3, 7, 1, 1))
    with pytest.raises(ValueError, match="bias must have shape"):
        psp_kernels.concat_free_conv(x, ys, torch.randn(3, 6, 1, 1), bias=torch.randn(4))


def test_concat_free_pays():
    """PSPNet-sized maps always pay; a 1/32 map smaller than the largest bin does not."""
    w = torch.empty(512, 4096, 3, 3, device="meta")
    ys = [torch.empty(1, 512, b, b, device="meta") for b in (1, 2, 3, 6)]
    x = torch.empty(1, 2048, 64, 128, device="meta")
    assert psp_kernels.concat_free_pays(x, ys, w)
    assert not psp_kernels.concat_free_pays(torch.empty(1, 2048, 3, 3, device="meta"), ys, w)
    w1 = torch.empty(512, 4096, 1, 1, device="meta")
    assert psp_kernels.concat_free_pays(x, ys, w1)
