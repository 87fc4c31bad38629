"""The whole PPM, and the PSPNet head (PPM + classifier), forward and forward+backward."""

from .providers import run_bench

BENCH_CASES = ("ppm", "head")


def test_module(bench, benchmark, bench_device, request):
    run_bench(benchmark, bench, bench_device, request.node.nodeid)
