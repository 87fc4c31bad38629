"""Kernel 1 (pyramid_pool_conv) and kernel 2 (upsample_concat) alone, forward and fwd+bwd."""

from .providers import run_bench

BENCH_CASES = ("kernel1", "kernel2")


def test_kernel(bench, benchmark, bench_device, request):
    run_bench(benchmark, bench, bench_device, request.node.nodeid)
