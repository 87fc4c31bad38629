"""The export formulation: PSPNet's fused operations in plain PyTorch, exact at every input size.

Exported graphs (``torch.export``, ``torch.onnx.export(..., dynamo=True)``) of the eager model are
right only at the example size: ``adaptive_avg_pool2d`` with a bin that does not divide the size
is lowered to ONNX with the example size's windows baked in as index tables (onnxruntime then
fails with "GatherND invalid index" or silently returns wrong logits), and the launchers' tap
tables are Python-side constants. While exporting, :class:`pspnet.PPM`, the concat-free head and
the final upsampling therefore switch to this module, whose every window, tap and weight is
computed in the graph from the (symbolic) input size by :mod:`psp_kernels.geometry`:

* pooling: ``adaptive_avg_pool2d(x, b) = P_H,b @ x @ P_W,b^T`` with ``P`` the window-averaging
  matrices (a range, the bounds ``floor(k*L/b)`` / ``ceil((k+1)*L/b)`` as integer arithmetic,
  compares, a division by the window size). All bins come from one product of ``x`` with the
  stacked column matrix (12 columns for bins 1, 2, 3, 6), as kernel 1 reads ``x`` once;
* bilinear upsampling (either ``align_corners``): ``A_H @ y @ A_W^T`` with the interpolation
  matrices built by compares of a range with the taps;
* the concat-free head's nine shifted upsamplings: two products with the stacked shifted
  interpolation matrices (``[S_d A_b]``), as ``psp_kernels.shifted_upsample_add`` computes them.

Why a formulation rather than export decompositions of the custom ops:

* the custom ops are only half of the problem: a CPU (or float64) model never reaches them, it
  runs the plain paths, and those are not export-safe either: the reference and channels_last
  inference pool with ``F.adaptive_avg_pool2d`` (lowered with the example size's windows), the
  upsampling lowers to ONNX ``Resize`` (whose coordinate modes every runtime must match) and the
  separable head computes its taps in float64; decompositions registered on our ops would change
  none of these;
* a decomposition registered on an op is also what ``torch.compile`` may pick, so the fused
  kernels' dispatch would then depend on the compiler's decomposition tables; the switch here is
  one predicate, :func:`exporting`, which is ``False`` in eager mode and under ``torch.compile``
  (fullgraph traces it as a constant), so training, eager and compiled inference keep the fused
  ops, and only ``torch.export`` / ``torch.onnx.export`` see this module;
* the formulation is the kernels' own math (separable matrices), the pooling literally the same
  function as kernel 1's CPU path, and it lowers to ONNX's plain ``MatMul`` / ``Range`` / compare
  ops that every runtime has (no custom domain, no ``Resize`` or ``GatherND`` semantics to match).

The taps are computed in float32 for float32 models (as PyTorch computes them), so a float32
graph holds no float64 operation (TensorRT has none).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from psp_kernels import geometry
from psp_kernels.ops.pyramid_pool_conv.separable import stacked_pools

__all__ = [
    "exporting",
    "adaptive_pools",
    "upsample",
    "upsample_concat",
    "shifted_upsample_add",
]


def exporting() -> bool:
    """True while ``torch.export`` (also under ``torch.onnx.export``) traces the model."""
    return torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()


def _taps_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def adaptive_pools(x: torch.Tensor, bins: Sequence[int]) -> list[torch.Tensor]:
    """``[F.adaptive_avg_pool2d(x, b) for b in bins]`` as matrix products, one read of ``x``.

    ``x``: ``(N, C, H, W)``; the pooling matrices are built from ``H`` and ``W`` (symbolic while
    exporting), so the graph pools exactly at every size, bins larger than the map included.
    The same products are kernel 1's CPU path (``psp_kernels``' ``stacked_pools``).
    """
    return stacked_pools(x, bins)


def upsample(y: torch.Tensor, size, align_corners: bool = True) -> torch.Tensor:
    """``F.interpolate(y, size, mode="bilinear", align_corners=align_corners)`` as two products
    with interpolation matrices built from the (possibly symbolic) sizes."""
    height, width = size
    h, w = y.shape[-2:]
    kw = dict(dtype=y.dtype, device=y.device, taps_dtype=_taps_dtype(y.dtype))
    a_rows = geometry.interp_matrix(height, h, align_corners, **kw)  # (H, h)
    a_cols = geometry.interp_matrix(width, w, align_corners, **kw)  # (W, w)
    return geometry.apply_rows(a_rows, torch.matmul(y, a_cols.t()))


def upsample_concat(x: torch.Tensor, branches, align_corners: bool = True) -> torch.Tensor:
    """``cat([x] + [upsample(y, x's size) for y in branches], 1)``, as ``upsample_concat``."""
    size = x.shape[-2:]
    return torch.cat([x] + [upsample(y, size, align_corners) for y in branches], 1)


def shifted_upsample_add(base: torch.Tensor, maps, align_corners: bool = True) -> torch.Tensor:
    """``psp_kernels.shifted_upsample_add(base, maps)`` as two products per axis.

    ``out = base + ahat @ cat_b(V_b @ bhat_b^T)`` with ``ahat = [S_di A_b]`` (``H x 3 sum h_b``),
    ``bhat = [S_dj B_b]`` (``W x 3 sum w_b``) and ``V_b`` map ``b`` laid out as
    ``(N, O, (di, row), (dj, col))``. One-tap maps (``(N, 1, O, h, w)``): ``ahat = [A_b]``,
    ``bhat = A_b`` per map, no shifts.
    """
    height, width = base.shape[-2:]
    n, o = base.shape[:2]
    kw = dict(dtype=base.dtype, device=base.device, taps_dtype=_taps_dtype(base.dtype))
    sizes = [tuple(m.shape[-2:]) for m in maps]
    if maps[0].shape[1] == 1:
        ahat = torch.cat(
            [geometry.interp_matrix(height, h, align_corners, **kw) for h, _ in sizes], 1
        )
        parts = [
            torch.matmul(
                m.reshape(n, o, h, w), geometry.interp_matrix(width, w, align_corners, **kw).t()
            )
            for m, (h, w) in zip(maps, sizes)
        ]
        return base + geometry.apply_rows(ahat, torch.cat(parts, 2))
    ahat = geometry.shifted_pyramid_matrix(height, [h for h, _ in sizes], align_corners, **kw)
    parts = []
    for m, (h, w) in zip(maps, sizes):
        bhat = geometry.shifted_pyramid_matrix(width, [w], align_corners, **kw)  # (W, 3 w)
        v = m.reshape(n, 3, 3, o, h, w).permute(0, 3, 1, 4, 2, 5).reshape(n, o, 3 * h, 3 * w)
        parts.append(torch.matmul(v.contiguous(), bhat.t()))
    return base + geometry.apply_rows(ahat, torch.cat(parts, 2))
