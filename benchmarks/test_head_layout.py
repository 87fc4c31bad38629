"""Head layouts compared: ``concat`` (the paper's) vs ``concat_free`` (``pspnet.heads``), for the
PSPNet head alone and the whole PSPNet-50, forward and forward+backward, with FLOPs and the bytes
saved for backward (see ``benchmarks/providers.py``)."""

from .providers import run_bench

BENCH_CASES = ("headcmp", "modelcmp")


def test_head_layout(bench, benchmark, bench_device, request):
    run_bench(benchmark, bench, bench_device, request.node.nodeid)
