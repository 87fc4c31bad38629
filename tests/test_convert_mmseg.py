"""pspnet.convert_ppm on mmsegmentation's PSP-style heads and backbones, against mmseg itself.

Needs ``mmsegmentation==1.2.2 mmengine==0.10.7 mmcv-lite==2.1.0 ftfy`` (``.ci/run`` installs
them); skipped without. Models are built from config dicts with random weights, tiny widths.
"""

import copy
import logging
import pickle

import pytest
import torch
import torch.nn.utils.prune

import pspnet
from tests.helpers import assert_close
from tests.thirdparty import check_converted, stub_mmcv_ops

pytest.importorskip("mmengine", reason="needs mmengine (pip install mmengine==0.10.7)")
pytest.importorskip("mmcv", reason="needs mmcv-lite (pip install mmcv-lite==2.1.0)")
stub_mmcv_ops()
mmseg_models = pytest.importorskip("mmseg.models", reason="needs mmsegmentation==1.2.2 and ftfy")
from mmseg.registry import MODELS  # noqa: E402
from mmseg.utils import register_all_modules  # noqa: E402

register_all_modules()

NORM = dict(type="BN", requires_grad=True)
RESNET18 = dict(type="ResNetV1c", depth=18, in_channels=3, num_stages=4, out_indices=(0, 1, 2, 3),
                dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1), norm_cfg=NORM, norm_eval=False,
                contract_dilation=True, base_channels=4, stem_channels=4)  # fmt: skip
HEADS = {
    "PSPHead": dict(type="PSPHead", in_channels=16, channels=8, pool_scales=(1, 2, 3, 6),
                    dropout_ratio=0.1, num_classes=3, norm_cfg=NORM, align_corners=False),
    "PSPHead-ac": dict(type="PSPHead", in_channels=12, channels=4, pool_scales=(1, 3, 6, 8),
                       dropout_ratio=0.0, num_classes=2, norm_cfg=NORM, align_corners=True),
    "UPerHead": dict(type="UPerHead", in_channels=[4, 8, 16], in_index=[0, 1, 2], channels=8,
                     pool_scales=(1, 2, 3, 6), dropout_ratio=0.1, num_classes=3, norm_cfg=NORM,
                     align_corners=False),
}  # fmt: skip


@pytest.mark.parametrize(
    "name, sizes",
    [
        ("PSPHead", [(13, 17)]),
        ("PSPHead-ac", [(9, 9)]),
        ("UPerHead", [(20, 24), (10, 12), (5, 6)]),
    ],  # fmt: skip
)
def test_heads(name, sizes):
    cfg = HEADS[name]
    channels = cfg["in_channels"] if isinstance(cfg["in_channels"], list) else [cfg["in_channels"]]
    shapes = [(c, *s) for c, s in zip(channels, sizes, strict=True)]

    def make(dtype):
        return torch.cat([torch.randn(2, *s, dtype=dtype).flatten(1) for s in shapes], 1)

    def forward(model, flat):
        feats, start = [], 0
        for s in shapes:
            n = s[0] * s[1] * s[2]
            feats.append(flat[:, start : start + n].reshape(2, *s))
            start += n
        return model(feats)

    check_converted(lambda: MODELS.build(copy.deepcopy(cfg)), make, forward, label=name)


def test_icnet_x_last():
    cfg = dict(type="ICNet", backbone_cfg=RESNET18, in_channels=3, layer_channels=(8, 32),
               light_branch_middle_channels=4, psp_out_channels=8, out_channels=(4, 8, 8),
               norm_cfg=NORM, align_corners=False)  # fmt: skip
    check_converted(
        lambda: MODELS.build(copy.deepcopy(cfg)),
        lambda dtype: torch.randn(2, 3, 40, 48, dtype=dtype),
        label="ICNet",
    )


def test_fast_scnn_global_feature_extractor():
    cfg = dict(type="FastSCNN", in_channels=3, downsample_dw_channels=(4, 8), global_in_channels=8,
               global_block_channels=(8, 8, 16), global_out_channels=16,
               higher_in_channels=8, lower_in_channels=16, fusion_out_channels=16,
               norm_cfg=NORM)  # fmt: skip
    check_converted(
        lambda: MODELS.build(copy.deepcopy(cfg)),
        lambda dtype: torch.randn(2, 3, 96, 96, dtype=dtype),
        label="FastSCNN",
    )


def test_whole_segmentor_logs_and_pickles(caplog):
    """A whole EncoderDecoder (PSPNet-R18 at toy width): the head is found below the model,
    logged once, the model pickles and deep-copies converted, and converting again changes
    nothing."""
    cfg = dict(type="EncoderDecoder", backbone=RESNET18,
               decode_head=dict(HEADS["PSPHead"], in_channels=32, in_index=3),
               auxiliary_head=dict(type="FCNHead", in_channels=16, in_index=2, channels=4,
                                   num_convs=1, num_classes=3, norm_cfg=NORM))  # fmt: skip
    model = MODELS.build(cfg).eval()
    with caplog.at_level(logging.INFO, logger="pspnet.convert"):
        pspnet.convert_ppm(model)
        pspnet.convert_ppm(model)
    logged = [r.getMessage() for r in caplog.records if "PSPHead" in r.getMessage()]
    assert len(logged) == 1 and "decode_head" in logged[0] and "concat-free" in logged[0]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = model._forward(x)
        for other in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
            assert type(other.decode_head) is type(model.decode_head)
            assert_close(other._forward(x), want, tol=0.0)


def test_unconvertible_head_is_logged(caplog):
    cfg = dict(HEADS["PSPHead"], conv_cfg=None, act_cfg=dict(type="ReLU"))
    head = MODELS.build(cfg)
    head.bottleneck.order = ("norm", "conv", "act")  # not a conv -> norm -> act block any more
    with caplog.at_level(logging.INFO, logger="pspnet.convert"):
        pspnet.convert_ppm(head)
    assert "unconverted" in caplog.text and "not conv -> norm -> act" in caplog.text
    assert type(head).__name__ == "PSPHead"


def test_ddrnet_dappm_is_left_with_a_reason(caplog):
    model = MODELS.build(dict(type="DDRNet", in_channels=3, channels=4, ppm_channels=4,
                              norm_cfg=NORM))  # fmt: skip
    with caplog.at_level(logging.INFO, logger="pspnet.convert"):
        pspnet.convert_ppm(model)
    assert "DAPPM" in caplog.text and "unconverted" in caplog.text


def test_compile_fullgraph_converted_head():
    """torch.compile(fullgraph=True) of a converted head module, forward and backward, with the
    kernels' custom ops in the graph (the interpreter runs them under aot_eager)."""
    head = MODELS.build(dict(HEADS["PSPHead"], dropout_ratio=0.0)).train()
    pspnet.convert_ppm(head)
    feats = [torch.randn(2, 16, 9, 11, requires_grad=True)]
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return torch._dynamo.backends.debugging.aot_eager(gm, example_inputs)

    compiled = torch.compile(head, fullgraph=True, backend=backend)
    out = compiled(feats)
    (grad,) = torch.autograd.grad(out.square().sum(), feats)
    torch.manual_seed(0)
    ref_out = head(feats)
    (ref_grad,) = torch.autograd.grad(ref_out.square().sum(), feats)
    assert_close(out, ref_out, tol=1e-5)
    assert_close(grad, ref_grad, tol=1e-5)
    code = "\n".join(g.code for g in graphs)
    assert "psp_kernels.pyramid_pool_conv" in code and "shifted_upsample_add" in code


def test_converted_head_exports_exactly_at_other_sizes():
    """torch.export with dynamic sizes of a converted head: exact at sizes other than the
    example's (the pyramid and the concat-free conv take the export formulation)."""
    torch.manual_seed(0)
    head = MODELS.build(copy.deepcopy(HEADS["PSPHead"])).eval()
    original = copy.deepcopy(head)
    pspnet.convert_ppm(head)

    class Wrapper(torch.nn.Module):
        def __init__(self, head):
            super().__init__()
            self.head = head

        def forward(self, x):
            return self.head([x])

    dim = torch.export.Dim.DYNAMIC
    program = torch.export.export(
        Wrapper(head), (torch.randn(1, 16, 12, 12),), dynamic_shapes={"x": {2: dim, 3: dim}}
    )
    for size in ((9, 9), (17, 23), (33, 20)):
        x = torch.randn(1, 16, *size)
        with torch.no_grad():
            assert_close(program.module()(x), original([x]), tol=1e-5)


def test_sync_batchnorm_head():
    """A head whose norms are SyncBatchNorm (mmseg's configs) converts, and folds them in eval."""
    torch.manual_seed(0)
    head = torch.nn.SyncBatchNorm.convert_sync_batchnorm(
        MODELS.build(copy.deepcopy(HEADS["PSPHead"]))
    ).eval()
    original = copy.deepcopy(head)
    pspnet.convert_ppm(head)
    assert type(head).__name__ == "FusedPSPHead"
    assert isinstance(head.psp_modules[0][1].bn, torch.nn.SyncBatchNorm)
    x = [torch.randn(2, 16, 11, 13)]
    with torch.no_grad():
        assert_close(head(x), original(x), tol=1e-5, nonzero=True)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickles_with_every_protocol(protocol):
    """A converted head round-trips through pickle with every protocol (0 and 1 included), as
    the converted class, computing the same output."""
    torch.manual_seed(0)
    head = pspnet.convert_ppm(MODELS.build(copy.deepcopy(HEADS["PSPHead"]))).eval()
    other = pickle.loads(pickle.dumps(head, protocol=protocol))
    assert type(other) is type(head)
    x = [torch.randn(2, 16, 9, 11)]
    with torch.no_grad():
        assert_close(other(x), head(x), tol=0.0)


def test_batch_size_one_training_raises_as_the_original():
    """Training with batch size 1: the bin-1 branch's BatchNorm sees one value per channel; the
    converted head calls that module as the original does, so it raises the same error and
    updates no statistics (no silent switch to the running statistics)."""
    torch.manual_seed(0)
    original = MODELS.build(copy.deepcopy(HEADS["PSPHead"])).train()
    converted = pspnet.convert_ppm(copy.deepcopy(original))
    x = [torch.randn(1, 16, 9, 11)]
    for head in (original, converted):
        with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
            head(x)
    for (name, a), (_, b) in zip(converted.named_buffers(), original.named_buffers(), strict=True):
        assert torch.equal(a, b), name


class _NearestPPM(mmseg_models.decode_heads.psp_head.PPM):
    """mmseg's PPM upsampling with mode="nearest": its own forward, which the fused head skips."""

    def forward(self, x):
        return [torch.nn.functional.interpolate(p(x), x.shape[2:], mode="nearest") for p in self]


class _Scaled(torch.nn.Sequential):
    """A Sequential overriding forward (the fused head reads its children, skipping it)."""

    def forward(self, x):
        return super().forward(x) * 2


def _nearest_ppm(head):
    ppm = _NearestPPM((1, 2, 3, 6), 16, 8, None, NORM, dict(type="ReLU"), False)
    ppm.load_state_dict(head.psp_modules.state_dict())
    head.psp_modules = ppm


def _scaled_branch(head):
    head.psp_modules[0] = _Scaled(*head.psp_modules[0])


@pytest.mark.parametrize(
    "swap, reason",
    [(_nearest_ppm, "its pyramid is a _NearestPPM"), (_scaled_branch, "the branch _Scaled")],
)
def test_overridden_forward_is_left_unconverted(swap, reason, caplog):
    """A pyramid or branch whose class overrides the forward the fused head would skip: the
    head is left as it was (same outputs), with the reason logged."""
    torch.manual_seed(0)
    head = MODELS.build(copy.deepcopy(HEADS["PSPHead"])).eval()
    swap(head)
    original = copy.deepcopy(head)
    with caplog.at_level(logging.INFO, logger="pspnet.convert"):
        pspnet.convert_ppm(head)
    assert type(head) is type(original) and "unconverted" in caplog.text and reason in caplog.text
    x = [torch.randn(2, 16, 9, 11)]
    with torch.no_grad():
        assert_close(head(x), original(x), tol=0.0)


def _weight_norm_branch(head):
    torch.nn.utils.weight_norm(head.psp_modules[1][1].conv)
    return "psp_modules.1.1.conv (Conv2d) has forward pre-hooks"


def _prune_bottleneck(head):
    torch.nn.utils.prune.l1_unstructured(head.bottleneck.conv, "weight", amount=0.5)
    return "bottleneck.conv (Conv2d) has forward pre-hooks"


def _hook_pyramid(head):
    head.psp_modules.register_forward_hook(lambda m, i, out: [t * 0.5 for t in out])
    return "psp_modules (PPM) has forward hooks"


def _hook_branch_bn(head):
    head.psp_modules[2][1].bn.register_forward_pre_hook(lambda m, i: (i[0] + 1,))
    return "psp_modules.2.1.bn (BatchNorm2d) has forward pre-hooks"


@pytest.mark.parametrize("hook", [_weight_norm_branch, _prune_bottleneck, _hook_pyramid,
                                  _hook_branch_bn])  # fmt: skip
def test_hooked_head_is_left_unconverted(hook, caplog):
    """A head where a module the fused computation skips has hooks (weight_norm and prune
    recompute the weight in a forward pre-hook) is left as it was, the module named in the log;
    after a parameter update it computes what an unhooked copy of the same maths computes."""

    def build():  # (twice: a module with weight_norm does not deep-copy)
        torch.manual_seed(0)
        head = MODELS.build(copy.deepcopy(HEADS["PSPHead"])).eval()
        return head, hook(head)

    (head, reason), (original, _) = build(), build()
    with caplog.at_level(logging.INFO, logger="pspnet.convert"):
        pspnet.convert_ppm(head)
    assert type(head) is type(original)
    assert "unconverted" in caplog.text and reason in caplog.text
    with torch.no_grad():
        for m in (head, original):
            for name, p in m.named_parameters():
                if name.endswith(("weight_g", "weight_orig")):
                    p.mul_(2)  # as an optimizer step would
        x = [torch.randn(2, 16, 9, 11)]
        assert_close(head(x), original(x), tol=0.0)


def test_hooks_added_after_conversion_run():
    """Hooks added to skipped modules after the conversion: the converted head runs its
    original method while they are there (the same outputs as unconverted, weight_norm's
    recomputed weight included), and the fused one again once they are removed."""
    torch.manual_seed(0)
    original = MODELS.build(copy.deepcopy(HEADS["PSPHead"])).eval()
    converted = pspnet.convert_ppm(copy.deepcopy(original))
    x = [torch.randn(2, 16, 9, 11)]
    handles = []
    for head in (original, converted):
        handles.append(head.psp_modules.register_forward_hook(lambda m, i, o: [t / 2 for t in o]))
        torch.nn.utils.weight_norm(head.bottleneck.conv)
        with torch.no_grad():
            head.bottleneck.conv.weight_g.mul_(2)
    with torch.no_grad():
        assert_close(converted(x), original(x), tol=0.0)
        for h in handles:
            h.remove()
        torch.nn.utils.remove_weight_norm(original.bottleneck.conv)
        torch.nn.utils.remove_weight_norm(converted.bottleneck.conv)
        calls = []
        converted.psp_modules.forward = lambda *a: calls.append(a)  # not called when fused
        assert_close(converted(x), original(x), tol=1e-5, nonzero=True)
        assert not calls and type(converted).__name__ == "FusedPSPHead"


def test_global_module_hooks_run_on_converted_heads():
    """Module hooks registered globally run on every module's call: while there are any, the
    converted head runs its original method, so they see the same calls as unconverted."""
    torch.manual_seed(0)
    original = MODELS.build(copy.deepcopy(HEADS["PSPHead"])).eval()
    converted = pspnet.convert_ppm(copy.deepcopy(original))
    x = [torch.randn(2, 16, 9, 11)]
    seen = []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda m, i, o: seen.append(type(m).__name__)
    )
    try:
        with torch.no_grad():
            want = original(x)
            calls, seen[:] = list(seen), []
            got = converted(x)
    finally:
        handle.remove()
    assert [c.removeprefix("Fused") for c in seen] == calls and len(calls) > 20
    assert_close(got, want, tol=0.0)
