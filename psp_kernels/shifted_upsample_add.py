"""Concat-free head: add the nine 3x3-shifted bilinear upsamplings of tiny maps to a feature map.

PSPNet's head applies a 3x3 conv to ``cat([x, up(y_1), ..., up(y_B)])``. Convolution is linear,
so the pyramid half equals, per map and per tap ``(di, dj)``, the 1x1 product of that tap's weight
slice with ``y_b`` at low resolution (``maps[b][:, t]``), upsampled and read at ``(h + di, w + dj)``
with zero padding. This op adds those shifted upsamplings to ``base`` (the ``x``-half conv):
``out = base + sum_b sum_t shift_t(up(maps[b][:, t]))``; see ``reference.shifted_upsample_add``.

Along each axis the upsample-and-shift is a matrix ``S_d A`` (``geometry.shifted_interp_matrices``),
so per sample and channel the whole pyramid part is one small product ``Ahat (H x K) @ M (K x W)``
with ``K = 3 * sum(h_b)`` (36 for bins 1, 2, 3, 6) and ``M = sum_dj V_dj (S_dj B)^T``. The Triton
kernels build ``M`` (forward) and the interpolation tiles on the fly from tap tables, so the
512-channel output is read and written once and the 4096-channel concat never exists.

Layout of this file: Triton kernels, then the launcher, then the ``torch.library`` registration,
then the separable plain-PyTorch path (used on CPU) and the public function.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from . import reference
from ._aot import AotSpec
from ._backend import resolve_backend
from ._validate import check_backend, check_shifted_upsample_add
from .geometry import shifted_interp_matrices

# ----------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------
# Pyramid rows k = (map b, row tap di, low-res row bi) and columns j = (map b, column tap dj,
# low-res column bj). ``ahat`` is the dense (H, K_PAD) matrix [S_di A_b] and ``bhat`` the dense
# (W, J_PAD) matrix [S_dj B_b] (zero-padded columns); both are tiny and stay in cache.
# int32 tables: k_ptr rows (kbase, khw, kmap), j_ptr rows (dj + 1, bj, jmap); the low-res value of
# row k, column j (same map) sits at packed offset kbase + (dj + 1) * khw + bj.


@triton.jit
def _pyramid_tile(k_ptr, j_ptr, stride_k, stride_j, K, J, K_PAD: tl.constexpr, J_PAD: tl.constexpr):
    """Offsets (K_PAD x J_PAD) of the low-res values of one (sample, channel), and their mask."""
    offs_k = tl.arange(0, K_PAD)
    offs_j = tl.arange(0, J_PAD)
    mask_k = offs_k < K
    mask_j = offs_j < J
    kbase = tl.load(k_ptr + offs_k, mask=mask_k, other=0)
    khw = tl.load(k_ptr + stride_k + offs_k, mask=mask_k, other=0)
    kmap = tl.load(k_ptr + 2 * stride_k + offs_k, mask=mask_k, other=-1)
    jdj = tl.load(j_ptr + offs_j, mask=mask_j, other=0)
    jbj = tl.load(j_ptr + stride_j + offs_j, mask=mask_j, other=0)
    jmap = tl.load(j_ptr + 2 * stride_j + offs_j, mask=mask_j, other=-2)
    offs = kbase[:, None] + jdj[None, :] * khw[:, None] + jbj[None, :]
    keep = (kmap[:, None] == jmap[None, :]) & mask_k[:, None] & mask_j[None, :]
    return offs, keep


@triton.jit
def _shifted_upsample_add_fwd_kernel(
    base_ptr,
    v_ptr,
    out_ptr,
    ahat_ptr,
    bhat_ptr,
    k_ptr,
    j_ptr,
    O,
    H,
    W,
    K,
    J,
    stride_bn,
    stride_bo,
    stride_bh,
    stride_bw,
    stride_vn,
    stride_vo,
    stride_on,
    stride_oo,
    stride_oh,
    stride_ow,
    stride_ah,
    stride_bw_,
    stride_k,
    stride_j,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
    K_PAD: tl.constexpr,
    J_PAD: tl.constexpr,
    PRECISION: tl.constexpr,
    ACC: tl.constexpr,
):
    # program_id(0) -> (sample n, output channel o); program_id(1) -> a block of BLOCK_W columns.
    pid_no = tl.program_id(0)
    pid_w = tl.program_id(1)
    n = pid_no // O
    o = pid_no % O
    v_row = v_ptr + n.to(tl.int64) * stride_vn + o.to(tl.int64) * stride_vo
    offs, keep = _pyramid_tile(k_ptr, j_ptr, stride_k, stride_j, K, J, K_PAD, J_PAD)
    v = tl.load(v_row + offs, mask=keep, other=0.0).to(ACC)

    # M = V @ bhat^T: every map's rows interpolated and shifted along the columns of this block.
    offs_w = pid_w * BLOCK_W + tl.arange(0, BLOCK_W)
    offs_j = tl.arange(0, J_PAD)
    bt = tl.load(
        bhat_ptr + offs_w[None, :] * stride_bw_ + offs_j[:, None],
        mask=(offs_w < W)[None, :],
        other=0.0,
    ).to(ACC)
    m = tl.dot(v, bt, input_precision=PRECISION)

    offs_k = tl.arange(0, K_PAD)
    base_nc = base_ptr + n.to(tl.int64) * stride_bn + o.to(tl.int64) * stride_bo
    out_nc = out_ptr + n.to(tl.int64) * stride_on + o.to(tl.int64) * stride_oo
    for h0 in range(0, H, BLOCK_H):
        offs_h = h0 + tl.arange(0, BLOCK_H)
        a = tl.load(
            ahat_ptr + offs_h[:, None] * stride_ah + offs_k[None, :],
            mask=(offs_h < H)[:, None],
            other=0.0,
        ).to(ACC)
        acc = tl.dot(a, m, input_precision=PRECISION)
        mask = (offs_h < H)[:, None] & (offs_w < W)[None, :]
        b_off = offs_h.to(tl.int64)[:, None] * stride_bh + offs_w.to(tl.int64)[None, :] * stride_bw
        o_off = offs_h.to(tl.int64)[:, None] * stride_oh + offs_w.to(tl.int64)[None, :] * stride_ow
        b = tl.load(base_nc + b_off, mask=mask, other=0.0).to(ACC)
        tl.store(out_nc + o_off, (b + acc).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _shifted_upsample_add_bwd_kernel(
    grad_ptr,
    dv_ptr,
    ahat_ptr,
    bhat_ptr,
    k_ptr,
    j_ptr,
    O,
    H,
    W,
    K,
    J,
    stride_gn,
    stride_go,
    stride_gh,
    stride_gw,
    stride_dvn,
    stride_dvo,
    stride_ah,
    stride_bw_,
    stride_k,
    stride_j,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
    K_PAD: tl.constexpr,
    J_PAD: tl.constexpr,
    PRECISION: tl.constexpr,
    ACC: tl.constexpr,
):
    # program_id(0) -> (sample n, channel o): it reads grad[n, o] once and gathers every low-res
    # value of every tap of every map for that channel, dV = ahat^T @ grad @ bhat (no atomics:
    # deterministic).
    pid_no = tl.program_id(0)
    n = pid_no // O
    o = pid_no % O
    offs_k = tl.arange(0, K_PAD)
    offs_j = tl.arange(0, J_PAD)
    grad_nc = grad_ptr + n.to(tl.int64) * stride_gn + o.to(tl.int64) * stride_go

    dv = tl.zeros((K_PAD, J_PAD), dtype=ACC)
    for w0 in range(0, W, BLOCK_W):
        offs_w = w0 + tl.arange(0, BLOCK_W)
        g = tl.zeros((K_PAD, BLOCK_W), dtype=ACC)
        for h0 in range(0, H, BLOCK_H):
            offs_h = h0 + tl.arange(0, BLOCK_H)
            at = tl.load(
                ahat_ptr + offs_h[None, :] * stride_ah + offs_k[:, None],
                mask=(offs_h < H)[None, :],
                other=0.0,
            ).to(ACC)
            mask = (offs_h < H)[:, None] & (offs_w < W)[None, :]
            g_off = (
                offs_h.to(tl.int64)[:, None] * stride_gh + offs_w.to(tl.int64)[None, :] * stride_gw
            )
            gt = tl.load(grad_nc + g_off, mask=mask, other=0.0).to(ACC)
            g += tl.dot(at, gt, input_precision=PRECISION)
        b = tl.load(
            bhat_ptr + offs_w[:, None] * stride_bw_ + offs_j[None, :],
            mask=(offs_w < W)[:, None],
            other=0.0,
        ).to(ACC)
        dv += tl.dot(g, b, input_precision=PRECISION)

    dv_row = dv_ptr + n.to(tl.int64) * stride_dvn + o.to(tl.int64) * stride_dvo
    offs, keep = _pyramid_tile(k_ptr, j_ptr, stride_k, stride_j, K, J, K_PAD, J_PAD)
    tl.store(dv_row + offs, dv.to(dv_ptr.dtype.element_ty), mask=keep)


# ----------------------------------------------------------------------------------------------
# Launcher
# ----------------------------------------------------------------------------------------------
#: Largest ``K = 3 * sum(h_b)`` (and ``J = 3 * sum(w_b)``) the kernels take in one tile (bins up
#: to a sum of 21, e.g. 1, 2, 3, 6, 8); larger pyramids use the separable PyTorch path.
MAX_K = 64
_BLOCK_H = 32
_BLOCK_W = 32
_NUM_WARPS = 8


def _pad(n: int) -> int:
    # One tile width for every pyramid that fits (PSPNet's 1, 2, 3, 6 has K = J = 36): a single
    # compiled configuration per dtype; the zero columns cost nothing measurable.
    return MAX_K


def _pyramid_matrices(height, width, sizes, align_corners, dtype, device=None):
    """``(ahat, bhat)``: ``[S_di A_b]`` of shape ``(H, 3 sum h_b)`` and ``[S_dj B_b]`` ``(W, 3 sum w_b)``.

    Column ``3 * (offset of map b) + (d + 1) * h_b + i`` is low-res row ``i`` of map ``b`` read at
    shift ``d``. Shared by the kernels' tables and the separable PyTorch path.
    """
    a_parts, b_parts = [], []
    for h, w in sizes:
        sa = shifted_interp_matrices(height, h, align_corners, dtype, device)  # (3, H, h)
        sb = shifted_interp_matrices(width, w, align_corners, dtype, device)  # (3, W, w)
        a_parts.append(sa.transpose(0, 1).reshape(height, 3 * h))
        b_parts.append(sb.transpose(0, 1).reshape(width, 3 * w))
    return torch.cat(a_parts, 1), torch.cat(b_parts, 1)


@functools.lru_cache(maxsize=128)
def _tables_cpu(height, width, sizes, align_corners, dtype):
    """Dense padded ``ahat``/``bhat``, int32 row/column tables and the packed size per channel."""
    k_rows, j_rows = [], []
    offset = 0
    for b, (h, w) in enumerate(sizes):
        # row k = (b, di, bi); its tap-(di, dj) value (dj + 1 = 0, 1, 2) sits at
        # offset + (3 * (di + 1) + dj + 1) * h * w + bi * w + bj in the packed maps.
        k_rows += [
            (offset + 3 * di * h * w + bi * w, h * w, b) for di in range(3) for bi in range(h)
        ]
        j_rows += [(dj, bj, b) for dj in range(3) for bj in range(w)]
        offset += 9 * h * w
    ahat, bhat = _pyramid_matrices(height, width, sizes, align_corners, dtype)
    k, j = ahat.shape[1], bhat.shape[1]
    ahat = torch.nn.functional.pad(ahat, (0, _pad(k) - k)).contiguous()
    bhat = torch.nn.functional.pad(bhat, (0, _pad(j) - j)).contiguous()
    k_table = torch.tensor(k_rows, dtype=torch.int32).t().contiguous()
    j_table = torch.tensor(j_rows, dtype=torch.int32).t().contiguous()
    return ahat, bhat, k_table, j_table, offset


@functools.lru_cache(maxsize=128)
def _tables(height, width, sizes, align_corners, dtype, device):
    *tensors, total = _tables_cpu(height, width, sizes, align_corners, dtype)
    return (*(t.to(device) for t in tensors), total)


def _precision(dtype) -> str:
    # Interpolation weights are not exact in tf32: float32 uses the 3-pass tf32 product (float32
    # accuracy on tensor cores); fp16/bf16 values are exact in tf32 and their tolerance dwarfs
    # tf32's rounding of the weights.
    return "tf32" if dtype in (torch.float16, torch.bfloat16) else "tf32x3"


def _acc(dtype):
    """Accumulation dtype: float32, or float64 for float64 inputs (interpreter only)."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def _table_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _sizes(maps) -> tuple:
    return tuple((int(m.shape[-2]), int(m.shape[-1])) for m in maps)


def fits_kernel(sizes) -> bool:
    """Whether maps of these ``(h, w)`` sizes fit the kernels' single K/J tile."""
    return 3 * sum(h for h, _ in sizes) <= MAX_K and 3 * sum(w for _, w in sizes) <= MAX_K


def _pack(maps) -> torch.Tensor:
    """``(N, O, sum 9*h*w)``: every map's taps and cells, per sample and channel, contiguous."""
    n, _, o = maps[0].shape[:3]
    return torch.cat([m.transpose(1, 2).reshape(n, o, -1) for m in maps], 2)


def _meta(dtype):
    return dict(
        BLOCK_H=_BLOCK_H, BLOCK_W=_BLOCK_W, PRECISION=_precision(dtype), ACC=_acc(dtype),
        num_warps=_NUM_WARPS,
    )  # fmt: skip


def _launch_fwd(base, maps, align_corners):
    n, o, height, width = base.shape
    ahat, bhat, k_tab, j_tab, _ = _tables(
        height, width, _sizes(maps), align_corners, _table_dtype(base.dtype), base.device
    )
    v = _pack(maps)
    out = torch.empty_like(base)
    grid = (n * o, triton.cdiv(width, _BLOCK_W))
    _shifted_upsample_add_fwd_kernel[grid](
        base, v, out, ahat, bhat, k_tab, j_tab,
        o, height, width, k_tab.shape[1], j_tab.shape[1],
        *base.stride(), v.stride(0), v.stride(1), *out.stride(),
        ahat.stride(0), bhat.stride(0), k_tab.stride(0), j_tab.stride(0),
        K_PAD=ahat.shape[1], J_PAD=bhat.shape[1], **_meta(base.dtype),
    )  # fmt: skip
    return out


def _launch_bwd(grad, sizes, align_corners):
    n, o, height, width = grad.shape
    ahat, bhat, k_tab, j_tab, total = _tables(
        height, width, sizes, align_corners, _table_dtype(grad.dtype), grad.device
    )
    dv = torch.empty(n, o, total, dtype=grad.dtype, device=grad.device)
    _shifted_upsample_add_bwd_kernel[(n * o,)](
        grad, dv, ahat, bhat, k_tab, j_tab,
        o, height, width, k_tab.shape[1], j_tab.shape[1],
        *grad.stride(), dv.stride(0), dv.stride(1),
        ahat.stride(0), bhat.stride(0), k_tab.stride(0), j_tab.stride(0),
        K_PAD=ahat.shape[1], J_PAD=bhat.shape[1], **_meta(grad.dtype),
    )  # fmt: skip
    grads, start = [], 0
    for h, w in sizes:
        size = 9 * h * w
        grads.append(dv[:, :, start : start + size].reshape(n, o, 9, h, w).transpose(1, 2))
        start += size
    return grads


def aot_specs() -> list[AotSpec]:
    """Every configuration the launcher can pick (one per dtype), for compile_check."""
    specs = []
    for dtype, ty in ((torch.float32, "fp32"), (torch.float16, "fp16"), (torch.bfloat16, "bf16")):
        meta = _meta(dtype)
        num_warps = meta.pop("num_warps")
        tables = {"ahat_ptr": "*fp32", "bhat_ptr": "*fp32", "k_ptr": "*i32", "j_ptr": "*i32",
                  "O": "i32", "H": "i32", "W": "i32", "K": "i32", "J": "i32",
                  "stride_ah": "i32", "stride_bw_": "i32", "stride_k": "i32", "stride_j": "i32"}  # fmt: skip
        i64 = "i64"
        fwd = dict(tables, base_ptr=f"*{ty}", v_ptr=f"*{ty}", out_ptr=f"*{ty}",
                   stride_bn=i64, stride_bo=i64, stride_bh=i64, stride_bw=i64, stride_vn=i64,
                   stride_vo=i64, stride_on=i64, stride_oo=i64, stride_oh=i64, stride_ow=i64)  # fmt: skip
        bwd = dict(tables, grad_ptr=f"*{ty}", dv_ptr=f"*{ty}", stride_gn=i64, stride_go=i64,
                   stride_gh=i64, stride_gw=i64, stride_dvn=i64, stride_dvo=i64)  # fmt: skip
        consts = dict(meta, K_PAD=MAX_K, J_PAD=MAX_K)
        for label, kernel, sig in (("fwd", _shifted_upsample_add_fwd_kernel, fwd),
                                   ("bwd", _shifted_upsample_add_bwd_kernel, bwd)):  # fmt: skip
            specs.append(AotSpec(f"shifted_upsample_add_{label}[{ty}]", kernel, sig, consts,
                                 num_warps=num_warps))  # fmt: skip
    return specs


# ----------------------------------------------------------------------------------------------
# torch.library registration
# ----------------------------------------------------------------------------------------------
@torch.library.custom_op("psp_kernels::shifted_upsample_add_fwd", mutates_args=())
def _fwd_op(base: torch.Tensor, maps: list[torch.Tensor], align_corners: bool) -> torch.Tensor:
    return _launch_fwd(base, maps, align_corners)


@_fwd_op.register_fake
def _(base, maps, align_corners):
    return torch.empty_like(base)


@torch.library.custom_op("psp_kernels::shifted_upsample_add_bwd", mutates_args=())
def _bwd_op(grad: torch.Tensor, sizes: list[int], align_corners: bool) -> list[torch.Tensor]:
    pairs = tuple(zip(sizes[0::2], sizes[1::2]))
    # the gradients are views of one packed buffer: outputs of a custom op may not alias
    return [
        g.clone(memory_format=torch.contiguous_format)
        for g in _launch_bwd(grad, pairs, align_corners)
    ]


@_bwd_op.register_fake
def _(grad, sizes, align_corners):
    n, o = grad.shape[:2]
    return [grad.new_empty(n, 9, o, h, w) for h, w in zip(sizes[0::2], sizes[1::2])]


def _setup_context(ctx, inputs, output):
    _, maps, align_corners = inputs
    ctx.sizes = [s for m in maps for s in m.shape[-2:]]
    ctx.align_corners = align_corners


def _backward(ctx, grad):
    grad_maps = _bwd_op(grad, ctx.sizes, ctx.align_corners)
    return grad, grad_maps, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------
# Separable plain-PyTorch path and public function
# ----------------------------------------------------------------------------------------------
def separable_shifted_upsample_add(base, maps, align_corners=True):
    """The same function as ``reference.shifted_upsample_add`` as two small matrix products.

    ``out = base + ahat @ M`` with ``ahat = [S_di A_b]`` (``H x 3 sum h_b``) and
    ``M = [V_(b,di,dj)] @ [S_dj B_b]^T``: a few MFLOP instead of nine full-resolution
    upsamplings per map. Faster than the reference on CPU; differentiable by autograd; traces
    under ``torch.compile``.
    """
    height, width = base.shape[-2:]
    n, o = base.shape[:2]
    sizes = [tuple(m.shape[-2:]) for m in maps]
    ahat, bhat = _pyramid_matrices(height, width, sizes, align_corners, base.dtype, base.device)
    m_parts, col = [], 0
    for m, (h, w) in zip(maps, sizes):
        # (N, 9, O, h, w) -> (N, O, (di, bi), (dj, bj)), then interpolate + shift the columns
        v = m.reshape(n, 3, 3, o, h, w).permute(0, 3, 1, 4, 2, 5).reshape(n, o, 3 * h, 3 * w)
        m_parts.append(torch.matmul(v, bhat[:, col : col + 3 * w].t()))
        col += 3 * w
    return base + torch.matmul(ahat, torch.cat(m_parts, 2))


def shifted_upsample_add(base, maps, *, align_corners=True, backend="auto"):
    """Return ``base`` plus the nine 3x3-shifted bilinear upsamplings of every map.

    Args:
        base: ``(N, O, H, W)``, typically the ``x``-half of the head's 3x3 convolution.
        maps: tensors ``(N, 9, O, h_i, w_i)``: tap ``t = 3 * (di + 1) + (dj + 1)`` of map ``i`` is
            the head conv's tap-``t`` weight slice applied (1x1) to pyramid branch ``i``.
        align_corners: bilinear mode of the upsampling.
        backend: ``"auto"`` (Triton on CUDA or under the interpreter, otherwise the separable
            PyTorch path), ``"triton"`` or ``"reference"`` (the literal definition).

    Differentiable in ``base`` and every map; deterministic.
    """
    check_backend(backend)
    maps = check_shifted_upsample_add(base, maps)
    if backend == "reference":
        return reference.shifted_upsample_add(base, maps, align_corners=align_corners)
    use_triton = resolve_backend(backend, base) == "triton"
    if use_triton and not fits_kernel(_sizes(maps)):
        if backend == "triton":
            raise ValueError(
                f"maps of sizes {_sizes(maps)} exceed the kernel's tile (3 * sum(h) and "
                f"3 * sum(w) must be <= {MAX_K}); use backend='auto'"
            )
        use_triton = False
    if use_triton:
        return _fwd_op(base, list(maps), bool(align_corners))
    return separable_shifted_upsample_add(base, maps, align_corners)
