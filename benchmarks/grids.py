"""The benchmark grid: what runs (cases, passes, shapes, providers) and what is skipped where.

Providers
    ``eager``                  plain PyTorch: ``psp_kernels.reference`` for the kernels, the
                               official PPM layout (:class:`benchmarks.modules.PlainPPM`) for the
                               modules.
    ``compiled``               ``torch.compile(eager, dynamic=False)`` (default mode).
    ``compiled-max-autotune``  the same with ``mode="max-autotune-no-cudagraphs"``.
    ``fused``                  our kernels (``backend="triton"``; ``pspnet.PPM``).
    ``fused-compiled``         ``torch.compile`` of the fused module (PPM, head, training step): our
                               kernels as custom ops with Inductor fusing what is around them.

Cases (``pass`` is ``fwd`` or ``fwd+bwd``; the training step is ``step``); each compares
providers that differ in one thing only:
    ``kernel1``  ``pyramid_pool_conv(x, W, bins, scale, shift, relu=True)``; gradients for x and W.
    ``kernel2``  ``upsample_concat(x, branches, align_corners=True)``; gradients for x and branches.
    ``ppm``      the whole PPM module. ``fwd``: eval mode under ``torch.no_grad()`` (inference,
                 BatchNorm from running statistics). ``fwd+bwd``: training mode (batch statistics),
                 gradients for x and all parameters. N=1 is skipped for fwd+bwd: the official PPM
                 cannot run BatchNorm in training mode on the 1x1 bin of a single image.
    ``head``     PPM + the PSPNet classifier (the model's own ``cls`` head: ``conv3x3(C + sum R ->
                 C/4), BN, ReLU, Dropout2d(0.1), conv1x1(-> 21 classes)``) over the concat, same
                 modes as ``ppm``. Compute-bound (the 3x3 conv), so no bandwidth is reported.
    ``train``    PSPNet-50 training step: ``zero_grad``, forward with labels,
                 ``main + 0.4 aux`` loss, backward, SGD (momentum 0.9, weight decay 1e-4).
                 ``bfloat16`` means ``torch.autocast`` with float32 parameters (mixed precision),
                 ``float32`` plain. Both models have the paper's ``concat`` head; eager/compiled
                 run the official PPM (:class:`PlainPPM`), fused the library's ``pspnet.PPM``
                 (same weights): the PPM is the one difference. The default ``concat_free`` head
                 is compared with ``concat`` by ``modelcmp``.

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
    ``concat_free-compiled`` (``torch.compile``, default mode).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BINS = (1, 2, 3, 6)
CLASSES = 21
PROVIDERS = ("eager", "compiled", "compiled-max-autotune", "fused", "fused-compiled")
COMPILED = {"compiled": None, "compiled-max-autotune": "max-autotune-no-cudagraphs"}
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

    @property
    def baseline(self) -> str:
        """The provider this one's outputs are checked against (and speed-ups refer to)."""
        return "concat" if self.case in CMP_CASES else "eager"


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
    if cuda or full:
        return None
    if b.provider.endswith("-compiled"):
        return "torch.compile on CPU only with --bench-full"
    if b.case == "modelcmp" and b.shape == CPU_MODEL_TRAIN:
        return "PSPNet-50 2x3x473x473 training step on CPU (minutes): use --bench-full"
    if b.case == "modelcmp" and b.shape == CPU_MODEL_FWD and not cpu_model:
        return "PSPNet-50 1x3x473x473 on CPU (~10 s a call): use --bench-cpu-model"
    return None
