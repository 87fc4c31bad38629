"""Building one provider for one configuration, and running one benchmark (:func:`run_bench`).

A :class:`Case` holds the inputs and weights of one configuration (seeded), shared by every
provider built from it, so that a provider's first outputs can be checked against its baseline's
(``eager``, or ``concat`` for the head-layout comparison): outputs and the gradients of the inputs
and of one weight. Before each checked call every provider re-seeds the RNG, so dropout masks
agree; compiled providers draw their random numbers like eager (Inductor's ``fallback_random``).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

import psp_kernels
import pspnet
from psp_kernels import reference

from . import loss_case
from .grids import BINS, CLASSES, CMP_CASES, COMPILED, DTYPES, Bench, LossShape, Shape
from .harness import Runnable, measure, saved_tensor_bytes
from .ideal import ideal_bytes
from .modules import HeadModule, PlainPPM, classifier, fused_ppm, randomize_batchnorm

__all__ = ["Case", "info", "is_compiled", "run_bench"]


def _compile(fn, provider: str):
    import torch._inductor.config as inductor_config

    # random ops (dropout) as in eager, so the compiled provider's outputs can be checked
    inductor_config.fallback_random = True
    torch._dynamo.reset()  # no reuse of (or recompile limit from) another shape or dtype
    return torch.compile(fn, mode=COMPILED.get(provider), dynamic=False)


def is_compiled(provider: str) -> bool:
    return provider in COMPILED or provider.endswith("-compiled")


class Case:
    """Inputs and weights of one configuration, shared by every provider built from it."""

    def __init__(self, b: Bench, device: torch.device, seed: int = 0):
        self.b = b
        self.device = device
        self.seed = seed
        self.dtype = DTYPES[b.shape.dtype]
        gen = torch.Generator().manual_seed(seed)
        getattr(self, f"_inputs_{b.case}")(gen)

    def _rand(self, gen, *shape, scale=1.0):
        t = torch.randn(*shape, generator=gen) * scale
        return t.to(self.device, self.dtype)

    def _reseed(self) -> None:
        torch.manual_seed(self.seed)  # the same dropout masks for every provider

    # --- inputs ----------------------------------------------------------------------------
    def _inputs_kernel1(self, gen):
        s = self.b.shape
        self.x = self._rand(gen, s.n, s.c, s.h, s.w)
        self.weights = [self._rand(gen, s.r, s.c, scale=s.c**-0.5) for _ in s.bins]
        self.scale = [1.0 + self._rand(gen, s.r, scale=0.1) for _ in s.bins]
        self.shift = [self._rand(gen, s.r, scale=0.1) for _ in s.bins]
        self.grads = [self._rand(gen, s.n, s.r, b, b) for b in s.bins]

    def _inputs_kernel2(self, gen):
        s = self.b.shape
        self.x = self._rand(gen, s.n, s.c, s.h, s.w)
        self.branches = [self._rand(gen, s.n, s.r, b, b) for b in s.bins]
        self.grad = self._rand(gen, s.n, s.c + len(s.bins) * s.r, s.h, s.w)

    def _module_init(self, gen) -> None:
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))

    def _inputs_ppm(self, gen):
        s = self.b.shape
        self._module_init(gen)
        self.module = randomize_batchnorm(PlainPPM(s.c, s.r, s.bins))
        self.x = self._rand(gen, s.n, s.c, s.h, s.w)
        self.grad = self._rand(gen, s.n, s.c + len(s.bins) * s.r, s.h, s.w)

    def _inputs_head(self, gen):
        s = self.b.shape
        self._module_init(gen)
        ppm = PlainPPM(s.c, s.r, s.bins)
        self.module = randomize_batchnorm(
            nn.Sequential(ppm, classifier(s.c + len(s.bins) * s.r, s.c // 4))
        )
        self.x = self._rand(gen, s.n, s.c, s.h, s.w)
        self.grad = self._rand(gen, s.n, CLASSES, s.h, s.w)

    def _labels(self, gen, model):
        s = self.b.shape
        self.x = torch.randn(s.n, 3, s.crop, s.crop, generator=gen).to(self.device)
        out_h, out_w = model.output_size(s.crop, s.crop)
        self.y = torch.randint(0, CLASSES, (s.n, out_h, out_w), generator=gen).to(self.device)

    def _inputs_train(self, gen):
        s = self.b.shape
        self._module_init(gen)
        # the paper's head for both: the PPM is the one difference (concat_free: modelcmp)
        model = pspnet.PSPNet(layers=s.layers, classes=CLASSES, pretrained=False, head="concat")
        eager = copy.deepcopy(model)
        eager.ppm = PlainPPM(2048, 2048 // len(BINS), BINS)
        eager.ppm.load_state_dict(model.ppm.state_dict())
        self.models = {"fused": model, "eager": eager}
        self._labels(gen, model)

    def _inputs_headcmp(self, gen):
        s = self.b.shape
        self._module_init(gen)
        ppm = pspnet.PPM(s.c, s.r, s.bins)
        cls = classifier(s.c + len(s.bins) * s.r, s.c // 4)
        self.module = randomize_batchnorm(HeadModule(ppm, cls, "concat"))
        self.x = self._rand(gen, s.n, s.c, s.h, s.w)
        self.grad = self._rand(gen, s.n, CLASSES, s.h, s.w)

    _inputs_loss = loss_case.inputs

    def _inputs_modelcmp(self, gen):
        s = self.b.shape
        self._module_init(gen)
        self.module = pspnet.PSPNet(layers=s.layers, classes=CLASSES, pretrained=False)
        self._labels(gen, self.module)

    # --- providers -------------------------------------------------------------------------
    def runnable(self, provider: str) -> Runnable:
        return getattr(self, f"_run_{self.b.case}")(provider)

    def _run_kernel1(self, provider):
        s = self.b.shape

        def eager(x, ws, scale, shift):
            return reference.pyramid_pool_conv(x, ws, s.bins, scale=scale, shift=shift, relu=True)

        def fused(x, ws, scale, shift):
            return psp_kernels.pyramid_pool_conv(
                x, ws, s.bins, scale=scale, shift=shift, relu=True, backend="triton"
            )

        f = fused if provider == "fused" else eager
        if provider in COMPILED:
            f = _compile(eager, provider)
        if self.b.pass_ == "fwd":
            return _no_grad_run(lambda: f(self.x, self.weights, self.scale, self.shift))
        x = self.x.detach().requires_grad_()
        ws = [w.detach().requires_grad_() for w in self.weights]

        def fn():
            ys = f(x, ws, self.scale, self.shift)
            torch.autograd.backward(ys, self.grads)
            return [*ys, x.grad, ws[-1].grad]

        return _grad_run(fn, [x, *ws])

    def _run_kernel2(self, provider):
        def eager(x, branches):
            return reference.upsample_concat(x, branches, align_corners=True)

        def fused(x, branches):
            return psp_kernels.upsample_concat(x, branches, align_corners=True, backend="triton")

        f = fused if provider == "fused" else eager
        if provider in COMPILED:
            f = _compile(eager, provider)
        if self.b.pass_ == "fwd":
            return _no_grad_run(lambda: [f(self.x, self.branches)])
        x = self.x.detach().requires_grad_()
        branches = [y.detach().requires_grad_() for y in self.branches]

        def fn():
            out = f(x, branches)
            out.backward(self.grad)
            return [out, x.grad, *(y.grad for y in branches)]

        return _grad_run(fn, [x, *branches])

    def _module_for(self, provider: str) -> nn.Module:
        s = self.b.shape
        module = copy.deepcopy(self.module)
        if provider.startswith("fused"):  # the PPM is the one difference
            if self.b.case == "ppm":
                module = fused_ppm(module, s.c, s.r, s.bins)
            else:
                module[0] = fused_ppm(module[0], s.c, s.r, s.bins)
        return module.to(self.device, self.dtype)

    def _run_module(self, provider):
        module = self._module_for(provider)
        f = _compile(module, provider) if is_compiled(provider) else module
        if self.b.pass_ == "fwd":
            module.eval()
            return _no_grad_run(lambda: [f(self.x)])
        module.train()
        x = self.x.detach().requires_grad_()
        weight = next(module.parameters())  # the first conv: the gradient through everything

        def fn():
            out = f(x)
            out.backward(self.grad)
            return [out, x.grad, weight.grad]

        return _grad_run(fn, [x, *module.parameters()], self._reseed)

    _run_ppm = _run_module
    _run_head = _run_module

    def _run_train(self, provider):
        model = copy.deepcopy(self.models["fused" if provider.startswith("fused") else "eager"])
        model = model.to(self.device).train()
        f = _compile(model, provider) if is_compiled(provider) else model
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        amp = self.dtype != torch.float32
        conv = model.cls[0].weight

        def fn():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=amp):
                _, main_loss, aux_loss = f(self.x, self.y)
                loss = main_loss + 0.4 * aux_loss
            loss.backward()
            grad = conv.grad.clone()
            opt.step()
            return [main_loss.detach(), aux_loss.detach(), grad]

        return Runnable(fn, self._reseed)

    def _cmp_module(self, provider: str) -> nn.Module:
        module = copy.deepcopy(self.module)
        module.head = provider.removesuffix("-compiled")
        if self.b.case == "headcmp":
            return module.to(self.device, self.dtype)
        return module.to(self.device)  # PSPNet: float32 parameters, autocast for bf16

    def _cmp_parts(self, provider: str):
        """``(module, runnable)`` of a head-layout provider."""
        module = self._cmp_module(provider)
        f = _compile(module, provider) if is_compiled(provider) else module
        amp = self.b.case == "modelcmp" and self.dtype != torch.float32
        device_type = self.device.type

        if self.b.pass_ == "fwd":
            module.eval()

            def fwd():
                with torch.no_grad(), torch.autocast(device_type, self.dtype, enabled=amp):
                    return [f(self.x)]

            return module, Runnable(fwd, self._reseed)
        module.train()
        params = list(module.parameters())
        conv = module.cls[0].weight  # the 3x3 head conv the two layouts compute differently
        if self.b.case == "headcmp":
            x = self.x.detach().requires_grad_()

            def fn():
                out = f(x)
                out.backward(self.grad)
                return [out, x.grad, conv.grad]

            return module, _grad_run(fn, [x, *params], self._reseed)

        def step():
            with torch.autocast(device_type, self.dtype, enabled=amp):
                _, main_loss, aux_loss = f(self.x, self.y)
                loss = main_loss + 0.4 * aux_loss
            loss.backward()
            return [main_loss.detach(), aux_loss.detach(), conv.grad]

        return module, _grad_run(step, params, self._reseed)

    def _run_headcmp(self, provider):
        return self._cmp_parts(provider)[1]

    _run_modelcmp = _run_headcmp

    def _run_loss(self, provider):
        return loss_case.runnable(self, provider, _compile, _grad_run)

    def counts(self, provider: str) -> dict:
        """``flops`` of one call (forward, or forward + backward) and, for ``fwd+bwd``,
        ``saved_bytes`` (:func:`benchmarks.harness.saved_tensor_bytes`), measured on the
        uncompiled module."""
        from torch.utils.flop_counter import FlopCounterMode

        module, run = self._cmp_parts(provider.removesuffix("-compiled"))
        run.setup()
        with FlopCounterMode(display=False) as counter:
            run.fn()
        out = {"flops": int(counter.get_total_flops()), "saved_bytes": None}
        if self.b.pass_ == "fwd+bwd":
            run.setup()
            exclude = [*module.parameters(), *module.buffers(), self.x]
            out["saved_bytes"] = saved_tensor_bytes(run.fn, exclude)
        return out


def _no_grad_run(f) -> Runnable:
    def fn():
        with torch.no_grad():
            return list(f())

    return Runnable(fn)


def _grad_run(fn, tensors, then=None) -> Runnable:
    """A forward + backward: the gradients of ``tensors`` cleared before each call, then
    ``then()`` (re-seeding)."""
    tensors = list(tensors)

    def setup():
        for t in tensors:
            t.grad = None
        if then is not None:
            then()

    return Runnable(fn, setup, grad_to_none=tensors)


def info(b: Bench) -> dict:
    """The part of a result record that describes the configuration."""
    shape = b.shape
    d = {
        "case": b.case,
        "pass": b.pass_,
        "provider": b.provider,
        "baseline": b.baseline,
        "config": shape.label,
        "input_bytes": shape.input_bytes,
        **shape.as_info(),
    }
    measured = isinstance(shape, (Shape, LossShape))
    d["ideal_bytes"] = ideal_bytes(b.case, b.pass_, shape) if measured else None
    return d


def run_bench(benchmark, b: Bench, device: torch.device, test_id: str = "") -> dict:
    """Build ``b`` on ``device``, check it against its baseline and measure it
    (:func:`benchmarks.harness.measure`)."""
    benchmark.group = b.group
    case = Case(b, device)
    record = info(b)
    if b.case in CMP_CASES:
        record.update(case.counts(b.provider))
    run = case.runnable(b.provider)
    reference = case.runnable(b.baseline) if b.provider != b.baseline else None
    return measure(
        benchmark,
        run,
        device=device,
        info=record,
        reference=reference,
        dtype=case.dtype,
        compiled=is_compiled(b.provider),
        test_id=test_id,
    )
