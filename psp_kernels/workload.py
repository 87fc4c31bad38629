"""The cost model's estimate of a workload, as a function (used by ``benchmarks.gpu_check``).

>>> from psp_kernels.workload import model_summary
>>> model_summary("ppm", n=8, c=2048, hw=(60, 60), dtype=torch.bfloat16, layout="nchw", gpu="H100")
{"total_us": ..., "ideal_us": ..., "launches": [{"kernel": "_pool_cells_kernel", "us": ...}, ...]}

Everything here is an estimate from the machine code and the model of
:mod:`psp_kernels.analysis.cost`, never a measurement. Compiling needs no GPU, but the kernels
must not be in Triton's interpreter mode (``TRITON_INTERPRET`` unset when ``psp_kernels`` was
imported).
"""

from __future__ import annotations

import torch

from .analysis import cost, report
from .analysis.workloads import WORKLOADS, Shape

__all__ = ["model_summary", "WORKLOADS"]


def model_summary(
    workload: str,
    *,
    n: int,
    c: int,
    hw: tuple[int, int],
    dtype: torch.dtype,
    layout: str = "nchw",
    gpu: str = "H100",
) -> dict:
    """Modelled time of ``workload`` (``"ppm"``, ``"ppm-train"`` or ``"head"``) on ``gpu``.

    Returns ``{"total_us", "ideal_us", "ratio", "launches": [{"kernel", "step", "grid", "us",
    "bound", "waves", "moved_bytes", "ideal_bytes"}]}``, the launches in order.
    """
    if gpu not in cost.GPUS:
        raise ValueError(f"gpu must be one of {tuple(cost.GPUS)}, got {gpu!r}")
    if layout not in ("nchw", "nhwc"):
        raise ValueError(f"layout must be 'nchw' or 'nhwc', got {layout!r}")
    shape = Shape(int(n), int(c), int(hw[0]), int(hw[1]), dtype, layout)
    rep = report.build([workload], [shape], archs=(cost.GPUS[gpu].arch,), jobs=1)
    (total,) = [t for t in rep.totals if t["gpu"] == gpu]
    launches = [
        {
            "kernel": r.kernel,
            "step": r.step,
            "grid": list(r.grid),
            "us": r.model[gpu]["us"] if r.model else float("nan"),
            "bound": r.model[gpu]["bound"] if r.model else "does not compile",
            "waves": r.model[gpu]["waves"] if r.model else float("nan"),
            "moved_bytes": r.traffic.moved,
            "ideal_bytes": r.traffic.ideal,
        }
        for r in rep.rows
    ]
    return {
        "total_us": total["modelled_us"],
        "ideal_us": total["ideal_us"],
        "ratio": total["ratio"],
        "launches": launches,
    }
