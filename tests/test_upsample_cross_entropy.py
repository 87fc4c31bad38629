"""upsample_cross_entropy (kernel 3) against its reference, the materialised
``F.cross_entropy(F.interpolate(...))``: both implementations (the Triton kernels, through the
interpreter on CPU, and the row-chunked PyTorch path), forward, gradient and prediction."""

from __future__ import annotations

import math
import threading

import pytest
import torch
import torch.nn.functional as F

import psp_kernels
from psp_kernels import reference
from psp_kernels.ops import utils as ops_utils
from psp_kernels.ops.upsample_cross_entropy import configs, launch, separable
from psp_kernels.ops.upsample_cross_entropy.op import _bwd_op, _fwd_op
from tests.helpers import Allocations, assert_close, skip_unless_kernels_take

#: The kernels; the PyTorch path as the public function runs it (the gradient computed in the
#: forward when the logits need one); the PyTorch path's own backward (recomputing it).
PATHS = ["triton", "separable", "recompute"]
CASES = [
    # (N, K, h, w, H, W, align_corners, ignore_index)
    (2, 5, 3, 4, 13, 17, True, 255),  # odd, non-square
    (1, 7, 5, 5, 41, 37, False, 255),  # batch 1, labels larger than 8x the logits
    (2, 19, 6, 6, 49, 49, True, -100),  # PSPNet's zoom 8 (8n+1), several class blocks
    (1, 3, 7, 5, 5, 4, False, 255),  # labels smaller than the logits
    (2, 4, 1, 1, 9, 9, True, 255),  # 1x1 logits
    (1, 6, 4, 3, 33, 40, False, 0),  # ignore a real class
]


def _inputs(case, dtype, device, weighted=False, layout="contiguous"):
    n, k, h, w, hh, ww, _, ignore = case
    z = torch.randn(n, k, h, w, dtype=dtype, device=device) * 3
    if layout == "channels_last":
        z = z.to(memory_format=torch.channels_last)
    elif layout == "strided":
        z = torch.randn(n, k, h + 2, 2 * w, dtype=dtype, device=device)[:, :, 1 : h + 1, ::2] * 3
    t = torch.randint(0, k, (n, hh, ww), device=device)
    t[:, : max(1, hh // 4)] = ignore  # some ignored rows
    weight = torch.rand(k, dtype=dtype, device=device) + 0.5 if weighted else None
    return z.requires_grad_(), t, weight


def _fused(path, z, t, weight=None, ignore_index=-100, reduction="mean", align_corners=True,
           want_prediction=True):  # fmt: skip
    """Run one implementation through the custom ops (the public function picks by device)."""
    with_grad = path == "separable" and z.requires_grad and torch.is_grad_enabled()
    loss, _, _, pred, _ = _fwd_op(z, t, weight, ignore_index, reduction, align_corners,
                                  want_prediction, path == "triton", with_grad)  # fmt: skip
    return loss, pred


def _check(path, z, t, weight, ignore, reduction, ac):
    dtype = z.dtype
    loss, pred = _fused(path, z, t, weight, ignore, reduction, ac)
    (grad,) = torch.autograd.grad(loss, z)
    z64 = z.detach().double().requires_grad_()
    w64 = None if weight is None else weight.double()
    ref, ref_pred = reference.upsample_cross_entropy(
        z64, t, weight=w64, ignore_index=ignore, reduction=reduction, align_corners=ac,
        return_prediction=True,
    )  # fmt: skip
    (ref_grad,) = torch.autograd.grad(ref, z64)
    assert loss.dtype == dtype and loss.shape == ()
    assert_close(loss.double(), ref, "loss", dtype=dtype, nonzero=True)
    assert_close(grad.double(), ref_grad, "gradient", dtype=dtype, nonzero=True)
    assert grad.shape == z.shape and grad.dtype == dtype
    if dtype == torch.float64:  # no ties within rounding in random float64 logits
        assert torch.equal(pred, ref_pred)
    else:
        assert (pred == ref_pred).float().mean() > 0.999


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("path", PATHS)
def test_matches_reference(case, dtype, path, device):
    if path == "triton":
        skip_unless_kernels_take(dtype, device)
    z, t, _ = _inputs(case, dtype, device)
    _check(path, z, t, None, case[-1], "mean", case[-2])


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
@pytest.mark.parametrize("path", PATHS)
def test_weights_reductions_layouts(path, layout, reduction, device):
    dtype = torch.float64 if device == "cpu" else torch.float32
    case = (2, 9, 4, 5, 27, 35, False, 255)
    z, t, weight = _inputs(case, dtype, device, weighted=True, layout=layout)
    _check(path, z, t, weight, 255, reduction, False)


@pytest.mark.parametrize("target_dtype", [torch.uint8, torch.int32])
@pytest.mark.parametrize("path", PATHS)
def test_narrow_targets(path, target_dtype, device):
    dtype = torch.float64 if device == "cpu" else torch.float32
    z, t, _ = _inputs((1, 6, 3, 3, 17, 19, True, 255), dtype, device)
    _check(path, z, t.to(target_dtype), None, 255, "mean", True)


@pytest.mark.parametrize("path", PATHS)
def test_uint8_targets_and_a_negative_ignore_index(path, device):
    """``ignore_index=-100`` with uint8 labels ignores nothing: class 156 (-100 wrapped to 8 bits)
    counts, as in PyTorch's loss (labels and ``ignore_index`` compared as int64)."""
    z, t, _ = _inputs((1, 160, 3, 3, 9, 11, True, 0), torch.float64, device)
    t = torch.full_like(t, 156)
    t[0, 0] = 3
    _check(path, z, t.to(torch.uint8), None, -100, "mean", True)


# the kernels' padding class lanes (past K, never stored) overflow too: numpy warns of them
@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered in multiply:RuntimeWarning")
@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("path", PATHS)
def test_large_logits(path, align_corners, device, monkeypatch):
    """Logits of +-300 (exp overflows float32 past 88.7): finite loss and gradient, equal to the
    reference, with the GPU tiles' padding rows (items shorter than a tile) in the kernels."""
    if path == "triton" and device == "cpu":
        monkeypatch.setattr(ops_utils, "GPU_TILES", True)
    z, t, _ = _inputs((1, 3, 4, 4, 13, 13, align_corners, 255), torch.float32, device)
    z = (z.detach() * 100).requires_grad_()
    _check(path, z, t, None, 255, "sum", align_corners)


def test_inference_mode_on_worker_threads():
    """The PyTorch path's worker threads write the caller's inference tensors."""
    z, t, _ = _inputs((2, 5, 6, 6, 41, 41, True, 255), torch.float64, "cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.inference_mode():
            loss, lse, _, pred, _ = separable.forward(z.detach(), t, None, 255, "mean", True, True)
    finally:
        torch.set_num_threads(threads)
    ref, ref_pred = reference.upsample_cross_entropy(z.detach(), t, ignore_index=255,
                                                     return_prediction=True)  # fmt: skip
    assert_close(loss, ref, "loss", nonzero=True)
    assert torch.equal(pred, ref_pred)


def test_worker_threads_leave_the_thread_count_alone():
    """Threads that start using torch while the PyTorch path runs see the process's thread
    count, not the workers' one (the workers are made once, before any task)."""
    z, t, _ = _inputs((2, 5, 6, 6, 97, 97, True, 255), torch.float32, "cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    seen, stop = [], threading.Event()

    def probe():
        while not stop.is_set():
            worker = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
            worker.start()
            worker.join()

    try:
        _fused("separable", z, t, ignore_index=255)  # the pool is made here
        watcher = threading.Thread(target=probe)
        watcher.start()
        try:
            for _ in range(5):
                loss, _ = _fused("separable", z, t, ignore_index=255)
                torch.autograd.grad(loss, z)
        finally:
            stop.set()
            watcher.join()
    finally:
        torch.set_num_threads(threads)
    assert seen and set(seen) == {2}, sorted(set(seen))


def test_gpu_tiles_under_interpreter(monkeypatch, device):
    """The GPU tiles on CPU tensors: class blocks (35 classes: the last one ragged), column
    tiles (150 columns: the last one ragged), bands of 19 rows split into items, and the
    backward's three source-row groups (each walking the band before its rows)."""
    if device == "cuda":
        pytest.skip("the GPU tiles run natively on CUDA in the other tests")
    monkeypatch.setattr(ops_utils, "GPU_TILES", True)
    monkeypatch.setattr(configs, "FORCE_GROUPS", 3)
    for ac in (True, False):
        z, t, weight = _inputs((1, 35, 4, 9, 58, 150, ac, 255), torch.float64, device, True)
        _check("triton", z, t, weight, 255, "mean", ac)


def test_backward_groups_no_item_reaches(monkeypatch, device):
    """Labels much shorter than the logits: row groups whose source rows no output pixel reads
    (no items: their gradient is zero, and the kernel reads no item past the table)."""
    if device == "cuda":
        pytest.skip("the GPU tiles run natively on CUDA in the other tests")
    monkeypatch.setattr(ops_utils, "GPU_TILES", True)
    monkeypatch.setattr(configs, "FORCE_GROUPS", 10)
    z, t, _ = _inputs((1, 3, 10, 4, 2, 4, False, 255), torch.float64, device)
    t[:] = torch.randint(0, 3, t.shape)
    plan = launch.plan(z, t.shape[-2:], False)
    assert any(begin == end for begin, end, _, _ in launch._groups(plan, 10, 10))
    _check("triton", z, t, None, 255, "mean", False)


def test_backward_column_groups_under_interpreter(monkeypatch, device):
    """Logits wider than a backward program's columns: 37 columns in groups of 16 (three, the
    last ragged), each walking the column tiles that reach it, with three row groups."""
    if device == "cuda":
        pytest.skip("the GPU tiles run natively on CUDA in the other tests")
    monkeypatch.setattr(ops_utils, "GPU_TILES", True)
    monkeypatch.setattr(configs, "FORCE_GROUPS", 3)
    monkeypatch.setitem(configs.COLUMNS, "16bit", 16)  # float64 takes the 16-bit tiles
    for ac in (True, False):
        z, t, _ = _inputs((1, 3, 5, 37, 11, 131, ac, 255), torch.float64, device)
        _check("triton", z, t, None, 255, "sum", ac)


def test_labels_much_narrower_than_logits(device, monkeypatch):
    """Targets under half the logits' width exceed the kernels: ``auto`` takes the PyTorch path
    (equal to the reference), ``triton`` refuses."""
    dtype = torch.float64 if device == "cpu" else torch.float32
    z, t, _ = _inputs((1, 4, 6, 20, 9, 7, False, 255), dtype, device)
    kw = dict(ignore_index=255, align_corners=False)
    loss = psp_kernels.upsample_cross_entropy(z, t, **kw)
    assert_close(loss, reference.upsample_cross_entropy(z, t, **kw), "auto", dtype=dtype)
    with pytest.raises(ValueError, match="at least half as wide"):
        psp_kernels.upsample_cross_entropy(z, t, backend="triton", **kw)


def test_chunks_tasks_and_threads(monkeypatch):
    """The PyTorch path with small chunks and tasks (chunk boundaries inside bands, several tasks
    per sample) equals the reference, bitwise the same on one thread and on a pool of two."""
    monkeypatch.setattr(separable, "CHUNK_ELEMENTS", 300)
    monkeypatch.setattr(separable, "TASK_ROWS", 7)
    case = (2, 6, 5, 4, 37, 29, True, 255)
    z, t, weight = _inputs(case, torch.float64, "cpu", weighted=True)
    _check("separable", z, t, weight, 255, "mean", True)
    threads = torch.get_num_threads()
    runs = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            loss, pred = _fused("separable", z, t, weight, 255)
            runs.append((loss, pred, *torch.autograd.grad(loss, z)))
            assert torch.get_num_threads() == n  # restored after the pool
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("path", PATHS)
def test_all_ignored(path, device):
    """As PyTorch: a nan mean (0 / 0), a zero sum, and zero gradients."""
    dtype = torch.float64 if device == "cpu" else torch.float32
    z = torch.randn(1, 4, 3, 3, dtype=dtype, device=device, requires_grad=True)
    t = torch.full((1, 9, 11), 255, dtype=torch.long, device=device)
    for reduction in ("mean", "sum"):
        loss, _ = _fused(path, z, t, None, 255, reduction)
        ref = reference.upsample_cross_entropy(z, t, ignore_index=255, reduction=reduction)
        if reduction == "mean":
            assert math.isnan(loss.item()) and math.isnan(ref.item())
        else:
            assert loss.item() == 0 and ref.item() == 0
        (grad,) = torch.autograd.grad(loss, z)
        (ref_grad,) = torch.autograd.grad(ref, z)
        assert torch.equal(grad, torch.zeros_like(z)) and torch.equal(ref_grad, grad)


@pytest.mark.parametrize("path", PATHS)
def test_ties_take_the_first_maximum(path, device):
    """Equal logits (1x1 maps upsample exactly): the first class, within and across blocks."""
    dtype = torch.float64 if device == "cpu" else torch.float32
    z = torch.zeros(1, 40, 1, 1, dtype=dtype, device=device)
    z[0, 30] = z[0, 3] = 1.0
    t = torch.zeros(1, 5, 7, dtype=torch.long, device=device)
    _, pred = _fused(path, z, t)
    assert torch.equal(pred, torch.full_like(pred, 3))
    z[0, 3] = 0.0  # the maximum in a later class block
    _, pred = _fused(path, z, t)
    assert torch.equal(pred, torch.full_like(pred, 30))
    _, pred = _fused(path, torch.zeros_like(z), t)
    assert torch.equal(pred, torch.zeros_like(pred))


@pytest.mark.parametrize("path", PATHS)
def test_gradcheck(path, device):
    skip_unless_kernels_take(torch.float64, device)
    z, t, weight = _inputs((1, 3, 2, 3, 7, 9, False, 255), torch.float64, device, True)
    fn = lambda x: _fused(path, x, t, weight, 255)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (z,), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("use_triton, with_grad", [(True, False), (False, False), (False, True)])
def test_opcheck(use_triton, with_grad, device):
    z, t, weight = _inputs((2, 3, 3, 4, 9, 11, True, 255), torch.float32, device, True)
    for args in [
        (z, t, None, 255, "mean", True, True, use_triton, with_grad),
        (z, t, weight, 255, "sum", False, False, use_triton, with_grad),
        (z, t.clamp_max(2), weight, -100, "mean", False, True, use_triton, with_grad),
    ]:
        torch.library.opcheck(_fwd_op, args)
    _, lse, total, _, basis = _fwd_op(z, t, weight, 255, "mean", True, False, use_triton,
                                      with_grad)  # fmt: skip
    assert basis.shape == (z.shape if with_grad else (0,))
    grad = torch.ones((), device=device)
    torch.library.opcheck(_bwd_op, (grad, z.detach(), t, weight, lse, total, basis.detach(), 255,
                                    "mean", True, use_triton))  # fmt: skip


@pytest.mark.parametrize("n", [2, 1])
@pytest.mark.parametrize("path", PATHS + ["reference"])
def test_no_full_resolution_tensor(path, n, device):
    """No tensor of N x K x H x W values is ever made, forward or backward, by either
    implementation (one thread: a dispatch mode sees its own thread only); the reference, which
    materialises the upsampled logits, shows that the check can fail."""
    k, h, w, hh, ww = 6, 4, 5, 31, 37
    z = torch.randn(n, k, h, w, dtype=torch.float64, device=device, requires_grad=True)
    t = torch.randint(0, k, (n, hh, ww), device=device)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with Allocations() as mode:
            if path == "reference":
                loss = reference.upsample_cross_entropy(z, t, return_prediction=True)[0]
            else:
                loss = _fused(path, z, t)[0]
            loss.backward()
    finally:
        torch.set_num_threads(threads)
    full = n * k * hh * ww
    assert mode.numels, "the dispatch mode saw nothing"
    biggest = max(mode.numels)
    if path == "reference":
        assert biggest >= full
    else:
        assert biggest < full * 0.6, f"a tensor of {biggest} values (full resolution: {full})"


@pytest.mark.parametrize("path", PATHS)
def test_deterministic(path, device):
    if path == "triton" and device == "cpu":
        pytest.skip("the interpreter runs programs one at a time: equal runs by construction")
    z, t, weight = _inputs((2, 20, 6, 6, 49, 49, True, 255), torch.float32, device, True)
    runs = []
    for _ in range(2):
        loss, pred = _fused(path, z, t, weight, 255)
        runs.append((loss, pred, *torch.autograd.grad(loss, z)))
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dynamic", [False, True])
def test_compile_fullgraph(dynamic, device):
    z, t, weight = _inputs((2, 5, 3, 4, 13, 17, True, 255), torch.float32, device, True)

    def fn(x, y, wt):
        loss, pred = psp_kernels.upsample_cross_entropy(x, y, weight=wt, ignore_index=255,
                                                        return_prediction=True)  # fmt: skip
        return loss * 2, pred

    compiled = torch.compile(fn, fullgraph=True, dynamic=dynamic, backend="aot_eager")
    loss, pred = compiled(z, t, weight)
    (grad,) = torch.autograd.grad(loss, z)
    eager, eager_pred = fn(z, t, weight)
    (eager_grad,) = torch.autograd.grad(eager, z)
    assert_close(loss, eager, "compiled loss")
    assert_close(grad, eager_grad, "compiled gradient")
    assert torch.equal(pred, eager_pred)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_on_gpu(dtype, device):
    if device != "cuda":
        pytest.skip("the interpreter computes 16-bit floats wrongly: 16-bit runs on a GPU")
    z, t, weight = _inputs((2, 150, 8, 8, 57, 57, True, 255), dtype, device, True)
    _check("triton", z, t, weight, 255, "mean", True)


def test_public_function_and_backends(device, monkeypatch):
    z, t, weight = _inputs((1, 4, 3, 3, 10, 12, False, 255), torch.float32, device, True)
    kw = dict(weight=weight, ignore_index=255, align_corners=False)
    ref = reference.upsample_cross_entropy(z, t, **kw)
    for backend in ("auto", "triton", "reference"):
        loss = psp_kernels.upsample_cross_entropy(z, t, backend=backend, **kw)
        assert_close(loss, ref, f"backend {backend}")
    loss, pred = psp_kernels.upsample_cross_entropy(z, t, return_prediction=True, **kw)
    assert pred.shape == t.shape and pred.dtype == torch.long
    expected = F.cross_entropy(
        F.interpolate(z, t.shape[-2:], mode="bilinear", align_corners=False), t, weight=weight,
        ignore_index=255,
    )  # fmt: skip
    assert_close(loss, expected, "against F.cross_entropy")
    if device == "cpu":  # without the interpreter, "auto" takes the PyTorch path
        monkeypatch.setattr(ops_utils, "INTERPRETER", False)
        assert_close(psp_kernels.upsample_cross_entropy(z, t, **kw), ref, "auto without Triton")
        with pytest.raises(RuntimeError, match="backend='triton'"):
            psp_kernels.upsample_cross_entropy(z, t, backend="triton")


def test_autocast_computes_in_float32(device):
    """Under autocast the loss is float32 (as PyTorch's cross-entropy): the stride-8 logits are
    cast once, the gradient flows back in their own dtype."""
    z = torch.randn(2, 5, 4, 4, device=device).to(torch.bfloat16).requires_grad_()
    t = torch.randint(0, 5, (2, 25, 25), device=device)
    with torch.autocast(device, dtype=torch.bfloat16):
        loss = psp_kernels.upsample_cross_entropy(z, t)
    assert loss.dtype == torch.float32
    expected = reference.upsample_cross_entropy(z.detach().float(), t)
    assert_close(loss, expected, "autocast loss")
    (grad,) = torch.autograd.grad(loss, z)
    assert grad.dtype == torch.bfloat16


def test_labels_out_of_range(device):
    z = torch.randn(1, 3, 2, 2, device=device)
    t = torch.zeros(1, 5, 5, dtype=torch.long, device=device)
    t[0, 2, 2] = 3
    with pytest.raises(ValueError, match="target holds class 3"):
        _fused("separable", z, t)
    t[0, 2, 2] = 255
    assert math.isfinite(_fused("separable", z, t, ignore_index=255)[0].item())
    t[0, 2, 2] = -1  # the kernels: a nan loss (a check would synchronise the GPU)
    assert math.isnan(_fused("triton", z, t)[0].item())


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(logits=torch.randn(3, 4, 5)), ValueError, "logits must have shape"),
        (dict(logits=torch.randn(2, 3, 4, 4, dtype=torch.float64).long()), TypeError, "logits"),
        (dict(target=torch.zeros(2, 9, 9)), TypeError, "target must hold integer"),
        (dict(target=torch.zeros(3, 9, 9, dtype=torch.long)), ValueError, r"target must have"),
        (dict(target=torch.zeros(2, 9, dtype=torch.long)), ValueError, r"target must have"),
        (dict(weight=torch.ones(4)), ValueError, r"weight must have shape \(3,\)"),
        (dict(weight=torch.ones(3, dtype=torch.long)), TypeError, "weight"),
        (dict(reduction="none"), ValueError, "reduction must be one of"),
        (dict(ignore_index=2.0), TypeError, "ignore_index must be an int"),
        (dict(backend="cuda"), ValueError, "backend must be one of"),
    ],
)
def test_bad_input(change, error, match):
    args = dict(logits=torch.randn(2, 3, 4, 4), target=torch.zeros(2, 9, 9, dtype=torch.long))
    args.update(change)
    logits, target = args.pop("logits"), args.pop("target")
    with pytest.raises(error, match=match):
        psp_kernels.upsample_cross_entropy(logits, target, **args)
    if "backend" not in args:
        with pytest.raises(error, match=match):
            reference.upsample_cross_entropy(logits, target, **args)
