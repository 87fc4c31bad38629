"""What each op tells the ahead-of-time instruments about its kernels.

* ``configs.aot_specs() -> list[AotSpec]``: one entry per Triton kernel and per configuration
  (block sizes, warps, stages, dtype) that its launcher can pick, so that the generic
  ``python -m psp_kernels.compile_check`` covers exactly what can run on a GPU;
* ``configs.TRAFFIC``: per kernel name, a function of a recorded launch
  (:class:`psp_kernels.analysis.record.Launch`) that returns its :class:`Traffic`, the inputs of
  the workload report's cost model (:mod:`psp_kernels.analysis.cost`).
"""

from __future__ import annotations

import inspect
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

    @classmethod
    def of(cls, name: str, kernel, constexprs: dict, pointers: dict, cfg: dict) -> AotSpec:
        """The spec of ``kernel`` launched with the config ``cfg`` (its block sizes and
        ``num_warps``/``num_stages``) and the other ``constexprs``: the arguments named in
        ``pointers`` get those Triton types, every other non-constexpr argument ``"i32"``."""
        meta = {k: v for k, v in cfg.items() if k not in ("num_warps", "num_stages")}
        constexprs = dict(constexprs, **meta)
        names = inspect.signature(kernel.fn).parameters
        signature = {k: pointers.get(k, "i32") for k in names if k not in constexprs}
        return cls(name, kernel, signature, constexprs, cfg["num_warps"], cfg["num_stages"])


@dataclass(frozen=True)
class Traffic:
    """What one launch does, as the cost model needs it (estimates, from the kernel's design).

    Attributes:
        moved: bytes it reads and writes in HBM (re-reads of tensors too big for L2 included).
        ideal: bytes of its inputs read once and its outputs written once.
        dot_flops: FLOPs of its ``tl.dot`` products (0 without dots).
        dot_kind: precision class of those dots: ``"16bit"``, ``"tf32"``, ``"tf32x3"`` or
            ``"fp32"`` (``input_precision="ieee"``: FMA, no tensor cores).
        steps: serial loop steps of its longest program that wait for a global load.
        step_tensor: the pointer argument those loads read (its PTX accesses tell whether they
            are software-pipelined).
        loop_steps: iterations of the software-pipelined (innermost) loop those steps run in,
            when loops nest (0: ``steps``, one flat loop). A pipeline cannot run further ahead
            than its loop's iterations: the model's depth is at most this.
        fills_gpu: the launcher sizes the grid to fill the GPU whatever the batch (row splits),
            so it must reach one wave at batch 1 too.
        sfu_ops: exponentials and logarithms it computes (special-function unit operations,
            padded lanes included): a softmax over many classes is bound by these, not by bytes.
    """

    moved: int
    ideal: int
    dot_flops: float = 0.0
    dot_kind: str = "16bit"
    steps: int = 1
    step_tensor: str = ""
    loop_steps: int = 0
    fills_gpu: bool = False
    sfu_ops: float = 0.0


def dot_kind(precision: str, operand_itemsize: int) -> str:
    """The cost model's precision class of a ``tl.dot``: its ``input_precision`` and the size
    of its operands' elements (2: 16-bit operands, whose dots ignore the precision)."""
    if precision == "ieee":
        return "fp32"
    if operand_itemsize == 2:
        return "16bit"
    return precision  # "tf32" or "tf32x3" on float32 operands
