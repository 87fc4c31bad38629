"""Randomized tests of the four public ops (hypothesis; strategies in tests/op_strategies.py).

Valid inputs: random shapes (maps smaller than the largest bin included), strides (slices,
permutations, channels_last, broadcasts), bin sets, ``align_corners``, optional arguments,
which inputs need gradients and the launchers' test hooks, in float64 on CPU through Triton's
interpreter. Each example must equal the reference, forward and every gradient, within the
contract's float64 tolerance, or raise the error the contract gives for it: the only valid-looking
input refused here is ``shifted_upsample_add`` with ``backend="triton"`` on maps past its kernels'
single tile (``resolve_backend``: ``ValueError`` naming the kernel limit).

Invalid inputs: one contract violation (rank, sizes, counts, bins, dtypes, devices, backend) of a
random valid case must raise the contract's ``ValueError``/``TypeError`` naming the argument (and
the expected shape, for shape errors), launch no kernel and compute nothing.

The valid-input tests need the interpreter (float64 does not run on the CUDA kernels): they skip
where it is off, e.g. on a GPU machine. Example counts are bounded and derandomized for CI.
"""

from __future__ import annotations

import contextlib
import signal
import threading

import pytest
import torch
import torch.nn.functional as F
import triton
from hypothesis import assume, event, given
from hypothesis import strategies as st

import psp_kernels
from psp_kernels import reference
from psp_kernels.ops import utils as ops_utils
from psp_kernels.ops.pyramid_pool_conv import configs as ppc_configs
from psp_kernels.ops.shifted_upsample_add import configs as sua_configs
from psp_kernels.ops.upsample_concat import configs as uc_configs
from tests.helpers import assert_close_to_reference
from tests.op_strategies import (
    KINDS,
    SUACase,
    apply_mutation,
    build_ppc,
    build_sua,
    build_uc,
    fuzz_settings,
    make_tensor,
    mutations,
    ppc_cases,
    sua_cases,
    uc_cases,
)

F64 = torch.float64

needs_interpreter = pytest.mark.skipif(
    not ops_utils.interpreting(),
    reason="float64 through the kernels runs only in Triton's interpreter (TRITON_INTERPRET=1 on "
    "CPU); the CUDA kernels refuse float64",
)

_KNOB_MODULES = {"ppc": ppc_configs, "uc": uc_configs, "utils": ops_utils}


@contextlib.contextmanager
def time_limit(seconds: float, what: str):
    """Fail (instead of hanging) when a call takes longer than ``seconds`` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _expired(signum, frame):
        raise TimeoutError(f"{what} took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def knobs(values: dict):
    """Set the launchers' test hooks (``{(module, attribute): value}``) for one example."""
    with pytest.MonkeyPatch.context() as mp:
        for (module, attr), value in values.items():
            mp.setattr(_KNOB_MODULES[module], attr, value)
        yield


def _grads(outputs, leaves, grad_outputs):
    """Gradients of ``outputs`` on ``leaves`` (zeros for a leaf the outputs do not use).

    The graph is kept: the op's and the reference's graphs share the views between the leaves
    and the arguments (a division saves its divisor).
    """
    return torch.autograd.grad(
        outputs, leaves, grad_outputs, allow_unused=True, materialize_grads=True, retain_graph=True
    )


def _check_grads(names, grads, ref_grads):
    for name, g, r in zip(names, grads, ref_grads, strict=True):
        assert_close_to_reference(g, r, F64, f"grad {name}")


def _upstream(shape, case_layout, seed):
    """An output gradient of ``shape`` laid out as ``case_layout`` (any strides)."""
    gen = torch.Generator().manual_seed(seed ^ 0x5EED)
    return make_tensor(shape, case_layout, gen)[1]


def _check_format(out, x):
    """Dense x: the output keeps its memory format (like ``torch.empty_like``)."""
    if x.is_contiguous():
        assert out.is_contiguous(), "contiguous x must give a contiguous output"
    elif x.is_contiguous(memory_format=torch.channels_last):
        assert out.is_contiguous(memory_format=torch.channels_last), "channels_last x"


# ----------------------------------------------------------------------------------------------
# Valid inputs
# ----------------------------------------------------------------------------------------------


@needs_interpreter
@fuzz_settings(max_examples=15)
@given(case=ppc_cases())
def test_pyramid_pool_conv_random_valid(case):
    built = build_ppc(case)
    a = built.args
    kw = dict(scale=a["scale"], shift=a["shift"], relu=a["relu"])
    with knobs(case.knobs), time_limit(120, "pyramid_pool_conv"):
        ys = psp_kernels.pyramid_pool_conv(
            a["x"], a["weights"], a["bins"], backend=a["backend"], **kw
        )
        ref = reference.pyramid_pool_conv(a["x"], a["weights"], a["bins"], **kw)
        assert isinstance(ys, list) and len(ys) == len(case.bin_list)
        for i, (y, r, b, rr) in enumerate(zip(ys, ref, case.bin_list, case.rs, strict=True)):
            assert y.shape == (case.n, rr, b, b), f"y[{i}] shape"
            assert_close_to_reference(y, r, F64, f"y[{i}]")
        if not built.leaves:
            event("ppc: forward only")
            return
        used = [i for i, u in enumerate(case.used_outputs) if u] or [0]
        event(f"ppc: {len(used)} of {len(ys)} outputs in the loss")
        gs = [_upstream(ref[i].shape, case.grad_layout, case.seed + i) for i in used]
        grads = _grads([ys[i] for i in used], built.leaves, gs)
        ref_grads = _grads([ref[i] for i in used], built.leaves, gs)
    _check_grads(built.names, grads, ref_grads)


@needs_interpreter
@fuzz_settings(max_examples=12)
@given(case=ppc_cases())
def test_pyramid_pooling_random_valid(case):
    built = build_ppc(case)
    a = built.args
    kw = dict(scale=a["scale"], shift=a["shift"], relu=a["relu"])
    ac = a["align_corners"]
    with knobs(case.knobs), time_limit(120, "pyramid_pooling"):
        out = psp_kernels.pyramid_pooling(
            a["x"], a["weights"], a["bins"], align_corners=ac, backend=a["backend"], **kw
        )
        ys = reference.pyramid_pool_conv(a["x"], a["weights"], a["bins"], **kw)
        ref = reference.upsample_concat(a["x"], ys, align_corners=ac)
        assert out.shape == (case.n, case.c + sum(case.rs), case.h, case.w)
        assert_close_to_reference(out, ref, F64, "output")
        assert torch.equal(out[:, : case.c], a["x"]), "the copy of x must be exact"
        _check_format(out, a["x"])
        if not built.leaves:
            event("ppc: forward only")
            return
        g = _upstream(ref.shape, case.grad_layout, case.seed)
        grads = _grads(out, built.leaves, g)
        ref_grads = _grads(ref, built.leaves, g)
    _check_grads(built.names, grads, ref_grads)


@needs_interpreter
@fuzz_settings(max_examples=15)
@given(case=uc_cases())
def test_upsample_concat_random_valid(case):
    built = build_uc(case)
    a = built.args
    ac = a["align_corners"]
    event(f"uc: {len(case.branch_sizes)} branches")
    with knobs(case.knobs), time_limit(120, "upsample_concat"):
        out = psp_kernels.upsample_concat(
            a["x"], a["branches"], align_corners=ac, backend=a["backend"]
        )
        ref = reference.upsample_concat(a["x"], a["branches"], align_corners=ac)
        c_total = case.c + sum(r for r, _, _ in case.branch_sizes)
        assert out.shape == (case.n, c_total, case.h, case.w)
        assert_close_to_reference(out, ref, F64, "output")
        assert torch.equal(out[:, : case.c], a["x"]), "the copy of x must be exact"
        _check_format(out, a["x"])
        if not built.leaves:
            return
        g = _upstream(ref.shape, case.grad_layout, case.seed)
        grads = _grads(out, built.leaves, g)
        ref_grads = _grads(ref, built.leaves, g)
    _check_grads(built.names, grads, ref_grads)


def _sua_refused(case: SUACase) -> bool:
    """The contract's answer for this case: ``backend="triton"`` refuses maps past the kernels'
    single tile (``3 * sum(h) <= MAX_K`` and ``3 * sum(w) <= MAX_K``); ``"auto"`` computes them on
    the plain PyTorch path."""
    k = 3 * sum(h for h, _ in case.map_sizes)
    j = 3 * sum(w for _, w in case.map_sizes)
    return case.backend == "triton" and max(k, j) > sua_configs.MAX_K


@needs_interpreter
@fuzz_settings(max_examples=15)
@given(case=sua_cases())
def test_shifted_upsample_add_random_valid(case):
    built = build_sua(case)
    a = built.args
    ac = a["align_corners"]
    call = lambda: psp_kernels.shifted_upsample_add(  # noqa: E731
        a["base"], a["maps"], align_corners=ac, backend=a["backend"]
    )
    if _sua_refused(case):
        event("sua: past the kernels' tile -> ValueError")
        with pytest.raises(ValueError, match=r"backend='triton'.*maps of sizes"):
            call()
        return
    event("sua: computed")
    with time_limit(120, "shifted_upsample_add"):
        out = call()
        ref = reference.shifted_upsample_add(a["base"], a["maps"], align_corners=ac)
        assert out.shape == a["base"].shape
        assert_close_to_reference(out, ref, F64, "output")
        if not built.leaves:
            return
        g = _upstream(ref.shape, case.grad_layout, case.seed)
        grads = _grads(out, built.leaves, g)
        ref_grads = _grads(ref, built.leaves, g)
    _check_grads(built.names, grads, ref_grads)


# ----------------------------------------------------------------------------------------------
# Invalid inputs
# ----------------------------------------------------------------------------------------------


class ComputedOnBadInput(Exception):
    """Raised by the spies: something was launched or computed for an invalid call."""


@contextlib.contextmanager
def nothing_computed():
    """Make every Triton launch and the plain paths' building blocks raise ComputedOnBadInput."""

    def refuse(what):
        def spy(*args, **kwargs):
            raise ComputedOnBadInput(f"{what} called on bad input")

        return spy

    with pytest.MonkeyPatch.context() as mp:
        # kernel[grid](...) of compiled and interpreted kernels alike
        mp.setattr(triton.runtime.jit.KernelInterface, "__getitem__", refuse("a Triton launch"))
        for name in ("adaptive_avg_pool2d", "conv2d", "interpolate", "pad"):
            mp.setattr(F, name, refuse(f"F.{name}"))
        for name in ("cat", "matmul", "einsum"):  # the plain CPU paths' building blocks
            mp.setattr(torch, name, refuse(f"torch.{name}"))
        yield


_CALLS = {
    "pyramid_pool_conv": lambda a: psp_kernels.pyramid_pool_conv(
        a["x"], a["weights"], a["bins"], scale=a["scale"], shift=a["shift"], relu=a["relu"],
        backend=a["backend"],
    ),
    "pyramid_pooling": lambda a: psp_kernels.pyramid_pooling(
        a["x"], a["weights"], a["bins"], scale=a["scale"], shift=a["shift"], relu=a["relu"],
        align_corners=a["align_corners"], backend=a["backend"],
    ),
    "upsample_concat": lambda a: psp_kernels.upsample_concat(
        a["x"], a["branches"], align_corners=a["align_corners"], backend=a["backend"]
    ),
    "shifted_upsample_add": lambda a: psp_kernels.shifted_upsample_add(
        a["base"], a["maps"], align_corners=a["align_corners"], backend=a["backend"]
    ),
}  # fmt: skip


def _check_refused(op: str, family: str, args: dict, mutation) -> None:
    expected = apply_mutation(family, args, mutation)
    assume(expected is not None)  # this mutation does not apply to this case
    event(f"{op}: {mutation.kind}")
    with nothing_computed(), time_limit(20, op):
        try:
            result = _CALLS[op](args)
        except (ValueError, TypeError) as exc:
            why = expected.check(exc)
            assert why is None, f"{mutation}: {why}"
            return
    pytest.fail(f"{mutation}: returned a {type(result).__name__} instead of raising")


# backends: validation comes before the backend decision, so every backend refuses alike
_BACKENDS = st.sampled_from(["triton", "auto", "reference"])

# every kind of violation is tried (a few random cases each), not left to the draw
PER_KIND = 3


@pytest.mark.parametrize("kind", KINDS["ppc"])
@fuzz_settings(max_examples=PER_KIND)
@given(data=st.data(), case=ppc_cases(small=True), backend=_BACKENDS,
       op=st.sampled_from(["pyramid_pool_conv", "pyramid_pooling"]))  # fmt: skip
def test_pyramid_pool_conv_and_pooling_random_invalid(kind, data, case, backend, op):
    args = build_ppc(case, grads=False).args
    args["backend"] = backend
    _check_refused(op, "ppc", args, data.draw(mutations("ppc", kind), label="mutation"))


@pytest.mark.parametrize("kind", KINDS["uc"])
@fuzz_settings(max_examples=PER_KIND)
@given(data=st.data(), case=uc_cases(small=True), backend=_BACKENDS)
def test_upsample_concat_random_invalid(kind, data, case, backend):
    args = build_uc(case, grads=False).args
    args["backend"] = backend
    _check_refused(
        "upsample_concat", "uc", args, data.draw(mutations("uc", kind), label="mutation")
    )


@pytest.mark.parametrize("kind", KINDS["sua"])
@fuzz_settings(max_examples=PER_KIND)
@given(data=st.data(), case=sua_cases(small=True), backend=_BACKENDS)
def test_shifted_upsample_add_random_invalid(kind, data, case, backend):
    args = build_sua(case, grads=False).args
    args["backend"] = backend
    mutation = data.draw(mutations("sua", kind), label="mutation")
    _check_refused("shifted_upsample_add", "sua", args, mutation)
