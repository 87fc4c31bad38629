"""The cost model's times beside the measured ones (``psp_kernels.analysis``; written down in
``benchmarks/README.md``).

The workload report (``python -m psp_kernels.compile_check --workload ppm ppm-train head``)
compiles what the fused ops launch at the timed shape for this GPU's architecture and models each
launch. It needs no GPU but a few CPU minutes at most, so it runs in a subprocess (without
``TRITON_INTERPRET``) while the GPU is busy with the timings, and its JSON is read at the end.

Which measurement each modelled workload stands beside:

* ``ppm`` (the eval PPM forward): ``ppm fwd`` ``fused``;
* ``ppm-train`` (training PPM forward + backward): ``ppm fwd+bwd`` ``fused``;
* ``head`` (the concat-free head's Triton launches, ``shifted_upsample_add`` forward + backward;
  its x-half 3x3 convolution is cuDNN's and not modelled): ``headcmp fwd+bwd`` ``concat_free``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

WORKLOADS = {"ppm": ("ppm", "fwd", "fused"), "ppm-train": ("ppm", "fwd+bwd", "fused"),
             "head": ("headcmp", "fwd+bwd", "concat_free")}  # fmt: skip
ROOT = Path(__file__).resolve().parents[2]


def model_gpu(device_name: str, capability: tuple[int, int]) -> tuple[str, int]:
    """The cost model's GPU (``psp_kernels.analysis.cost.GPUS``) and architecture for a device."""
    low = device_name.lower()
    for key in ("H200", "H100", "A100"):
        if key.lower() in low:
            return key, 90 if key != "A100" else 80
    return ("A100", 80) if capability[0] < 9 else ("H100", 90)


class ModelRun:
    """The workload report running in a subprocess; :meth:`result` waits for it."""

    def __init__(self, shape, gpu: str, arch: int, jobs: int | None = None):
        self.gpu = gpu
        self.dir = tempfile.mkdtemp(prefix="psp-gpu-check-model-")
        self.json = Path(self.dir) / "workloads.json"
        dtype = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}[shape.dtype]
        jobs = jobs or max(1, min(8, (os.cpu_count() or 2) // 2))
        cmd = [sys.executable, "-m", "psp_kernels.compile_check", "--workload", *WORKLOADS,
               "--n", str(shape.n), "--c", str(shape.c), "--hw", str(shape.h), str(shape.w),
               "--dtype", dtype, "--arch", str(arch), "--jobs", str(jobs), "--warn-only",
               "--json", str(self.json)]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        self.log = open(Path(self.dir) / "log.txt", "w")  # noqa: SIM115 (closed in result)
        self.proc = subprocess.Popen(  # its own process group: a timeout ends its workers too
            cmd, cwd=ROOT, env=env, stdout=self.log, stderr=self.log, start_new_session=True
        )

    def result(self, timeout: float) -> dict:
        """``{"gpu", "totals": {workload: modelled_us, ...}, "findings": n}`` or ``{"note"}``."""
        try:
            self.proc.wait(timeout=max(timeout, 1.0))
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            return {"note": f"the workload report did not finish in time (log: {self.log.name})"}
        finally:
            self.log.close()
        if not self.json.is_file():
            return {"note": f"the workload report failed (rc {self.proc.returncode}; "
                            f"log: {self.log.name})"}  # fmt: skip
        return read_totals(json.loads(self.json.read_text()), self.gpu)


def read_totals(report: dict, gpu: str) -> dict:
    """The modelled and ideal microseconds per workload for ``gpu`` from the report's JSON."""
    totals = {}
    for t in report.get("totals", []):
        if t.get("gpu") == gpu and t.get("workload") in WORKLOADS:
            totals[t["workload"]] = {"modelled_us": t["modelled_us"], "ideal_us": t["ideal_us"]}
    return {"gpu": gpu, "totals": totals, "findings": len(report.get("findings", []))}


def attach(rows: list[dict], model: dict) -> None:
    """Put each workload's modelled time on the measured row it stands beside."""
    for workload, (case, pass_, provider) in WORKLOADS.items():
        total = model.get("totals", {}).get(workload)
        if total is None:
            continue
        for r in rows:
            if (r["case"], r["pass"], r["provider"]) == (case, pass_, provider):
                r["modelled_us"] = total["modelled_us"]
                r["model_workload"] = workload
                if r.get("time_s"):
                    r["measured_over_modelled"] = r["time_s"] * 1e6 / total["modelled_us"]
