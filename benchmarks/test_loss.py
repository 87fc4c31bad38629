"""The training loss of PSPNet's main head: materialised (eager, compiled) against the fused op."""

from .providers import run_bench

BENCH_CASES = ("loss",)


def test_loss(bench, benchmark, bench_device, request):
    run_bench(benchmark, bench, bench_device, request.node.nodeid)
