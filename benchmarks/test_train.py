"""One PSPNet-50 training step: forward with labels, loss, backward, SGD step."""

from .providers import run_bench

BENCH_CASES = ("train",)


def test_train_step(bench, benchmark, bench_device, request):
    run_bench(benchmark, bench, bench_device, request.node.nodeid)
