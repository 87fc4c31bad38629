"""Ahead-of-time compile specifications, consumed by ``python -m psp_kernels.compile_check``.

Each op module defines ``aot_specs() -> list[AotSpec]``: one entry per Triton kernel and per
configuration (block sizes, warps, stages, dtype) that its launcher can pick, so that the compile
check covers exactly what can run on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class AotSpec:
    """One kernel configuration to compile ahead of time.

    Attributes:
        name: a readable label, e.g. ``"pool_cells[bf16,BLOCK_C=64]"``.
        kernel: the ``@triton.jit`` function.
        signature: Triton type string of every non-constexpr argument, by name
            (``"*fp32"``, ``"*bf16"``, ``"i32"``, ``"i64"``, ``"fp32"``...).
        constexprs: value of every ``tl.constexpr`` argument, by name.
        num_warps, num_stages: launch options the launcher passes.
    """

    name: str
    kernel: object
    signature: dict
    constexprs: dict = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 2
