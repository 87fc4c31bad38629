"""The workloads of the report: what PSPNet runs through the fused ops, and their ideal bytes.

* ``ppm``: the eval PPM forward, ``pspnet.PPM(C, R, bins).eval()`` under ``torch.no_grad()``
  (``psp_kernels.pyramid_pooling``: kernel 1 copying x, then kernel 2's branches);
* ``ppm-train``: the PPM in training mode, forward and backward for x and every parameter
  (``pyramid_pool_conv``, the branch BatchNorms, ``upsample_concat`` and their backwards);
* ``head``: the concat-free head (``pspnet.heads.concat_free_conv3x3``, the default model's
  classifier conv over the PPM), forward and backward: its Triton launches are those of
  ``psp_kernels.shifted_upsample_add``.

PSPNet-50's shapes: ``C = 2048`` backbone channels, ``R = C / len(bins)`` per branch, the head's
``O = 512`` outputs. The ideal bytes are what a perfect implementation must move: every input read
once, every output written once (tiny BatchNorm vectors left out).
"""

from __future__ import annotations

import dataclasses

import torch

from .record import Recorder, recording

WORKLOADS = ("ppm", "ppm-train", "head")
HEAD_OUT = 512


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


def _ppm(s: Shape, train: bool, rec: Recorder) -> None:
    from pspnet import PPM

    module = PPM(s.c, s.r, s.bins).to(device="meta", dtype=s.dtype).train(train)
    x = _x(s, requires_grad=train)
    if not train:
        with torch.no_grad(), rec.step("PPM eval forward"):
            module(x)
        return
    with rec.step("PPM train forward"):
        out = module(x)
    with rec.step("PPM train backward"):
        out.backward(torch.empty_like(out))


def _head(s: Shape, rec: Recorder) -> None:
    from pspnet import heads

    x = _x(s, requires_grad=True)
    branches = [
        torch.empty(s.n, s.r, b, b, device="meta", dtype=s.dtype, requires_grad=True)
        for b in s.bins
    ]
    weight = torch.empty(
        HEAD_OUT, s.c + s.r * len(s.bins), 3, 3, device="meta", dtype=s.dtype, requires_grad=True
    )
    # cuDNN returns a convolution of a channels_last input channels_last; meta tensors do not
    # (their convolution output is contiguous): keep the real layout of the head's x-half conv
    conv2d = torch.nn.functional.conv2d

    def cudnn_like_conv2d(inp, *args, **kwargs):
        cl = not inp.is_contiguous() and inp.is_contiguous(memory_format=torch.channels_last)
        fmt = torch.channels_last if cl else torch.contiguous_format
        return conv2d(inp, *args, **kwargs).contiguous(memory_format=fmt)

    heads_conv2d = heads.F.conv2d
    try:
        heads.F.conv2d = cudnn_like_conv2d
        with rec.step("head forward"):
            out = heads.concat_free_conv3x3(x, branches, weight)
    finally:
        heads.F.conv2d = heads_conv2d
    with rec.step("head backward"):
        out.backward(torch.empty_like(out))


def record_workload(workload: str, shape: Shape, num_sms: int, arch: int = 90):
    """The launches of ``workload`` at ``shape`` on a GPU with ``num_sms`` SMs of compute
    capability ``arch``."""
    if workload not in WORKLOADS:
        raise ValueError(f"workload must be one of {WORKLOADS}, got {workload!r}")
    with recording(num_sms, arch) as rec:
        if workload == "head":
            _head(shape, rec)
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
    if workload == "head":
        base = s.n * HEAD_OUT * hw * e
        maps = s.n * 9 * HEAD_OUT * s.cells * e
        return (base + maps + base) + (base + maps)  # forward; backward (d base is grad itself)
    raise ValueError(f"workload must be one of {WORKLOADS}, got {workload!r}")
