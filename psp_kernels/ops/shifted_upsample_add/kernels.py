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

The one-tap form (a 1x1 conv after the concat: maps ``(N, 1, O, h, w)``, no shifts) runs the same
kernels on other tables: ``ahat = [A_b]``, ``bhat = [B_b]``, ``K = sum(h_b)`` (12 for bins 1, 2,
3, 6) in narrower tiles (``K_PAD``, ``J_PAD``, ``T_PAD`` are constexprs; see ``configs``).
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = [
    "_shifted_upsample_add_fwd_kernel",
    "_shifted_upsample_add_bwd_kernel",
    "_shifted_upsample_add_bwd_plane_kernel",
]

# Pyramid rows k = (map b, row tap di, low-res row bi) and columns j = (map b, column tap dj,
# low-res column bj). ``ahat`` is the dense (H, K_PAD) matrix [S_di A_b] and ``bhat`` the dense
# (W, J_PAD) matrix [S_dj B_b] (zero-padded columns); both are tiny and stay in cache. The maps
# of one (sample, channel) are packed contiguously, TOTAL values (450 for bins 1, 2, 3, 6) padded
# to a 16-byte multiple, and read in vectors; ``tl.gather`` with the int32 table ``gidx`` spreads
# them into the block-diagonal (K_PAD x J_PAD) tile in registers (padding points at a zero), and
# the backward gathers its dense tile back into the packed order with ``cidx``.
#
# A program owns BLOCK_O channels of one sample (and, forward, a block of columns): the tap
# tables and the tiles of ahat / bhat it loads serve all of them (batched 3-D dots), and its
# tiles of base / out / grad span the channels too, so they are read and written in 16-byte
# vectors along columns (NCHW) or along channels (channels_last).


@triton.jit
def _four_channels(m0, m1, m2, m3, CHANNELS_FAST: tl.constexpr):
    """Four (R, BW) tiles side by side as one (R, 4 * BW) tile: column ``c`` is channel
    ``c % 4`` of column ``c // 4`` (``CHANNELS_FAST``: channels_last order) or channel
    ``c // BW`` of column ``c % BW`` (NCHW order)."""
    rows: tl.constexpr = m0.shape[0]
    cols: tl.constexpr = m0.shape[1]
    m = tl.join(tl.join(m0, m1), tl.join(m2, m3))  # (R, BW, i, j): channel i + 2 j
    if CHANNELS_FAST:
        m = tl.permute(m, (0, 1, 3, 2))
    else:
        m = tl.permute(m, (0, 3, 2, 1))
    return tl.reshape(m, (rows, 4 * cols))


@triton.jit
def _column_offsets(
    o0,
    offs_cw,
    W,
    stride_o,
    stride_w,
    BLOCK_W: tl.constexpr,
    CHANNELS_FAST: tl.constexpr,
    O_DIV: tl.constexpr,
    BLOCK_O: tl.constexpr = 4,
):
    """Channel and column of each column of a :func:`_four_channels` tile (``BLOCK_O``
    channels side by side), and their offset."""
    if CHANNELS_FAST:
        o = o0 + offs_cw % BLOCK_O
        w = offs_cw // BLOCK_O
    else:
        o = o0 + offs_cw // BLOCK_W
        w = offs_cw % BLOCK_W
    return o, w, tl.multiple_of(o * stride_o, O_DIV) + w * stride_w


@triton.jit
def _packed_rows(
    v_n,
    o0,
    O,
    stride_vo,
    width,
    V_DIV: tl.constexpr,
    T_PAD: tl.constexpr,
    BLOCK_O: tl.constexpr = 4,
):
    """Offsets and mask of the packed rows of channels ``o0 .. o0 + BLOCK_O - 1``: a
    (BLOCK_O, T_PAD) tile, read and written in 16-byte vectors."""
    offs_o = o0 + tl.arange(0, BLOCK_O)
    offs_t = tl.arange(0, T_PAD)
    rows = v_n + tl.multiple_of(offs_o * stride_vo, V_DIV)
    return rows[:, None] + offs_t[None, :], (offs_o < O)[:, None] & (offs_t < width)[None, :]


@triton.jit
def _split_channels(t4, K_PAD: tl.constexpr, J_PAD: tl.constexpr):
    """The four (K_PAD, J_PAD) tiles of a (4, K_PAD * J_PAD) tile, channel by channel."""
    t = tl.permute(tl.reshape(t4, (2, 2, K_PAD, J_PAD)), (2, 3, 1, 0))  # (K, J, c % 2, c // 2)
    t01, t23 = tl.split(t)
    t0, t1 = tl.split(t01)
    t2, t3 = tl.split(t23)
    return t0, t1, t2, t3


@triton.jit
def _channel_parts(g, K_PAD: tl.constexpr, BLOCK_W: tl.constexpr, CHANNELS_FAST: tl.constexpr,
                   BLOCK_O: tl.constexpr):  # fmt: skip
    """The ``BLOCK_O`` (2 or 4) channels' (K_PAD, BLOCK_W) parts of a (K_PAD, BLOCK_O *
    BLOCK_W) tile, in the order :func:`_column_offsets` put them (2 channels: the last two
    parts repeat the first two)."""
    if BLOCK_O == 4:
        if CHANNELS_FAST:
            g4 = tl.permute(tl.reshape(g, (K_PAD, BLOCK_W, 2, 2)), (0, 1, 3, 2))
        else:
            g4 = tl.permute(tl.reshape(g, (K_PAD, 2, 2, BLOCK_W)), (0, 3, 2, 1))
        g01, g23 = tl.split(g4)
        g0, g1 = tl.split(g01)
        g2, g3 = tl.split(g23)
    else:
        if CHANNELS_FAST:
            g2 = tl.reshape(g, (K_PAD, BLOCK_W, 2))
        else:
            g2 = tl.permute(tl.reshape(g, (K_PAD, 2, BLOCK_W)), (0, 2, 1))
        g0, g1 = tl.split(g2)
        g2, g3 = g0, g1
    return g0, g1, g2, g3


@triton.jit
def _store_packed(
    dv0, dv1, dv2, dv3, cidx, dv_n, o0, O, stride_dvo, WIDTH,
    V_DIV: tl.constexpr, K_PAD: tl.constexpr, J_PAD: tl.constexpr, T_PAD: tl.constexpr,
    BLOCK_O: tl.constexpr,
):  # fmt: skip
    """Store the dense (K_PAD, J_PAD) gradient tiles of channels ``o0 ..`` (``dv2``, ``dv3``
    unused for 2 channels) in the packed order, gathered with ``cidx``, in vectors."""
    if BLOCK_O == 4:
        # (the inverse of _split_channels, written out: the interpreter cannot look a helper up
        # inside this constexpr branch)
        dvs = tl.join(tl.join(dv0, dv1), tl.join(dv2, dv3))  # (K, J, c % 2, c // 2)
        dvs = tl.reshape(tl.permute(dvs, (3, 2, 0, 1)), (4, K_PAD * J_PAD))
    else:
        dvs = tl.reshape(tl.permute(tl.join(dv0, dv1), (2, 0, 1)), (2, K_PAD * J_PAD))
    # (a flat gather, as in the forward: a 2-D one along the 4096-wide axis becomes shuffles)
    rows = tl.arange(0, BLOCK_O)[:, None] * (K_PAD * J_PAD) + cidx[None, :]
    flat = tl.gather(
        tl.reshape(dvs, (BLOCK_O * K_PAD * J_PAD,)), tl.reshape(rows, (BLOCK_O * T_PAD,)), 0
    )
    packed = tl.reshape(flat, (BLOCK_O, T_PAD))
    width = tl.multiple_of(tl.minimum(WIDTH, T_PAD), 8)  # the packed row: a 16-byte multiple
    dv_offs, dv_mask = _packed_rows(dv_n, o0, O, stride_dvo, width, V_DIV, T_PAD, BLOCK_O)
    tl.store(dv_offs, packed.to(dv_n.dtype.element_ty), mask=dv_mask)


@triton.jit
def _shifted_upsample_add_fwd_kernel(
    base_ptr,
    v_ptr,
    out_ptr,
    ahat_ptr,
    bhat_ptr,
    gidx_ptr,
    O,
    H,
    W,
    WIDTH,
    NUM_O_BLOCKS,
    NUM_W_BLOCKS,
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
    BN_DIV: tl.constexpr,
    BO_DIV: tl.constexpr,
    BH_DIV: tl.constexpr,
    ON_DIV: tl.constexpr,
    OO_DIV: tl.constexpr,
    OH_DIV: tl.constexpr,
    V_DIV: tl.constexpr,
    W_DIV: tl.constexpr,
    CHANNELS_FAST: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
    K_PAD: tl.constexpr,
    J_PAD: tl.constexpr,
    T_PAD: tl.constexpr,
    PRECISION: tl.constexpr,
    ACC: tl.constexpr,
):
    """out[n, o, h, w] = base[n, o, h, w] + sum_k ahat[h, k] * (V[n, o] @ bhat^T)[k, w]."""
    # program id 0 -> (sample n, block of 4 output channels, block of BLOCK_W columns). The four
    # channels' M_o = V_o @ bhat^T sit side by side, so each block of rows of the output is one
    # product ahat_tile @ [M_0 .. M_3] whose tile is contiguous along columns (NCHW) or along
    # channels (channels_last, CHANNELS_FAST): 16-byte (NCHW: 8-byte on 60-wide rows) vectors.
    pid = tl.program_id(0)
    pid_w = pid % NUM_W_BLOCKS
    pid_no = pid // NUM_W_BLOCKS
    o0 = (pid_no % NUM_O_BLOCKS) * 4
    n = pid_no // NUM_O_BLOCKS

    offs_w = pid_w * BLOCK_W + tl.arange(0, BLOCK_W)
    offs_j = tl.arange(0, J_PAD)
    offs_k = tl.arange(0, K_PAD)
    width = tl.multiple_of(tl.minimum(WIDTH, T_PAD), 8)  # the packed row: a 16-byte multiple
    bt = tl.load(
        bhat_ptr + offs_w[None, :] * stride_bw_ + offs_j[:, None],
        mask=(offs_w < W)[None, :],
        other=0.0,
    ).to(ACC)
    # the four channels' packed maps, spread into dense (K_PAD, J_PAD) tiles
    gidx = tl.load(gidx_ptr + tl.arange(0, K_PAD * J_PAD))
    v_n = v_ptr + n.to(tl.int64) * stride_vn
    v_offs, v_mask = _packed_rows(v_n, o0, O, stride_vo, width, V_DIV, T_PAD)
    packed = tl.load(v_offs, mask=v_mask, other=0.0).to(ACC)
    # (a flat gather: Triton gathers 2-D tensors only within a warp)
    rows = tl.arange(0, 4)[:, None] * T_PAD + gidx[None, :]
    flat = tl.gather(tl.reshape(packed, (4 * T_PAD,)), tl.reshape(rows, (4 * K_PAD * J_PAD,)), 0)
    v4 = tl.reshape(flat, (4, K_PAD * J_PAD))
    v0, v1, v2, v3 = _split_channels(v4, K_PAD, J_PAD)
    # M_o = V_o @ bhat^T: every map's rows interpolated and shifted along the columns
    m = _four_channels(
        tl.dot(v0, bt, input_precision=PRECISION, out_dtype=ACC),
        tl.dot(v1, bt, input_precision=PRECISION, out_dtype=ACC),
        tl.dot(v2, bt, input_precision=PRECISION, out_dtype=ACC),
        tl.dot(v3, bt, input_precision=PRECISION, out_dtype=ACC),
        CHANNELS_FAST,
    )

    offs_cw = tl.arange(0, 4 * BLOCK_W)
    o, w, b_cw = _column_offsets(
        o0, offs_cw, W, stride_bo, stride_bw, BLOCK_W, CHANNELS_FAST, BO_DIV
    )
    _, _, o_cw = _column_offsets(
        o0, offs_cw, W, stride_oo, stride_ow, BLOCK_W, CHANNELS_FAST, OO_DIV
    )
    w = pid_w * BLOCK_W + w
    mask_cw = (o < O) & (w < tl.multiple_of(tl.minimum(W, pid_w * BLOCK_W + BLOCK_W), W_DIV))
    b_n = (
        base_ptr + tl.multiple_of(n.to(tl.int64) * stride_bn, BN_DIV) + pid_w * BLOCK_W * stride_bw
    )
    o_n = out_ptr + tl.multiple_of(n.to(tl.int64) * stride_on, ON_DIV) + pid_w * BLOCK_W * stride_ow
    for h0 in range(0, H, BLOCK_H):
        offs_h = h0 + tl.arange(0, BLOCK_H)
        a = tl.load(
            ahat_ptr + offs_h[:, None] * stride_ah + offs_k[None, :],
            mask=(offs_h < H)[:, None],
            other=0.0,
        ).to(ACC)
        acc = tl.dot(a, m, input_precision=PRECISION, out_dtype=ACC)
        mask = (offs_h < H)[:, None] & mask_cw[None, :]
        b_off = tl.multiple_of(offs_h * stride_bh, BH_DIV)[:, None] + b_cw[None, :]
        o_off = tl.multiple_of(offs_h * stride_oh, OH_DIV)[:, None] + o_cw[None, :]
        b = tl.load(b_n + b_off, mask=mask, other=0.0).to(ACC)
        tl.store(o_n + o_off, (b + acc).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _shifted_upsample_add_bwd_kernel(
    grad_ptr,
    dv_ptr,
    ahat_ptr,
    bhat_ptr,
    cidx_ptr,
    O,
    H,
    W,
    WIDTH,
    NUM_O_BLOCKS,
    stride_gn,
    stride_go,
    stride_gh,
    stride_gw,
    stride_dvn,
    stride_dvo,
    stride_ah,
    stride_bw_,
    GN_DIV: tl.constexpr,
    GO_DIV: tl.constexpr,
    GH_DIV: tl.constexpr,
    V_DIV: tl.constexpr,
    W_DIV: tl.constexpr,
    CHANNELS_FAST: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
    K_PAD: tl.constexpr,
    J_PAD: tl.constexpr,
    T_PAD: tl.constexpr,
    PRECISION: tl.constexpr,
    ACC: tl.constexpr,
):
    """dV[n, o] = ahat^T @ grad[n, o] @ bhat, gathered back into the packed order."""
    # program id 0 -> (sample n, block of BLOCK_O (2 or 4) channels): it reads their grad once,
    # as one (rows, BLOCK_O * columns) tile per step (see the forward), and gathers every
    # low-res value of every tap of every map (no atomics: deterministic). Two channels halve
    # the (K_PAD, J_PAD) accumulators, for float32's three-pass dots.
    pid = tl.program_id(0)
    o0 = (pid % NUM_O_BLOCKS) * BLOCK_O
    n = pid // NUM_O_BLOCKS
    offs_k = tl.arange(0, K_PAD)
    offs_j = tl.arange(0, J_PAD)
    offs_cw = tl.arange(0, BLOCK_O * BLOCK_W)
    o, w_in, g_cw = _column_offsets(
        o0, offs_cw, W, stride_go, stride_gw, BLOCK_W, CHANNELS_FAST, GO_DIV, BLOCK_O
    )
    g_n = grad_ptr + tl.multiple_of(n.to(tl.int64) * stride_gn, GN_DIV)

    dv0 = tl.zeros((K_PAD, J_PAD), dtype=ACC)
    dv1 = tl.zeros((K_PAD, J_PAD), dtype=ACC)
    dv2 = tl.zeros((K_PAD, J_PAD), dtype=ACC)
    dv3 = tl.zeros((K_PAD, J_PAD), dtype=ACC)
    for w0 in range(0, W, BLOCK_W):
        mask_cw = (o < O) & (w0 + w_in < tl.multiple_of(tl.minimum(W, w0 + BLOCK_W), W_DIV))
        g = tl.zeros((K_PAD, BLOCK_O * BLOCK_W), dtype=ACC)
        for h0 in range(0, H, BLOCK_H):
            offs_h = h0 + tl.arange(0, BLOCK_H)
            at = tl.load(
                ahat_ptr + offs_h[None, :] * stride_ah + offs_k[:, None],
                mask=(offs_h < H)[None, :],
                other=0.0,
            ).to(ACC)
            mask = (offs_h < H)[:, None] & mask_cw[None, :]
            g_off = tl.multiple_of(offs_h * stride_gh, GH_DIV)[:, None] + g_cw[None, :]
            gt = tl.load(g_n + w0 * stride_gw + g_off, mask=mask, other=0.0).to(ACC)
            g = tl.dot(at, gt, g, input_precision=PRECISION, out_dtype=ACC)
        offs_w = w0 + tl.arange(0, BLOCK_W)
        b = tl.load(
            bhat_ptr + offs_w[:, None] * stride_bw_ + offs_j[None, :],
            mask=(offs_w < W)[:, None],
            other=0.0,
        ).to(ACC)
        g0, g1, g2, g3 = _channel_parts(g, K_PAD, BLOCK_W, CHANNELS_FAST, BLOCK_O)
        if BLOCK_O == 4:
            dv2 = tl.dot(g2, b, dv2, input_precision=PRECISION, out_dtype=ACC)
            dv3 = tl.dot(g3, b, dv3, input_precision=PRECISION, out_dtype=ACC)
        dv0 = tl.dot(g0, b, dv0, input_precision=PRECISION, out_dtype=ACC)
        dv1 = tl.dot(g1, b, dv1, input_precision=PRECISION, out_dtype=ACC)

    cidx = tl.load(cidx_ptr + tl.arange(0, T_PAD))
    _store_packed(
        dv0, dv1, dv2, dv3, cidx, dv_ptr + n.to(tl.int64) * stride_dvn, o0, O, stride_dvo,
        WIDTH, V_DIV, K_PAD, J_PAD, T_PAD, BLOCK_O,
    )  # fmt: skip


@triton.jit
def _shifted_upsample_add_bwd_plane_kernel(
    grad_ptr,
    dv_ptr,
    ahat_ptr,
    bhat_ptr,
    cidx_ptr,
    O,
    H,
    W,
    WIDTH,
    NUM_O_BLOCKS,
    GROUPS,
    stride_gn,
    stride_go,
    stride_gh,
    stride_gw,
    stride_dvn,
    stride_dvo,
    stride_ah,
    stride_bw_,
    GN_DIV: tl.constexpr,
    GO_DIV: tl.constexpr,
    GH_DIV: tl.constexpr,
    V_DIV: tl.constexpr,
    W_DIV: tl.constexpr,
    CHANNELS_FAST: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
    W_TILES: tl.constexpr,
    K_PAD: tl.constexpr,
    J_PAD: tl.constexpr,
    T_PAD: tl.constexpr,
    PRECISION: tl.constexpr,
    ACC: tl.constexpr,
):
    """The backward of :func:`_shifted_upsample_add_bwd_kernel` for planes that fit one tile
    (``H <= BLOCK_H``, ``W <= W_TILES * BLOCK_W``: PSPNet's 60x60).

    A channel's whole grad plane is W_TILES column tiles, unrolled, so ``ahat`` loads once per
    program and the program walks GROUPS blocks of BLOCK_O channels in one flat loop: the
    pipeliner keeps the next blocks' grad tiles in flight while one block's dots and gathers
    run (nested row / column loops could not be pipelined across channel blocks).
    """
    # program id 0 -> (sample n, GROUPS consecutive blocks of BLOCK_O channels)
    pid = tl.program_id(0)
    programs_per_n = (NUM_O_BLOCKS + GROUPS - 1) // GROUPS
    n = pid // programs_per_n
    block0 = (pid % programs_per_n) * GROUPS
    offs_h = tl.arange(0, BLOCK_H)
    offs_k = tl.arange(0, K_PAD)
    offs_j = tl.arange(0, J_PAD)
    offs_w = tl.arange(0, BLOCK_W)
    at = tl.load(
        ahat_ptr + offs_h[None, :] * stride_ah + offs_k[:, None],
        mask=(offs_h < H)[None, :],
        other=0.0,
    ).to(ACC)
    cidx = tl.load(cidx_ptr + tl.arange(0, T_PAD))
    # the tile's offsets relative to the block's first channel (its channel offset is a
    # multiple of GO_DIV, added per block) and to the column tile's first column
    o_in, w_in, g_cw = _column_offsets(
        0, tl.arange(0, BLOCK_O * BLOCK_W), W, stride_go, stride_gw, BLOCK_W, CHANNELS_FAST,
        GO_DIV, BLOCK_O,
    )  # fmt: skip
    width = (W // W_DIV) * W_DIV  # == W: the JIT drops a hint on the argument itself
    g_off = tl.multiple_of(offs_h * stride_gh, GH_DIV)[:, None] + g_cw[None, :]
    g_n = grad_ptr + tl.multiple_of(n.to(tl.int64) * stride_gn, GN_DIV)
    dv_n = dv_ptr + n.to(tl.int64) * stride_dvn

    for i in range(0, GROUPS):
        o0 = (block0 + i) * BLOCK_O
        g_o = g_n + tl.multiple_of(o0 * stride_go, GO_DIV)
        mask_o = (offs_h < H)[:, None] & (o0 + o_in < O)[None, :]
        dv0 = tl.zeros((K_PAD, J_PAD), dtype=ACC)
        dv1 = tl.zeros((K_PAD, J_PAD), dtype=ACC)
        dv2 = tl.zeros((K_PAD, J_PAD), dtype=ACC)
        dv3 = tl.zeros((K_PAD, J_PAD), dtype=ACC)
        for t in tl.static_range(W_TILES):
            mask = mask_o & (t * BLOCK_W + w_in < width)[None, :]
            gt = tl.load(g_o + t * BLOCK_W * stride_gw + g_off, mask=mask, other=0.0).to(ACC)
            g = tl.dot(at, gt, input_precision=PRECISION, out_dtype=ACC)
            b = tl.load(
                bhat_ptr + (t * BLOCK_W + offs_w)[:, None] * stride_bw_ + offs_j[None, :],
                mask=(t * BLOCK_W + offs_w < W)[:, None],
                other=0.0,
            ).to(ACC)
            g0, g1, g2, g3 = _channel_parts(g, K_PAD, BLOCK_W, CHANNELS_FAST, BLOCK_O)
            dv0 = tl.dot(g0, b, dv0, input_precision=PRECISION, out_dtype=ACC)
            dv1 = tl.dot(g1, b, dv1, input_precision=PRECISION, out_dtype=ACC)
            if BLOCK_O == 4:
                dv2 = tl.dot(g2, b, dv2, input_precision=PRECISION, out_dtype=ACC)
                dv3 = tl.dot(g3, b, dv3, input_precision=PRECISION, out_dtype=ACC)
        _store_packed(
            dv0, dv1, dv2, dv3, cidx, dv_n, o0, O, stride_dvo, WIDTH, V_DIV, K_PAD, J_PAD, T_PAD,
            BLOCK_O,
        )  # fmt: skip
