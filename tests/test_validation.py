"""Bad input raises a clear TypeError/ValueError naming the argument, on every backend.

Covers both public ops (pyramid_pool_conv and upsample_concat) with backend "triton" (the
kernels, through the interpreter on CPU) and "reference", plus backend resolution.
"""

import pytest
import torch

import psp_kernels
from psp_kernels import resolve_backend
from psp_kernels.ops import utils as ops_utils

BACKENDS = ["triton", "reference"]


def _ppc_args(device, dtype=torch.float32):
    x = torch.randn(2, 4, 6, 5, device=device, dtype=dtype)
    ws = [
        torch.randn(3, 4, 1, 1, device=device, dtype=dtype),
        torch.randn(2, 4, device=device, dtype=dtype),
    ]
    return x, ws, (1, 2)


def _bad_ppc_cases(device):
    """(label, kwargs to override, expected error, regex naming the argument)."""
    x, ws, bins = _ppc_args(device)
    f = torch.float32
    return [
        ("x not a tensor", dict(x=x.tolist()), TypeError, r"\bx\b"),
        ("x rank 3", dict(x=x[0]), ValueError, r"\bx\b.*\(N, C, H, W\)"),
        ("x rank 5", dict(x=x[None]), ValueError, r"\bx\b"),
        ("x empty", dict(x=x[:0]), ValueError, r"\bx\b"),
        ("x int", dict(x=x.to(torch.int32)), TypeError, r"\bx\b.*floating"),
        ("x complex", dict(x=x.to(torch.complex64)), TypeError, r"\bx\b.*floating"),
        ("weights a tensor", dict(weights=ws[0]), TypeError, r"weights"),
        ("too few weights", dict(weights=ws[:1]), ValueError, r"weights.*one tensor per bin"),
        ("too many weights", dict(weights=ws + ws), ValueError, r"weights.*one tensor per bin"),
        (
            "weight C mismatch",
            dict(weights=[ws[0], torch.randn(2, 5, device=device)]),
            ValueError,
            r"weights\[1\].*\(R, 4\)",
        ),
        (
            "weight 3x3 kernel",
            dict(weights=[torch.randn(3, 4, 3, 3, device=device), ws[1]]),
            ValueError,
            r"weights\[0\]",
        ),
        (
            "weight 1-d",
            dict(weights=[torch.randn(4, device=device), ws[1]]),
            ValueError,
            r"weights\[0\]",
        ),
        ("weight int", dict(weights=[ws[0].to(torch.int64), ws[1]]), TypeError, r"weights\[0\]"),
        (
            "weight other float dtype",
            dict(weights=[ws[0].double(), ws[1]]),
            TypeError,
            r"weights\[0\].*dtype",
        ),
        (
            "weight on meta",
            dict(weights=[ws[0].to("meta"), ws[1]]),
            ValueError,
            r"weights\[0\].*meta",
        ),
        ("bin zero", dict(bins=(0, 2)), ValueError, r"bins"),
        ("bin negative", dict(bins=(1, -2)), ValueError, r"bins"),
        ("bin float", dict(bins=(1, 2.0)), TypeError, r"bins"),
        ("bins empty", dict(bins=(), weights=[]), ValueError, r"bins"),
        ("bins a string", dict(bins="12"), TypeError, r"bins"),
        (
            "scale wrong shape",
            dict(scale=[torch.ones(3, device=device), torch.ones(3, device=device)]),
            ValueError,
            r"scale\[1\].*\(2,\)",
        ),
        (
            "scale 2-d",
            dict(scale=[torch.ones(3, 1, device=device), torch.ones(2, device=device)]),
            ValueError,
            r"scale\[0\]",
        ),
        (
            "scale count",
            dict(scale=[torch.ones(3, device=device)]),
            ValueError,
            r"scale.*one tensor per bin",
        ),
        ("scale a tensor", dict(scale=torch.ones(3, device=device)), TypeError, r"scale"),
        (
            "shift wrong shape",
            dict(shift=[torch.ones(4, device=device), torch.ones(2, device=device)]),
            ValueError,
            r"shift\[0\].*\(3,\)",
        ),
        (
            "shift int",
            dict(
                shift=[
                    torch.ones(3, dtype=torch.int32, device=device),
                    torch.ones(2, device=device),
                ]
            ),
            TypeError,
            r"shift\[0\]",
        ),
        (
            "shift on meta",
            dict(shift=[torch.ones(3, device="meta"), torch.ones(2, device=device, dtype=f)]),
            ValueError,
            r"shift\[0\]",
        ),
        ("bad backend", dict(backend="cuda"), ValueError, r"backend"),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
def test_pyramid_pool_conv_bad_input(device, backend):
    x, ws, bins = _ppc_args(device)
    for label, override, error, pattern in _bad_ppc_cases(device):
        kwargs = dict(x=x, weights=ws, bins=bins, backend=backend)
        kwargs.update(override)
        call_args = (kwargs.pop("x"), kwargs.pop("weights"), kwargs.pop("bins"))
        with pytest.raises(error, match=pattern) as info:
            psp_kernels.pyramid_pool_conv(*call_args, **kwargs)
        assert info.type is error, label


def _uc_args(device):
    x = torch.randn(2, 4, 6, 5, device=device)
    branches = [torch.randn(2, 3, 1, 1, device=device), torch.randn(2, 2, 3, 3, device=device)]
    return x, branches


def _bad_uc_cases(device):
    x, br = _uc_args(device)
    return [
        ("x rank 3", dict(x=x[0]), ValueError, r"\bx\b"),
        ("x int", dict(x=x.to(torch.int16)), TypeError, r"\bx\b"),
        ("x complex", dict(x=x.to(torch.complex64)), TypeError, r"\bx\b"),
        ("x empty", dict(x=x[:, :, :0]), ValueError, r"\bx\b"),
        ("branches a tensor", dict(branches=br[0]), TypeError, r"branches"),
        ("branch rank 3", dict(branches=[br[0][0], br[1]]), ValueError, r"branches\[0\]"),
        (
            "branch N mismatch",
            dict(branches=[br[0], br[1][:1]]),
            ValueError,
            r"branches\[1\].*\(2, R, h, w\)",
        ),
        ("branch int", dict(branches=[br[0].to(torch.int64), br[1]]), TypeError, r"branches\[0\]"),
        ("branch other dtype", dict(branches=[br[0], br[1].double()]), TypeError, r"branches\[1\]"),
        ("branch on meta", dict(branches=[br[0].to("meta"), br[1]]), ValueError, r"branches\[0\]"),
        ("branch empty", dict(branches=[br[0][:, :0], br[1]]), ValueError, r"branches\[0\]"),
        ("bad backend", dict(backend="gpu"), ValueError, r"backend"),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
def test_upsample_concat_bad_input(device, backend):
    x, br = _uc_args(device)
    for label, override, error, pattern in _bad_uc_cases(device):
        kwargs = dict(x=x, branches=br, backend=backend)
        kwargs.update(override)
        call_args = (kwargs.pop("x"), kwargs.pop("branches"))
        with pytest.raises(error, match=pattern) as info:
            psp_kernels.upsample_concat(*call_args, **kwargs)
        assert info.type is error, label


def test_resolve_backend(monkeypatch):
    x = torch.zeros(1, 1, 1, 1)
    assert resolve_backend("reference", x) == "reference"
    monkeypatch.setattr(ops_utils, "INTERPRETER", False)
    assert resolve_backend("auto", x) == "reference"
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        resolve_backend("triton", x)
    with pytest.raises(ValueError, match="backend"):
        resolve_backend("fast", x)
    monkeypatch.setattr(ops_utils, "INTERPRETER", True)
    assert resolve_backend("auto", x) == "triton"
    assert resolve_backend("triton", x) == "triton"


def test_triton_backend_on_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.setattr(ops_utils, "INTERPRETER", False)
    x, ws, bins = _ppc_args("cpu")
    with pytest.raises(RuntimeError, match="backend='triton'"):
        psp_kernels.pyramid_pool_conv(x, ws, bins, backend="triton")
    x, br = _uc_args("cpu")
    with pytest.raises(RuntimeError, match="backend='triton'"):
        psp_kernels.upsample_concat(x, br, backend="triton")
    # "auto" falls back to the reference and works
    assert psp_kernels.upsample_concat(x, br).shape == (2, 9, 6, 5)


def test_kernel_limit_resolves_to_reference_or_raises(monkeypatch):
    """An input over a kernel's own limit: "auto" takes the reference, "triton" raises."""
    from psp_kernels.ops.pyramid_pool_conv.launch import kernel_limit

    monkeypatch.setattr(ops_utils, "INTERPRETER", True)
    x = torch.zeros(1, 1, 1, 1)
    assert kernel_limit(x) is None
    big = torch.empty(2, 2, 2**15, 2**16, device="meta")  # 2**32 elements per sample
    assert "2**31" in kernel_limit(big)
    assert resolve_backend("auto", x, kernel_limit=kernel_limit(big)) == "reference"
    with pytest.raises(ValueError, match=r"backend='triton'.*2\*\*31"):
        resolve_backend("triton", x, kernel_limit=kernel_limit(big))
