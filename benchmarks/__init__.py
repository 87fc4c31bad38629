"""Speed and memory benchmarks of psp_kernels against plain PyTorch and torch.compile.

Run with ``pytest benchmarks/`` (see ``benchmarks/README.md``); render a saved run with
``python -m benchmarks.summary results.json``; run the GPU suite with
``python -m benchmarks.run_gpu``.
"""
