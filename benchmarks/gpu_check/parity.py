"""Parity: every public op of ``psp_kernels``, forward and backward, against float64 on the CPU.

For each case the inputs are fresh random values (``randn``, never zeros) drawn in float64 on the
CPU, rounded to the dtype under test and moved to the device; the reference runs
``psp_kernels.reference`` in float64 on the CPU on exactly those rounded values (upcast), so only
the op's own error is measured. The op runs with ``backend="triton"`` in float32, float16 or
bfloat16 only (float64 is the reference's, never asked of the CUDA kernels).

Before the forward and before the backward, the CUDA caching allocator's free memory is filled
with NaN bytes (``0xFF``: NaN in every float format) by allocating and freeing poison blocks:
the op's outputs are carved from that memory, so an element it never writes stays NaN. Every
element of every output and gradient is then checked: all finite, and within the contract's
tolerance of the reference (max abs error relative to the reference's max abs:
:data:`psp_kernels.testing.TOL`).
"""

from __future__ import annotations

import dataclasses
import time

import torch

import psp_kernels
from psp_kernels import reference
from psp_kernels.testing import TOL, max_rel_error

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
OPS = ("pyramid_pool_conv", "pyramid_pooling", "upsample_concat", "shifted_upsample_add")
BINS = (1, 2, 3, 6)


@dataclasses.dataclass(frozen=True)
class Size:
    """One parity input size: ``x`` is ``(n, c, h, w)``, ``r`` channels per branch."""

    n: int
    c: int
    h: int
    w: int
    r: int
    layout: str = "nchw"  # or "nhwc" (channels_last x / base)
    align_corners: bool = True

    @property
    def label(self) -> str:
        ac = "" if self.align_corners else " ac=False"
        return f"N{self.n} C{self.c} {self.h}x{self.w} R{self.r} {self.layout}{ac}"


#: The sizes on a GPU: PSPNet-like channels at 60x60, a batch-1 odd size (the row-split path).
GPU_SIZES = (
    Size(2, 512, 60, 60, 64),
    Size(2, 512, 60, 60, 64, "nhwc"),
    Size(1, 130, 33, 47, 24, align_corners=False),
)
#: ``--dry-run``: the same code path at sizes Triton's interpreter runs in seconds.
DRY_SIZES = (Size(2, 8, 7, 9, 4), Size(1, 6, 9, 5, 3, "nhwc", align_corners=False))


def poison(device: torch.device) -> bool:
    """Fill the caching allocator's free memory with NaN bytes; ``True`` if a fresh
    ``torch.empty`` then holds NaN (the poisoning works on this allocator)."""
    if device.type != "cuda":
        return False
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    small = [torch.full((512 * 1024,), 255, dtype=torch.uint8, device=device) for _ in range(128)]
    large = [torch.full((1 << 30,), 255, dtype=torch.uint8, device=device) for _ in range(2)]
    torch.cuda.synchronize(device)
    del small, large
    probe = [torch.empty(1000, device=device), torch.empty(1 << 22, device=device)]
    return all(bool(t.isnan().all()) for t in probe)


def _leaf(t64: torch.Tensor, dtype, device, layout="nchw") -> torch.Tensor:
    t = t64.to(device=device, dtype=dtype)
    if layout == "nhwc":
        t = t.contiguous(memory_format=torch.channels_last)
    return t.requires_grad_(True)


def _case(op: str, s: Size, gen: torch.Generator):
    """``(float64 leaves, ours(leaves), reference(leaves))`` of one op at one size."""
    rand = lambda *shape, scale=1.0: torch.randn(*shape, generator=gen, dtype=torch.float64) * scale  # noqa: E731
    ac = s.align_corners
    if op in ("pyramid_pool_conv", "pyramid_pooling"):
        leaves = [rand(s.n, s.c, s.h, s.w)]
        leaves += [rand(s.r, s.c, scale=s.c**-0.5) for _ in BINS]
        leaves += [1.0 + rand(s.r, scale=0.2) for _ in BINS]
        leaves += [rand(s.r, scale=0.1) for _ in BINS]
        nb = len(BINS)

        def split(t):
            return t[0], t[1 : 1 + nb], t[1 + nb : 1 + 2 * nb], t[1 + 2 * nb :]

        if op == "pyramid_pool_conv":

            def ours(t):
                x, ws, sc, sh = split(t)
                return psp_kernels.pyramid_pool_conv(
                    x, ws, BINS, scale=sc, shift=sh, relu=True, backend="triton"
                )

            def ref(t):
                x, ws, sc, sh = split(t)
                return reference.pyramid_pool_conv(x, ws, BINS, scale=sc, shift=sh, relu=True)

        else:

            def ours(t):
                x, ws, sc, sh = split(t)
                out = psp_kernels.pyramid_pooling(
                    x, ws, BINS, scale=sc, shift=sh, relu=True, align_corners=ac, backend="triton"
                )
                return [out]

            def ref(t):
                x, ws, sc, sh = split(t)
                ys = reference.pyramid_pool_conv(x, ws, BINS, scale=sc, shift=sh, relu=True)
                return [reference.upsample_concat(x, ys, align_corners=ac)]

        return leaves, ours, ref
    if op == "upsample_concat":
        leaves = [rand(s.n, s.c, s.h, s.w)] + [rand(s.n, s.r, b, b) for b in BINS]

        def ours(t):
            return [psp_kernels.upsample_concat(t[0], t[1:], align_corners=ac, backend="triton")]

        def ref(t):
            return [reference.upsample_concat(t[0], t[1:], align_corners=ac)]

        return leaves, ours, ref
    if op == "shifted_upsample_add":
        leaves = [rand(s.n, s.r, s.h, s.w)] + [rand(s.n, 9, s.r, b, b) for b in BINS]

        def ours(t):
            out = psp_kernels.shifted_upsample_add(t[0], t[1:], align_corners=ac, backend="triton")
            return [out]

        def ref(t):
            return [reference.shifted_upsample_add(t[0], t[1:], align_corners=ac)]

        return leaves, ours, ref
    raise ValueError(f"unknown op {op!r}")


def _check(name: str, got: torch.Tensor, want: torch.Tensor, dtype) -> dict:
    got = got.detach().cpu()
    finite = bool(torch.isfinite(got).all())
    err = max_rel_error(got, want) if finite else float("inf")
    return {
        "tensor": name,
        "shape": list(got.shape),
        "finite": finite,
        "max_rel_err": err,
        "tol": TOL[dtype],
        "ok": finite and tuple(got.shape) == tuple(want.shape) and err <= TOL[dtype],
    }


def check_one(op: str, s: Size, dtype_name: str, device: torch.device, seed: int) -> dict:
    """Forward and backward of ``op`` at ``s`` in ``dtype_name`` against float64: one row."""
    dtype = DTYPES[dtype_name]
    gen = torch.Generator().manual_seed(seed)
    leaves64, ours, ref = _case(op, s, gen)
    layouts = [s.layout] + ["nchw"] * (len(leaves64) - 1)
    leaves = [_leaf(t, dtype, device, lay) for t, lay in zip(leaves64, layouts)]
    ref_leaves = [t.detach().cpu().double().requires_grad_(True) for t in leaves]
    start = time.perf_counter()
    poisoned = poison(device)
    outs = list(ours(leaves))
    want = list(ref(ref_leaves))
    grads64 = [torch.randn(w.shape, generator=gen, dtype=torch.float64) for w in want]
    grads = [g.to(device=device, dtype=dtype) for g in grads64]
    ref_grads_out = [g.cpu().double() for g in grads]  # the rounded values the op sees
    checks = [_check(f"out[{i}]", o, w, dtype) for i, (o, w) in enumerate(zip(outs, want))]
    poison(device)
    got_grads = torch.autograd.grad(outs, leaves, grads)
    want_grads = torch.autograd.grad(want, ref_leaves, ref_grads_out)
    checks += [
        _check(f"grad[{i}]", g, w, dtype) for i, (g, w) in enumerate(zip(got_grads, want_grads))
    ]
    worst = max(checks, key=lambda c: c["max_rel_err"])
    return {
        "op": op,
        "size": s.label,
        "dtype": dtype_name,
        "ok": all(c["ok"] for c in checks),
        "poisoned": poisoned,
        "tensors": len(checks),
        "worst": worst["tensor"],
        "max_rel_err": worst["max_rel_err"],
        "tol": TOL[dtype],
        "failed": [c for c in checks if not c["ok"]],
        "seconds": time.perf_counter() - start,
    }


def run(device: torch.device, dry_run: bool, log=print) -> list[dict]:
    """Every op x size x dtype (``--dry-run``: float32 and float16 at tiny sizes; Triton's
    interpreter computes bfloat16 wrongly)."""
    sizes = DRY_SIZES if dry_run else GPU_SIZES
    dtypes = ("fp32", "fp16") if dry_run else tuple(DTYPES)
    rows = []
    seed = 0
    for op in OPS:
        for s in sizes:
            for d in dtypes:
                seed += 1
                try:
                    row = check_one(op, s, d, device, seed)
                except Exception as exc:  # report and go on: the GPU time is precious
                    row = {"op": op, "size": s.label, "dtype": d, "ok": False,
                           "error": f"{type(exc).__name__}: {exc}"}  # fmt: skip
                rows.append(row)
                status = "ok" if row["ok"] else "FAIL"
                detail = row.get("error") or (
                    f"max rel err {row['max_rel_err']:.2e} (tol {row['tol']:g}, {row['worst']}), "
                    f"{row['tensors']} tensors, {row['seconds']:.1f} s"
                )
                log(f"parity {op:22s} {s.label:32s} {d}: {status} {detail}")
    return rows
