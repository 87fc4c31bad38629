"""The workloads of the report: what PSPNet runs through the fused ops, and their ideal bytes.

Each is written with ``psp_kernels``' own public ops, as ``pspnet`` calls them (a test records
``pspnet``'s modules and checks that they launch the same kernels):

* ``ppm``: the eval PPM forward under ``torch.no_grad()``: ``psp_kernels.pyramid_pooling`` with
  the BatchNorms folded into ``scale`` / ``shift`` and ReLU (kernel 1 copying x, then kernel 2's
  branches), as ``pspnet.PPM`` in eval;
* ``ppm-train``: the PPM in training mode, forward and backward for x and every parameter
  (``pyramid_pool_conv``, the branch BatchNorms with batch statistics and ReLU,
  ``upsample_concat`` and their backwards), as ``pspnet.PPM`` in training;
* ``head``: the concat-free head conv (``psp_kernels.split_concat_conv`` +
  ``psp_kernels.shifted_upsample_add``, what ``psp_kernels.concat_free_conv`` runs for the default
  model's classifier conv over the PPM), forward and backward;
* ``head-xlast``: the same with ``x`` last in the concat (mmseg's ICNet): only the weight slices
  move, so it launches what ``head`` launches;
* ``head-1x1``: the one-tap form of a 1x1 conv after the concat (smp's PSPNet decoder, x last,
  ``align_corners=True``), forward and backward;
* ``psphead``: a converted mmseg ``PSPHead`` (``pspnet.convert_ppm``) in eval, under
  ``torch.no_grad()``: kernel 1 with the branches' BatchNorm and ReLU folded, then the
  concat-free 3x3 bottleneck with ``align_corners=False`` (its Triton launches; the ``x``-half
  conv is cuDNN's);
* ``loss``: the training loss of PSPNet's main head, ``psp_kernels.upsample_cross_entropy`` of
  ``LOSS_CLASSES`` stride-8 logits of the map's size against int64 labels of the crop's size
  ``(h - 1) * 8 + 1`` (60 -> 473, 90 -> 713), with the prediction, forward and backward.

PSPNet-50's shapes: ``C = 2048`` backbone channels, ``R = C / len(bins)`` per branch, the head's
``O = 512`` outputs. The ideal bytes are what a perfect implementation must move: every input read
once, every output written once (tiny BatchNorm vectors left out).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

import psp_kernels

from .record import Recorder, recording

WORKLOADS = ("ppm", "ppm-train", "head", "head-xlast", "head-1x1", "psphead", "loss")
HEAD_OUT = 512
#: ADE20K's classes: the loss workload's logits channels (the shape's ``c`` is the PPM's).
LOSS_CLASSES = 150


@dataclasses.dataclass(frozen=True)
class Shape:
    """One workload's sizes: batch, channels, feature map, dtype, memory layout, bins."""

    n: int
    c: int
    h: int
    w: int
    dtype: torch.dtype
    layout: str = "nchw"  # or "nhwc" (channels_last)
    bins: tuple[int, ...] = (1, 2, 3, 6)

    @property
    def r(self) -> int:
        return self.c // len(self.bins)

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    @property
    def cells(self) -> int:
        return sum(b * b for b in self.bins)

    def label(self) -> str:
        name = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[self.dtype]
        return f"N={self.n} C={self.c} {self.h}x{self.w} {name} {self.layout}"


def _x(s: Shape, requires_grad: bool) -> torch.Tensor:
    x = torch.empty(s.n, s.c, s.h, s.w, device="meta", dtype=s.dtype)
    if s.layout == "nhwc":
        x = x.to(memory_format=torch.channels_last)
    return x.requires_grad_(requires_grad)


def _ppm_params(s: Shape, train: bool):
    """Per-bin 1x1 conv weights ``(R, C, 1, 1)`` and BatchNorm-like ``(R,)`` vectors."""
    kw = dict(device="meta", dtype=s.dtype, requires_grad=train)
    weights = [torch.empty(s.r, s.c, 1, 1, **kw) for _ in s.bins]
    scale = [torch.empty(s.r, **kw) for _ in s.bins]
    shift = [torch.empty(s.r, **kw) for _ in s.bins]
    return weights, scale, shift


def _train_norm(y, gamma, beta):
    """A branch's BatchNorm in training; a single value per channel (batch 1, bin 1) is
    normalised with running statistics, as ``pspnet.PPM`` does."""
    if y.shape[0] * y.shape[2] * y.shape[3] > 1:
        return F.batch_norm(y, None, None, gamma, beta, training=True)
    stats = torch.empty(y.shape[1], device=y.device, dtype=y.dtype)
    return F.batch_norm(y, stats, stats, gamma, beta, training=False)


def _ppm(s: Shape, train: bool, rec: Recorder) -> None:
    x = _x(s, requires_grad=train)
    weights, scale, shift = _ppm_params(s, train)
    if not train:
        with torch.no_grad(), rec.step("PPM eval forward"):
            psp_kernels.pyramid_pooling(
                x, weights, s.bins, scale=scale, shift=shift, relu=True, align_corners=True
            )
        return
    with rec.step("PPM train forward"):
        ys = psp_kernels.pyramid_pool_conv(x, weights, s.bins)
        ys = [F.relu(_train_norm(y, gamma, beta)) for y, gamma, beta in zip(ys, scale, shift)]
        out = psp_kernels.upsample_concat(x, ys, align_corners=True)
    with rec.step("PPM train backward"):
        out.backward(torch.empty_like(out))


def _cudnn_like_conv2d(inp, *args, **kwargs):
    """``F.conv2d`` with cuDNN's output layout: meta tensors return a convolution of a
    channels_last input contiguous, cuDNN returns it channels_last."""
    cl = not inp.is_contiguous() and inp.is_contiguous(memory_format=torch.channels_last)
    fmt = torch.channels_last if cl else torch.contiguous_format
    return F.conv2d(inp, *args, **kwargs).contiguous(memory_format=fmt)


def _head(s: Shape, rec: Recorder, k: int = 3, x_last: bool = False) -> None:
    x = _x(s, requires_grad=True)
    branches = [
        torch.empty(s.n, s.r, b, b, device="meta", dtype=s.dtype, requires_grad=True)
        for b in s.bins
    ]
    weight = torch.empty(
        HEAD_OUT, s.c + s.r * len(s.bins), k, k, device="meta", dtype=s.dtype, requires_grad=True
    )
    with rec.step("head forward"):
        base, maps = psp_kernels.split_concat_conv(
            x, branches, weight, conv2d=_cudnn_like_conv2d, x_last=x_last
        )
        out = psp_kernels.shifted_upsample_add(base, maps, align_corners=True)
    with rec.step("head backward"):
        out.backward(torch.empty_like(out))


def crop(s: Shape) -> tuple[int, int]:
    """The label (crop) size whose stride-8 map is ``s.h x s.w``: ``(h - 1) * 8 + 1``."""
    return (s.h - 1) * 8 + 1, (s.w - 1) * 8 + 1


def _loss(s: Shape, rec: Recorder) -> None:
    logits = torch.empty(s.n, LOSS_CLASSES, s.h, s.w, device="meta", dtype=s.dtype)
    if s.layout == "nhwc":
        logits = logits.to(memory_format=torch.channels_last)
    logits.requires_grad_(True)
    target = torch.empty(s.n, *crop(s), device="meta", dtype=torch.long)
    with rec.step("loss forward"):
        loss, _ = psp_kernels.upsample_cross_entropy(
            logits, target, ignore_index=255, return_prediction=True
        )
    with rec.step("loss backward"):
        loss.backward()


def _psphead(s: Shape, rec: Recorder) -> None:
    x = _x(s, requires_grad=False)
    weights, scale, shift = _ppm_params(s, train=False)
    weight = torch.empty(HEAD_OUT, s.c + s.r * len(s.bins), 3, 3, device="meta", dtype=s.dtype)
    with torch.no_grad(), rec.step("PSPHead eval forward"):
        ys = psp_kernels.pyramid_pool_conv(x, weights, s.bins, scale=scale, shift=shift, relu=True)
        base, maps = psp_kernels.split_concat_conv(x, ys, weight, conv2d=_cudnn_like_conv2d)
        psp_kernels.shifted_upsample_add(base, maps, align_corners=False)


def record_workload(workload: str, shape: Shape, num_sms: int, arch: int = 90):
    """The launches of ``workload`` at ``shape`` on a GPU with ``num_sms`` SMs of compute
    capability ``arch``."""
    if workload not in WORKLOADS:
        raise ValueError(f"workload must be one of {WORKLOADS}, got {workload!r}")
    with recording(num_sms, arch) as rec:
        if workload == "psphead":
            _psphead(shape, rec)
        elif workload == "loss":
            _loss(shape, rec)
        elif workload.startswith("head"):
            _head(shape, rec, k=1 if workload == "head-1x1" else 3,
                  x_last=workload in ("head-xlast", "head-1x1"))  # fmt: skip
        else:
            _ppm(shape, workload == "ppm-train", rec)
    return rec.launches


def ideal_bytes(workload: str, s: Shape) -> int:
    """Bytes a perfect implementation of ``workload`` must move at ``s``."""
    e = s.itemsize
    hw = s.h * s.w
    x = s.n * s.c * hw * e
    out = s.n * (s.c + len(s.bins) * s.r) * hw * e
    weights = len(s.bins) * s.r * s.c * e
    if workload == "ppm":
        return x + weights + out
    if workload == "ppm-train":
        pooled = s.n * s.cells * s.c * 4  # the fp32 cell means saved for backward
        forward = x + weights + out + pooled
        backward = out + weights + pooled + x + weights  # read grad, weights, pooled; write dx, dW
        return forward + backward
    base = s.n * HEAD_OUT * hw * e
    if workload.startswith("head"):
        maps = s.n * (1 if workload == "head-1x1" else 9) * HEAD_OUT * s.cells * e
        return (base + maps + base) + (base + maps)  # forward; backward (d base is grad itself)
    if workload == "loss":
        logits = s.n * LOSS_CLASSES * hw * e
        pixels = s.n * crop(s)[0] * crop(s)[1]
        labels, lse, pred = 8 * pixels, 4 * pixels, 8 * pixels  # int64, float32, int64
        # forward: read logits and labels, write the logsumexp (saved) and the prediction;
        # backward: read logits, labels and the logsumexp, write the logits' gradient
        return (logits + labels + lse + pred) + (logits + labels + lse + logits)
    if workload == "psphead":
        ys = s.n * s.cells * s.r * e
        maps = s.n * 9 * HEAD_OUT * s.cells * e
        return (x + weights + ys) + (base + maps + base)  # kernel 1; the head op
    raise ValueError(f"workload must be one of {WORKLOADS}, got {workload!r}")
