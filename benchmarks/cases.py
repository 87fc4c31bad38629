"""Benchmark cases, providers, the shape grids and the byte counts behind "effective bandwidth".

Providers
    ``eager``                  plain PyTorch: ``psp_kernels.reference`` for the kernels,
                               :class:`PlainPPM` (the official layout) for the modules.
    ``compiled``               ``torch.compile(eager, dynamic=False)`` (default mode).
    ``compiled-max-autotune``  the same with ``mode="max-autotune-no-cudagraphs"``.
    ``fused``                  our kernels (``backend="triton"``; ``pspnet.PPM``/``pspnet.PSPNet``).
    ``fused-compiled``         ``torch.compile`` of the fused module (PPM, head, training step): our
                               kernels as custom ops with Inductor fusing what is around them.

Cases (``pass`` is ``fwd`` or ``fwd+bwd``; the training step is ``step``)
    ``kernel1``  ``pyramid_pool_conv(x, W, bins, scale, shift, relu=True)``; gradients for x and W.
    ``kernel2``  ``upsample_concat(x, branches, align_corners=True)``; gradients for x and branches.
    ``ppm``      the whole PPM module. ``fwd``: eval mode under ``torch.no_grad()`` (inference,
                 BatchNorm from running statistics). ``fwd+bwd``: training mode (batch statistics),
                 gradients for x and all parameters. N=1 is skipped for fwd+bwd: the official PPM
                 cannot run BatchNorm in training mode on the 1x1 bin of a single image.
    ``head``     PPM + the PSPNet classifier (``conv3x3(C + sum R -> C/4), BN, ReLU, Dropout2d(0.1),
                 conv1x1(-> 21 classes)``), same modes as ``ppm``. Compute-bound (the 3x3 conv), so
                 no bandwidth is reported.
    ``train``    PSPNet-50 training step: ``zero_grad``, forward with labels,
                 ``main + 0.4 aux`` loss, backward, SGD (momentum 0.9, weight decay 1e-4).
                 ``bfloat16`` means ``torch.autocast`` with float32 parameters (mixed precision),
                 ``float32`` plain.
                 The eager/compiled model is the same PSPNet with its PPM swapped for
                 :class:`PlainPPM` (same weights) and ``head="concat"`` (the official layout).

Head-layout comparison (``concat`` vs ``concat_free``; both on the fused ``pspnet.PPM``)
    ``headcmp``  PPM + classifier as ``pspnet.PSPNet`` runs them (``PSPNet._classify``):
                 ``concat`` = ``cls(ppm(x))``, the paper's layout; ``concat_free`` = the head's 3x3
                 conv without the 4096-channel concat (``pspnet.heads``). ``fwd``: eval,
                 ``torch.no_grad()``; ``fwd+bwd``: training mode, gradients for x and parameters.
    ``modelcmp`` the whole ``pspnet.PSPNet`` (``head=`` either layout, same weights). ``fwd``:
                 eval forward (logits) under ``torch.no_grad()``; ``fwd+bwd``: training forward
                 with labels, ``main + 0.4 aux`` loss, backward (no optimiser step).
                 ``bfloat16`` = ``torch.autocast``.
    Providers ``concat``, ``concat_free`` and, on CUDA, ``concat-compiled``,
    ``concat_free-compiled`` (``torch.compile``, default mode). Every provider of a configuration
    gets the same RNG seed before each call, so dropout masks agree and the ``fwd+bwd`` outputs are
    checked against ``concat`` too. Besides time and peak memory these record ``flops``
    (``torch.utils.flop_counter.FlopCounterMode`` over one call of the uncompiled module: forward,
    or forward + backward; our Triton custom ops count 0 on CUDA, a few MFLOP) and, for
    ``fwd+bwd``, ``saved_bytes``: the bytes of the distinct tensors autograd saves for backward
    during the forward (``torch.autograd.graph.saved_tensors_hooks``), parameters and inputs
    excluded; deterministic, so a CPU proxy of the training memory.

Ideal bytes (what a perfect implementation must move; ``e`` bytes per element, ``S = sum b^2``
cells over the ``nb`` bins, ``R`` channels per bin; tiny terms such as BatchNorm vectors are left
out). Every input read once, every output written once:
    ``kernel1 fwd``  x + weights (nb R C) + outputs (N R S).
    ``kernel1 bwd``  read grad_y (N R S), weights and the pooled x saved by the forward (N S C);
                     write grad_x (N C H W) and grad_W (nb R C). x itself need not be re-read.
    ``kernel2 fwd``  x + branches (N R S) + output (N (C + nb R) H W).
    ``kernel2 bwd``  read the branch channels of grad_out (N nb R H W), write grad_branches
                     (N R S). grad_x is a view of grad_out (torch.cat's backward returns one), so 0.
    ``ppm fwd``      x + conv weights + output (N (C + nb R) H W).
    ``ppm bwd``      read grad_out (N (C + nb R) H W), weights and the saved pooled x; write grad_x
                     (N C H W) and the weight gradients.
    ``fwd+bwd``      the sum of the two.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import psp_kernels
from psp_kernels import reference

from .harness import Runnable, measure

BINS = (1, 2, 3, 6)
CLASSES = 21
PROVIDERS = ("eager", "compiled", "compiled-max-autotune", "fused", "fused-compiled")
COMPILED = {"compiled": None, "compiled-max-autotune": "max-autotune-no-cudagraphs"}
CASES = ("kernel1", "kernel2", "ppm", "head", "train")
CMP_CASES = ("headcmp", "modelcmp")
CMP_PROVIDERS = ("concat", "concat_free", "concat-compiled", "concat_free-compiled")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_SHORT = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


@dataclass(frozen=True)
class Shape:
    """Input of the kernel, PPM and head cases: x is ``(n, c, h, w)``, ``r`` channels per bin."""

    n: int
    c: int
    h: int
    w: int
    r: int
    dtype: str = "float32"
    bins: tuple[int, ...] = BINS

    @property
    def label(self) -> str:
        return f"N{self.n} C{self.c} {self.h}x{self.w} R{self.r} {_SHORT[self.dtype]}"

    @property
    def input_bytes(self) -> int:
        return self.n * self.c * self.h * self.w * DTYPES[self.dtype].itemsize

    def as_info(self) -> dict:
        return {
            "n": self.n,
            "c": self.c,
            "h": self.h,
            "w": self.w,
            "r": self.r,
            "bins": list(self.bins),
            "dtype": self.dtype,
        }


@dataclass(frozen=True)
class TrainShape:
    """Input of the training step: ``n`` images of ``crop x crop``."""

    n: int
    crop: int
    dtype: str = "float32"
    layers: int = 50

    @property
    def label(self) -> str:
        return f"PSPNet-{self.layers} N{self.n} {self.crop}x{self.crop} {_SHORT[self.dtype]}"

    @property
    def input_bytes(self) -> int:
        return self.n * 3 * self.crop * self.crop * 4

    def as_info(self) -> dict:
        return {"n": self.n, "crop": self.crop, "dtype": self.dtype, "layers": self.layers}


@dataclass(frozen=True)
class Bench:
    """One benchmark test: a case, a pass, a shape and a provider."""

    case: str
    pass_: str
    shape: Shape | TrainShape
    provider: str

    @property
    def id(self) -> str:
        return f"{self.case}-{self.pass_}-{self.shape.label.replace(' ', '-')}-{self.provider}"

    @property
    def group(self) -> str:
        return f"{self.case} {self.pass_} {self.shape.label}"


# ---------------------------------------------------------------------------------------------
# The grids


def gpu_grid(full: bool) -> list[Bench]:
    """GPU configurations. Default: about 8 minutes on an H100; ``full``: every combination."""
    out: list[Bench] = []
    sizes = [(n, s) for n in (1, 8, 16) for s in (60, 90)]
    if full:
        for case in ("kernel1", "kernel2", "ppm", "head"):
            for dtype in DTYPES:
                for n, s in sizes:
                    for pass_ in ("fwd", "fwd+bwd"):
                        shape = Shape(n, 2048, s, s, 512, dtype)
                        out += [Bench(case, pass_, shape, p) for p in _providers(case)]
        for dtype in ("bfloat16", "float32"):
            shape = TrainShape(8, 473, dtype)
            out += [Bench("train", "step", shape, p) for p in PROVIDERS]
        return out
    # default: the headline configuration for every case and provider ...
    headline = Shape(8, 2048, 60, 60, 512, "bfloat16")
    for case in ("kernel1", "kernel2", "ppm", "head"):
        providers = _providers(case)
        if case.startswith("kernel"):
            providers = tuple(p for p in providers if p != "compiled-max-autotune")
        for pass_ in ("fwd", "fwd+bwd"):
            out += [Bench(case, pass_, headline, p) for p in providers]
    # ... the PPM over input sizes (bf16) and dtypes (N=8, 60x60), for the speed-up plot ...
    few = ("eager", "compiled", "fused")
    shapes = [Shape(n, 2048, s, s, 512, "bfloat16") for n, s in sizes]
    shapes += [Shape(8, 2048, 60, 60, 512, d) for d in ("float32", "float16")]
    for shape in shapes:
        if shape == headline:
            continue
        for pass_ in ("fwd", "fwd+bwd"):
            out += [Bench("ppm", pass_, shape, p) for p in few]
    # ... and one training step.
    train = TrainShape(8, 473, "bfloat16")
    out += [Bench("train", "step", train, p) for p in PROVIDERS if p != "compiled-max-autotune"]
    return out


def cpu_grid() -> list[Bench]:
    """Small CPU configurations (CI smoke run): every case, fp32."""
    out: list[Bench] = []
    shape = Shape(2, 64, 30, 30, 16, "float32")
    for case in ("kernel1", "kernel2", "ppm", "head"):
        for pass_ in ("fwd", "fwd+bwd"):
            out += [Bench(case, pass_, shape, p) for p in _providers(case)]
    small = Shape(1, 32, 13, 13, 8, "float32")
    out += [Bench("ppm", "fwd", small, p) for p in _providers("ppm")]
    train = TrainShape(2, 25, "float32")
    out += [Bench("train", "step", train, p) for p in PROVIDERS]
    return out


def cmp_gpu_grid(full: bool) -> list[Bench]:
    """GPU configurations of the head-layout comparison (``concat`` vs ``concat_free``).

    Default: the head at N in {1, 8} x 60x60 x {bf16, fp32} (compiled variants at N=8 bf16) and
    PSPNet-50 at N in {1, 8} x 473 x {bf16, fp32}, eager only; ``full``: every provider.
    """
    out: list[Bench] = []
    for dtype in ("bfloat16", "float32"):
        for n in (1, 8):
            shape = Shape(n, 2048, 60, 60, 512, dtype)
            compiled = full or (n == 8 and dtype == "bfloat16")
            providers = CMP_PROVIDERS if compiled else CMP_PROVIDERS[:2]
            for pass_ in ("fwd", "fwd+bwd"):
                out += [Bench("headcmp", pass_, shape, p) for p in providers]
    for dtype in ("bfloat16", "float32"):
        for n in (1, 8):
            shape = TrainShape(n, 473, dtype)
            providers = CMP_PROVIDERS if full else CMP_PROVIDERS[:2]
            for pass_ in ("fwd", "fwd+bwd"):
                out += [Bench("modelcmp", pass_, shape, p) for p in providers]
    return out


# The opt-in CPU comparison of the real model (about 10 s per forward on 2 cores)
CPU_MODEL_FWD = TrainShape(1, 473, "float32")
CPU_MODEL_TRAIN = TrainShape(2, 473, "float32")


def cmp_cpu_grid() -> list[Bench]:
    """CPU configurations of the head-layout comparison.

    CI smoke (default): the full-width head (2048 -> 512 per bin, 4096 -> 512 3x3 conv) at N=1 on
    20x20 features, and PSPNet-50 at N=1 97x97 (fwd) / N=2 65x65 (fwd+bwd). Opt-in
    (``--bench-cpu-model`` / ``PSP_BENCH_CPU_MODEL=1``, or ``--bench-full``): PSPNet-50 1x3x473x473
    eval forward; the 2x3x473x473 training forward + backward only with ``--bench-full``.
    """
    out: list[Bench] = []
    head = Shape(1, 2048, 20, 20, 512, "float32")
    for pass_ in ("fwd", "fwd+bwd"):
        out += [Bench("headcmp", pass_, head, p) for p in CMP_PROVIDERS]
    for pass_, shape in (
        ("fwd", TrainShape(1, 97)),
        ("fwd+bwd", TrainShape(2, 65)),
        ("fwd", CPU_MODEL_FWD),
        ("fwd+bwd", CPU_MODEL_TRAIN),
    ):
        out += [Bench("modelcmp", pass_, shape, p) for p in CMP_PROVIDERS]
    return out


def _providers(case: str) -> tuple[str, ...]:
    if case in ("kernel1", "kernel2"):
        return tuple(p for p in PROVIDERS if p != "fused-compiled")
    return PROVIDERS


def skip_reason(
    b: Bench, *, cuda: bool, gpu_shape: bool, full: bool, interp: bool, cpu_model: bool = False
) -> str | None:
    """Why ``b`` cannot or should not run here; ``None`` when it runs.

    ``cpu_model``: the opt-in full-size PSPNet-50 forward on CPU (``--bench-cpu-model``).
    """
    if gpu_shape and not cuda:
        return "GPU shape: needs CUDA"
    if not gpu_shape and cuda:
        return "CPU smoke shape: runs only without CUDA"
    if b.case in CMP_CASES:
        return _cmp_skip_reason(b, cuda=cuda, full=full, cpu_model=cpu_model)
    if b.case == "train" and pspnet_model() is None:
        return "pspnet.PSPNet is not available yet (pspnet/model.py not committed)"
    if b.case in ("ppm", "head") and b.pass_ == "fwd+bwd" and b.shape.n == 1:
        return "official PPM cannot train with N=1 (BatchNorm on the 1x1 bin)"
    if not cuda:
        if b.provider == "fused" and not interp:
            return "fused kernels need CUDA (or TRITON_INTERPRET=1: the Triton interpreter)"
        if b.provider == "fused" and b.case == "train" and not full:
            return "a training step through the Triton interpreter takes minutes: use --bench-full"
        if b.provider == "fused-compiled":
            return "fused-compiled runs on CUDA only"
        if b.provider in COMPILED and not full:
            if b.case == "train":
                return "compiling PSPNet-50 on CPU takes minutes: use --bench-full"
            if b.case != "ppm" or b.provider != "compiled" or b.shape.n == 1:
                # two compiles (PPM fwd, fwd+bwd) are about a minute of the CPU run
                return "CPU smoke run compiles only the PPM (default mode): use --bench-full"
    return None


def _cmp_skip_reason(b: Bench, *, cuda: bool, full: bool, cpu_model: bool) -> str | None:
    if pspnet_model() is None:
        return "pspnet.PSPNet is not available"
    if cuda or full:
        return None
    if b.provider.endswith("-compiled"):
        return "torch.compile on CPU only with --bench-full"
    if b.case == "modelcmp" and b.shape == CPU_MODEL_TRAIN:
        return "PSPNet-50 2x3x473x473 training step on CPU (minutes): use --bench-full"
    if b.case == "modelcmp" and b.shape == CPU_MODEL_FWD and not cpu_model:
        return "PSPNet-50 1x3x473x473 on CPU (~10 s a call): use --bench-cpu-model"
    return None


# ---------------------------------------------------------------------------------------------
# Byte counts


def ideal_bytes(case: str, pass_: str, s: Shape) -> int | None:
    """Bytes a perfect implementation moves for ``case``/``pass_`` (see the module docstring)."""
    if case not in ("kernel1", "kernel2", "ppm"):
        return None
    e = DTYPES[s.dtype].itemsize
    nb, cells = len(s.bins), sum(b * b for b in s.bins)
    x = s.n * s.c * s.h * s.w  # also the size of grad_x
    weights = nb * s.r * s.c  # also the size of grad_W
    small = s.n * s.r * cells  # all branch outputs (or their gradients)
    pooled = s.n * cells * s.c  # pooled x saved by the forward for grad_W
    out = s.n * (s.c + nb * s.r) * s.h * s.w  # PPM / upsample_concat output (or its gradient)
    branch_planes = s.n * nb * s.r * s.h * s.w  # the upsampled channels of out
    if case == "kernel1":
        fwd = x + weights + small
        bwd = (small + weights + pooled) + (x + weights)  # reads, then writes
    elif case == "kernel2":
        fwd = x + small + out
        bwd = branch_planes + small
    else:
        fwd = x + weights + out
        bwd = (out + weights + pooled) + (x + weights)
    return e * (fwd if pass_ == "fwd" else fwd + bwd)


# ---------------------------------------------------------------------------------------------
# Modules


class PlainPPM(nn.Module):
    """The official PSPNet pyramid pooling module in plain PyTorch (the eager baseline).

    ``features[i] = Sequential(AdaptiveAvgPool2d(b), Conv2d(in_dim, reduction_dim, 1, bias=False),
    BatchNorm2d, ReLU)``; output ``cat([x] + [interpolate(f(x), align_corners=True)])``. Same
    ``state_dict`` keys as ``pspnet.PPM``. On CPU the 1x1 bin is expanded instead of interpolated
    (``reference.upsample``: the same values), because Inductor's CPU backend fails on the backward
    of bilinear upsampling from a 1x1 map; on CUDA it is the official ``F.interpolate``.
    """

    def __init__(self, in_dim: int, reduction_dim: int, bins=BINS):
        super().__init__()
        self.features = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(b),
                nn.Conv2d(in_dim, reduction_dim, kernel_size=1, bias=False),
                nn.BatchNorm2d(reduction_dim),
                nn.ReLU(inplace=True),
            )
            for b in bins
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        out = [x]
        for f in self.features:
            y = f(x)
            if x.device.type == "cpu":
                out.append(reference.upsample(y, size, align_corners=True))
            else:
                out.append(F.interpolate(y, size, mode="bilinear", align_corners=True))
        return torch.cat(out, 1)


def classifier(in_dim: int, mid: int, classes: int = CLASSES) -> nn.Sequential:
    """The official PSPNet ``cls`` head."""
    return nn.Sequential(
        nn.Conv2d(in_dim, mid, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(mid),
        nn.ReLU(inplace=True),
        nn.Dropout2d(p=0.1),
        nn.Conv2d(mid, classes, kernel_size=1),
    )


def _randomise_batchnorm(module: nn.Module) -> None:
    """Non-trivial BatchNorm affine parameters and running statistics (so eval mode is tested)."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)


def pspnet_model():
    """``pspnet.PSPNet`` when it exists, else ``None``."""
    try:
        import pspnet
    except ImportError:  # pragma: no cover
        return None
    model = getattr(pspnet, "PSPNet", None)
    if model is None:
        try:
            from pspnet.model import PSPNet as model
        except ImportError:
            return None
    return model


def fused_ppm(plain: PlainPPM, in_dim: int, reduction_dim: int, bins) -> nn.Module:
    """``pspnet.PPM`` holding the same weights as ``plain``."""
    import pspnet

    fused = pspnet.PPM(in_dim, reduction_dim, bins)
    fused.load_state_dict(plain.state_dict())
    return fused


class HeadModule(nn.Module):
    """PPM + classifier computed exactly as ``pspnet.PSPNet`` computes them (its ``_classify``).

    ``head`` is ``"concat"`` or ``"concat_free"``, as in ``PSPNet(head=...)``; calling the model's
    own method keeps this benchmark in step with the model.
    """

    use_ppm = True

    def __init__(self, ppm: nn.Module, cls: nn.Sequential, head: str):
        super().__init__()
        self.ppm = ppm
        self.cls = cls
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pspnet_model()._classify(self, x)


def saved_tensor_bytes(fn, exclude=()) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``fn()`` runs.

    Tensors whose storage is one of ``exclude``'s (parameters, buffers, inputs: memory that exists
    anyway) are not counted; views of one storage count once, with the whole storage.
    """
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in skip and ptr != 0:
            seen[ptr] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return int(sum(seen.values()))


# ---------------------------------------------------------------------------------------------
# Building one provider for one configuration


def _compile(fn, provider: str):
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
        builder = getattr(self, f"_inputs_{b.case}")
        builder(gen)

    def _rand(self, gen, *shape, scale=1.0):
        t = torch.randn(*shape, generator=gen) * scale
        return t.to(self.device, self.dtype)

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
        self.module = PlainPPM(s.c, s.r, s.bins)
        _randomise_batchnorm(self.module)
        self.x = self._rand(gen, s.n, s.c, s.h, s.w)
        self.grad = self._rand(gen, s.n, s.c + len(s.bins) * s.r, s.h, s.w)

    def _inputs_head(self, gen):
        s = self.b.shape
        self._module_init(gen)
        self.module = nn.Sequential(
            PlainPPM(s.c, s.r, s.bins), classifier(s.c + len(s.bins) * s.r, s.c // 4)
        )
        _randomise_batchnorm(self.module)
        self.x = self._rand(gen, s.n, s.c, s.h, s.w)
        self.grad = self._rand(gen, s.n, CLASSES, s.h, s.w)

    def _inputs_train(self, gen):
        s = self.b.shape
        self._module_init(gen)
        model = pspnet_model()(layers=s.layers, classes=CLASSES, pretrained=False)
        plain = PlainPPM(2048, 2048 // len(BINS), BINS)
        plain.load_state_dict(model.ppm.state_dict())
        eager = copy.deepcopy(model)
        eager.ppm = plain
        eager.head = "concat"  # the official layout (PlainPPM has no pyramid() for concat_free)
        self.models = {"fused": model, "eager": eager}
        self.x = torch.randn(s.n, 3, s.crop, s.crop, generator=gen).to(self.device)
        out_h, out_w = model.output_size(s.crop, s.crop)
        self.y = torch.randint(0, CLASSES, (s.n, out_h, out_w), generator=gen).to(self.device)

    def _inputs_headcmp(self, gen):
        import pspnet

        s = self.b.shape
        self._module_init(gen)
        ppm = pspnet.PPM(s.c, s.r, s.bins)
        self.module = HeadModule(ppm, classifier(s.c + len(s.bins) * s.r, s.c // 4), "concat")
        _randomise_batchnorm(self.module)
        self.x = self._rand(gen, s.n, s.c, s.h, s.w)
        self.grad = self._rand(gen, s.n, CLASSES, s.h, s.w)

    def _inputs_modelcmp(self, gen):
        s = self.b.shape
        self._module_init(gen)
        self.module = pspnet_model()(layers=s.layers, classes=CLASSES, pretrained=False)
        self.x = torch.randn(s.n, 3, s.crop, s.crop, generator=gen).to(self.device)
        out_h, out_w = self.module.output_size(s.crop, s.crop)
        self.y = torch.randint(0, CLASSES, (s.n, out_h, out_w), generator=gen).to(self.device)

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

        return Runnable(fn, _clear_grads([x, *ws]))

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

        return Runnable(fn, _clear_grads([x, *branches]))

    def _module_for(self, provider: str) -> nn.Module:
        s = self.b.shape
        module = copy.deepcopy(self.module)
        if provider.startswith("fused"):
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
        params = list(module.parameters())

        def fn():
            out = f(x)
            out.backward(self.grad)
            return [out, x.grad]

        # the head has dropout in training mode: outputs are random, so not compared
        return Runnable(fn, _clear_grads([x, *params]), check=self.b.case == "ppm")

    _run_ppm = _run_module
    _run_head = _run_module

    def _run_train(self, provider):
        model = copy.deepcopy(self.models["fused" if provider.startswith("fused") else "eager"])
        model = model.to(self.device).train()
        f = _compile(model, provider) if is_compiled(provider) else model
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        amp = self.dtype != torch.float32

        def fn():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=amp):
                _, main_loss, aux_loss = f(self.x, self.y)
                loss = main_loss + 0.4 * aux_loss
            loss.backward()
            opt.step()
            return [loss.detach()]

        return Runnable(fn, check=False)

    def _cmp_module(self, provider: str) -> nn.Module:
        module = copy.deepcopy(self.module)
        module.head = provider.removesuffix("-compiled")
        if self.b.case == "headcmp":
            return module.to(self.device, self.dtype)
        return module.to(self.device)  # PSPNet: float32 parameters, autocast for bf16

    def _cmp_parts(self, provider: str):
        """``(module, callable, runnable)`` of a head-layout provider."""
        module = self._cmp_module(provider)
        f = _compile(module, provider) if is_compiled(provider) else module
        amp = self.b.case == "modelcmp" and self.dtype != torch.float32
        device_type = self.device.type

        def reseed():
            torch.manual_seed(self.seed)  # same dropout masks for every provider

        if self.b.pass_ == "fwd":
            module.eval()

            def fwd():
                with torch.no_grad(), torch.autocast(device_type, self.dtype, enabled=amp):
                    return [f(self.x)]

            return module, Runnable(fwd, reseed)
        module.train()
        params = list(module.parameters())
        clear = _clear_grads(params)
        conv = module.cls[0].weight  # the 3x3 head conv the two layouts compute differently
        if self.b.case == "headcmp":
            x = self.x.detach().requires_grad_()

            def fn():
                out = f(x)
                out.backward(self.grad)
                return [out, x.grad, conv.grad]

            return module, Runnable(fn, _then(_clear_grads([x, *params]), reseed))

        def step():
            with torch.autocast(device_type, self.dtype, enabled=amp):
                _, main_loss, aux_loss = f(self.x, self.y)
                loss = main_loss + 0.4 * aux_loss
            loss.backward()
            return [main_loss.detach(), aux_loss.detach(), conv.grad]

        return module, Runnable(step, _then(clear, reseed))

    def _run_headcmp(self, provider):
        return self._cmp_parts(provider)[1]

    _run_modelcmp = _run_headcmp

    def counts(self, provider: str) -> dict:
        """``flops`` of one call (forward, or forward + backward) and, for ``fwd+bwd``,
        ``saved_bytes`` (see the module docstring), measured on the uncompiled module."""
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


def _then(*fns):
    def run():
        for fn in fns:
            fn()

    return run


def _no_grad_run(f) -> Runnable:
    def fn():
        with torch.no_grad():
            return list(f())

    return Runnable(fn)


def _clear_grads(tensors):
    def setup():
        for t in tensors:
            t.grad = None

    return setup


def info(b: Bench) -> dict:
    """The part of a result record that describes the configuration."""
    shape = b.shape
    d = {
        "case": b.case,
        "pass": b.pass_,
        "provider": b.provider,
        "config": shape.label,
        "input_bytes": shape.input_bytes,
        **shape.as_info(),
    }
    d["ideal_bytes"] = ideal_bytes(b.case, b.pass_, shape) if isinstance(shape, Shape) else None
    return d


__all__ = [
    "BINS",
    "CASES",
    "CMP_CASES",
    "CMP_PROVIDERS",
    "PROVIDERS",
    "Bench",
    "Case",
    "HeadModule",
    "PlainPPM",
    "Shape",
    "TrainShape",
    "classifier",
    "cmp_cpu_grid",
    "cmp_gpu_grid",
    "cpu_grid",
    "gpu_grid",
    "ideal_bytes",
    "info",
    "run_bench",
    "saved_tensor_bytes",
    "skip_reason",
]


def run_bench(benchmark, b: Bench, device: torch.device, test_id: str = "") -> dict:
    """Build ``b`` on ``device`` and measure it (see :func:`benchmarks.harness.measure`)."""
    benchmark.group = b.group
    case = Case(b, device)
    record = info(b)
    baseline = "eager"
    if b.case in CMP_CASES:
        baseline = "concat"
        record.update(case.counts(b.provider))
    run = case.runnable(b.provider)
    reference = None
    if b.provider != baseline and b.case != "train":
        reference = case.runnable(baseline)
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
