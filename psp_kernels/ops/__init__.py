"""The fused operations, one package per op.

Each op package holds, in this order of dependence:

* ``kernels.py``: the ``@triton.jit`` kernels;
* ``configs.py``: the block sizes / warps / stages the launcher can pick, and ``aot_specs()``,
  the same configurations for ``python -m psp_kernels.compile_check``;
* ``launch.py``: the launchers (input invariants, tables, grids) that call the kernels;
* ``op.py``: the ``torch.library`` custom ops (fake implementations, autograd) and the public
  function that ``psp_kernels`` exports.

``utils.py`` is the policy every op shares (accumulation dtype, dot precision, the interpreter
flag, SM count, int32 extent checks, the CUDA device guard). The public functions live in the
top-level ``psp_kernels`` namespace, so no package here is shadowed by a function of its name.
"""
