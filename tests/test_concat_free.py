"""PSPNet(head="concat_free") is the same function as head="concat": outputs and every gradient."""

import pytest
import torch

import pspnet
from psp_kernels import reference
from pspnet.heads import concat_free_conv3x3
from pspnet.testing import randomize_batchnorm
from tests.helpers import assert_close

# one intra-op thread and the plain-PyTorch kernel paths (see conftest.plain_torch_cpu)
pytestmark = pytest.mark.usefixtures("plain_torch_cpu")


def _pair(dtype, **kw):
    torch.manual_seed(0)
    concat = pspnet.PSPNet(layers=50, classes=3, pretrained=False, head="concat", **kw)
    free = pspnet.PSPNet(layers=50, classes=3, pretrained=False, head="concat_free", **kw)
    free.load_state_dict(concat.state_dict())
    randomize_batchnorm(concat)  # non-trivial BatchNorm statistics so that eval differs from train
    free.load_state_dict(concat.state_dict())
    return concat.to(dtype), free.to(dtype)


def _run(model, x, y, train):
    model.train(train)
    torch.manual_seed(1)  # same dropout masks
    params = [p for p in model.parameters() if p.requires_grad]
    if train:
        _, main, aux = model(x, y)
        out = model.loss(main, aux)
        grads = torch.autograd.grad(out, [x, *params])
    else:
        out = model(x)
        # the auxiliary head is unused in eval: its gradients are None for both heads
        grads = torch.autograd.grad(out.square().sum(), [x, *params], allow_unused=True)
    return out, grads


#: max abs error relative to max(max abs of concat's, 1): the two layouts sum in another order
_TOL = {torch.float64: 1e-10, torch.float32: 1e-4}


@pytest.mark.parametrize(
    "size, batch, train, dtype",
    [
        ((65, 65), 2, True, torch.float64),
        ((33, 47), 1, True, torch.float64),  # odd, non-square, batch 1 (bin-1 BN rule)
        ((41, 29), 2, False, torch.float64),
        ((65, 65), 2, True, torch.float32),
        ((50, 37), 1, False, torch.float32),
    ],
)
def test_concat_free_equals_concat(size, batch, train, dtype):
    concat, free = _pair(dtype)
    x = torch.randn(batch, 3, *size, dtype=dtype, requires_grad=True)
    y = torch.randint(0, 3, (batch, *size))
    out_c, grads_c = _run(concat, x, y, train)
    out_f, grads_f = _run(free, x, y, train)
    assert_close(out_f, out_c, tol=_TOL[dtype], floor=1.0)
    for gf, gc in zip(grads_f, grads_c, strict=True):
        assert_close(gf, gc, tol=_TOL[dtype], floor=1.0)
    if train:  # BatchNorm running statistics follow the same path
        for a, b in zip(concat.buffers(), free.buffers(), strict=True):
            assert_close(b.double(), a.double(), tol=_TOL[dtype], floor=1.0)


def test_concat_free_equals_concat_97():
    concat, free = _pair(torch.float64)
    x = torch.randn(1, 3, 97, 97, dtype=torch.float64, requires_grad=True)
    out_c, grads_c = _run(concat, x, None, False)
    out_f, grads_f = _run(free, x, None, False)
    assert_close(out_f, out_c, tol=_TOL[torch.float64], floor=1.0)
    for gf, gc in zip(grads_f, grads_c, strict=True):
        assert_close(gf, gc, tol=_TOL[torch.float64], floor=1.0)


def test_concat_free_equals_concat_473():
    """The paper's crop: forward in eval mode, float32."""
    concat, free = _pair(torch.float32)
    concat.eval()
    free.eval()
    x = torch.randn(1, 3, 473, 473)
    with torch.no_grad():
        out_c, out_f = concat(x), free(x)
    assert out_f.shape == (1, 3, 473, 473)
    assert_close(out_f, out_c, tol=_TOL[torch.float32], floor=1.0)


@pytest.mark.parametrize("align_corners", [True, False])
def test_head_conv_both_align_corners(align_corners):
    x = torch.randn(2, 6, 11, 9, dtype=torch.float64, requires_grad=True)
    ys = [torch.randn(2, 2, b, b, dtype=torch.float64, requires_grad=True) for b in (1, 2, 3, 6)]
    weight = torch.randn(4, 14, 3, 3, dtype=torch.float64, requires_grad=True)
    cat = reference.upsample_concat(x, ys, align_corners=align_corners)
    expected = torch.nn.functional.conv2d(cat, weight, padding=1)
    got = concat_free_conv3x3(x, ys, weight, align_corners=align_corners)
    assert (got - expected).abs().max().item() < 1e-10
    g = torch.randn_like(got)
    for a, b in zip(
        torch.autograd.grad(got, [x, weight, *ys], g),
        torch.autograd.grad(expected, [x, weight, *ys], g),
        strict=True,
    ):
        assert (a - b).abs().max().item() < 1e-10


def test_head_conv_bad_weight():
    x = torch.randn(1, 4, 5, 5)
    ys = [torch.randn(1, 2, 1, 1)]
    with pytest.raises(ValueError, match="weight must have shape"):
        concat_free_conv3x3(x, ys, torch.randn(3, 7, 3, 3))


def test_default_head_and_bad_head():
    assert pspnet.PSPNet(layers=50, pretrained=False).head == "concat_free"
    with pytest.raises(ValueError, match="head must be one of"):
        pspnet.PSPNet(layers=50, pretrained=False, head="sum")


def test_compile_fullgraph_concat_free():
    _, free = _pair(torch.float32)
    free.train()
    x = torch.randn(2, 3, 33, 33)
    y = torch.randint(0, 3, (2, 33, 33))
    explanation = torch._dynamo.explain(free)(x, y)
    assert explanation.graph_break_count == 0
