"""Policy shared by every op: dtypes and dot precision, the interpreter flag, SM count, extents.

Each decision is made here once; the kernels' launchers and op registrations only call these.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch
import triton
import triton.language as tl

from .target import simulated_gpu

__all__ = [
    "INTERPRETER",
    "GPU_DTYPES",
    "TRITON_DTYPE",
    "interpreting",
    "gpu_tiles",
    "acc_dtype",
    "tl_acc_dtype",
    "dot_precision",
    "num_sms",
    "compute_arch",
    "sample_fits_int32",
    "device_guard",
    "split_launch_options",
    "pow2_divisor",
    "pixel_stride",
    "stride_divisors",
    "pixel_args",
    "pixel_offsets",
    "select4",
    "next_power_of_2",
    "clamp",
]

#: Whether Triton's interpreter is on. Read once, when ``psp_kernels`` is imported: that is when
#: ``@triton.jit`` decorates the kernels and Triton itself reads ``TRITON_INTERPRET``, so a later
#: change of the environment variable cannot make the two disagree. Tests may monkeypatch it.
INTERPRETER: bool = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

#: Tests set this to run the GPU tile sizes under the interpreter too (the launchers otherwise
#: pick few, large blocks there: the interpreter's cost is per program and per loop step).
GPU_TILES: bool = False

#: The dtypes the compiled GPU kernels take (float64 runs on the reference and the interpreter).
GPU_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

#: Triton's pointer element type names, for ahead-of-time signatures.
TRITON_DTYPE = {
    torch.float32: "fp32",
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.float64: "fp64",
}

next_power_of_2 = triton.next_power_of_2


def interpreting() -> bool:
    """True when the kernels run through Triton's interpreter (on CPU tensors); never while a
    GPU is simulated (:mod:`.target`)."""
    return INTERPRETER and simulated_gpu() is None


def gpu_tiles() -> bool:
    """Whether the launchers pick their GPU tile sizes (on a GPU, or forced by tests)."""
    return not interpreting() or GPU_TILES


def tile_class(dtype: torch.dtype) -> str:
    """Key of the launchers' tile tables for inputs of ``dtype``: ``"fp32"`` for float32, else
    ``"16bit"`` (float16 / bfloat16; float64 runs only in the interpreter, on the 16-bit tiles)."""
    return "fp32" if dtype == torch.float32 else "16bit"


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of every kernel: float32, or float64 for float64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def tl_acc_dtype(dtype: torch.dtype):
    """:func:`acc_dtype` as a Triton type, for kernels that take it as a constexpr."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def dot_precision(dtype: torch.dtype) -> str:
    """``input_precision`` of every ``tl.dot`` for inputs of ``dtype``.

    * float64 (interpreter only): ``"ieee"``.
    * float32: ``"tf32x3"``: float32 accuracy (about 2**-22 relative per product) on the tensor
      cores, where ``"ieee"`` would fall back to FMA and make the kernels compute-bound.
    * float16 / bfloat16: ``"tf32"``. 16-bit operands ignore it (native tensor-core dot with
      float32 accumulation); float32 operands derived from 16-bit data (cell gradients,
      interpolation weights) round to tf32 (2**-11), well inside the 16-bit tolerances, at a
      third of tf32x3's tensor-core work.
    """
    if dtype == torch.float64:
        return "ieee"
    if dtype == torch.float32:
        return "tf32x3"
    return "tf32"


@functools.lru_cache(maxsize=16)
def _cuda_properties(index: int) -> tuple[int, int]:
    """``(SM count, compute capability as one number)`` of CUDA device ``index``."""
    props = torch.cuda.get_device_properties(index)
    return props.multi_processor_count, 10 * props.major + props.minor


def _properties(device: torch.device) -> tuple[int, int | None]:
    """:func:`_cuda_properties` of ``device`` (the current device when it has no index), or the
    simulated GPU's (:mod:`.target`), or for tensors off CUDA (the interpreter, GPU tiles forced
    by tests) one SM (few programs) and no architecture (every kernel variant allowed)."""
    gpu = simulated_gpu()
    if gpu is not None:
        return gpu.num_sms, gpu.arch
    if device.type != "cuda":
        return 1, None
    if device.index is not None:
        return _cuda_properties(device.index)
    return _cuda_properties(torch.cuda.current_device() if device.type == "cuda" else 0)


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA ``device`` (cached per device index), or of the GPU
    being simulated (:mod:`.target`); 1 off CUDA."""
    return _properties(device)[0]


def compute_arch(device: torch.device) -> int | None:
    """Compute capability of a CUDA ``device`` as one number (80: A100, 90: H100 / H200), or of
    the GPU being simulated (:mod:`.target`); ``None`` off CUDA (no kernel variant excluded)."""
    return _properties(device)[1]


def sample_fits_int32(t: torch.Tensor) -> bool:
    """Whether offsets inside one sample (all dimensions but the first) are below 2**31.

    Kernels that address a sample with int32 offsets from a 64-bit sample base need this.
    """
    return (
        sum((size - 1) * abs(stride) for size, stride in zip(t.shape[1:], t.stride()[1:])) < 2**31
    )


def device_guard(**tensors: torch.Tensor | None):
    """Check that the given tensors share one device and return a context that makes it current.

    Launchers wrap their launches in it, so a tensor on ``cuda:1`` launches on ``cuda:1`` without
    ``torch.cuda.set_device``. ``None`` entries are ignored. Raises ``ValueError`` naming the
    arguments when the tensors are on different devices.
    """
    named = [(name, t) for name, t in tensors.items() if t is not None]
    if not named:
        return contextlib.nullcontext()
    first_name, first = named[0]
    for name, t in named[1:]:
        if t.device != first.device:
            raise ValueError(
                f"{name} is on {t.device} but {first_name} is on {first.device}; "
                "all tensors of one op must be on one device"
            )
    if first.device.type == "cuda":
        return torch.cuda.device(first.device)
    return contextlib.nullcontext()


def split_launch_options(cfg: dict) -> tuple[dict, dict]:
    """``(constexprs, options)`` of a config dict: ``num_warps``/``num_stages`` are options."""
    meta = {k: v for k, v in cfg.items() if k not in ("num_warps", "num_stages")}
    opts = {k: cfg[k] for k in ("num_warps", "num_stages") if k in cfg}
    return meta, opts


def clamp(v: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, v))


def pow2_divisor(v: int, cap: int = 16) -> int:
    """The largest power of two, at most ``cap``, that divides ``v`` (``cap`` for 0)."""
    v = abs(int(v))
    if v == 0:
        return cap
    return min(cap, v & -v)


def pixel_stride(t: torch.Tensor) -> int | None:
    """The stride between consecutive flat pixels of an ``(N, C, H, W)`` tensor, or ``None``.

    Flat: pixel ``p = h * W + w`` sits at ``p * stride`` (rows follow each other), as in
    contiguous and channels_last tensors and their channel or batch slices. The kernels that walk
    pixels as one dimension need it; other strides are copied first.
    """
    _, _, h, w = t.shape
    if w == 1 or h == 1:
        return t.stride(2) if w == 1 else t.stride(3)
    if t.stride(2) == w * t.stride(3):
        return t.stride(3)
    return None


def stride_divisors(t: torch.Tensor) -> tuple[int, int]:
    """Divisibility hints ``(of the sample stride, of the channel stride)`` of a flat-pixel tensor.

    The kernels declare ``tl.multiple_of(n * stride_n, N_DIV)`` and
    ``tl.multiple_of(c_offsets * stride_c, C_DIV)``, which Triton's JIT cannot know beyond
    "divisible by 16"; a unit channel stride keeps the block alignment of the channel offsets.
    """
    c_div = 16 if t.stride(1) == 1 else pow2_divisor(t.stride(1))
    return pow2_divisor(t.stride(0)), c_div


def pixel_args(t: torch.Tensor) -> tuple[tuple[int, int, int, int], dict]:
    """``(stride_n, stride_c, stride_h, stride_p)`` of an ``(N, C, H, W)`` tensor read as
    ``(N, C, pixels)``, and its constexprs ``FLAT``, ``N_DIV``, ``C_DIV`` (see
    :func:`pixel_offsets` and :func:`stride_divisors`)."""
    p = pixel_stride(t)
    strides = (t.stride(0), t.stride(1), t.stride(2), p if p is not None else t.stride(3))
    n_div, c_div = stride_divisors(t)
    return strides, dict(FLAT=p is not None, N_DIV=n_div, C_DIV=c_div)


# ----------------------------------------------------------------------------------------------
# Device helpers shared by the kernels
# ----------------------------------------------------------------------------------------------


@triton.jit
def pixel_offsets(offs_p, W, stride_h, stride_p, FLAT: tl.constexpr):
    """Offsets of flat pixels ``p = h * W + w``: ``p * stride_p`` when the rows follow each other
    (``FLAT``: contiguous and channels_last tensors), else ``h * stride_h + w * stride_p``."""
    if FLAT:
        off = offs_p * stride_p
    else:
        off = (offs_p // W) * stride_h + (offs_p % W) * stride_p
    return off


@triton.jit
def select4(i, p0, p1, p2, p3):
    """The ``i``-th of four scalars (a per-bin pointer of a grouped launch)."""
    return tl.where(i == 0, p0, tl.where(i == 1, p1, tl.where(i == 2, p2, p3)))
