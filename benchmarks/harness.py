"""Timing, memory and bandwidth measurement shared by every benchmark case.

What one benchmark test does (:func:`measure`), for one provider on one configuration:

1. **First call**, timed on its own (host clock, synchronised): for ``compiled*`` providers this is
   where ``torch.compile`` compiles (Dynamo is reset before each compiled case, so nothing is reused
   from an earlier shape; Inductor's on-disk cache may still help), for ``fused`` it includes
   Triton's JIT. Reported as ``first_call_s`` and, for compiled providers, ``compile_s`` =
   first call minus one steady-state call. Never part of the timed rounds.
2. **Check**: the first call's outputs (and input gradients) are compared with the baseline
   provider's on the same inputs; a provider that is fast and wrong fails its test.
3. **Warm-up** calls, not timed.
4. **Peak memory** (CUDA only): ``torch.cuda.max_memory_allocated`` during one call minus what was
   allocated just before it, i.e. the memory the call itself needs (outputs, saved activations,
   gradients, workspace); inputs and parameters allocated beforehand are not counted.
   ``peak_mem_bytes`` is ``None`` on CPU.
5. **Timed rounds**. On CUDA, ``triton.testing.do_bench``: CUDA events around each call, L2
   cleared (a 256 MB buffer zeroed) before each so the inputs come from HBM, gradients of the
   inputs reset between calls; ``time_s`` is its median. pytest-benchmark then times its own
   rounds of "call + ``torch.cuda.synchronize()``" (host clock, the same L2 clearing before each
   round, untimed); its statistics land in the JSON as usual and their median is reported as
   ``wall_s``. On CPU only pytest-benchmark's rounds run and ``time_s`` is their median.

Effective bandwidth: ``gbps = ideal_bytes / time_s / 1e9``, where ``ideal_bytes`` is what a perfect
implementation must move between memory and the chip (:mod:`benchmarks.ideal`); ``pct_peak``
compares it with the GPU's peak memory bandwidth from :data:`GPU_PEAK_GBPS` (``None`` for GPUs
not in the table; override with ``PSP_BENCH_PEAK_GBPS``).

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
    "do_bench_s",
    "peak_bandwidth_gbps",
    "peak_memory",
    "measure",
    "saved_tensor_bytes",
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


def _l2_clearer(device: torch.device) -> Callable[[], None]:
    """What ``triton.testing.do_bench`` does between calls: zero a buffer larger than any L2."""
    if device.type != "cuda":
        return lambda: None
    from triton import runtime

    driver = runtime.driver.active
    cache = driver.get_empty_cache_for_benchmark()
    return lambda: driver.clear_cache(cache)


def saved_tensor_bytes(fn, exclude=()) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``fn()`` runs.

    Tensors whose storage is one of ``exclude``'s (parameters, buffers, inputs: memory that exists
    anyway) are not counted; views of one storage count once, with the whole storage.
    """
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in skip and ptr != 0:
            seen[ptr] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return int(sum(seen.values()))


@dataclass
class Runnable:
    """One provider on one configuration, ready to call.

    ``fn()`` does one complete call (forward, or forward + backward, or a training step) and
    returns the tensors to compare against the baseline provider (``[]`` for none). ``setup()``
    runs untimed before every call (it clears gradients and re-seeds the RNG, so that dropout
    masks agree between providers). ``grad_to_none``: the tensors whose gradients ``setup``
    clears, which ``do_bench`` clears between its timed calls. ``check`` is False where a
    provider's outputs cannot be compared.
    """

    fn: Callable[[], Sequence[torch.Tensor]]
    setup: Callable[[], None] = field(default=lambda: None)
    check: bool = True
    grad_to_none: Sequence[torch.Tensor] = ()


# Largest error allowed against the baseline provider, relative to its output's max abs. Loose
# on purpose: it catches a wrong result, not rounding (compiled code and cuDNN/TF32 reorder sums).
CHECK_RTOL = {torch.float32: 5e-3, torch.float16: 2e-2, torch.bfloat16: 6e-2, torch.float64: 1e-6}


def max_rel_error(outs: Sequence[torch.Tensor], refs: Sequence[torch.Tensor]) -> float:
    """Largest ``max|a - b| / max|b|`` over matching pairs of tensors."""
    if len(outs) != len(refs):
        raise AssertionError(f"provider returned {len(outs)} tensors, the baseline {len(refs)}")
    worst = 0.0
    for a, b in zip(outs, refs):
        if a.shape != b.shape:
            raise AssertionError(
                f"shape {tuple(a.shape)} differs from the baseline's {tuple(b.shape)}"
            )
        # float32 resolves errors down to ~1e-7 (below every tolerance) with half the memory of
        # float64 on the largest outputs (GBs)
        a, b = a.detach().float(), b.detach().float()
        scale = b.abs().max().item() or 1.0
        worst = max(worst, (a - b).abs().max().item() / scale)
    return worst


def _rounds(per_call_s: float, budget_s: float, lo: int, hi: int) -> int:
    return int(min(hi, max(lo, math.ceil(budget_s / max(per_call_s, 1e-9)))))


def do_bench_s(fn, per_call_s: float, grad_to_none=()) -> float:
    """Median seconds of ``fn()`` by ``triton.testing.do_bench``: CUDA events around each call,
    L2 cleared before each, the gradients of ``grad_to_none`` reset between calls."""
    from triton.testing import do_bench

    rep_ms = min(max(400.0, 10e3 * per_call_s), 4000.0)  # at least ~10 calls, at most 4 s
    grads = list(grad_to_none) or None
    return do_bench(fn, warmup=25, rep=rep_ms, grad_to_none=grads, return_mode="median") / 1e3


def peak_memory(run: Runnable, device: torch.device) -> int:
    """Bytes one call of ``run`` allocates beyond what was allocated before it (CUDA)."""
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
    :data:`RESULTS`. ``reference`` (the baseline provider on the same inputs) is called once to
    check the outputs of ``run``.
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

    # 2. correctness against the baseline
    record["max_rel_err"] = None
    if reference is not None and run.check and reference.check:
        reference.setup()
        refs = [t.detach().clone() for t in reference.fn()]
        reference.setup()
        err = max_rel_error(outs, refs)
        base = info.get("baseline", "eager")
        record["max_rel_err"] = err
        tol = CHECK_RTOL.get(dtype, 5e-2)
        assert err <= tol, (
            f"{info.get('provider')} differs from {base} by {err:.3g} (relative to its max abs; "
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
    record["peak_mem_bytes"] = peak_memory(run, device) if cuda else None

    # 5. timed rounds
    if cuda:
        time_s = do_bench_s(run.fn, per_call, run.grad_to_none)
        rounds = _rounds(per_call, 0.2, 3, 50)  # pytest-benchmark's wall-clock rounds
        record["time_source"] = "do_bench"
    else:
        rounds = _rounds(per_call, 0.4, 2, 10)
        time_s = None
        record["time_source"] = "wall"
    clear_l2 = _l2_clearer(device)

    def setup_round():
        run.setup()
        clear_l2()
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
