"""The ``loss`` case (:mod:`benchmarks.grids`): inputs and providers, as methods of
:class:`benchmarks.providers.Case`.

Every provider returns the loss and the logits' gradient for the check against ``eager`` (the
prediction is computed and timed, not compared: near-ties of 16-bit logits may pick different
classes in different summation orders).
"""

from __future__ import annotations

import psp_kernels
from psp_kernels import reference

from .harness import Runnable

IGNORE = 255


def inputs(case, gen) -> None:
    """Logits ``(N, K, h, w)``, labels ``(N, H, W)`` with a band of ignored rows."""
    import torch

    s = case.b.shape
    case.logits = case._rand(gen, s.n, s.k, s.h, s.w, scale=3.0)
    labels = torch.randint(0, s.k, (s.n, *s.size), generator=gen)
    labels[:, : s.size[0] // 8] = IGNORE
    case.labels = labels.to(case.device)


def _materialised(logits, labels):
    return reference.upsample_cross_entropy(logits, labels, ignore_index=IGNORE,
                                            return_prediction=True)  # fmt: skip


def _fused(logits, labels):
    return psp_kernels.upsample_cross_entropy(logits, labels, ignore_index=IGNORE,
                                              return_prediction=True)  # fmt: skip


def runnable(case, provider: str, compile_fn, grad_run) -> Runnable:
    """``eager`` / ``compiled``: the materialised loss (``compile_fn`` of it: the providers'
    ``torch.compile``); ``fused``: ``psp_kernels.upsample_cross_entropy`` (Triton on CUDA, its
    PyTorch path on CPU). ``grad_run``: the providers' forward + backward runnable."""
    import torch

    if provider == "fused":
        f = _fused
    elif provider == "eager":
        f = _materialised
    else:
        f = compile_fn(_materialised, provider)
    if case.b.pass_ == "fwd":

        def fwd():
            with torch.no_grad():
                loss, _ = f(case.logits, case.labels)
            return [loss]

        return Runnable(fwd)
    logits = case.logits.detach().requires_grad_()

    def fn():
        loss, _ = f(logits, case.labels)
        loss.backward()
        return [loss.detach(), logits.grad]

    return grad_run(fn, [logits])
