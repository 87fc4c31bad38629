"""What the third-party conversion tests share: a converted model against its original.

:func:`check_converted` builds a model twice from the same random weights (BatchNorm statistics
randomised), converts one with ``pspnet.convert_ppm`` and compares them: the ``state_dict``
(keys, shapes, values), eval outputs in float64 (through the Triton kernels under the
interpreter when there is no GPU; the conv after the concat forced concat-free, then over the
concat) and float32 (the CPU paths, as the shapes decide), and one training step in float64
(concat-free): the loss, every gradient and every BatchNorm running statistic after the step.
"""

from __future__ import annotations

import contextlib
import copy

import torch

import pspnet
from benchmarks.mmseg_models import stub_mmcv_ops
from psp_kernels.ops import utils
from pspnet.convert import units
from pspnet.testing import randomize_batchnorm
from tests.helpers import assert_close

__all__ = ["stub_mmcv_ops", "check_converted", "outputs"]


def outputs(out) -> list[torch.Tensor]:
    """The tensors of a model's output (a tensor, a list of them, or a ModelOutput)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in outputs(o)]
    if hasattr(out, "logits"):
        return [out.logits]
    raise TypeError(f"unexpected output {type(out).__name__}")


def _loss(outs) -> torch.Tensor:
    """A loss that weighs every output element differently (so every gradient is exercised)."""
    total = 0
    for o in outs:
        w = torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)
        total = total + (o * w).sum() + o.square().mean()
    return total


def _run(model, inputs, train, forward):
    model.train(train)
    torch.manual_seed(1)  # the same dropout masks
    out = outputs(forward(model, inputs))
    if not train:
        return out, []
    loss = _loss(out)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [inputs, *params], allow_unused=True)
    return [loss], list(grads)


def check_converted(build, make_input, forward=lambda m, x: m(x), *, label="", interpret=True):
    """Build with ``build()``, convert a copy, compare (see the module docstring); returns the
    converted float64 model. ``make_input(dtype)`` gives the input; ``forward(model, x)`` runs."""
    torch.manual_seed(0)
    original = randomize_batchnorm(build(), seed=1)
    converted = copy.deepcopy(original)
    before = {k: v.clone() for k, v in original.state_dict().items()}
    assert pspnet.convert_ppm(converted) is converted
    after = converted.state_dict()
    assert list(after) == list(before), f"{label}: state_dict keys changed"
    for k, v in after.items():
        assert v.shape == before[k].shape and torch.equal(v, before[k]), f"{label}: {k} changed"
    # the unconverted library loads the converted model's checkpoint, strictly
    copy.deepcopy(original).load_state_dict(after, strict=True)

    # eval: float64 with the conv after the concat concat-free and over the concat (forced: tiny
    # maps may pick either), float32 as the shapes decide
    runs = ((torch.float64, 1e-10, interpret, True), (torch.float64, 1e-10, interpret, False),
            (torch.float32, 1e-4, False, None))  # fmt: skip
    for dtype, tol, interp, force in runs:
        o, c = copy.deepcopy(original).to(dtype), copy.deepcopy(converted).to(dtype)
        x = make_input(dtype)
        with torch.no_grad(), _interpreter(interp), _force(force):
            got, _ = _run(c, x, False, forward)
        with torch.no_grad():
            want, _ = _run(o, x, False, forward)
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            assert_close(a, b, f"{label} eval {dtype} output {i}", tol=tol, nonzero=True)

    o, c = copy.deepcopy(original).double(), copy.deepcopy(converted).double()
    x = make_input(torch.float64).requires_grad_()
    with _interpreter(interpret), _force(True):
        got, got_grads = _run(c, x, True, forward)
    want, want_grads = _run(o, x, True, forward)
    assert_close(got[0], want[0], f"{label} training loss", tol=1e-10)
    # relative to each gradient's own scale, or 1% of the largest where a gradient is zero in
    # exact arithmetic (a BatchNorm bias before a conv and another BatchNorm: rounding only)
    floor = 1e-2 * max(g.abs().max().item() for g in want_grads if g is not None)
    for i, (a, b) in enumerate(zip(got_grads, want_grads, strict=True)):
        assert_close(a, b, f"{label} gradient {i}", tol=1e-10, floor=floor)
    for (name, a), (_, b) in zip(c.named_buffers(), o.named_buffers(), strict=True):
        assert_close(a.double(), b.double(), f"{label} buffer {name}", tol=1e-10, floor=1e-8)
    return c


@contextlib.contextmanager
def _force(value):
    """Force the concat-free form on (True) or off (False) in converted heads."""
    saved, units.FORCE = units.FORCE, value
    try:
        yield
    finally:
        units.FORCE = saved


class _interpreter:
    """Run the Triton kernels through the interpreter (if it is on) or the CPU paths."""

    def __init__(self, on: bool):
        self.on = on

    def __enter__(self):
        self.saved = utils.INTERPRETER
        utils.INTERPRETER = self.saved and self.on

    def __exit__(self, *exc):
        utils.INTERPRETER = self.saved
