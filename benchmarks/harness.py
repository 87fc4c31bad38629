"""Timing, memory and bandwidth measurement shared by every benchmark case.

What one benchmark test does (:func:`measure`), for one provider on one configuration:

1. **First call**, timed on its own (host clock, synchronised): for ``compiled*`` providers this is
   where ``torch.compile`` compiles (Dynamo is reset before each compiled case, so nothing is reused
   from an earlier shape; Inductor's on-disk cache may still help), for ``fused`` it includes
   Triton's JIT. Reported as ``first_call_s`` and, for compiled providers, ``compile_s`` =
   first call minus one steady-state call. Never part of the timed rounds.
2. **Check**: the first call's outputs (and input gradients) are compared with the ``eager``
   provider's on the same inputs; a provider that is fast and wrong fails its test.
3. **Warm-up** calls, not timed.
4. **Peak memory** (CUDA only): ``torch.cuda.max_memory_allocated`` during one call minus what was
   allocated just before it, i.e. the memory the call itself needs (outputs, saved activations,
   gradients, workspace); inputs and parameters allocated beforehand are not counted.
   ``peak_mem_bytes`` is ``None`` on CPU.
5. **Timed rounds**. On CUDA, each round is timed with CUDA events around the call (no host
   synchronisation inside, so launch overhead overlaps the previous work, as in a real pipeline),
   after writing a 256 MB buffer to evict the inputs from L2; ``time_s`` is the median.
   pytest-benchmark then times its own rounds of "call + ``torch.cuda.synchronize()``" (host
   clock, the same L2 flush before each round, untimed); its statistics land in the JSON as usual
   and their median is reported as ``wall_s``. On CPU only pytest-benchmark's rounds run and
   ``time_s`` is their median.

Effective bandwidth: ``gbps = ideal_bytes / time_s / 1e9``, where ``ideal_bytes`` is what a perfect
implementation must move between memory and the chip (see :mod:`benchmarks.cases` for the count of
each case); ``pct_peak`` compares it with the GPU's peak memory bandwidth from :data:`GPU_PEAK_GBPS`
(``None`` for GPUs not in the table; override with ``PSP_BENCH_PEAK_GBPS``).

Everything is written to ``benchmark.extra_info`` (so it lands in ``--benchmark-json``) and kept in
:data:`RESULTS` for the end-of-run summary.
"""

from __future__ import annotations

import math
import os
import platform
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

__all__ = [
    "GPU_PEAK_GBPS",
    "RESULTS",
    "Runnable",
    "device_name",
    "peak_bandwidth_gbps",
    "measure",
]

# (regular expression on the lower-cased torch.cuda.get_device_name(), peak memory bandwidth in
# GB/s from the vendor's data sheet). First match wins, so specific variants come first.
GPU_PEAK_GBPS: list[tuple[str, float]] = [
    (r"\bgh200\b.*144", 4900.0),
    (r"\bgh200\b", 4000.0),
    (r"\bh200\b", 4800.0),
    (r"\bh100\b.*\bnvl\b", 3900.0),
    (r"\bh100\b.*\bpcie\b", 2000.0),
    (r"\bh100\b", 3350.0),  # SXM5 ("NVIDIA H100 80GB HBM3")
    (r"\bh800\b.*\bpcie\b", 2000.0),
    (r"\bh800\b", 3350.0),
    (r"\bh20\b", 4000.0),
    (r"\bb200\b", 8000.0),
    (r"\ba100\b.*80gb.*pcie|\ba100\b.*pcie.*80gb", 1935.0),
    (r"\ba100\b.*80gb", 2039.0),
    (r"\ba100\b", 1555.0),  # 40 GB, SXM4 or PCIe
    (r"\ba10g?\b", 600.0),
    (r"\ba30\b", 933.0),
    (r"\ba40\b", 696.0),
    (r"\bl40s?\b", 864.0),
    (r"\bl4\b", 300.0),
    (r"\bv100\b", 900.0),
    (r"\bt4\b", 320.0),
    (r"\brtx 5090\b", 1792.0),
    (r"\brtx 4090\b", 1008.0),
    (r"\brtx 3090\b", 936.0),
    (r"\brtx a6000\b", 768.0),
]

# One dict per benchmark that ran in this process (the same content as its extra_info, plus the
# test id); read by the summary in benchmarks/conftest.py.
RESULTS: list[dict] = []

_FLUSH_BYTES = 256 * 1024 * 1024
_flush_buffer: dict[torch.device, torch.Tensor] = {}


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's (``platform.processor()``, else ``"cpu"``)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or "cpu"


def peak_bandwidth_gbps(name: str) -> float | None:
    """Peak memory bandwidth (GB/s) of the GPU called ``name``; ``None`` when unknown.

    ``PSP_BENCH_PEAK_GBPS`` overrides the table (useful for a GPU it does not list).
    """
    env = os.environ.get("PSP_BENCH_PEAK_GBPS")
    if env:
        return float(env)
    low = name.lower()
    for pattern, gbps in GPU_PEAK_GBPS:
        if re.search(pattern, low):
            return gbps
    return None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def flush_l2(device: torch.device) -> None:
    """Overwrite a buffer larger than any GPU's L2 so that the next call reads from HBM."""
    if device.type != "cuda":
        return
    buf = _flush_buffer.get(device)
    if buf is None:
        buf = _flush_buffer[device] = torch.empty(_FLUSH_BYTES, dtype=torch.int8, device=device)
    buf.zero_()


@dataclass
class Runnable:
    """One provider on one configuration, ready to call.

    ``fn()`` does one complete call (forward, or forward + backward, or a training step) and
    returns the tensors to compare against the eager provider (``[]`` for none). ``setup()`` runs
    untimed before every call (it clears gradients). ``check`` is False where outputs are random
    (dropout in training mode).
    """

    fn: Callable[[], Sequence[torch.Tensor]]
    setup: Callable[[], None] = field(default=lambda: None)
    check: bool = True


# Largest error allowed against the eager provider, relative to the eager output's max abs. Loose
# on purpose: it catches a wrong result, not rounding (compiled code and cuDNN/TF32 reorder sums).
CHECK_RTOL = {torch.float32: 5e-3, torch.float16: 2e-2, torch.bfloat16: 6e-2, torch.float64: 1e-6}


def max_rel_error(outs: Sequence[torch.Tensor], refs: Sequence[torch.Tensor]) -> float:
    """Largest ``max|a - b| / max|b|`` over matching pairs of tensors."""
    if len(outs) != len(refs):
        raise AssertionError(f"provider returned {len(outs)} tensors, eager {len(refs)}")
    worst = 0.0
    for a, b in zip(outs, refs):
        if a.shape != b.shape:
            raise AssertionError(f"shape {tuple(a.shape)} differs from eager's {tuple(b.shape)}")
        # float32 resolves errors down to ~1e-7 (below every tolerance) with half the memory of
        # float64 on the largest outputs (GBs)
        a, b = a.detach().float(), b.detach().float()
        scale = b.abs().max().item() or 1.0
        worst = max(worst, (a - b).abs().max().item() / scale)
    return worst


def _rounds(per_call_s: float, budget_s: float, lo: int, hi: int) -> int:
    return int(min(hi, max(lo, math.ceil(budget_s / max(per_call_s, 1e-9)))))


def _cuda_event_times(run: Runnable, device: torch.device, rounds: int) -> list[float]:
    pairs = []
    for _ in range(rounds):
        run.setup()
        flush_l2(device)
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        run.fn()
        end.record()
        pairs.append((start, end))
    torch.cuda.synchronize(device)
    return [s.elapsed_time(e) / 1e3 for s, e in pairs]


def _peak_memory(run: Runnable, device: torch.device) -> int:
    run.setup()
    synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    outs = run.fn()
    synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    del outs
    return int(peak)


def measure(
    benchmark,
    run: Runnable,
    *,
    device: torch.device,
    info: dict,
    reference: Runnable | None = None,
    dtype: torch.dtype = torch.float32,
    compiled: bool = False,
    test_id: str = "",
) -> dict:
    """Measure ``run`` with pytest-benchmark's ``benchmark`` fixture; return the result record.

    ``info`` describes the configuration (case, pass, provider, shape, ``ideal_bytes``...); the
    record is ``info`` plus the measurements, and is also stored in ``benchmark.extra_info`` and
    :data:`RESULTS`. ``reference`` (the eager provider on the same inputs) is called once to check
    the outputs of ``run``.
    """
    cuda = device.type == "cuda"
    record = dict(info)
    record["device"] = device.type
    record["device_name"] = device_name(device)
    record["torch"] = torch.__version__
    try:
        import triton

        record["triton"] = triton.__version__
    except ImportError:  # pragma: no cover
        record["triton"] = None

    # 1. first call (compilation / JIT), timed apart
    run.setup()
    synchronize(device)
    t0 = time.perf_counter()
    outs = run.fn()
    synchronize(device)
    first_call_s = time.perf_counter() - t0

    # 2. correctness against eager
    record["max_rel_err"] = None
    if reference is not None and run.check and reference.check:
        reference.setup()
        refs = [t.detach().clone() for t in reference.fn()]
        reference.setup()
        err = max_rel_error(outs, refs)
        record["max_rel_err"] = err
        tol = CHECK_RTOL.get(dtype, 5e-2)
        assert err <= tol, (
            f"{info.get('provider')} differs from eager by {err:.3g} (relative to eager's max abs; "
            f"allowed {tol:g}): refusing to benchmark a wrong result"
        )
        del refs
    del outs

    # 3. warm-up, also used to size the number of rounds. On CPU the first call of an uncompiled
    # provider is warm-up enough (nothing is JIT-compiled there) and a training step is slow.
    warmup = 3 if cuda else (1 if compiled else 0)
    per_call = first_call_s
    if warmup:
        t0 = time.perf_counter()
        for _ in range(warmup):
            run.setup()
            run.fn()
        synchronize(device)
        per_call = (time.perf_counter() - t0) / warmup

    # 4. peak memory
    record["peak_mem_bytes"] = _peak_memory(run, device) if cuda else None

    # 5. timed rounds
    if cuda:
        rounds = _rounds(per_call, 0.4, 10, 200)
        event_times = sorted(_cuda_event_times(run, device, rounds))
        time_s = event_times[len(event_times) // 2]
        record["time_source"] = "cuda_events"
    else:
        rounds = _rounds(per_call, 0.4, 2, 10)
        time_s = None
        record["time_source"] = "wall"

    def setup_round():
        run.setup()
        flush_l2(device)
        synchronize(device)

    def call():
        run.fn()
        synchronize(device)

    benchmark.pedantic(call, setup=setup_round, rounds=rounds, iterations=1, warmup_rounds=0)
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    wall_s = float(stats.median) if stats is not None else None
    if time_s is None:
        time_s = wall_s
    record["wall_s"] = wall_s
    record["time_s"] = time_s
    record["rounds"] = rounds
    record["first_call_s"] = first_call_s
    record["compile_s"] = (
        max(first_call_s - (time_s or 0.0), 0.0) if compiled and time_s is not None else None
    )

    # effective bandwidth
    ideal = record.get("ideal_bytes")
    peak_bw = peak_bandwidth_gbps(record["device_name"]) if cuda else None
    record["peak_gbps"] = peak_bw
    record["gbps"] = ideal / time_s / 1e9 if ideal and time_s else None
    record["pct_peak"] = (
        100.0 * record["gbps"] / peak_bw if record["gbps"] is not None and peak_bw else None
    )

    benchmark.extra_info.update(record)
    RESULTS.append({"test": test_id, **record})
    return record
