"""Kernel 1's CPU path: four ``F.adaptive_avg_pool2d`` calls vs the stacked pooling matrix products.

    python -m benchmarks.compare_pooling --threads 2 --out benchmarks/results/<stem>

For PSPNet's feature maps (2048 channels, 60 x 60 from a 473 crop, 64 x 64 from a 512 crop,
batch 1 and 8), contiguous and channels_last, forward only and forward + backward (gradient of x),
times the pooling of bins 1, 2, 3, 6 both ways, interleaved in one process (each round runs both,
alternating which goes first) and reports the medians and the median per-round ratio
``adaptive_avg_pool2d / matrix products`` (> 1: the products are faster), and the load average
before and after. This decides which inputs ``psp_kernels.pyramid_pool_conv`` pools by matrix
products on CPU (``psp_kernels.ops.pyramid_pool_conv.separable``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from psp_kernels.ops.pyramid_pool_conv import separable

from .compare_deploy import report

BINS = (1, 2, 3, 6)
SHAPES = ((1, 2048, 60, 60), (1, 2048, 64, 64), (8, 2048, 60, 60))


def _pools(x):
    return [F.adaptive_avg_pool2d(x, b) for b in BINS]


def _products(x):
    if x.is_contiguous():
        return separable.stacked_pools(x, BINS)
    return separable._stacked_pools_channels_last(x, BINS)


def _case(shape, channels_last: bool, backward: bool, rounds: int) -> dict:
    x = torch.randn(*shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(backward)
    grads = [torch.randn(shape[0], shape[1], b, b) for b in BINS]
    err = max(((a - b).abs().max() / a.abs().max()).item() for a, b in zip(_pools(x), _products(x)))
    fns = {"adaptive_avg_pool2d": _pools, "matrix products": _products}

    def run(fn):
        with torch.set_grad_enabled(backward):
            ys = fn(x)
            if backward:
                torch.autograd.grad(ys, x, grads)

    for fn in fns.values():  # warm-up
        run(fn)
    times = {k: [] for k in fns}
    for r in range(rounds):
        for k in list(fns) if r % 2 == 0 else list(fns)[::-1]:
            t0 = time.perf_counter()
            run(fns[k])
            times[k].append(time.perf_counter() - t0)
    a, b = times["adaptive_avg_pool2d"], times["matrix products"]
    return {
        "shape": list(shape),
        "layout": "channels_last" if channels_last else "contiguous",
        "pass": "fwd+bwd" if backward else "fwd",
        "median_ms": {k: statistics.median(v) * 1e3 for k, v in times.items()},
        "paired_ratio_median": statistics.median([p / q for p, q in zip(a, b)]),
        "max_rel_err": err,
        "times_s": times,
    }


def compare(rounds=15, threads=2, log=print) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    start = os.getloadavg()[0]
    cases = []
    for backward in (False, True):
        for channels_last in (False, True):
            for shape in SHAPES:
                rec = _case(shape, channels_last, backward, rounds)
                log(
                    f"{rec['pass']} {rec['layout']} {shape}: {rec['paired_ratio_median']:.2f}x "
                    f"({rec['median_ms']})"
                )
                cases.append(rec)
    return {
        "threads": threads,
        "rounds": rounds,
        "load_average_start_end": [round(start, 2), round(os.getloadavg()[0], 2)],
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cases": cases,
        "command": "python -m benchmarks.compare_pooling " + " ".join(sys.argv[1:]),
    }


def render(rec: dict) -> str:
    lo, hi = rec["load_average_start_end"]
    lines = [
        f"Pooling of bins 1, 2, 3, 6 on CPU, float32, {rec['threads']} threads, {rec['rounds']} "
        f"interleaved rounds per case; load average {lo} at the start, {hi} at the end "
        f"({rec['cpu_count']} CPUs); torch {rec['torch']}.",
        "",
        "| pass | layout | x | adaptive_avg_pool2d x4 (ms) | matrix products (ms) "
        "| ratio (median per round) | max rel. diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in rec["cases"]:
        m = c["median_ms"]
        lines.append(
            f"| {c['pass']} | {c['layout']} | {'x'.join(map(str, c['shape']))} "
            f"| {m['adaptive_avg_pool2d']:.2f} | {m['matrix products']:.2f} "
            f"| {c['paired_ratio_median']:.2f}x | {c['max_rel_err']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare_pooling", description=__doc__)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="output stem (writes <out>.json and <out>.md)")
    args = p.parse_args(argv)
    rec = compare(args.rounds, args.threads)
    report(rec, render(rec), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
