"""``python -m psp_kernels.compile_check``: every kernel configuration compiles for sm_80/sm_90.

Runs the check in a subprocess with TRITON_INTERPRET=1 still set (as in the rest of the tests),
which the check must undo itself to compile the real kernels. The first run compiles everything
(about a minute on two cores); Triton's cache and the check's ptxas cache make reruns fast.
"""

import importlib
import os
import subprocess
import sys

import psp_kernels


def _spec_modules():
    from psp_kernels.compile_check import collect_specs

    return collect_specs()


def test_compile_check_passes_and_lists_every_kernel():
    env = dict(os.environ, TRITON_INTERPRET="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(psp_kernels.__file__)))
    proc = subprocess.run(
        [sys.executable, "-m", "psp_kernels.compile_check"],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=1200,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    for name, spec in _spec_modules():
        kernel = getattr(spec.kernel, "__name__", None) or spec.kernel.fn.__name__
        assert kernel in out, f"{name}: {kernel} missing from the compile_check table"
        assert spec.name in out, f"{spec.name} missing from the compile_check table"
    for arch in ("sm_80", "sm_90"):
        assert arch in out
    assert "spill" in out  # the table reports spills


def test_pyramid_pool_conv_specs_cover_every_dtype_and_kernel():
    specs = importlib.import_module("psp_kernels.ops.pyramid_pool_conv.configs").aot_specs()
    names = " ".join(s.name for s in specs)
    for kernel in ("pool_cells", "cells_conv", "cells_to_pixels"):
        for dtype in ("fp32", "fp16", "bf16"):
            assert f"{kernel}[{dtype}" in names
    for spec in specs:
        params = list(spec.signature) + list(spec.constexprs)
        assert len(params) == len(set(params)), spec.name
