"""The cost model of the workload report: each launch's time, estimated (written down in
``benchmarks/README.md``, "The cost model").

For one launch with ``B`` bytes moved, ``P`` programs, ``r`` resident programs per SM (its
occupancy), ``S`` SMs, ``F`` tensor-core FLOPs, and a longest program of ``k`` serial steps that
each wait for a global load of ``b`` bytes:

* bandwidth:     ``t_bw  = B / (COPY_EFFICIENCY * peak HBM bandwidth)``
* latency:       ``t_lat = ceil(P / (S * r)) * k * LATENCY / depth`` -- the waves, times the
  serial steps of one program, each a DRAM round trip; ``depth`` is how many steps' loads are
  in flight at once: ``num_stages - 1`` when the loads are software-pipelined (``cp.async``,
  seen as ``LDGSTS`` in the SASS), else 1, and never more than the iterations of the
  pipelined loop (a loop of two steps cannot have three in flight);
* tensor cores:  ``t_tc  = F * (S * ceil(P / S) / P) / peak FLOP rate`` of the dots' precision:
  the busiest SM's share at 1/S of the rate (``tf32x3`` = three tf32 products; a dot that
  compiled to FMA runs at the FP32 CUDA-core rate);
* special functions: ``t_sfu = E * (S * ceil(P / S) / P) / (S * 16 * clock)`` for a launch
  that computes ``E`` exponentials and logarithms (``MUFU``: 16 per SM per clock on sm_80 and
  sm_90), the busiest SM's share;
* launch:        ``t_launch = LAUNCH`` (the floor of any kernel);

``time = max(t_bw, t_lat, t_tc, t_sfu, t_launch)``. A workload's time is the sum over its launches,
compared with its ideal bytes at the peak bandwidth (the roofline). These are estimates; the
first GPU run (``python -m benchmarks.gpu_check``) checks them against measurements.
"""

from __future__ import annotations

import dataclasses
import math

#: Loaded DRAM round trip of one dependent load, in microseconds.
LATENCY_US = 1.0
#: Fraction of the peak HBM bandwidth a streaming kernel reaches (a device-to-device copy).
COPY_EFFICIENCY = 0.9
#: Floor of any launch (launch and ramp-up), in microseconds.
LAUNCH_US = 2.0
#: Special-function (MUFU: ex2, lg2, rcp...) results per SM per clock, sm_80 and sm_90.
SFU_PER_CLOCK = 16


@dataclasses.dataclass(frozen=True)
class Gpu:
    """The numbers of one GPU the model needs (dense tensor-core peaks, no sparsity)."""

    name: str
    arch: int
    sms: int
    hbm_gbps: float
    tflops: dict  # by dot precision class: "16bit", "tf32", "fp32" (CUDA-core FMA)
    clock_ghz: float  # boost clock (the FP32 peak is SMs x FP32 lanes x 2 x this)


GPUS = {
    "H100": Gpu("H100 SXM", 90, 132, 3350.0, {"16bit": 989.0, "tf32": 494.0, "fp32": 67.0}, 1.98),
    "H200": Gpu("H200 SXM", 90, 132, 4800.0, {"16bit": 989.0, "tf32": 494.0, "fp32": 67.0}, 1.98),
    "A100": Gpu("A100 SXM", 80, 108, 2039.0, {"16bit": 312.0, "tf32": 156.0, "fp32": 19.5}, 1.41),
}


def dot_seconds(flops: float, kind: str, gpu: Gpu, tensor_cores: bool) -> float:
    """Seconds of ``flops`` of ``tl.dot`` work of precision ``kind`` on ``gpu``."""
    if flops <= 0:
        return 0.0
    if not tensor_cores or kind == "fp32":
        return flops / (gpu.tflops["fp32"] * 1e12)
    if kind == "tf32x3":
        return 3 * flops / (gpu.tflops["tf32"] * 1e12)
    return flops / (gpu.tflops["tf32" if kind == "tf32" else "16bit"] * 1e12)


def launch_time(traffic, machine: dict, programs: int, gpu: Gpu) -> dict:
    """The model's terms for one launch (microseconds) and which one bounds it.

    ``traffic``: the launch's :class:`psp_kernels._aot.Traffic`; ``machine``: its
    :func:`psp_kernels.analysis.machine.analyse` result for ``gpu.arch``.
    """
    from .machine import accesses_of

    sass = machine.get("sass", {})
    resident = max(machine.get("occupancy", 1), 1)
    steps = accesses_of(machine, traffic.step_tensor)
    pipelined = any(a["kind"] == "cp.async" for a in steps)
    depth = max(machine.get("num_stages", 1) - 1, 1) if pipelined else 1
    depth = max(min(depth, traffic.loop_steps or traffic.steps), 1)  # loads ahead <= iterations
    rounds = math.ceil(programs / (gpu.sms * resident))
    tensor_cores = sass.get("HGMMA", 0) + sass.get("HMMA", 0) > 0
    # the busiest SM runs ceil(P / S) programs' dots at 1/S of the GPU's rate
    per_sm = math.ceil(programs / gpu.sms) / max(programs, 1) * gpu.sms
    dots = dot_seconds(traffic.dot_flops * per_sm, traffic.dot_kind, gpu, tensor_cores)
    sfu_rate = gpu.sms * SFU_PER_CLOCK * gpu.clock_ghz * 1e9
    terms = {
        "bandwidth": traffic.moved / (COPY_EFFICIENCY * gpu.hbm_gbps * 1e3),
        "latency": rounds * traffic.steps * LATENCY_US / depth,
        "tensor cores": 1e6 * dots,
        "special functions": 1e6 * traffic.sfu_ops * per_sm / sfu_rate,
        "launch": LAUNCH_US,
    }
    bound = max(terms, key=terms.get)
    return {
        "us": terms[bound],
        "bound": bound,
        "terms": terms,
        "waves": programs / (gpu.sms * resident),
        "depth": depth,
    }


def ideal_us(ideal_bytes: int, gpu: Gpu) -> float:
    """Microseconds to move ``ideal_bytes`` at the peak HBM bandwidth (the roofline)."""
    return ideal_bytes / (gpu.hbm_gbps * 1e3)
