"""pspnet.convert_ppm on transformers' UperNet heads, against transformers itself.

Needs ``transformers`` (``.ci/run`` installs the tested version); skipped without. Models are
built from configs with random weights (nothing is downloaded), tiny widths.
"""

import copy
import logging
import os

import pytest
import torch

import pspnet
from tests.thirdparty import check_converted

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers", reason="needs transformers")


def _upernet():
    backbone = transformers.ConvNextConfig(
        num_channels=3, hidden_sizes=[4, 8, 8, 16], depths=[1, 1, 1, 1],
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )  # fmt: skip
    cfg = transformers.UperNetConfig(
        backbone_config=backbone, hidden_size=8, num_labels=3, auxiliary_in_channels=8,
        auxiliary_channels=4, use_auxiliary_head=True,
    )  # fmt: skip
    return transformers.UperNetForSemanticSegmentation(cfg)


def _beit_like(kind):
    def build():
        config_cls, model_cls = {
            "beit": (transformers.BeitConfig, transformers.BeitForSemanticSegmentation),
            "data2vec": (transformers.Data2VecVisionConfig,
                         transformers.Data2VecVisionForSemanticSegmentation),
        }[kind]  # fmt: skip
        cfg = config_cls(
            image_size=32, patch_size=4, hidden_size=8, num_hidden_layers=4,
            num_attention_heads=2, intermediate_size=16, out_indices=[0, 1, 2, 3],
            num_labels=3, use_auxiliary_head=False, auxiliary_channels=4,
            pool_scales=[1, 2, 3, 6],
        )  # fmt: skip
        return model_cls(cfg)

    return build


def _logits(model, x):
    return model(pixel_values=x).logits


@pytest.mark.parametrize(
    "name, build, size",
    [
        ("UperNetHead", _upernet, 64),
        ("BeitUperHead", _beit_like("beit"), 32),
        ("Data2VecVisionUperHead", _beit_like("data2vec"), 32),
    ],  # fmt: skip
)
def test_models(name, build, size, caplog):
    with caplog.at_level(logging.INFO, logger="pspnet.convert"):
        converted = check_converted(
            build, lambda dtype: torch.randn(2, 3, size, size, dtype=dtype), _logits, label=name
        )
    assert type(converted.decode_head).__name__ == f"Fused{name}"
    assert "concat-free" in caplog.text


def test_checkpoint_round_trip(tmp_path):
    """save_pretrained of a converted model loads into a fresh unconverted one, and back."""
    model = _upernet().eval()
    pspnet.convert_ppm(model)
    model.save_pretrained(tmp_path)
    loaded = transformers.UperNetForSemanticSegmentation.from_pretrained(tmp_path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=x).logits, model(pixel_values=x).logits)
    assert type(loaded.decode_head).__name__ == "UperNetHead"
    pspnet.convert_ppm(copy.deepcopy(loaded))  # and converts after loading


def test_batch_size_one_training_raises_as_the_original():
    """Training with batch size 1 raises in the bin-1 branch's BatchNorm, converted or not, and
    no statistics change."""
    torch.manual_seed(0)
    original = _upernet().train()
    converted = pspnet.convert_ppm(copy.deepcopy(original))
    x = torch.randn(1, 3, 64, 64)
    for model in (original, converted):
        with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
            _logits(model, x)
    for (name, a), (_, b) in zip(converted.named_buffers(), original.named_buffers(), strict=True):
        assert torch.equal(a, b), name


def test_overridden_pyramid_forward_is_left_unconverted(caplog):
    """A pyramid module whose class overrides forward (here: nearest upsampling): the fused
    head would skip that forward, so the head is left as it was, with the reason logged."""
    from transformers.models.upernet import modeling_upernet

    class NearestPyramid(modeling_upernet.UperNetPyramidPoolingModule):
        def forward(self, x):
            return [torch.nn.functional.interpolate(b(x), x.shape[2:]) for b in self.blocks]

    torch.manual_seed(0)
    model = _upernet().eval()
    model.decode_head.psp_modules.__class__ = NearestPyramid
    original = copy.deepcopy(model)
    with caplog.at_level(logging.INFO, logger="pspnet.convert"):
        pspnet.convert_ppm(model)
    assert type(model.decode_head).__name__ == "UperNetHead"
    assert "unconverted" in caplog.text and "its pyramid is a NearestPyramid" in caplog.text
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(_logits(model, x), _logits(original, x), rtol=0, atol=0)


def test_hooks_on_skipped_modules(caplog):
    """A hook on a module the fused head skips: present at the conversion, the head is left
    (the module named in the log); added after it, the head runs its original method while the
    hook is there, so the outputs are those of the unconverted model."""
    torch.manual_seed(0)
    model = _upernet().eval()
    original = copy.deepcopy(model)
    hook = (
        model.decode_head.psp_modules.blocks[1]
        .layers[1]
        .conv.register_forward_pre_hook(lambda m, i: (i[0] * 2,))
    )
    with caplog.at_level(logging.INFO, logger="pspnet.convert"):
        pspnet.convert_ppm(model)
    assert type(model.decode_head).__name__ == "UperNetHead"
    assert "psp_modules.1.1.conv (Conv2d) has forward pre-hooks" in caplog.text
    hook.remove()
    pspnet.convert_ppm(model)
    assert type(model.decode_head).__name__ == "FusedUperNetHead"
    x = torch.randn(1, 3, 64, 64)
    for m in (model, original):
        m.decode_head.psp_modules.register_forward_hook(lambda m, i, out: [t / 2 for t in out])
    with torch.no_grad():
        torch.testing.assert_close(_logits(model, x), _logits(original, x), rtol=0, atol=0)
