"""Triton kernels of ``upsample_cross_entropy`` (kernel 3): the loss straight from the 1/8 logits.

Output pixel ``(i, j)`` of the upsampled logits reads source rows ``i0, i1`` (weight ``lam`` on
``i1``) and, along the columns, the interpolation matrix ``A_W`` (``W x w``, two taps per row).
Output rows with the same two source rows form a *band* (about 8 rows at PSPNet's zoom 8); the
launcher splits bands into *items* of at most ``BLOCK_R`` rows. For one item, one block of
``BLOCK_K`` classes and one tile of ``BLOCK_W`` output columns, the upsampled logits are

    u0 = z[k, i0, window] @ A_W^T[window, j]      u1 = z[k, i1, window] @ A_W^T[window, j]
    v[k, r, j] = u0[k, j] + lam[r] * (u1[k, j] - u0[k, j])

two small products on the tensor cores (``window``: the ``CW`` source columns the tile's taps
reach, contiguous loads of the logits) and one FMA per value. Nothing of size ``K x H x W`` is
ever written.

* Forward, ``_upsample_ce_fwd_kernel``: a program owns (sample, item, column tile) and streams the
  classes in blocks: online logsumexp (running max and rescaled sum of exponentials), the target's
  logit, and the running argmax (the first maximum, as ``torch.argmax``). It writes the
  per-pixel logsumexp (saved for backward), the prediction when asked, and its partial sums of the
  weighted losses and of the weights: the launcher adds the partials in a fixed order (no atomics).
* Backward, ``_upsample_ce_bwd_kernel``: ``dL/dv = (softmax - onehot(t)) * w(t) * scale`` per
  upsampled value, with the softmax recomputed from the saved logsumexp. The logits' gradient is a
  gather: a program owns (sample, a group of source rows, a group of at most ``WP`` source
  columns, a class block) and walks the items touching its rows in order, over the column tiles
  touching its columns; per item it reduces the gradient over the item's rows with the
  vertical weights (``1 - lam`` to ``i0``, ``lam`` to ``i1``) and over the columns with ``A_W``
  (a product accumulating into the two source rows' gradients), and carries the second row's to
  the next item. Each source
  row is written once, by its owner: deterministic, no atomics. A group starts one band early
  (that band's rows also reach the group's first row), and a column group takes the column tile
  across its boundary too, which repeats a little work.

Accumulation is float32 (float64 for float64, in the interpreter); the products run in
``DOT_PRECISION`` (``ops.utils.dot_precision``) on float32 operands.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["_upsample_ce_fwd_kernel", "_upsample_ce_bwd_kernel"]


@triton.jit
def _interpolated(z0, z1, zk, zc, mask_z, awt, lam3, acc_dtype, DOT_PRECISION: tl.constexpr):
    """``v[k, r, j]``: the block's upsampled logits, from source rows ``z0``, ``z1``."""
    a = tl.load(z0 + zk[:, None] + zc[None, :], mask=mask_z, other=0.0).to(acc_dtype)
    b = tl.load(z1 + zk[:, None] + zc[None, :], mask=mask_z, other=0.0).to(acc_dtype)
    u0 = tl.dot(a, awt, input_precision=DOT_PRECISION, out_dtype=acc_dtype)
    u1 = tl.dot(b, awt, input_precision=DOT_PRECISION, out_dtype=acc_dtype)
    return u0[:, None, :] + lam3 * (u1 - u0)[:, None, :]


@triton.jit
def _labels(t_ptr, offs, mask, ignore_index, K, cw_ptr, HAS_WEIGHT: tl.constexpr, acc_dtype):
    """``(class or -1, counted, in range, weight)`` of a tile of target pixels."""
    t = tl.load(t_ptr + offs, mask=mask, other=0).to(tl.int64)
    valid = mask & (t != ignore_index)
    inrange = valid & (t >= 0) & (t < K)
    tk = tl.where(inrange, t, -1).to(tl.int32)
    if HAS_WEIGHT:
        wt = tl.load(cw_ptr + tk, mask=inrange, other=0.0).to(acc_dtype)
    else:
        wt = tl.where(inrange, 1.0, 0.0).to(acc_dtype)
    return tk, valid, inrange, wt


@triton.jit
def _upsample_ce_fwd_kernel(
    z_ptr,
    t_ptr,
    cw_ptr,
    aw_ptr,
    lam_ptr,
    item_ptr,
    clo_ptr,
    lse_ptr,
    pred_ptr,
    part_ptr,
    K,
    H,
    W,
    w,
    ignore_index,
    NUM_ITEMS,
    NUM_WT,
    stride_zn,
    stride_zk,
    stride_zh,
    stride_zw,
    stride_tn,
    stride_th,
    stride_tw,
    stride_aw,
    HAS_WEIGHT: tl.constexpr,
    WANT_PRED: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    ZN_DIV: tl.constexpr,
    ZK_DIV: tl.constexpr,
    ZH_DIV: tl.constexpr,
    C_DIV: tl.constexpr,
    WS_DIV: tl.constexpr,
    TH_DIV: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_W: tl.constexpr,
    CW: tl.constexpr,
):
    """Per pixel of (sample, item, column tile): logsumexp over classes, loss, argmax.

    Items (int32 rows): (i0, i1, first output row, rows). ``clo``: the first source column of
    each column tile's window (a multiple of ``C_DIV``).
    """
    # program id 0 -> (sample n, item, column tile), column tiles fastest.
    pid = tl.program_id(0)
    pid_w = pid % NUM_WT
    rest = pid // NUM_WT
    item = item_ptr + (rest % NUM_ITEMS) * 4
    n = rest // NUM_ITEMS
    i0 = tl.load(item)
    i1 = tl.load(item + 1)
    r0 = tl.load(item + 2)
    nr = tl.load(item + 3)
    acc_dtype = aw_ptr.dtype.element_ty

    offs_r = tl.arange(0, BLOCK_R)
    mask_r = offs_r < nr
    rows = r0 + offs_r
    lam3 = tl.load(lam_ptr + rows, mask=mask_r, other=0.0)[None, :, None]
    j = pid_w * BLOCK_W + tl.arange(0, BLOCK_W)
    mask_j = j < W
    c = tl.multiple_of(tl.load(clo_ptr + pid_w), C_DIV) + tl.arange(0, CW)
    mask_c = c < (w // WS_DIV) * WS_DIV  # == w: the divisibility lets the loads vectorize
    # A_W^T over the window (CW x BLOCK_W), for every class block
    awt = tl.load(
        aw_ptr + j[None, :] * stride_aw + c[:, None],
        mask=mask_j[None, :] & mask_c[:, None],
        other=0.0,
    )
    mask2 = mask_r[:, None] & mask_j[None, :]
    t_offs = n.to(tl.int64) * stride_tn + tl.multiple_of(rows * stride_th, TH_DIV)[:, None]
    t_offs += (j * stride_tw)[None, :]
    tk, valid, inrange, wt = _labels(t_ptr, t_offs, mask2, ignore_index, K, cw_ptr, HAS_WEIGHT,
                                     acc_dtype)  # fmt: skip
    tk3 = tk[None, :, :]

    z_base = z_ptr + tl.multiple_of(n.to(tl.int64) * stride_zn, ZN_DIV)
    z0 = z_base + tl.multiple_of(i0 * stride_zh, ZH_DIV)
    z1 = z_base + tl.multiple_of(i1 * stride_zh, ZH_DIV)
    zc = c * stride_zw
    m = tl.full((BLOCK_R, BLOCK_W), float("-inf"), dtype=acc_dtype)
    s = tl.zeros((BLOCK_R, BLOCK_W), dtype=acc_dtype)
    picked = tl.zeros((BLOCK_R, BLOCK_W), dtype=acc_dtype)
    arg = tl.zeros((BLOCK_R, BLOCK_W), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        mask_k = k < K
        zk = tl.multiple_of(k * stride_zk, ZK_DIV)
        v = _interpolated(z0, z1, zk, zc, mask_k[:, None] & mask_c[None, :], awt, lam3,
                          acc_dtype, DOT_PRECISION)  # fmt: skip
        v = tl.where(mask_k[:, None, None], v, float("-inf"))
        block_max = tl.max(v, 0)
        m_new = tl.maximum(m, block_max)
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(v - m_new[None, :, :]), 0)
        picked += tl.sum(tl.where(k[:, None, None] == tk3, v, 0.0), 0)
        if WANT_PRED:  # strictly greater: the first maximum over the class blocks
            arg = tl.where(block_max > m, tl.argmax(v, 0) + k0, arg)
        m = m_new

    lse = m + tl.log(s)
    loss = tl.where(inrange, (lse - picked) * wt, 0.0)
    loss = tl.where(valid & ~inrange, float("nan"), loss)  # a label outside [0, K)
    out = n.to(tl.int64) * H * W + (rows * W)[:, None] + j[None, :]
    tl.store(lse_ptr + out, lse, mask=mask2)
    if WANT_PRED:
        tl.store(pred_ptr + out, arg.to(tl.int64), mask=mask2)
    tl.store(part_ptr + pid * 2, tl.sum(tl.sum(loss, 1), 0))
    tl.store(part_ptr + pid * 2 + 1, tl.sum(tl.sum(wt, 1), 0))


@triton.jit
def _upsample_ce_bwd_kernel(
    z_ptr,
    t_ptr,
    cw_ptr,
    aw_ptr,
    lam_ptr,
    item_ptr,
    clo_ptr,
    group_ptr,
    colgroup_ptr,
    lse_ptr,
    scale_ptr,
    dz_ptr,
    K,
    H,
    W,
    w,
    ignore_index,
    NUM_KB,
    NUM_GROUPS,
    NUM_COLGROUPS,
    stride_zn,
    stride_zk,
    stride_zh,
    stride_zw,
    stride_tn,
    stride_th,
    stride_tw,
    stride_aw,
    stride_dn,
    stride_dk,
    stride_dh,
    HAS_WEIGHT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    ZN_DIV: tl.constexpr,
    ZK_DIV: tl.constexpr,
    ZH_DIV: tl.constexpr,
    C_DIV: tl.constexpr,
    WS_DIV: tl.constexpr,
    TH_DIV: tl.constexpr,
    DN_DIV: tl.constexpr,
    DK_DIV: tl.constexpr,
    DH_DIV: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_W: tl.constexpr,
    CW: tl.constexpr,
    WP: tl.constexpr,
):
    """dz[n, k, s, c] for the source rows s and columns c of one group and a block of classes.

    Row groups (int32 rows): (first item, end item, first owned source row, end row): the items
    whose taps reach the owned rows, in order of ``i0``. Column groups: (first column tile, end
    tile, first owned source column): the tiles whose taps reach the ``WP`` owned columns.
    """
    # program id 0 -> (sample n, row group, column group, class block), class blocks fastest.
    pid = tl.program_id(0)
    kb = pid % NUM_KB
    rest = pid // NUM_KB
    colgroup = colgroup_ptr + (rest % NUM_COLGROUPS) * 3
    rest = rest // NUM_COLGROUPS
    group = group_ptr + (rest % NUM_GROUPS) * 4
    n = rest // NUM_GROUPS
    it_begin = tl.load(group)
    it_end = tl.load(group + 1)
    s_a = tl.load(group + 2)
    s_b = tl.load(group + 3)
    wt_begin = tl.load(colgroup)
    wt_end = tl.load(colgroup + 1)
    c_a = tl.multiple_of(tl.load(colgroup + 2), WP)
    acc_dtype = aw_ptr.dtype.element_ty
    scale = tl.load(scale_ptr).to(acc_dtype)

    k = kb * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_k = k < K
    k3 = k[:, None, None]
    zk = tl.multiple_of(k * stride_zk, ZK_DIV)
    cols = c_a + tl.arange(0, WP)  # the owned source columns (masked past w)
    mask_cols = cols < (w // WS_DIV) * WS_DIV
    mask_out = mask_k[:, None] & mask_cols[None, :]
    dz = dz_ptr + tl.multiple_of(n.to(tl.int64) * stride_dn, DN_DIV)
    dz += tl.multiple_of(k * stride_dk, DK_DIV)[:, None] + cols[None, :]
    z_base = z_ptr + tl.multiple_of(n.to(tl.int64) * stride_zn, ZN_DIV)
    t_base = n.to(tl.int64) * stride_tn
    lse_base = lse_ptr + n.to(tl.int64) * H * W
    offs_r = tl.arange(0, BLOCK_R)

    acc_a = tl.zeros((BLOCK_K, WP), dtype=acc_dtype)  # gradient of source row `cur`
    acc_b = tl.zeros((BLOCK_K, WP), dtype=acc_dtype)  # ... and of row `cur + 1`
    # (a group without items, rows no output pixel reads, stores zeros at its own first rows)
    # (a group without items, rows no output pixel reads, stores zeros at its own first rows)
    cur = tl.load(item_ptr + it_begin * 4, mask=it_begin < it_end, other=s_a)
    for it in range(it_begin, it_end):
        i0 = tl.load(item_ptr + it * 4)
        i1 = tl.load(item_ptr + it * 4 + 1)
        r0 = tl.load(item_ptr + it * 4 + 2)
        nr = tl.load(item_ptr + it * 4 + 3)
        # a new source row: row `cur` is complete; `cur + 1` too unless it is this item's i0
        moved = i0 != cur
        shift = i0 == cur + 1
        tl.store(dz + tl.multiple_of(cur * stride_dh, DH_DIV), acc_a.to(dz_ptr.dtype.element_ty),
                 mask=mask_out & moved & (cur >= s_a) & (cur < s_b))  # fmt: skip
        tl.store(dz + tl.multiple_of((cur + 1) * stride_dh, DH_DIV),
                 acc_b.to(dz_ptr.dtype.element_ty),
                 mask=mask_out & moved & ~shift & (cur + 1 >= s_a) & (cur + 1 < s_b))  # fmt: skip
        acc_a = tl.where(moved, tl.where(shift, acc_b, 0.0), acc_a)
        acc_b = tl.where(moved, 0.0, acc_b)
        cur = i0

        mask_r = offs_r < nr
        rows = r0 + offs_r
        lam = tl.load(lam_ptr + rows, mask=mask_r, other=0.0)
        lam3 = lam[None, :, None]
        z0 = z_base + tl.multiple_of(i0 * stride_zh, ZH_DIV)
        z1 = z_base + tl.multiple_of(i1 * stride_zh, ZH_DIV)
        t_rows = t_base + tl.multiple_of(rows * stride_th, TH_DIV)
        same = i1 == i0  # the last source row: both taps on it
        for wt_idx in range(wt_begin, wt_end):
            j = wt_idx * BLOCK_W + tl.arange(0, BLOCK_W)
            mask_j = j < W
            c = tl.multiple_of(tl.load(clo_ptr + wt_idx), C_DIV) + tl.arange(0, CW)
            mask_c = c < (w // WS_DIV) * WS_DIV
            awt = tl.load(aw_ptr + j[None, :] * stride_aw + c[:, None],
                          mask=mask_j[None, :] & mask_c[:, None], other=0.0)  # fmt: skip
            v = _interpolated(z0, z1, zk, c * stride_zw, mask_k[:, None] & mask_c[None, :], awt,
                              lam3, acc_dtype, DOT_PRECISION)  # fmt: skip
            mask2 = mask_r[:, None] & mask_j[None, :]
            tk, valid, inrange, wt = _labels(t_ptr, t_rows[:, None] + (j * stride_tw)[None, :],
                                             mask2, ignore_index, K, cw_ptr, HAS_WEIGHT,
                                             acc_dtype)  # fmt: skip
            coef = tl.where(inrange, wt * tl.where(inrange, scale, 1.0), 0.0)  # no 0 * inf
            coef = tl.where(valid & ~inrange, float("nan"), coef)  # a label outside [0, K)
            lse = tl.load(lse_base + (rows * W)[:, None] + j[None, :], mask=mask2, other=0.0)
            # v <= lse on the tile's pixels; off them (padding rows interpolate real source rows)
            # exp(v) alone can overflow, and inf * their zero coef would be nan: clamp at 0
            p = tl.exp(tl.minimum(v - lse[None, :, :], 0.0))
            g = (p - tl.where(k3 == tk[None, :, :], 1.0, 0.0)) * coef[None, :, :]
            g1 = tl.sum(g * lam3, 1)  # to source row i1
            g0 = tl.sum(g, 1) - g1  # to source row i0
            aw = tl.load(aw_ptr + j[:, None] * stride_aw + cols[None, :],
                         mask=mask_j[:, None] & mask_cols[None, :], other=0.0)  # fmt: skip
            acc_a = tl.dot(tl.where(same, g0 + g1, g0), aw, acc_a,
                           input_precision=DOT_PRECISION, out_dtype=acc_dtype)  # fmt: skip
            acc_b = tl.dot(tl.where(same, 0.0, g1), aw, acc_b,
                           input_precision=DOT_PRECISION, out_dtype=acc_dtype)  # fmt: skip

    tl.store(dz + tl.multiple_of(cur * stride_dh, DH_DIV), acc_a.to(dz_ptr.dtype.element_ty),
             mask=mask_out & (cur >= s_a) & (cur < s_b))  # fmt: skip
    tl.store(dz + tl.multiple_of((cur + 1) * stride_dh, DH_DIV),
             acc_b.to(dz_ptr.dtype.element_ty),
             mask=mask_out & (cur + 1 >= s_a) & (cur + 1 < s_b))  # fmt: skip
