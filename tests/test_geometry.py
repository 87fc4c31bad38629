"""psp_kernels.geometry's matrix builders and pspnet.export_ops against torch.nn.functional."""

import pytest
import torch
import torch.nn.functional as F

from psp_kernels import geometry, reference
from pspnet import export_ops

LENGTHS = (1, 2, 3, 5, 6, 7, 8, 13, 21, 22, 60, 64, 97)


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("length", LENGTHS)
def test_pool_bounds_are_pytorchs_windows(length):
    bins = (1, 2, 3, 6, 9)  # 9 > length for the short ones: windows repeat pixels
    start, end = geometry.pool_bounds(length, bins)
    expected = [
        (k * length // b, -(-(k + 1) * length // b)) for b in bins for k in range(b)
    ]  # floor(k L / b), ceil((k + 1) L / b)
    assert list(zip(start.tolist(), end.tolist(), strict=True)) == expected
    assert start.dtype == end.dtype == torch.int64


@pytest.mark.parametrize("height, width", [(1, 1), (5, 5), (22, 64), (60, 60), (7, 13)])
def test_stacked_pool_matrix_is_adaptive_avg_pool(height, width):
    bins = (1, 2, 3, 6)
    x = torch.randn(2, 3, height, width, dtype=torch.float64)
    rows = geometry.stacked_pool_matrix(height, bins)
    cols = geometry.stacked_pool_matrix(width, bins)
    assert rows.shape == (12, height) and cols.shape == (12, width)
    offset = 0
    for b in bins:
        sl = slice(offset, offset + b)
        pooled = rows[sl] @ x @ cols[sl].t()
        assert _rel(pooled, F.adaptive_avg_pool2d(x, b)) < 1e-13
        assert torch.equal(rows[sl], geometry.pool_matrix(height, b))
        offset += b


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("out_size, in_size", [(1, 1), (1, 6), (7, 1), (60, 6), (97, 13), (5, 9)])
def test_interp_matrix_is_bilinear_interpolate(out_size, in_size, align_corners):
    y = torch.randn(2, 3, in_size, in_size + 1, dtype=torch.float64)
    rows = geometry.interp_matrix(out_size, in_size, align_corners)
    cols = geometry.interp_matrix(out_size + 2, in_size + 1, align_corners)
    expected = F.interpolate(
        y, (out_size, out_size + 2), mode="bilinear", align_corners=align_corners
    )
    assert _rel(rows @ y @ cols.t(), expected) < 1e-13
    # float32 taps (what exported float32 graphs compute): PyTorch's own float32 accuracy
    rows32 = geometry.interp_matrix(out_size, in_size, align_corners, taps_dtype=torch.float32)
    assert rows32.dtype == torch.float64 and (rows32 - rows).abs().max().item() < 1e-5


@pytest.mark.parametrize("align_corners", [True, False])
def test_shifted_matrices_are_shifted_interp_rows(align_corners):
    out_size, sizes = 9, (1, 2, 3, 6)
    big = geometry.shifted_pyramid_matrix(out_size, sizes, align_corners)
    assert big.shape == (out_size, 3 * sum(sizes))
    col = 0
    for s in sizes:
        a = geometry.interp_matrix(out_size, s, align_corners)
        shifted = geometry.shifted_interp_matrices(out_size, s, align_corners)
        zero = torch.zeros(1, s, dtype=a.dtype)
        assert torch.equal(shifted[0], torch.cat([zero, a[:-1]]))  # row i reads row i - 1
        assert torch.equal(shifted[1], a)
        assert torch.equal(shifted[2], torch.cat([a[1:], zero]))
        assert torch.equal(big[:, col : col + 3 * s], shifted.transpose(0, 1).reshape(out_size, -1))
        col += 3 * s


@pytest.mark.parametrize("height, width", [(1, 1), (5, 7), (33, 33), (60, 61)])
def test_export_ops_pooling_and_upsampling(height, width):
    x = torch.randn(2, 4, height, width, dtype=torch.float64)
    bins = (1, 2, 3, 6)
    for got, b in zip(export_ops.adaptive_pools(x, bins), bins, strict=True):
        assert _rel(got, F.adaptive_avg_pool2d(x, b)) < 1e-13
    y = torch.randn(2, 4, 3, 2, dtype=torch.float64)
    for ac in (True, False):
        expected = F.interpolate(y, (height, width), mode="bilinear", align_corners=ac)
        assert _rel(export_ops.upsample(y, (height, width), ac), expected) < 1e-13
    ys = [torch.randn(2, 3, b, b, dtype=torch.float64) for b in bins]
    assert _rel(export_ops.upsample_concat(x, ys), reference.upsample_concat(x, ys)) < 1e-13


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("height, width", [(1, 1), (5, 7), (33, 20)])
def test_export_ops_shifted_upsample_add(height, width, align_corners):
    base = torch.randn(2, 3, height, width, dtype=torch.float64)
    maps = [torch.randn(2, 9, 3, b, b, dtype=torch.float64) for b in (1, 2, 3, 6)]
    got = export_ops.shifted_upsample_add(base, maps, align_corners)
    expected = reference.shifted_upsample_add(base, maps, align_corners=align_corners)
    assert _rel(got, expected) < 1e-12
