"""Every launcher runs on its inputs' device, and mixed devices raise ValueError naming them.

Without a GPU: fake ``cuda:1`` tensors (``FakeTensorMode``) and a stand-in for
``torch.cuda.device`` that records which device is current when the kernel is launched.
"""

import contextlib

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import psp_kernels
from psp_kernels import reference
from psp_kernels.ops import utils
from psp_kernels.ops.pyramid_pool_conv import launch as kernel1
from tests.helpers import assert_close_to_reference


@pytest.fixture
def current_device(monkeypatch):
    """The stack of devices made current by ``torch.cuda.device``; kernel launches record it."""
    stack, launched = [], []

    class Device:
        def __init__(self, device):
            self.index = torch.device(device).index

        def __enter__(self):
            stack.append(self.index)

        def __exit__(self, *exc):
            stack.pop()

    monkeypatch.setattr(torch.cuda, "device", Device)
    kernel = kernel1._cells_conv_kernel
    monkeypatch.setattr(
        type(kernel), "run", lambda self, *args, grid, warmup, **kw: launched.append(list(stack))
    )
    return launched


def test_launch_runs_under_the_inputs_device(current_device):
    with FakeTensorMode():
        ws = torch.empty(2, 1, 4, 8, device="cuda:1")  # (N, splits, cells, C)
        weight = torch.empty(4, 8, device="cuda:1")
        (y,) = kernel1.cells_conv(ws, 1, [weight], None, None, False, (2,), torch.float32, 0, None)
    assert current_device == [[1]]  # launched while cuda:1 was current, without set_device
    assert y.device == torch.device("cuda:1")


def test_launch_on_mixed_devices_raises(current_device):
    with FakeTensorMode():
        ws = torch.empty(2, 1, 4, 8, device="cuda:0")
        weight = torch.empty(4, 8, device="cuda:1")
        with pytest.raises(ValueError, match=r"weights is on cuda:1 but ws is on cuda:0"):
            kernel1.cells_conv(ws, 1, [weight], None, None, False, (2,), torch.float32, 0, None)
    assert current_device == []  # nothing was launched


def test_device_guard_names_the_arguments(current_device):
    with pytest.raises(ValueError, match=r"addend is on meta but dx is on cpu"):
        utils.device_guard(dx=torch.zeros(1), addend=torch.zeros(1, device="meta"))
    # CPU (the interpreter): no device switch; None entries are ignored
    assert isinstance(utils.device_guard(x=torch.zeros(1), out=None), contextlib.nullcontext)
    with FakeTensorMode():
        guard = utils.device_guard(x=torch.empty(1, device="cuda:1"), out=None)
    assert isinstance(guard, torch.cuda.device) and guard.index == 1  # (the fixture's stand-in)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_second_gpu_without_set_device():
    torch.cuda.set_device(0)
    x = torch.randn(2, 64, 13, 17, device="cuda:1")
    ws = [torch.randn(8, 64, device="cuda:1") for _ in range(4)]
    ys = psp_kernels.pyramid_pool_conv(x, ws, (1, 2, 3, 6), relu=True)
    out = psp_kernels.upsample_concat(x, ys)
    ref = reference.upsample_concat(x, reference.pyramid_pool_conv(x, ws, (1, 2, 3, 6), relu=True))
    assert_close_to_reference(out, ref, torch.float32, "output on cuda:1")
    assert torch.cuda.current_device() == 0
