"""pspnet.PPM (fused) against a plain official-style PPM, and pspnet.convert_ppm."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn as nn

import pspnet
from pspnet.testing import OfficialPPM, randomize_batchnorm
from tests.helpers import assert_close

IN_DIM, RED, BINS = 16, 4, (1, 2, 3, 6)
# BatchNorm over a handful of values (bin 1 at batch 2) amplifies rounding differences in the
# gradients, so the parity checks run in float64 where the kernels support it (CPU through the
# interpreter); on CUDA the kernels run float32 and are compared with a float32 tolerance.
DTYPE = torch.float64 if not torch.cuda.is_available() else torch.float32
TOL = 1e-9 if DTYPE == torch.float64 else 2e-4
_assert_close = functools.partial(assert_close, tol=TOL, floor=1e-12)


def _pair(device, momentum=0.1, sync=False):
    plain = randomize_batchnorm(OfficialPPM(IN_DIM, RED, BINS))
    ours = pspnet.PPM(IN_DIM, RED, BINS)
    for m in list(plain.modules()) + list(ours.modules()):
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = momentum
    if sync:
        plain = nn.SyncBatchNorm.convert_sync_batchnorm(plain)
        ours = nn.SyncBatchNorm.convert_sync_batchnorm(ours)
    ours.load_state_dict(plain.state_dict())
    return plain.to(device, DTYPE), ours.to(device, DTYPE)


def _run(module, x, grad):
    x = x.detach().clone().requires_grad_()
    out = module(x)
    out.backward(grad)
    return out.detach(), x.grad


def _compare_train(plain, ours, x, steps=1):
    """One forward + backward per step on each module, then outputs, grads and buffers."""
    for step in range(steps):
        plain.zero_grad()
        ours.zero_grad()
        xp = x.detach().clone().requires_grad_()
        xo = x.detach().clone().requires_grad_()
        want = plain(xp)
        got = ours(xo)
        grad = torch.randn_like(want)
        want.backward(grad)
        got.backward(grad)
        _assert_close(got.detach(), want.detach(), f"output (step {step})")
        _assert_close(xo.grad, xp.grad, f"dx (step {step})")
        for (name, p), q in zip(plain.named_parameters(), ours.parameters(), strict=True):
            _assert_close(q.grad, p.grad, f"grad of {name} (step {step})")
    for (name, a), b in zip(plain.named_buffers(), ours.buffers(), strict=True):
        if a.dtype.is_floating_point:
            _assert_close(b, a, f"buffer {name}")
        else:
            assert torch.equal(a, b), name


def test_state_dict_keys_match_official():
    plain, ours = _pair("cpu")
    assert list(plain.state_dict()) == list(ours.state_dict())
    assert ours.bins == BINS


def test_eval_matches_plain(device):
    plain, ours = _pair(device)
    plain.eval()
    ours.eval()
    _compare_train(plain, ours, torch.randn(2, IN_DIM, 13, 17, device=device, dtype=DTYPE))


@pytest.mark.parametrize("momentum", [0.1, None])
def test_train_matches_plain(momentum, device):
    plain, ours = _pair(device, momentum=momentum)
    plain.train()
    ours.train()
    steps = 2 if momentum is None else 1  # cumulative average: check it over two batches
    x = torch.randn(2, IN_DIM, 11, 9, device=device, dtype=DTYPE)
    _compare_train(plain, ours, x, steps=steps)


def test_sync_batchnorm_train_and_eval(device):
    plain, ours = _pair(device, sync=True)
    assert isinstance(ours.features[0][2], nn.SyncBatchNorm)
    x = torch.randn(2, IN_DIM, 9, 10, device=device, dtype=DTYPE)
    _compare_train(plain.train(), ours.train(), x)
    _compare_train(plain.eval(), ours.eval(), x)


def test_eval_channels_last(device):
    plain, ours = _pair(device)
    x = torch.randn(1, IN_DIM, 10, 12, device=device, dtype=DTYPE)
    x = x.to(memory_format=torch.channels_last)
    with torch.no_grad():
        got = ours.eval()(x)
        want = plain.eval()(x)
    _assert_close(got, want, "output")
    assert got.is_contiguous(memory_format=torch.channels_last)


def test_batch_size_one_training(device):
    """Bin 1 at batch size 1: one value per channel; normalised with the running statistics."""
    plain, ours = _pair(device)
    x = torch.randn(1, IN_DIM, 9, 11, device=device, dtype=DTYPE)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        plain.train()(x)  # what the plain module does
    plain.load_state_dict(ours.state_dict())  # undo any partial update
    # The documented rule: the bin-1 branch behaves as in eval, the others train as usual.
    plain.train()
    plain.features[BINS.index(1)][2].eval()
    ours.train()
    before = ours.features[BINS.index(1)][2].running_mean.clone()
    _compare_train(plain, ours, x)
    bn1 = ours.features[BINS.index(1)][2]
    assert torch.equal(bn1.running_mean, before), "the bin-1 running stats must stay untouched"
    assert bn1.num_batches_tracked.item() == 0
    assert ours.features[BINS.index(2)][2].num_batches_tracked.item() == 1


class _Net(nn.Module):
    """A small model holding an official-style PPM, like PSPNet's ``ppm`` attribute."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, IN_DIM, 3, padding=1)
        self.ppm = OfficialPPM(IN_DIM, RED, BINS)
        self.head = nn.Conv2d(IN_DIM + len(BINS) * RED, 2, 1)

    def forward(self, x):
        return self.head(self.ppm(self.stem(x)))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_convert_ppm_model(mode, device):
    net = randomize_batchnorm(_Net()).to(device, DTYPE)
    getattr(net, mode)()
    keys = list(net.state_dict())
    ref = _Net().to(device, DTYPE)
    ref.load_state_dict(net.state_dict())
    getattr(ref, mode)()
    old_features = net.ppm.features
    assert pspnet.convert_ppm(net) is net
    assert isinstance(net.ppm, pspnet.PPM)
    assert net.ppm.features is old_features, "weights and buffers are the same objects"
    assert net.ppm.training == (mode == "train")
    assert list(net.state_dict()) == keys
    x = torch.randn(2, 3, 10, 9, device=device, dtype=DTYPE)
    _compare_train(ref, net, x)


def test_convert_ppm_module_itself_and_idempotent(device):
    plain = randomize_batchnorm(OfficialPPM(IN_DIM, RED, BINS)).to(device, DTYPE).eval()
    fused = pspnet.convert_ppm(plain)
    assert isinstance(fused, pspnet.PPM) and not fused.training
    assert pspnet.convert_ppm(fused) is fused
    x = torch.randn(1, IN_DIM, 7, 8, device=device, dtype=DTYPE)
    with torch.no_grad():
        _assert_close(fused(x), plain(x), "output")
    # Not PPM-like (a bias in the conv): left alone.
    other = OfficialPPM(IN_DIM, RED, BINS)
    other.features[0][1] = nn.Conv2d(IN_DIM, RED, 1, bias=True)
    with pytest.warns(UserWarning, match="nothing was converted"):
        assert pspnet.convert_ppm(other) is other


def test_compile_fullgraph_train_and_eval(device):
    torch._dynamo.reset()
    plain, ours = _pair(device)
    compiled = torch.compile(ours, fullgraph=True)
    x = torch.randn(2, IN_DIM, 9, 10, device=device, dtype=DTYPE)
    for mode in ("train", "eval"):
        getattr(plain, mode)()
        getattr(ours, mode)()
        _compare_train(plain, compiled, x)
