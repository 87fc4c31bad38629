"""Input validation shared by the reference and the fused path.

Every public entry point runs these checks first, so bad input raises the same ``TypeError`` or
``ValueError`` (naming the argument and the expected shape) on every backend, before anything is
computed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
BACKENDS = ("auto", "triton", "reference")


def _check_tensor(t, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must have a floating dtype (float16, bfloat16, float32 or float64), "
            f"got {t.dtype}"
        )


def _check_same(t: torch.Tensor, x: torch.Tensor, name: str) -> None:
    if t.device != x.device:
        raise ValueError(f"{name} is on {t.device} but x is on {x.device}; move them to one device")
    if t.dtype != x.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but x has dtype {x.dtype}; they must match")


def _check_x(x) -> None:
    _check_tensor(x, "x")
    if x.dim() != 4:
        raise ValueError(
            f"x must have shape (N, C, H, W), got a {x.dim()}-d tensor {tuple(x.shape)}"
        )
    if x.numel() == 0:
        raise ValueError(f"x must be non-empty, got shape {tuple(x.shape)}")


def _as_list(value, name: str, what: str = "tensors") -> list:
    if isinstance(value, (torch.Tensor, str)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a list or tuple of {what}, got {type(value).__name__}")
    return list(value)


def check_backend(backend) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def check_pyramid_pool_conv(x, weights, bins, scale=None, shift=None):
    """Validate ``pyramid_pool_conv`` arguments.

    Returns ``(weights_2d, bins, scale, shift)``: the weights as ``(R_i, C)`` views, the bins as a
    tuple of ints and ``scale``/``shift`` as lists (or ``None``).
    """
    _check_x(x)
    c = x.shape[1]
    if isinstance(bins, int):
        bins = (bins,)
    bins_list = _as_list(bins, "bins", "ints")
    if len(bins_list) == 0:
        raise ValueError("bins must contain at least one bin size, got an empty sequence")
    for b in bins_list:
        if isinstance(b, bool) or not isinstance(b, int):
            raise TypeError(f"bins must be positive ints, got {b!r} in bins={tuple(bins_list)}")
        if b < 1:
            raise ValueError(
                f"bins must be positive ints (bin >= 1), got {b} in bins={tuple(bins_list)}"
            )
    weights = _as_list(weights, "weights")
    if len(weights) != len(bins_list):
        raise ValueError(
            f"weights must have one tensor per bin: got {len(weights)} weights for "
            f"{len(bins_list)} bins {tuple(bins_list)}"
        )
    weights_2d = []
    for i, w in enumerate(weights):
        name = f"weights[{i}]"
        _check_tensor(w, name)
        _check_same(w, x, name)
        if w.dim() == 4 and w.shape[2:] == (1, 1):
            w = w.flatten(1)
        if w.dim() != 2 or w.shape[1] != c:
            raise ValueError(
                f"{name} must have shape (R, {c}) or (R, {c}, 1, 1) for x with C={c}, "
                f"got {tuple(weights[i].shape)}"
            )
        if w.shape[0] == 0:
            raise ValueError(f"{name} must have at least one output channel, got {tuple(w.shape)}")
        weights_2d.append(w)
    affine = {}
    for label, value in (("scale", scale), ("shift", shift)):
        if value is None:
            affine[label] = None
            continue
        value = _as_list(value, label)
        if len(value) != len(bins_list):
            raise ValueError(
                f"{label} must have one tensor per bin: got {len(value)} for {len(bins_list)} bins"
            )
        for i, t in enumerate(value):
            name = f"{label}[{i}]"
            _check_tensor(t, name)
            _check_same(t, x, name)
            r = weights_2d[i].shape[0]
            if t.dim() != 1 or t.shape[0] != r:
                raise ValueError(f"{name} must have shape ({r},), got {tuple(t.shape)}")
        affine[label] = value
    return weights_2d, tuple(int(b) for b in bins_list), affine["scale"], affine["shift"]


def check_upsample_concat(x, branches):
    """Validate ``upsample_concat`` arguments; returns the branches as a list."""
    _check_x(x)
    n = x.shape[0]
    branches = _as_list(branches, "branches")
    for i, y in enumerate(branches):
        name = f"branches[{i}]"
        _check_tensor(y, name)
        _check_same(y, x, name)
        if y.dim() != 4:
            raise ValueError(
                f"{name} must have shape (N, R, h, w) with N={n}, got a {y.dim()}-d tensor "
                f"{tuple(y.shape)}"
            )
        if y.shape[0] != n:
            raise ValueError(f"{name} must have shape ({n}, R, h, w) like x, got {tuple(y.shape)}")
        if y.numel() == 0:
            raise ValueError(f"{name} must be non-empty, got shape {tuple(y.shape)}")
    return branches


def check_shifted_upsample_add(base, maps):
    """Validate ``shifted_upsample_add`` arguments; returns the maps as a list.

    Every map has 9 taps (the 3x3 form) or 1 (the one-tap form of a 1x1 conv), all the same."""
    _check_tensor(base, "base")
    if base.dim() != 4:
        raise ValueError(
            f"base must have shape (N, O, H, W), got a {base.dim()}-d tensor {tuple(base.shape)}"
        )
    if base.numel() == 0:
        raise ValueError(f"base must be non-empty, got shape {tuple(base.shape)}")
    n, o = base.shape[:2]
    maps = _as_list(maps, "maps")
    if len(maps) == 0:
        raise ValueError("maps must contain at least one (N, 9, O, h, w) or (N, 1, O, h, w) tensor")
    taps = None
    for i, m in enumerate(maps):
        name = f"maps[{i}]"
        _check_tensor(m, name)
        if m.device != base.device:
            raise ValueError(f"{name} is on {m.device} but base is on {base.device}")
        if m.dtype != base.dtype:
            raise TypeError(f"{name} has dtype {m.dtype} but base has dtype {base.dtype}")
        if m.dim() == 5 and taps is None and m.shape[1] in (1, 9):
            taps = m.shape[1]
        expected = taps or 9
        if (
            m.dim() != 5
            or m.shape[0] != n
            or m.shape[1] != expected
            or m.shape[2] != o
            or (m.numel() == 0)
        ):
            shapes = f"({n}, {expected}, {o}, h, w)"
            if taps is None:
                shapes += f" or the one-tap ({n}, 1, {o}, h, w)"
            raise ValueError(
                f"{name} must have shape {shapes} for base of shape {tuple(base.shape)} (every "
                f"map with the same tap count), got {tuple(m.shape)}"
            )
    return maps


INDEX_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)
REDUCTIONS = ("mean", "sum")


def check_upsample_cross_entropy(logits, target, weight, ignore_index, reduction):
    """Validate ``upsample_cross_entropy`` arguments (shapes, dtypes, devices, options)."""
    _check_tensor(logits, "logits")
    if logits.dim() != 4:
        raise ValueError(
            f"logits must have shape (N, K, h, w), got a {logits.dim()}-d tensor "
            f"{tuple(logits.shape)}"
        )
    if logits.numel() == 0:
        raise ValueError(f"logits must be non-empty, got shape {tuple(logits.shape)}")
    n, k = logits.shape[:2]
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.dtype not in INDEX_DTYPES:
        raise TypeError(
            f"target must hold integer class indices (int64, int32, int16, int8 or uint8), "
            f"got {target.dtype}"
        )
    if target.dim() != 3 or target.shape[0] != n or target.numel() == 0:
        raise ValueError(
            f"target must have shape ({n}, H, W) (non-empty) for logits of shape "
            f"{tuple(logits.shape)}, got {tuple(target.shape)}"
        )
    if target.device != logits.device:
        raise ValueError(
            f"target is on {target.device} but logits is on {logits.device}; move them to one device"
        )
    if weight is not None:
        _check_tensor(weight, "weight")
        if weight.dim() != 1 or weight.shape[0] != k:
            raise ValueError(
                f"weight must have shape ({k},), one value per class, got {tuple(weight.shape)}"
            )
        if weight.device != logits.device:
            raise ValueError(
                f"weight is on {weight.device} but logits is on {logits.device}; move them to one device"
            )
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {ignore_index!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_concat_conv(x, branches, weight, bias):
    """Validate ``concat_free_conv`` arguments (after :func:`check_upsample_concat` of ``x`` and
    ``branches``); returns the conv's kernel size (1 or 3)."""
    # (dtypes may differ: under autocast the convolutions cast them)
    _check_tensor(weight, "weight")
    if weight.device != x.device:
        raise ValueError(f"weight is on {weight.device} but x is on {x.device}")
    c = x.shape[1]
    expected = c + sum(y.shape[1] for y in branches)
    k = weight.shape[-1] if weight.dim() == 4 else None
    if (
        weight.dim() != 4
        or weight.shape[1] != expected
        or k not in (1, 3)
        or (weight.shape[2] != k)
    ):
        raise ValueError(
            f"weight must have shape (O, {expected}, 3, 3) or (O, {expected}, 1, 1) for x with "
            f"{c} channels and branches with {expected - c}, got {tuple(weight.shape)}"
        )
    if bias is not None:
        _check_tensor(bias, "bias")
        if bias.device != x.device:
            raise ValueError(f"bias is on {bias.device} but x is on {x.device}")
        if bias.dim() != 1 or bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    return k
