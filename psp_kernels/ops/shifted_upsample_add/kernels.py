"""Triton kernels of the concat-free head op: nine 3x3-shifted upsamplings of tiny maps, added.

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
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["_shifted_upsample_add_fwd_kernel", "_shifted_upsample_add_bwd_kernel"]

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
