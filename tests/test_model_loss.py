"""PSPNet's training losses from the fused loss (``psp_kernels.upsample_cross_entropy`` on the
stride-8 logits) against the materialised path (the criterion on the upsampled logits)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import pspnet.model as model_mod
from pspnet import TinyPSPNet
from pspnet.model import fused_loss_options
from tests.helpers import assert_close

pytestmark = pytest.mark.usefixtures("plain_torch_cpu")


class Materialised(nn.Module):
    """The same function as an ``nn.CrossEntropyLoss``, but not one: PSPNet then upsamples the
    logits and calls it."""

    def __init__(self, **kwargs):
        super().__init__()
        self.ce = nn.CrossEntropyLoss(**kwargs)

    def forward(self, logits, target):
        return self.ce(logits, target)


class _Subclass(nn.CrossEntropyLoss):
    def forward(self, logits, target):  # its own forward: never replaced by the fused loss
        return super().forward(logits, target) * 2


@pytest.fixture
def fused_calls(monkeypatch):
    """The calls PSPNet makes to the fused loss."""
    calls = []
    fused = model_mod.upsample_cross_entropy

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return fused(*args, **kwargs)

    monkeypatch.setattr(model_mod, "upsample_cross_entropy", spy)
    return calls


def _step(model, x, y):
    """One training step's outputs, every gradient and the parameters after SGD."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    torch.manual_seed(3)  # the same dropout masks in both models
    pred, main, aux = model(x, y)
    model.loss(main, aux).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.step()
    return pred, main, aux, grads, {n: p.detach().clone() for n, p in model.named_parameters()}


CRITERIA = [
    dict(ignore_index=255),
    dict(ignore_index=-100, reduction="sum"),
    dict(ignore_index=0, weight=torch.tensor([0.5, 1.0, 2.0, 1.5], dtype=torch.float64)),
]


@pytest.mark.parametrize("criterion", CRITERIA, ids=["mean", "sum", "weighted"])
@pytest.mark.parametrize("zoom", [8, 4, 2, 1])
@pytest.mark.parametrize("head", ["concat_free", "concat"])
def test_fused_step_equals_materialised(head, zoom, criterion, fused_calls):
    """float64: losses, prediction, every gradient and the SGD step agree to 1e-10."""
    torch.manual_seed(0)
    fused = TinyPSPNet(classes=4, width=4, zoom_factor=zoom, head=head,
                       criterion=nn.CrossEntropyLoss(**criterion)).double().train()  # fmt: skip
    plain = copy.deepcopy(fused)
    plain.criterion = Materialised(**criterion)
    x = torch.randn(2, 3, 27, 21, dtype=torch.float64)
    y = torch.randint(0, 4, (2, *fused.output_size(27, 21)))
    y[:, :2] = criterion["ignore_index"] if criterion["ignore_index"] >= 0 else 2
    a = _step(fused, x, y)
    assert len(fused_calls) == 2
    b = _step(plain, x, y)
    assert len(fused_calls) == 2  # the materialised model never calls it
    assert a[0].shape == y.shape and a[0].dtype == torch.long and torch.equal(a[0], b[0])
    for what, u, v in (("main loss", a[1], b[1]), ("aux loss", a[2], b[2])):
        assert_close(u, v, what, tol=1e-10, nonzero=True)
    for name in a[3]:
        assert_close(a[3][name], b[3][name], f"gradient of {name}", tol=1e-10, floor=1e-12)
        assert_close(a[4][name], b[4][name], f"{name} after SGD", tol=1e-10)


@pytest.mark.parametrize(
    "criterion, fused",
    [
        (nn.CrossEntropyLoss(), True),
        (nn.CrossEntropyLoss(ignore_index=3, reduction="sum"), True),
        (nn.CrossEntropyLoss(label_smoothing=0.1), False),
        (nn.CrossEntropyLoss(reduction="none"), False),
        (_Subclass(), False),
        (Materialised(), False),
        (nn.NLLLoss(), False),
    ],
)
def test_which_criteria_take_the_fused_loss(criterion, fused):
    assert (fused_loss_options(criterion) is not None) == fused
    hooked = nn.CrossEntropyLoss()
    hooked.register_forward_hook(lambda *args: None)
    assert fused_loss_options(hooked) is None


@pytest.mark.parametrize(
    "hook",
    ["register_forward_pre_hook", "register_full_backward_hook",
     "register_full_backward_pre_hook"],
)  # fmt: skip
def test_a_criterion_with_hooks_keeps_the_materialised_path(hook):
    """Every kind of hook of the criterion, and global module hooks, would be skipped by the
    fused loss: such criteria keep the materialised path."""
    hooked = nn.CrossEntropyLoss()
    getattr(hooked, hook)(lambda *args: None)
    assert fused_loss_options(hooked) is None
    plain = nn.CrossEntropyLoss()
    assert fused_loss_options(plain) is not None
    handle = nn.modules.module.register_module_forward_hook(lambda *args: None)
    try:
        assert fused_loss_options(plain) is None
    finally:
        handle.remove()
    assert fused_loss_options(plain) is not None


def test_an_index_like_ignore_index_is_taken():
    """PyTorch's loss takes a numpy integer ``ignore_index``; so does the fused one."""
    numpy = pytest.importorskip("numpy")
    options = fused_loss_options(nn.CrossEntropyLoss(ignore_index=numpy.int64(255)))
    assert options["ignore_index"] == 255 and type(options["ignore_index"]) is int


def test_label_smoothing_keeps_the_materialised_path(fused_calls):
    """A criterion the fused loss does not compute sees the upsampled logits, as before."""
    torch.manual_seed(0)
    model = TinyPSPNet(classes=3, width=4, criterion=nn.CrossEntropyLoss(label_smoothing=0.2))
    model.train()
    x = torch.randn(2, 3, 17, 17)
    y = torch.randint(0, 3, (2, 17, 17))
    torch.manual_seed(1)
    pred, main, _ = model(x, y)
    assert not fused_calls
    torch.manual_seed(1)
    model.criterion = Materialised(label_smoothing=0.2)
    _, expected, _ = model(x, y)
    assert_close(main, expected, "main loss")


def test_labels_of_another_size_keep_the_criterion_error(fused_calls):
    """Labels that do not match the output size reach the criterion as before (its error)."""
    model = TinyPSPNet(classes=3, width=4).train()
    with pytest.raises((RuntimeError, ValueError)):
        model(torch.randn(2, 3, 17, 17), torch.zeros(2, 16, 17, dtype=torch.long))
    assert not fused_calls


def test_fused_training_returns_like_before():
    """Training with labels: (prediction (N, H, W) int64, main loss, aux loss), and the
    prediction is the argmax of the eval-style logits."""
    torch.manual_seed(0)
    model = TinyPSPNet(classes=3, width=4, dropout=0.0).train()
    x = torch.randn(1, 3, 19, 23)
    y = torch.randint(0, 3, (1, 19, 23))
    pred, main, aux = model(x, y)
    assert pred.shape == (1, 19, 23) and pred.dtype == torch.long
    assert main.shape == aux.shape == () and main.requires_grad
    with torch.no_grad():
        logits = model(x)  # training mode without labels: the upsampled logits
    assert logits.shape == (1, 3, 19, 23)
    assert (pred == logits.argmax(1)).float().mean() > 0.99
    assert_close(main, F.cross_entropy(logits, y, ignore_index=255), "main loss", tol=1e-4)
