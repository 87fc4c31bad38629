"""Randomized input sizes through PSPNet and TinyPSPNet (hypothesis, bounded example counts): in
eval mode the logits, in training mode the prediction and the losses, have the documented size
``((H - 1) * zoom // 8 + 1, (W - 1) * zoom // 8 + 1)`` for every zoom factor and head."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pspnet import PSPNet
from pspnet.model import TinyPSPNet

# one intra-op thread and the plain-PyTorch kernel paths (see conftest.plain_torch_cpu)
pytestmark = pytest.mark.usefixtures("plain_torch_cpu")

CLASSES = 3
_SETTINGS = dict(
    deadline=None,
    derandomize=True,  # the same examples on every run: CI time is bounded and reproducible
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {
        "tiny": TinyPSPNet(classes=CLASSES, width=2, dropout=0.0),
        "pspnet50": PSPNet(layers=50, classes=CLASSES, pretrained=False, dropout=0.0),
    }


def documented(h: int, w: int, zoom: int) -> tuple[int, int]:
    return (h - 1) * zoom // 8 + 1, (w - 1) * zoom // 8 + 1


def _configure(model, zoom: int, head: str):
    model.zoom_factor = zoom  # read by output_size / the upsampling at every forward
    model.head = head
    return model


cases = st.fixed_dictionaries(
    {
        "h": st.integers(1, 70),
        "w": st.integers(1, 70),
        "n": st.integers(1, 2),
        "zoom": st.sampled_from([1, 2, 4, 8]),
        "head": st.sampled_from(["concat", "concat_free"]),
    }
)


def _check(model, c, training: bool):
    h, w, n, zoom = c["h"], c["w"], c["n"], c["zoom"]
    _configure(model, zoom, c["head"])
    out_size = documented(h, w, zoom)
    assert model.output_size(h, w) == out_size
    x = torch.randn(n, 3, h, w)
    if not training:
        model.eval()
        with torch.no_grad():
            logits = model(x)
        assert logits.shape == (n, CLASSES, *out_size), c
        assert bool(torch.isfinite(logits).all())
        return
    model.train()
    y = torch.randint(0, CLASSES, (n, *out_size))
    with torch.no_grad():
        pred, main_loss, aux_loss = model(x, y)
    assert pred.shape == (n, *out_size), c
    assert main_loss.ndim == 0 and aux_loss.ndim == 0
    assert bool(torch.isfinite(main_loss)) and bool(torch.isfinite(aux_loss))


def _trainable(c) -> bool:
    # BatchNorm in training needs more than one value per channel: with one image, the
    # stride-8 features (and the 1x1 pooled bin) must hold at least 2 values
    return c["n"] > 1 or (c["h"] + 7) // 8 * ((c["w"] + 7) // 8) > 1


@settings(max_examples=30, **_SETTINGS)
@given(c=cases)
def test_tiny_output_size_eval(models, c):
    _check(models["tiny"], c, training=False)


@settings(max_examples=30, **_SETTINGS)
@given(c=cases.filter(_trainable))
def test_tiny_output_size_train(models, c):
    _check(models["tiny"], c, training=True)


small = cases.map(lambda c: dict(c, h=min(c["h"], 41), w=min(c["w"], 41)))


@settings(max_examples=6, **_SETTINGS)
@given(c=small)
def test_pspnet50_output_size_eval(models, c):
    _check(models["pspnet50"], c, training=False)


@settings(max_examples=6, **_SETTINGS)
@given(c=small.filter(_trainable))
def test_pspnet50_output_size_train(models, c):
    _check(models["pspnet50"], c, training=True)
