"""``python -m benchmarks.gpu_check``: one command for the first GPU machine.

1. **Parity** (:mod:`.parity`): every public op of ``psp_kernels`` (``pyramid_pool_conv``,
   ``pyramid_pooling``, ``upsample_concat``, ``shifted_upsample_add``), forward and backward, in
   float32, float16 and bfloat16 with ``backend="triton"``, on fresh random inputs, outputs
   NaN-poisoned before the run and every element checked against float64 on the CPU.
2. **Timings** (:mod:`.timing`): kernel 1, kernel 2, the PPM, the head and the PSPNet-50 training
   step at the headline shapes (N=8, C=2048, 60x60, R=512, bf16; 473x473), ours vs eager vs
   ``torch.compile``, with effective GB/s against a device-to-device copy measured in the same
   run, and the cost model's time beside the measured one (:mod:`.model`).
3. ``benchmarks/results/<gpu>_<date>.{json,md}``.

Runs in about 8 minutes on an H100/H200 (``--budget-s``), with the machine's own torch (2.11 or
newer) and triton: it installs nothing and needs no network. ``--dry-run`` runs the same code path
on CPU through Triton's interpreter at tiny shapes (no ``torch.compile``, no cost model) and
writes into a temporary directory (or ``--out``). Exits 1 when a parity case or a checked
timing fails.
"""

__all__ = ["main"]


def main(argv=None) -> int:
    from .cli import main as _main

    return _main(argv)
