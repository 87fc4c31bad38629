"""Run the GPU benchmark suite and keep its results under ``benchmarks/results/``.

    python -m benchmarks.run_gpu                 # default grid (about 8 minutes on an H100)
    python -m benchmarks.run_gpu --bench-full    # every combination (an hour or more)
    python -m benchmarks.run_gpu -k ppm          # any other pytest arguments pass through

writes ``benchmarks/results/<gpu-name>_<YYYY-MM-DD>.json`` (pytest-benchmark's JSON, every
measurement in each benchmark's ``extra_info``), ``.md`` (the summary tables and target checks) and
``.png`` (speed-up over eager against input size), and prints the summary. Run it from a checkout
with the package installed (``pip install -e .``) and a CUDA GPU.
"""

from __future__ import annotations

import datetime
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def result_stem(gpu_name: str, date: datetime.date | None = None) -> str:
    """``<gpu-name>_<date>``: the GPU's name lower-cased with runs of other characters as ``-``."""
    slug = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-") or "gpu"
    return f"{slug}_{(date or datetime.date.today()).isoformat()}"


def main(argv: list[str] | None = None) -> int:
    import torch

    args = list(sys.argv[1:] if argv is None else argv)
    if not torch.cuda.is_available():
        print("benchmarks.run_gpu needs a CUDA GPU (torch.cuda.is_available() is False)")
        return 2
    stem = result_stem(torch.cuda.get_device_name())
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS / f"{stem}.json"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "benchmarks/",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--benchmark-json={json_path}",
        f"--bench-out={RESULTS}",
        *args,
    ]
    print("+", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    rc = subprocess.call(cmd, cwd=ROOT)
    elapsed = time.perf_counter() - t0
    print(f"benchmarks took {elapsed:.0f} s; results: {RESULTS / stem}.{{json,md,png}}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
