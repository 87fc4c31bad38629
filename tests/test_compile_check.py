"""``python -m psp_kernels.compile_check``: every kernel configuration compiles for sm_80/sm_90.

Runs the check in a subprocess with TRITON_INTERPRET=1 still set (as in the rest of the tests),
which the check must undo itself to compile the real kernels. The first run compiles everything
(about a minute on two cores); Triton's cache and the check's ptxas cache make reruns fast.
"""

import importlib
import os
import re
import subprocess
import sys

import psp_kernels
from psp_kernels.analysis.machine import SHARED_LIMIT


def _spec_modules():
    from psp_kernels.compile_check import collect_specs

    return collect_specs()


def _table_rows(out: str) -> list[dict]:
    """The rows of compile_check's table (columns two or more spaces apart)."""
    lines = out.splitlines()
    start = next(
        i for i, line in enumerate(lines) if line.split()[:3] == ["kernel", "config", "arch"]
    )
    header = re.split(r"\s{2,}", lines[start].strip())
    assert set(lines[start + 1].replace(" ", "")) == {"-"}, lines[start + 1]
    rows = []
    for line in lines[start + 2 :]:
        if not line.strip():
            break
        cells = re.split(r"\s{2,}", line.strip())
        assert len(cells) == len(header), line
        rows.append(dict(zip(header, cells, strict=True)))
    return rows


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
    rows = _table_rows(proc.stdout)
    by_key = {(r["config"], r["arch"]): r for r in rows}
    specs = _spec_modules()
    assert len(rows) == len(by_key) == 2 * len(specs), "one row per configuration and arch"
    for name, spec in specs:
        kernel = getattr(spec.kernel, "__name__", None) or spec.kernel.fn.__name__
        for arch in ("sm_80", "sm_90"):
            row = by_key.get((spec.name, arch))
            assert row is not None, f"{name}: {spec.name} on {arch} missing from the table"
            assert row["kernel"] == kernel, row
            assert row["status"].startswith("ok"), row  # every configuration compiles
            assert 0 < int(row["regs"]) <= 255, row
            spills = row["spill st/ld"] != "0/0"
            over = int(row["shared B"]) > SHARED_LIMIT[int(arch.removeprefix("sm_"))]
            # generic builds may spill / overflow: printed, never silent (the workload report
            # gates the specialized builds that really run)
            assert (spills or over) == ("generic build" in row["status"]), row
    assert f"{len(rows)} ok, 0 failed" in proc.stdout


def test_pyramid_pool_conv_specs_cover_every_dtype_and_kernel():
    specs = importlib.import_module("psp_kernels.ops.pyramid_pool_conv.configs").aot_specs()
    names = " ".join(s.name for s in specs)
    for kernel in ("pool_cells", "cells_conv", "cells_to_pixels"):
        for dtype in ("fp32", "fp16", "bf16"):
            assert f"{kernel}[{dtype}" in names
    for spec in specs:
        params = list(spec.signature) + list(spec.constexprs)
        assert len(params) == len(set(params)), spec.name
