"""Timings: kernel 1, kernel 2, the PPM, the head, the loss and the PSPNet-50 training step; ours vs
eager vs ``torch.compile``, each provider checked against its baseline before it is timed.

The configurations and providers are the benchmarks' own (:mod:`benchmarks.providers`): the same
inputs, the same modules, the same checks. On CUDA each time is the median of
``triton.testing.do_bench`` (CUDA events; L2 cleared before every call, so the inputs come from
HBM). Effective bandwidth is the ideal bytes (:mod:`benchmarks.ideal`) over the time, also as a
percentage of a device-to-device copy measured in the same run. A time budget keeps the whole
check inside its allowance: an entry whose estimated cost does not fit is skipped, and says so.
"""

from __future__ import annotations

import statistics
import time

import torch

from ..grids import Bench, LossShape, Shape, TrainShape
from ..harness import CHECK_RTOL, do_bench_s, max_rel_error, peak_memory, synchronize
from ..ideal import ideal_bytes
from ..providers import Case, is_compiled

GPU_SHAPE = Shape(8, 2048, 60, 60, 512, "bfloat16")
GPU_TRAIN = TrainShape(8, 473, "bfloat16")
DRY_SHAPE = Shape(2, 16, 9, 9, 4, "float32")
DRY_TRAIN = TrainShape(2, 17, "float32")  # N=2: the official PPM trains BatchNorm on 1x1
#: The loss at ADE20K's shapes (N=16, 150 classes, 60x60 -> 473x473), bf16 and fp32.
GPU_LOSS = {"loss-bf16": LossShape(16, 150, 60, 60, "bfloat16"),
            "loss-fp32": LossShape(16, 150, 60, 60, "float32")}  # fmt: skip
DRY_LOSS = {"loss-bf16": LossShape(2, 19, 9, 9, "float32"),
            "loss-fp32": LossShape(1, 7, 5, 6, "float32")}  # fmt: skip

# (case, pass, providers[, shape]); the first provider is the baseline, against which the others
# are checked; the shape is a key of GPU_LOSS (default: the case's). The work runs in tiers
# (:func:`_tier`): the budget drops compilations first.
PLAN = [
    ("ppm", "fwd", ("eager", "compiled", "fused", "fused-compiled")),
    ("ppm", "fwd+bwd", ("eager", "compiled", "fused", "fused-compiled")),
    ("kernel1", "fwd", ("eager", "compiled", "fused")),
    ("kernel1", "fwd+bwd", ("eager", "compiled", "fused")),
    ("kernel2", "fwd", ("eager", "compiled", "fused")),
    ("kernel2", "fwd+bwd", ("eager", "compiled", "fused")),
    ("headcmp", "fwd", ("concat", "concat_free")),
    ("headcmp", "fwd+bwd", ("concat", "concat_free")),
    ("head", "fwd", ("eager", "compiled", "fused", "fused-compiled")),
    ("head", "fwd+bwd", ("eager", "compiled", "fused", "fused-compiled")),
    ("train", "step", ("eager", "fused", "compiled", "fused-compiled")),
    ("loss", "fwd", ("eager", "compiled", "fused"), "loss-bf16"),
    ("loss", "fwd+bwd", ("eager", "compiled", "fused"), "loss-bf16"),
    ("loss", "fwd", ("eager", "compiled", "fused"), "loss-fp32"),
    ("loss", "fwd+bwd", ("eager", "compiled", "fused"), "loss-fp32"),
]
#: Rough cost of one entry (seconds, first call included) for the budget, on an H100/H200.
COST_S = {"train": 15.0, "train-compiled": 150.0, "compiled": 40.0, "plain": 4.0}


def copy_bandwidth(device: torch.device, dry_run: bool) -> dict:
    """Device-to-device copy of a buffer far beyond L2: bytes read + written over the time."""
    n = (1 << 20) if dry_run else (1 << 30)  # 2 MiB / 2 GiB of bf16
    src = torch.randn(n, device=device).to(torch.bfloat16)
    dst = torch.empty_like(src)
    t = _time(lambda: dst.copy_(src), device, per_call=1e-3, dry_run=dry_run)
    moved = 2 * src.numel() * src.element_size()
    return {"bytes": moved, "time_s": t, "gbps": moved / t / 1e9}


def _time(fn, device, per_call, dry_run, grad_to_none=()) -> float:
    if device.type == "cuda":
        return do_bench_s(fn, per_call, grad_to_none)
    times = []
    for _ in range(1 if dry_run else 5):  # CPU (the dry run): host-clock median
        for t in grad_to_none:
            t.grad = None
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _kind(case: str, provider: str) -> str:
    """The :data:`COST_S` entry of a case and provider."""
    if case == "train":
        return "train-compiled" if is_compiled(provider) else "train"
    return "compiled" if is_compiled(provider) else "plain"


def _skip(case: str, provider: str, device, dry_run: bool) -> str | None:
    if not dry_run:
        return None
    if is_compiled(provider):
        return "torch.compile is not timed in --dry-run (the CPU benchmark smoke run compiles)"
    if case == "train" and provider.startswith("fused"):
        return "a PSPNet-50 step through Triton's interpreter takes minutes"
    return None


def _one(case: Case, provider: str, device, dry_run: bool, refs):
    """First call, check against the baseline's outputs ``refs`` (``None``: this is the
    baseline), peak memory, timed calls; returns the row and the first call's outputs."""
    run = case.runnable(provider)
    run.setup()
    synchronize(device)
    t0 = time.perf_counter()
    outs = [t.detach().clone() for t in run.fn()]
    synchronize(device)
    first = time.perf_counter() - t0
    row = {"first_call_s": first, "max_rel_err": None, "check_ok": None}
    if refs is not None:
        err = max_rel_error(outs, refs)
        row["max_rel_err"] = err
        row["check_ok"] = err <= CHECK_RTOL.get(case.dtype, 5e-2)
    cuda = device.type == "cuda"
    if cuda:
        for _ in range(2):  # warm-up
            run.setup()
            run.fn()
        row["peak_mem_bytes"] = peak_memory(run, device)
    if dry_run:  # the first call's host-clock time: a dry run checks the path, not the speed
        row["time_s"] = first
        return row, outs
    run.setup()
    row["time_s"] = _time(run.fn, device, first, dry_run, run.grad_to_none)
    return row, outs


def _tier(case: str, provider: str, baseline: str) -> int:
    """The order of the work: every baseline, then ours, then compiled, then ours compiled;
    the training step's compilations last (the most expensive)."""
    if provider == baseline:
        return 0
    if not is_compiled(provider):
        return 1
    tier = 2 if provider in ("compiled", "compiled-max-autotune") else 3
    return tier + (2 if case == "train" else 0)


def run(device: torch.device, dry_run: bool, deadline: float, copy: dict, log=print) -> list:
    """Every entry of :data:`PLAN` that fits before ``deadline`` (``time.perf_counter()``), in
    the order of :func:`_tier` (so the budget drops compilations first); rows in plan order.

    The cost of an entry is estimated from :data:`COST_S`, replaced by what the last entry of
    the same kind took in this run."""
    shape, train = (DRY_SHAPE, DRY_TRAIN) if dry_run else (GPU_SHAPE, GPU_TRAIN)
    losses = DRY_LOSS if dry_run else GPU_LOSS
    entries = []  # (tier, plan index, case, pass, provider, baseline, shape)
    for case_name, pass_, providers, *named in PLAN:
        s = losses[named[0]] if named else train if case_name == "train" else shape
        for provider in providers:
            tier = _tier(case_name, provider, providers[0])
            entries.append((tier, len(entries), case_name, pass_, provider, providers[0], s))
    cases, refs, cost = {}, {}, dict(COST_S)
    rows = {}
    for _, order, case_name, pass_, provider, baseline, s in sorted(entries):
        key = (case_name, pass_, s)
        b = Bench(case_name, pass_, s, provider)
        row = {"case": case_name, "pass": pass_, "provider": provider,
               "baseline": baseline, "config": s.label, "dtype": s.dtype}  # fmt: skip
        kind = _kind(case_name, provider)
        reason = _skip(case_name, provider, device, dry_run)
        if reason is None and key not in refs and provider != baseline:
            reason = "no baseline outputs to check against"
        left = deadline - time.perf_counter()
        if reason is None and cost[kind] > left:
            reason = f"time budget: {left:.0f} s left, about {cost[kind]:.0f} s needed"
        if reason:
            rows[order] = {**row, "skipped": reason}
            log(f"time   {b.id}: skipped ({reason})")
            continue
        t0 = time.perf_counter()
        try:
            if key not in cases:
                cases[key] = Case(b, device)
            result, outs = _one(cases[key], provider, device, dry_run, refs.get(key))
            row.update(result)
            if provider == baseline:
                refs[key] = outs
            del outs
        except Exception as exc:  # report and go on
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            row["error"] = f"{type(exc).__name__}: {first_line}"
        finally:
            torch._dynamo.reset()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        cost[kind] = time.perf_counter() - t0
        ideal = ideal_bytes(case_name, pass_, s) if isinstance(s, (Shape, LossShape)) else None
        if ideal and row.get("time_s"):
            row["ideal_bytes"] = ideal
            row["gbps"] = ideal / row["time_s"] / 1e9
            row["pct_of_copy"] = 100.0 * row["gbps"] / copy["gbps"]
        rows[order] = row
        log(f"time   {b.id}: " + (row.get("error") or _summary(row)))
    rows = [rows[i] for i in sorted(rows)]
    _ratios(rows)
    return rows


def _summary(row: dict) -> str:
    parts = [f"{row['time_s'] * 1e3:.3f} ms", f"first call {row['first_call_s']:.1f} s"]
    if row.get("gbps"):
        parts.append(f"{row['gbps']:.0f} GB/s ({row['pct_of_copy']:.0f}% of copy)")
    if row.get("max_rel_err") is not None:
        parts.append(f"max rel err {row['max_rel_err']:.1e}" + ("" if row["check_ok"] else " FAIL"))
    return ", ".join(parts)


def _ratios(rows: list[dict]) -> None:
    """``vs_baseline`` and ``vs_compiled`` (the compiled baseline's time over this one's)."""
    times = {(r["case"], r["pass"], r["config"], r["provider"]): r.get("time_s") for r in rows}
    for r in rows:
        t = r.get("time_s")
        base = times.get((r["case"], r["pass"], r["config"], r["baseline"]))
        comp = times.get((r["case"], r["pass"], r["config"], "compiled"))
        r["vs_baseline"] = base / t if base and t else None
        r["vs_compiled"] = comp / t if comp and t else None
