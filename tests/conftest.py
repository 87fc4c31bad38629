"""Test set-up: run the Triton kernels through the interpreter when there is no GPU.

TRITON_INTERPRET must be set before triton is imported, so it is set here, before any test module
imports psp_kernels.
"""

import os

# Triton's interpreter runs tl.dot as numpy matmuls: BLAS threads fighting over the 2 CI cores make
# them ~100x slower, so keep BLAS single-threaded (must be set before numpy is imported).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

if os.environ.get("PSP_NO_INTERPRET", "0") == "0":
    try:
        import torch

        _has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover
        _has_cuda = False
    if not _has_cuda:
        os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


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
    from deploy_models import EXPORTED_MODELS, build_export_model

    from pspnet import export_onnx

    root = tmp_path_factory.mktemp("onnx")
    out = {}
    for name, (kind, head, size) in EXPORTED_MODELS.items():
        model = build_export_model(kind, head)
        out[name] = (model, export_onnx(model, root / f"{name}.onnx", example_size=size))
    return out
