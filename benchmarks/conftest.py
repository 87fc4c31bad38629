"""pytest set-up of the benchmarks: options, the grid of configurations, the end-of-run summary.

Options (also settable through environment variables):
    --bench-full       (PSP_BENCH_FULL=1)   the full GPU grid, not the default one (~8 min, H100)
    --bench-cpu-model  (PSP_BENCH_CPU_MODEL=1) on CPU, also the PSPNet-50 1x3x473x473 forward with
                       both head layouts (``modelcmp``; ~10 s a call on 2 cores)
    --bench-out DIR    (PSP_BENCH_OUT=DIR)  where the summary .md and .png go. Default: beside
                       --benchmark-json when given, else benchmarks/results/latest on CUDA, else a
                       fresh temporary directory (a CPU run never writes into the repository).

CPU runs use one intra-op thread unless PSP_BENCH_THREADS says otherwise (see cpu_threads).

Unlike tests/conftest.py this does not turn on TRITON_INTERPRET: on CPU the ``fused`` provider is
skipped unless the user sets TRITON_INTERPRET=1 (the interpreter is far too slow to time).
"""

from __future__ import annotations

import gc
import os
import tempfile
from pathlib import Path

import pytest
import torch

from psp_kernels import interpreting

from . import summary
from .grids import cmp_cpu_grid, cmp_gpu_grid, cpu_grid, gpu_grid, skip_reason
from .harness import RESULTS

RESULTS_DIR = Path(__file__).parent / "results"


def pytest_addoption(parser):
    group = parser.getgroup("psp-kernels benchmarks")
    group.addoption(
        "--bench-full",
        action="store_true",
        default=False,
        help="run the full GPU grid (every case x N in 1,8,16 x 60/90 x fp32/fp16/bf16 x provider)",
    )
    group.addoption(
        "--bench-cpu-model",
        action="store_true",
        default=False,
        help="on CPU, also compare the head layouts on PSPNet-50 1x3x473x473 (~10 s a call)",
    )
    group.addoption(
        "--bench-out",
        default=None,
        metavar="DIR",
        help="directory for the summary .md and speed-up .png (env PSP_BENCH_OUT)",
    )


def is_full(config) -> bool:
    """True when the full grid was asked for (``--bench-full`` or ``PSP_BENCH_FULL=1``)."""
    env = os.environ.get("PSP_BENCH_FULL", "0") not in ("", "0")
    return bool(config.getoption("--bench-full")) or env


def is_cpu_model(config) -> bool:
    """True when the opt-in full-size CPU model comparison was asked for."""
    env = os.environ.get("PSP_BENCH_CPU_MODEL", "0") not in ("", "0")
    return bool(config.getoption("--bench-cpu-model")) or env


def pytest_generate_tests(metafunc):
    if "bench" not in metafunc.fixturenames:
        return
    cases = metafunc.module.BENCH_CASES
    cuda = torch.cuda.is_available()
    full = is_full(metafunc.config)
    interp = interpreting()
    cpu_model = is_cpu_model(metafunc.config)
    params = []
    grids = ((True, gpu_grid(full) + cmp_gpu_grid(full)), (False, cpu_grid() + cmp_cpu_grid()))
    for gpu_shape, grid in grids:
        for b in grid:
            if b.case not in cases:
                continue
            reason = skip_reason(
                b, cuda=cuda, gpu_shape=gpu_shape, full=full, interp=interp, cpu_model=cpu_model
            )
            marks = [pytest.mark.skip(reason=reason)] if reason else []
            params.append(pytest.param(b, id=b.id, marks=marks))
    metafunc.parametrize("bench", params)


def cpu_threads() -> int:
    """Intra-op threads for CPU runs: ``PSP_BENCH_THREADS``, default 1.

    One thread keeps the CPU smoke run stable on a shared CI machine: with the default (one thread
    per core) a busy machine makes OpenMP wait so long that tiny ops take 100x longer.
    """
    return int(os.environ.get("PSP_BENCH_THREADS", "1"))


@pytest.fixture
def bench_device():
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads())
    yield device
    torch.set_num_threads(threads)
    gc.collect()
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def output_dir(config) -> tuple[Path, str]:
    """Directory and file stem for the summary files of this run."""
    stem = "summary"
    json_file = config.getoption("benchmark_json", default=None)
    if json_file is not None:
        json_path = Path(getattr(json_file, "name", json_file))
        stem = json_path.stem
    chosen = config.getoption("--bench-out") or os.environ.get("PSP_BENCH_OUT")
    if chosen:
        return Path(chosen), stem
    if json_file is not None:
        return json_path.parent, stem
    if torch.cuda.is_available():
        return RESULTS_DIR / "latest", stem
    return Path(tempfile.mkdtemp(prefix="psp-bench-")), stem


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not RESULTS:
        return
    out_dir, stem = output_dir(config)
    paths = summary.write_outputs(RESULTS, out_dir, stem)
    tr = terminalreporter
    tr.section("psp-kernels benchmark summary")
    for line in summary.render(RESULTS).splitlines():
        tr.write_line(line)
    tr.write_line("")
    tr.write_line(f"summary: {paths['md']}")
    tr.write_line(f"plot:    {paths['png'] or 'none (nothing to compare, or no matplotlib)'}")
