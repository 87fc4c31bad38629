"""The fused loss in plain PyTorch, a few output rows at a time (the CPU path).

Bilinear upsampling is separable: the upsampled logits of output rows ``[a, b)`` are
``A_H[a:b] @ z @ A_W^T`` per class, and ``A_H[a:b]`` touches only the few source rows
``[lo, hi)`` between the taps of rows ``a`` and ``b - 1``. So the loss never needs the whole
``(N, K, H, W)`` map: each *task* (one sample, a band of output rows) interpolates its source
rows along the columns once, ``Y = A_W @ z[n, :, lo:hi]`` (pixel-major, ``(rows, W, K)``, a
fraction of the full map), then walks its band in *chunks* of a few rows: ``v = A_H[chunk] @ Y``
is the chunk's upsampled logits, of which it keeps the logsumexp, the target logit and the
argmax. With ``with_grad`` (the logits need a gradient) the same exponentials then become
``(softmax - onehot) * w(t)`` in place, ``A_H[chunk]^T`` accumulates them into the task's rows and
``A_W^T`` brings those back to the source columns: the loss's gradient for an upstream gradient
of 1, which the backward only scales. :func:`backward` recomputes it instead (when the forward
did not compute it).

Memory: one task's ``Y`` and one chunk per worker (chunks of at most :data:`CHUNK_ELEMENTS`
values, which stay in cache) instead of several full-resolution tensors (see :func:`_tasks`).
Tasks run on a pool of ``torch.get_num_threads()`` worker threads, each single-threaded:
hundreds of small multi-threaded ops would each wait at a barrier, which on a busy machine costs
a scheduler time slice per op. Results are combined in task order, so the result does not
depend on the threads.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
import threading

import torch

from .. import tables
from ..utils import acc_dtype

__all__ = ["forward", "backward", "CHUNK_ELEMENTS"]

#: Values of one chunk of upsampled logits (``rows x W x K``): 2 MiB in float32.
CHUNK_ELEMENTS = 1 << 19
#: Output rows of one task, at most (a sample is split into bands of about this many rows).
TASK_ROWS = 64


@dataclasses.dataclass(frozen=True)
class _Geometry:
    """The two axes' tables on the CPU (or the logits' device) in the accumulation dtype."""

    rows: tables.AxisTable  # H <- h
    cols: tables.AxisTable  # W <- w
    i0: list
    i1: list

    @classmethod
    def of(cls, logits, size, align_corners):
        dtype, device = acc_dtype(logits.dtype), logits.device
        h, w = logits.shape[-2:]
        rows = tables.axis_table(size[0], h, bool(align_corners), dtype, device)
        cols = tables.axis_table(size[1], w, bool(align_corners), dtype, device)
        i0, i1 = rows.index.tolist()
        return cls(rows, cols, i0, i1)

    def span(self, a: int, b: int) -> tuple[int, int]:
        """The source rows ``[lo, hi)`` that output rows ``[a, b)`` read."""
        return self.i0[a], self.i1[b - 1] + 1

    def a_h(self, a: int, b: int, lo: int, hi: int) -> torch.Tensor:
        return self.rows.matrix[a:b, lo:hi]

    @property
    def a_w(self) -> torch.Tensor:
        return self.cols.matrix[:, : self.cols.in_size]


def _tasks(n: int, height: int, width: int, classes: int):
    """``[(sample, first row, end row)]`` and the rows per chunk.

    A single sample is split into two tasks at least: a task's ``Y`` holds at most its rows plus
    one (labels at least as large as the logits), so no tensor reaches the full-resolution size
    ``N x K x H x W`` for ``N >= 2`` or ``H >= 4``.
    """
    chunk = max(1, min(CHUNK_ELEMENTS // max(width * classes, 1), TASK_ROWS))
    bands = max(-(-height // TASK_ROWS), 2 if n == 1 else 1)
    rows = max(1, -(-height // bands))
    return [(s, a, min(a + rows, height)) for s in range(n) for a in range(0, height, rows)], chunk


@functools.cache
def _pool(workers: int, pid: int) -> concurrent.futures.ThreadPoolExecutor:
    """``workers`` single-threaded worker threads, made once per process (``pid``: a forked
    child makes its own; the parent's threads are not in it).

    ``torch.set_num_threads(1)`` in a worker sets that thread's OpenMP team size, but also the
    process-wide count that threads starting to use torch read: the workers all start here, at
    once, and the caller's count is restored before any task runs.
    """
    threads = torch.get_num_threads()
    started = threading.Barrier(workers + 1)
    pool = concurrent.futures.ThreadPoolExecutor(
        workers, thread_name_prefix="psp_kernels-ce", initializer=torch.set_num_threads,
        initargs=(1,),
    )  # fmt: skip
    waits = [pool.submit(started.wait) for _ in range(workers)]
    started.wait()
    concurrent.futures.wait(waits)
    torch.set_num_threads(threads)
    return pool


def _run(fn, tasks, device):
    """``[fn(task) for task in tasks]``, on worker threads for CPU tensors.

    Each task runs under the caller's inference mode (thread-local state that worker threads do
    not inherit: tensors made by the caller under ``torch.inference_mode()`` can only be written
    in it).
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads <= 1 or len(tasks) <= 1:
        return [fn(t) for t in tasks]
    inference = torch.is_inference_mode_enabled()

    def run(task):
        with torch.inference_mode(inference):
            return fn(task)

    return list(_pool(min(threads, len(tasks)), os.getpid()).map(run, tasks))


def _pixel_major(logits: torch.Tensor) -> torch.Tensor:
    """``(N, h, w, K)`` in the accumulation dtype: class vectors contiguous."""
    return logits.to(acc_dtype(logits.dtype)).permute(0, 2, 3, 1).contiguous()


def _columns(geo: _Geometry, z: torch.Tensor, n: int, lo: int, hi: int) -> torch.Tensor:
    """``Y = A_W @ z[n, lo:hi]``: source rows interpolated along the columns, ``(rows, W, K)``."""
    return torch.matmul(geo.a_w, z[n, lo:hi])


def _weights(target, weight, ignore_index, classes, dtype):
    """Per pixel: the class to gather (0 where ignored), whether it counts, and its weight."""
    target = target.long()  # compared as int64: -100 is not 156 in uint8 labels
    valid = target != ignore_index
    safe = torch.where(valid, target, 0)
    if weight is None:
        w = valid.to(dtype)
    else:
        w = torch.where(valid, weight.to(dtype)[safe], 0)
    return safe, valid, w


def check_targets(target, ignore_index, classes) -> None:
    """``ValueError`` naming ``target`` when a counted label is outside ``[0, classes)``."""
    target = target.long()  # compared as int64, as the kernels and the reference do
    valid = target != ignore_index
    bad = valid & ((target < 0) | (target >= classes))
    if bool(bad.any()):
        value = int(target[bad][0])
        raise ValueError(
            f"target holds class {value}, outside [0, {classes}) for logits of {classes} "
            f"classes (and not ignore_index={ignore_index})"
        )


def forward(logits, target, weight, ignore_index, reduction, align_corners, want_prediction,
            with_grad=False):  # fmt: skip
    """``(loss, lse, total_weight, prediction, basis)``: see ``op.py``. ``prediction`` is empty
    unless ``want_prediction``; ``basis`` is empty unless ``with_grad``, else the loss's gradient
    with respect to the logits for an upstream gradient of 1, computed from the same
    exponentials (the upstream gradient of a mean or a sum is one number, so the backward
    only scales it: no second pass over the upsampled logits)."""
    n, k, h, w = logits.shape
    height, width = target.shape[-2:]
    dtype = acc_dtype(logits.dtype)
    check_targets(target, ignore_index, k)
    geo = _Geometry.of(logits, (height, width), align_corners)
    z = _pixel_major(logits)
    lse = torch.empty(n, height, width, dtype=dtype, device=logits.device)
    pred_shape = (n, height, width) if want_prediction else (0,)
    pred = torch.empty(pred_shape, dtype=torch.long, device=logits.device)
    tasks, chunk = _tasks(n, height, width, k)

    def task(item):
        s, a, b = item
        lo, hi = geo.span(a, b)
        y = _columns(geo, z, s, lo, hi)
        dy = torch.zeros_like(y) if with_grad else None
        total = torch.zeros(3, dtype=torch.float64, device=logits.device)
        for ca in range(a, b, chunk):
            cb = min(ca + chunk, b)
            clo, chi = geo.span(ca, cb)
            a_h = geo.a_h(ca, cb, clo, chi)
            v = torch.matmul(a_h, y[clo - lo : chi - lo].flatten(1)).view(cb - ca, width, k)
            if want_prediction:
                m, idx = v.max(-1)
                pred[s, ca:cb] = idx
            else:
                m = v.amax(-1)
            safe, valid, wt = _weights(target[s, ca:cb], weight, ignore_index, k, dtype)
            picked = v.gather(-1, safe[..., None])[..., 0]
            e = v.sub_(m[..., None]).exp_()
            sums = e.sum(-1)
            out = sums.log().add_(m)
            lse[s, ca:cb] = out
            total[0] += torch.where(valid, (out - picked) * wt, 0).sum(dtype=torch.float64)
            total[1] += wt.sum(dtype=torch.float64)
            total[2] += valid.sum()
            if with_grad:  # (softmax - onehot) * w(t), then A_H^T over the chunk's rows
                e.mul_((wt / sums)[..., None])
                e.scatter_add_(-1, safe[..., None], -wt[..., None])
                dy[clo - lo : chi - lo].flatten(1).addmm_(a_h.t(), e.view(cb - ca, -1))
        return total, lo, None if dy is None else torch.matmul(geo.a_w.t(), dy)

    results = _run(task, tasks, logits.device)
    total = torch.stack([r[0] for r in results]).sum(0)
    loss = total[0] / total[1] if reduction == "mean" else total[0].clone()
    basis = torch.empty(0, dtype=dtype, device=logits.device)
    if with_grad:
        basis = _gather_rows(tasks, [(lo, part) for _, lo, part in results], (n, h, w, k), dtype)
        if reduction == "mean" and total[2] > 0:  # none counted: zero, as PyTorch
            basis /= total[1].to(dtype)
        basis = basis.permute(0, 3, 1, 2).contiguous()
    return loss.to(logits.dtype), lse, total[1].to(dtype).clone(), pred, basis


def _gather_rows(tasks, parts, shape, dtype):
    """The tasks' gradients ``(rows, w, K)`` added up, in task order, into ``(N, h, w, K)``."""
    dz = torch.zeros(shape, dtype=dtype, device=parts[0][1].device)
    for (s, _, _), (lo, part) in zip(tasks, parts, strict=True):
        dz[s, lo : lo + part.shape[0]] += part
    return dz


def backward(
    grad, logits, target, weight, lse, total_weight, ignore_index, reduction, align_corners
):
    """The gradient of the loss with respect to ``logits`` (``grad``: the loss's gradient)."""
    n, k, h, w = logits.shape
    height, width = target.shape[-2:]
    dtype = acc_dtype(logits.dtype)
    geo = _Geometry.of(logits, (height, width), align_corners)
    z = _pixel_major(logits)
    scale = grad.to(dtype)
    if reduction == "mean":
        scale = scale / total_weight.to(dtype)
    tasks, chunk = _tasks(n, height, width, k)

    def task(item):
        s, a, b = item
        lo, hi = geo.span(a, b)
        y = _columns(geo, z, s, lo, hi)
        dy = torch.zeros_like(y)
        for ca in range(a, b, chunk):
            cb = min(ca + chunk, b)
            clo, chi = geo.span(ca, cb)
            a_h = geo.a_h(ca, cb, clo, chi)
            v = torch.matmul(a_h, y[clo - lo : chi - lo].flatten(1)).view(cb - ca, width, k)
            safe, valid, wt = _weights(target[s, ca:cb], weight, ignore_index, k, dtype)
            coef = torch.where(valid, wt * scale, 0)[..., None]
            v.sub_(lse[s, ca:cb, :, None]).exp_().mul_(coef)  # softmax * w(t) / norm
            v.scatter_add_(-1, safe[..., None], -coef)  # - onehot * w(t) / norm
            dy[clo - lo : chi - lo].flatten(1).addmm_(a_h.t(), v.view(cb - ca, -1))
        return lo, torch.matmul(geo.a_w.t(), dy)  # (rows, w, K)

    dz = _gather_rows(tasks, _run(task, tasks, logits.device), (n, h, w, k), dtype)
    return dz.permute(0, 3, 1, 2).to(logits.dtype, memory_format=torch.contiguous_format)
