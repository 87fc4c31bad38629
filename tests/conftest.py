"""Test set-up: run the Triton kernels through the interpreter when there is no GPU.

TRITON_INTERPRET is read when ``@triton.jit`` decorates, so it is set here before anything
imports torch, triton or psp_kernels; whether a GPU is there is asked of the CUDA driver
(``libcuda``) directly, without importing torch. ``PSP_NO_INTERPRET=1`` leaves it unset, and an
explicit ``TRITON_INTERPRET`` in the environment always wins.
"""

import ctypes
import importlib.util
import os
import re
from pathlib import Path

# Triton's interpreter runs tl.dot as numpy matmuls: BLAS threads fighting over the 2 CI cores make
# them ~100x slower, so keep BLAS single-threaded (must be set before numpy is imported).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _torch_built_with_cuda() -> bool:
    """Whether the installed torch is a CUDA build (read from torch/version.py, not imported)."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return False
    version = Path(next(iter(spec.submodule_search_locations))) / "version.py"
    try:
        text = version.read_text()
    except OSError:
        return False
    match = re.search(r"^cuda\b[^=]*=\s*(.+)$", text, re.M)
    return bool(match) and match.group(1).strip() != "None"


def _cuda_devices() -> int:
    """CUDA devices the driver sees (0 without a driver), honouring CUDA_VISIBLE_DEVICES."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
        count = ctypes.c_int(0)
        if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return count.value
    except (OSError, AttributeError):
        return 0


_GPU_EXPECTED = False
if os.environ.get("PSP_NO_INTERPRET", "0") == "0" and "TRITON_INTERPRET" not in os.environ:
    _GPU_EXPECTED = _torch_built_with_cuda() and _cuda_devices() > 0
    if not _GPU_EXPECTED:
        os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if _GPU_EXPECTED and DEVICE == "cpu":  # the driver sees a GPU that torch cannot use
    raise pytest.UsageError(
        "the CUDA driver sees a GPU but torch.cuda.is_available() is False: set "
        "TRITON_INTERPRET=1 (the kernels through Triton's interpreter on CPU) or PSP_NO_INTERPRET=1"
    )


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need a CUDA device: skipped, with that reason, without one."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture(scope="module")
def plain_torch_cpu():
    """Keep model-level test modules fast on CPU (use with ``pytest.mark.usefixtures``).

    One intra-op thread: on a shared 2-core machine two OpenMP threads run small convolutions
    several times slower than one. And the interpreter flag off at call time, so ``backend="auto"``
    takes the plain-PyTorch paths on CPU instead of Triton's interpreter at 2048 channels: the
    kernels have their own interpreter tests; these modules check the model around them.
    """
    from psp_kernels.ops import utils

    mp = pytest.MonkeyPatch()
    mp.setattr(utils, "INTERPRETER", False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    mp.undo()


@pytest.fixture(scope="session")
def onnx_exports(tmp_path_factory):
    """Export each of ``EXPORTED_MODELS`` once per session (dynamic shapes):
    name -> (model, path to the .onnx file). Skips without the ``deploy`` extra."""
    for name in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(name, reason='needs the deploy extra: pip install -e ".[deploy]"')
    from pspnet import export_onnx
    from tests.deploy_models import EXPORTED_MODELS, build_export_model

    root = tmp_path_factory.mktemp("onnx")
    out = {}
    for name, (kind, head, size) in EXPORTED_MODELS.items():
        model = build_export_model(kind, head)
        out[name] = (model, export_onnx(model, root / f"{name}.onnx", example_size=size))
    return out
