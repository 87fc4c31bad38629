"""The contract's tolerances against the reference, shared by the kernel tests."""

import torch

#: Max abs error allowed, relative to the reference's max abs (low precision: against float64).
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def assert_close_to_reference(actual, expected, dtype, what):
    """Assert ``actual`` is within ``dtype``'s contract tolerance of the reference ``expected``."""
    assert actual.shape == expected.shape, what
    assert actual.dtype == expected.dtype, what
    scale = expected.abs().max().item()
    err = (actual.double() - expected.double()).abs().max().item()
    assert err <= TOL[dtype] * max(scale, 1e-30) or err == 0.0, (
        f"{what}: max abs error {err:.3e} vs tolerance {TOL[dtype]} x {scale:.3e}"
    )


def skip_unless_kernels_take(dtype, device):
    """Skip a test that forces ``backend="triton"`` in ``dtype`` where the kernels cannot run it:
    float64 runs on the reference and the interpreter only, never on CUDA (the contract)."""
    import pytest

    if dtype == torch.float64 and str(device).startswith("cuda"):
        pytest.skip("the CUDA kernels do not take float64 (it runs through the interpreter in CI)")
