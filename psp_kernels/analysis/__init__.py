"""What a GPU would run, read without one: the instruments behind the workload report.

* :mod:`.record` drives the public ops on meta tensors standing in for
  CUDA tensors inside a simulated GPU and records every Triton launch (grid, arguments, options);
* :mod:`.machine` compiles each launch for sm_80 / sm_90 with the specialization Triton's JIT
  applies and reads its machine code (registers, spills, shared memory, occupancy, the widths of
  the global accesses from the SASS and, per tensor argument, from the PTX, tensor-core
  instructions);
* :mod:`.cost` is the written-down cost model (``benchmarks/README.md``): each launch's time on
  H100 / H200 / A100 estimated from its bytes, its serial latency-bound steps and its
  tensor-core FLOPs;
* :mod:`.report` puts them together: the per-launch table, the findings and the totals
  (``python -m psp_kernels.compile_check --workload ...``).
"""
