"""pspnet.convert_ppm without the third-party libraries: what it warns and logs about, and that
pspnet neither needs nor imports mmseg, transformers or segmentation_models_pytorch."""

import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import pspnet
from pspnet.convert import units
from pspnet.testing import OfficialPPM, randomize_batchnorm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_warns_when_nothing_is_recognised():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    with pytest.warns(UserWarning, match="no pyramid pooling head") as record:
        assert pspnet.convert_ppm(model) is model
    message = str(record[0].message)
    for looked_for in ("official semseg PPM", "mmseg PSPHead", "transformers UperNetHead",
                       "smp PSPNet decoder"):  # fmt: skip
        assert looked_for in message


def test_bad_argument():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        pspnet.convert_ppm("model")


class CsailPPM(nn.Module):
    """CSAIL's layout: the conv, BatchNorm and ReLU run after the upsampling."""

    def __init__(self, c=8, r=4, scales=(1, 2, 3, 6)):
        super().__init__()
        self.ppm_pooling = nn.ModuleList(nn.AdaptiveAvgPool2d(s) for s in scales)
        self.ppm_conv = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, r, 1, bias=False), nn.BatchNorm2d(r), nn.ReLU())
            for _ in scales
        )

    def forward(self, x):
        size = x.shape[-2:]
        ups = [
            conv(F.interpolate(pool(x), size, mode="bilinear"))
            for pool, conv in zip(self.ppm_pooling, self.ppm_conv, strict=True)
        ]
        return torch.cat([x] + ups, 1)


def test_csail_layout_is_left_and_logged(caplog, recwarn):
    model = nn.Sequential(nn.Conv2d(3, 8, 1), CsailPPM())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="pspnet.convert"):
        assert pspnet.convert_ppm(model) is model
    assert "CSAIL" in caplog.text and "after the upsampling" in caplog.text
    assert type(model[1]) is CsailPPM
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not [w for w in recwarn if "no pyramid pooling head" in str(w.message)]


def test_already_fused_models_are_recognised(recwarn):
    model = pspnet.TinyPSPNet(width=2)
    assert pspnet.convert_ppm(model) is model
    assert not [w for w in recwarn if "no pyramid pooling head" in str(w.message)]


BLOCKED = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = ("mmseg", "mmcv", "mmengine", "transformers", "segmentation_models_pytorch")

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Block())
    import torch, pspnet
    from pspnet.testing import OfficialPPM
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), OfficialPPM(8, 2, (1, 2, 3, 6)))
    model = pspnet.convert_ppm(model).eval()
    assert isinstance(model[1], pspnet.PPM)
    model(torch.randn(1, 3, 9, 9))
    loaded = [m for m in sys.modules if m.split(".")[0] in BLOCKED]
    assert not loaded, loaded
    print("ok")
    """
)


def test_pspnet_works_without_the_libraries():
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, "-c", BLOCKED], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr


class _Scaled(nn.Sequential):
    def forward(self, x):
        return super().forward(x) * 2


class _Pool(nn.AdaptiveAvgPool2d):
    def forward(self, x):
        return super().forward(x) + 1


def test_modules_overriding_forward_are_not_read_as_plain_ones():
    """The fused head reads a branch's and a conv unit's children and skips their forward: a
    Sequential (or a pooling) whose class overrides forward is refused, with a reason."""
    conv, relu = nn.Conv2d(4, 2, 1, bias=False), nn.ReLU()
    assert not isinstance(units.branch(nn.Sequential(nn.AdaptiveAvgPool2d(2), conv, relu)), str)
    for bad in (_Scaled(nn.AdaptiveAvgPool2d(2), conv, relu), nn.Sequential(_Pool(2), conv, relu),
                nn.Sequential(nn.AdaptiveAvgPool2d(2), _Scaled(conv, relu))):  # fmt: skip
        assert isinstance(units.branch(bad), str)
    assert isinstance(units.conv_unit(_Scaled(conv, nn.ReLU())), str)


def test_hooked_sees_module_and_global_hooks():
    """What a converted head checks before it skips modules: their own hooks of every kind
    (named, at the conversion) and module hooks registered globally."""
    from pspnet.hooks import first_hooked, hooked

    root = nn.Sequential(nn.Conv2d(2, 2, 1), nn.Sequential(nn.ReLU()))
    assert not hooked(root.modules()) and first_hooked(root.modules(), root) is None
    for register in ("register_forward_pre_hook", "register_forward_hook",
                     "register_full_backward_pre_hook", "register_full_backward_hook"):  # fmt: skip
        handle = getattr(root[1][0], register)(lambda *a: None)
        assert hooked(root.modules())
        assert first_hooked(root.modules(), root).startswith("1.0 (ReLU) has ")
        handle.remove()
    handle = torch.nn.modules.module.register_module_forward_pre_hook(lambda *a: None)
    try:
        assert hooked([])
    finally:
        handle.remove()
    assert not hooked(root.modules())


class _XLastPPM(OfficialPPM):
    """The official layout with x last in the concat (as a fork may write it)."""

    def forward(self, x):
        return torch.cat([self.upsample(f(x), x.shape[2:]) for f in self.features] + [x], 1)


def _bilinear(y, size):  # interpolate's default align_corners=False, as forks write it
    return F.interpolate(y, size, mode="bilinear")


def _hooked_ppm():
    ppm = OfficialPPM(8, 2, (1, 2, 3, 6))
    ppm.features[1][2].register_forward_hook(lambda m, i, out: out * 2)
    return ppm


@pytest.mark.parametrize(
    "build, reason",
    [
        (lambda: OfficialPPM(8, 2, (1, 2, 3, 6), upsample=_bilinear), "something else"),
        (lambda: _XLastPPM(8, 2, (1, 2, 3, 6)), "something else"),
        (_hooked_ppm, "features.1.2 (BatchNorm2d) has forward hooks"),
    ],
    ids=["align_corners=False", "x last", "hooks"],
)
def test_official_layout_with_other_maths_or_hooks_is_left(build, reason, caplog):
    """The official layout with another forward (align_corners=False, x last) or with hooks is
    not swapped for pspnet.PPM: the probe (or the hooks) is logged, and the outputs stay."""
    torch.manual_seed(0)
    model = randomize_batchnorm(nn.Sequential(nn.Conv2d(3, 8, 1), build()), seed=1).eval()
    ppm = model[1]
    x = torch.randn(2, 3, 9, 11)
    with torch.no_grad():
        want = model(x)
    with caplog.at_level(logging.INFO, logger="pspnet.convert"):
        assert pspnet.convert_ppm(model) is model
    assert model[1] is ppm
    assert "left the official semseg PPM at 1 unconverted" in caplog.text and reason in caplog.text
    with torch.no_grad():
        assert torch.equal(model(x), want)


def test_official_probe_leaves_the_module_as_it_was():
    """The probe runs on a float64 copy with its own weights and random numbers: the converted
    PPM shares the original's tensors, whose values, dtype and training flags (and the global
    random state) are as before."""
    torch.manual_seed(0)
    model = randomize_batchnorm(nn.Sequential(OfficialPPM(8, 2, (1, 2, 3, 6))), seed=1)
    model.train()
    model[0].features[2].eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    pspnet.convert_ppm(model)
    assert isinstance(model[0], pspnet.PPM) and model[0].training
    assert torch.equal(torch.get_rng_state(), rng)
    assert [m.training for m in model.modules()] == flags
    for k, v in model.state_dict().items():
        assert v.dtype == before[k].dtype and torch.equal(v, before[k]), k
