"""The whole model under ``torch.compile(fullgraph=True)`` runs our custom ops, in one graph.

Unlike the model-level modules (``conftest.plain_torch_cpu``), this one keeps the kernels on:
on CPU they run through Triton's interpreter (``TRITON_INTERPRET=1``, tests/conftest.py), on a
GPU natively. A recording backend (Dynamo -> AOT autograd, no Inductor) keeps the captured
graphs: exactly one Dynamo graph per compile (``fullgraph=True`` raises on any break), with
``psp_kernels::`` forward ops in the forward graph and their backward ops in the backward graph.
"""

import copy

import pytest
import torch
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd

from psp_kernels import interpreting
from pspnet import TinyPSPNet
from pspnet.testing import randomize_batchnorm
from tests.helpers import assert_close

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and not interpreting(),
    reason="the custom ops run the kernels on CUDA or through TRITON_INTERPRET=1 only",
)


class Recorder:
    """A ``torch.compile`` backend that keeps every Dynamo graph and every AOT forward and
    backward graph, then runs them as they are."""

    def __init__(self):
        self.dynamo, self.fw, self.bw = [], [], []

        def keep(graphs):
            def compiler(gm, example_inputs):
                graphs.append(gm)
                return make_boxed_func(gm.forward)

            return compiler

        self._aot = aot_autograd(fw_compiler=keep(self.fw), bw_compiler=keep(self.bw))

    def __call__(self, gm, example_inputs):
        self.dynamo.append(gm)
        return self._aot(gm, example_inputs)

    @staticmethod
    def ops(graphs) -> set[str]:
        """The ``psp_kernels::`` ops called in ``graphs`` (``psp_kernels.<op>.default``)."""
        return {
            str(node.target)
            for gm in graphs
            for node in gm.graph.nodes
            if node.op == "call_function" and str(node.target).startswith("psp_kernels.")
        }


def _model(device, head):
    torch.manual_seed(0)
    model = TinyPSPNet(classes=3, width=2, dropout=0.0, head=head)  # no dropout: comparable
    return randomize_batchnorm(model, seed=0).to(device)


@pytest.mark.parametrize(
    "head, expected",
    [
        ("concat_free", {"pyramid_pool_conv_fwd", "shifted_upsample_add_fwd"}),
        ("concat", {"pyramid_pooling_fwd"}),
    ],
)
def test_eval_one_graph_with_custom_ops(device, head, expected):
    torch._dynamo.reset()
    model = _model(device, head).eval()
    rec = Recorder()
    compiled = torch.compile(model, fullgraph=True, backend=rec)
    x = torch.randn(1, 3, 17, 25, device=device)
    with torch.no_grad():
        got = compiled(x)
        want = model(x)
    assert len(rec.dynamo) == 1, "one Dynamo graph: no graph break"
    assert {f"psp_kernels.{op}.default" for op in expected} <= rec.ops(rec.dynamo)
    assert {f"psp_kernels.{op}.default" for op in expected} <= rec.ops(rec.fw)
    assert got.shape == (1, 3, 17, 25)
    assert_close(got, want, "compiled eval logits", tol=1e-4)


def test_training_step_one_graph_with_custom_ops(device):
    torch._dynamo.reset()
    model = _model(device, "concat_free").train()
    eager = copy.deepcopy(model)
    rec = Recorder()
    compiled = torch.compile(model, fullgraph=True, backend=rec)
    x = torch.randn(2, 3, 17, 17, device=device)
    y = torch.randint(0, 3, (2, 17, 17), device=device)
    losses, grads = [], []
    for net, f in ((model, compiled), (eager, eager)):
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        opt.zero_grad(set_to_none=True)
        _, main_loss, aux_loss = f(x, y)
        loss = net.loss(main_loss, aux_loss)
        loss.backward()
        grads.append([p.grad for p in net.parameters()])
        opt.step()
        losses.append(loss.detach())
    assert len(rec.dynamo) == 1, "one Dynamo graph: no graph break"
    assert len(rec.fw) == 1 and len(rec.bw) == 1
    assert {
        "psp_kernels.pyramid_pool_conv_fwd.default",
        "psp_kernels.shifted_upsample_add_fwd.default",
    } <= rec.ops(rec.fw)
    assert {
        "psp_kernels.pyramid_pool_conv_bwd.default",
        "psp_kernels.shifted_upsample_add_bwd.default",
    } <= rec.ops(rec.bw)
    assert_close(losses[0], losses[1], "loss", tol=1e-5)
    for (name, _), g, ref in zip(model.named_parameters(), *grads, strict=True):
        assert_close(g, ref, f"grad {name}", tol=1e-4, floor=1e-6)
    for (name, a), b in zip(model.named_parameters(), eager.parameters(), strict=True):
        assert_close(a.detach(), b.detach(), f"{name} after the SGD step", tol=1e-5)
