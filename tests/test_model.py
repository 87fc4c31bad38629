"""Tests of pspnet.PSPNet, the dilated ResNet backbone and checkpoint loading.

The reference is a minimal re-statement of the official hszhao/semseg PSPNet (deep-base ResNet,
dilation by editing ``conv2``/``downsample.0`` after construction, asserts, ``(H-1) % 8 == 0``)
written below in plain PyTorch: our model must have its keys and shapes and, with its weights,
give its outputs.
"""

from __future__ import annotations

import functools
import os
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import pspnet
from pspnet import PSPNet, load_checkpoint
from pspnet import resnet as resnet_mod
from pspnet.testing import OfficialPPM, randomize_batchnorm
from tests.helpers import assert_close

# ----------------------------------------------------------------------------------------------
# Official-style reference (plain PyTorch, the official construction order and module names)
# ----------------------------------------------------------------------------------------------


class _RefBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        residual = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            residual = self.downsample(x)
        return self.relu(out + residual)


class _RefResNet(nn.Module):
    def __init__(self, layers):
        super().__init__()
        self.inplanes = 128
        self.conv1 = nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.conv3 = nn.Conv2d(64, 128, 3, stride=1, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(128)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.avgpool = nn.AvgPool2d(7, stride=1)
        self.fc = nn.Linear(2048, 1000)

    def _make_layer(self, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * 4, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * 4),
            )
        mods = [_RefBottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * 4
        for _ in range(1, blocks):
            mods.append(_RefBottleneck(self.inplanes, planes))
        return nn.Sequential(*mods)


_DEPTHS = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}


class _RefPSPNet(nn.Module):
    def __init__(
        self,
        layers=50,
        bins=(1, 2, 3, 6),
        dropout=0.1,
        classes=2,
        zoom_factor=8,
        use_ppm=True,
        criterion=None,
    ):
        super().__init__()
        assert layers in [50, 101, 152]
        assert 2048 % len(bins) == 0
        assert classes > 1
        assert zoom_factor in [1, 2, 4, 8]
        self.zoom_factor = zoom_factor
        self.use_ppm = use_ppm
        self.criterion = criterion or nn.CrossEntropyLoss(ignore_index=255)
        r = _RefResNet(_DEPTHS[layers])
        self.layer0 = nn.Sequential(
            r.conv1, r.bn1, r.relu, r.conv2, r.bn2, r.relu, r.conv3, r.bn3, r.relu, r.maxpool
        )
        self.layer1, self.layer2, self.layer3, self.layer4 = r.layer1, r.layer2, r.layer3, r.layer4
        for layer, d in ((self.layer3, 2), (self.layer4, 4)):
            for n, m in layer.named_modules():
                if "conv2" in n:
                    m.dilation, m.padding, m.stride = (d, d), (d, d), (1, 1)
                elif "downsample.0" in n:
                    m.stride = (1, 1)
        fea_dim = 2048
        if use_ppm:
            self.ppm = OfficialPPM(fea_dim, int(fea_dim / len(bins)), bins)
            fea_dim *= 2
        self.cls = nn.Sequential(
            nn.Conv2d(fea_dim, 512, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(512),
            nn.ReLU(inplace=True),
            nn.Dropout2d(p=dropout),
            nn.Conv2d(512, classes, kernel_size=1),
        )
        self.aux = nn.Sequential(
            nn.Conv2d(1024, 256, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(256),
            nn.ReLU(inplace=True),
            nn.Dropout2d(p=dropout),
            nn.Conv2d(256, classes, kernel_size=1),
        )

    def forward(self, x, y=None):
        s = x.size()
        assert (s[2] - 1) % 8 == 0 and (s[3] - 1) % 8 == 0
        h = int((s[2] - 1) / 8 * self.zoom_factor + 1)
        w = int((s[3] - 1) / 8 * self.zoom_factor + 1)
        x = self.layer1(self.layer0(x))
        x = self.layer2(x)
        x_tmp = self.layer3(x)
        x = self.layer4(x_tmp)
        if self.use_ppm:
            x = self.ppm(x)
        x = self.cls(x)
        if self.zoom_factor != 1:
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=True)
        if self.training:
            aux = self.aux(x_tmp)
            if self.zoom_factor != 1:
                aux = F.interpolate(aux, size=(h, w), mode="bilinear", align_corners=True)
            return x.max(1)[1], self.criterion(x, y), self.criterion(aux, y)
        return x


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def _shapes(m: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


#: float32 parity with the official model: relative to the reference's max abs (never all zeros)
_close = functools.partial(assert_close, tol=1e-5, floor=0.0, nonzero=True)


# one intra-op thread and the plain-PyTorch kernel paths (see conftest.plain_torch_cpu)
pytestmark = pytest.mark.usefixtures("plain_torch_cpu")


@pytest.fixture(scope="module")
def pair50():
    """(ours, official) ResNet-50 PSPNets with the same weights, 5 classes."""
    torch.manual_seed(0)
    ref = _RefPSPNet(layers=50, classes=5)
    randomize_batchnorm(ref, seed=1)
    ours = PSPNet(layers=50, classes=5, pretrained=False)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


@pytest.fixture
def no_backbone_files(tmp_path, monkeypatch):
    """No backbone anywhere: empty $PSPNET_HOME, $HOME and working directory; warnings reset."""
    monkeypatch.setenv("PSPNET_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(resnet_mod, "_WARNED", set())
    return tmp_path


class _Tiny(nn.Module):
    """A small module with PSPNet-like names, for the checkpoint-format tests."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.layer0 = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4))
        self.cls = nn.Sequential(nn.Conv2d(4, classes, 1))
        self.aux = nn.Sequential(nn.Conv2d(4, classes, 1))

    def forward(self, x):
        return self.cls(self.layer0(x))


# ----------------------------------------------------------------------------------------------
# structure
# ----------------------------------------------------------------------------------------------

# parameter counts, bins (1, 2, 3, 6), aux head included (it is 2.36M of each)
PARAMS = {(50, 2): 49_066_948, (50, 5): 49_069_258, (101, 2): 68_059_076, (152, 2): 83_702_724}


def _check_same_structure(ours: nn.Module, ref: nn.Module) -> None:
    assert list(_shapes(ours).items()) == list(_shapes(ref).items())
    ref_convs = {n: m for n, m in ref.named_modules() if isinstance(m, nn.Conv2d)}
    ours_convs = {n: m for n, m in ours.named_modules() if isinstance(m, nn.Conv2d)}
    assert ours_convs.keys() == ref_convs.keys()
    # stride/padding/dilation of every conv equal the official (edited-after-construction) ones
    for n, m in ours_convs.items():
        r = ref_convs[n]
        assert (m.stride, m.padding, m.dilation) == (r.stride, r.padding, r.dilation), n


@pytest.mark.parametrize("layers", [50, 101, 152])
def test_state_dict_matches_official(layers, pair50):
    if layers == 50:
        ours, ref = pair50
        classes = 5
    else:
        ours, ref, classes = PSPNet(layers=layers, pretrained=False), _RefPSPNet(layers=layers), 2
    _check_same_structure(ours, ref)
    assert sum(p.numel() for p in ours.parameters()) == PARAMS[layers, classes]
    names = dict(ours.named_modules())
    assert isinstance(names["layer0.0"], nn.Conv2d) and names["layer0.0"].stride == (2, 2)
    assert isinstance(names["layer0.9"], nn.MaxPool2d)
    assert isinstance(names["cls.3"], nn.Dropout2d) and isinstance(names["aux.3"], nn.Dropout2d)
    assert names["layer3.0.conv2"].dilation == (2, 2) and names["layer4.0.conv2"].dilation == (4, 4)


def test_use_ppm_false_and_bins_match_official():
    for kw in ({"use_ppm": False}, {"bins": (1, 3)}):
        ours = PSPNet(pretrained=False, classes=3, **kw)
        _check_same_structure(ours, _RefPSPNet(classes=3, **kw))
        assert hasattr(ours, "ppm") == kw.get("use_ppm", True)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"layers": 34}, "layers"),
        ({"bins": (1, 2, 3)}, "len\\(bins\\)"),
        ({"bins": ()}, "bins"),
        ({"bins": (0, 1)}, "bins"),
        ({"classes": 1}, "classes"),
        ({"zoom_factor": 3}, "zoom_factor"),
        ({"dropout": 1.5}, "dropout"),
        ({"head": "concat-free"}, "head"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PSPNet(pretrained=False, **kwargs)


# ----------------------------------------------------------------------------------------------
# numerics against the official model
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("zoom", [1, 2, 4, 8])
def test_eval_matches_official(pair50, zoom):
    ours, ref = pair50
    ours.eval().zoom_factor = zoom
    ref.eval().zoom_factor = zoom
    x = torch.randn(2, 3, 17, 25)
    try:
        with torch.no_grad():
            a, b = ours(x), ref(x)
            assert a.shape == b.shape == (2, 5, 2 * zoom + 1, 3 * zoom + 1)
            _close(a, b)
            if zoom == 8:  # eval ignores labels
                y = torch.zeros(2, 17, 25, dtype=torch.long)
                torch.testing.assert_close(ours(x, y), a)
    finally:
        ours.zoom_factor = ref.zoom_factor = 8


def test_train_matches_official(pair50):
    ours, ref = pair50
    ours.train()
    ref.train()
    try:
        x = torch.randn(2, 3, 17, 17)
        y = torch.randint(0, 5, (2, 17, 17))
        y[:, :4] = 255
        torch.manual_seed(7)
        pa, ma, aa = ours(x, y)
        torch.manual_seed(7)  # the same dropout masks
        pb, mb, ab = ref(x, y)
        assert pa.shape == (2, 17, 17) and pa.dtype == torch.long
        _close(ma, mb)
        _close(aa, ab)
        assert (pa == pb).float().mean() > 0.99
        # BatchNorm statistics were updated the same way
        _close(ours.layer4[2].bn3.running_mean, ref.layer4[2].bn3.running_mean)
        _close(ours.ppm.features[0][2].running_var, ref.ppm.features[0][2].running_var)
        torch.testing.assert_close(ours.loss(ma, aa), ma + 0.4 * aa)
    finally:
        ours.eval()
        ref.eval()


# ----------------------------------------------------------------------------------------------
# shapes, any input size, training
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("zoom, expected", [(1, (3, 2)), (2, (5, 4)), (4, (10, 7)), (8, (20, 13))])
def test_any_input_size(pair50, zoom, expected):
    ours, _ = pair50
    ours.eval().zoom_factor = zoom
    try:
        with torch.no_grad():
            out = ours(torch.randn(1, 3, 20, 13))  # not 8n+1
    finally:
        ours.zoom_factor = 8
    # zoom 1: the stride-8 feature size ceil(20/8) x ceil(13/8); zoom 8: the input size
    assert out.shape == (1, 5, *expected)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("layers", [101, 152])
def test_deeper_forward(layers):
    m = PSPNet(layers=layers, classes=4, pretrained=False).eval()
    with torch.no_grad():
        out = m(torch.randn(1, 3, 17, 11))
    assert out.shape == (1, 4, 17, 11) and torch.isfinite(out).all()


def test_batch_one_trains():
    m = PSPNet(classes=3, pretrained=False).train()
    x = torch.randn(1, 3, 17, 11)
    y = torch.randint(0, 3, (1, 17, 11))
    pred, main, aux = m(x, y)
    assert pred.shape == (1, 17, 11)
    m.loss(main, aux).backward()
    for name in ("layer0.0.weight", "layer4.2.conv3.weight", "ppm.features.0.1.weight"):
        g = m.get_parameter(name).grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name
    for name in ("cls.4.weight", "aux.0.weight"):
        assert m.get_parameter(name).grad.abs().sum() > 0, name
    # training mode without labels gives logits
    assert m(x).shape == (1, 3, 17, 11)


def test_x_must_be_4d(pair50):
    with pytest.raises(ValueError, match="N, 3, H, W"):
        pair50[0](torch.randn(3, 17, 17))


# ----------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------


def test_official_checkpoint_loads(pair50, tmp_path):
    _, ref = pair50
    ref.eval()
    path = tmp_path / "train_epoch_100.pth"
    sd = {"module." + k: v for k, v in ref.state_dict().items()}  # saved from DataParallel
    torch.save({"epoch": 100, "state_dict": sd, "optimizer": {"state": {}}}, path)
    fresh = PSPNet(layers=50, classes=5, pretrained=False)
    assert load_checkpoint(fresh, path) is fresh
    x = torch.randn(1, 3, 17, 17)
    with torch.no_grad():
        _close(fresh.eval()(x), ref(x))  # float tolerance: the fused PPM folds BatchNorm


def test_other_checkpoint_layouts(tmp_path):
    torch.manual_seed(1)
    src = _Tiny()
    randomize_batchnorm(src, seed=1)
    sd = src.state_dict()
    layouts = {
        "plain.pth": sd,
        "ours.pth": {"model": sd, "optimizer": {"state": {}}, "epoch": 3},
        "compiled.pth": {"model": {"_orig_mod." + k: v for k, v in sd.items()}},
        "ddp_compiled.pth": {"state_dict": {"module._orig_mod." + k: v for k, v in sd.items()}},
        "old.pth": {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")},
    }
    for name, obj in layouts.items():
        torch.save(obj, tmp_path / name)
        fresh = _Tiny()
        load_checkpoint(fresh, tmp_path / name)
        for k, v in fresh.state_dict().items():
            if not (name == "old.pth" and k.endswith("num_batches_tracked")):
                assert torch.equal(v, sd[k]), (name, k)
    # into wrapped models (torch.compile, DataParallel)
    fresh = _Tiny()
    load_checkpoint(torch.compile(fresh), tmp_path / "plain.pth")
    assert torch.equal(fresh.cls[0].weight, sd["cls.0.weight"])
    fresh = _Tiny()
    load_checkpoint(nn.DataParallel(fresh), tmp_path / "ours.pth")
    assert torch.equal(fresh.layer0[1].running_var, sd["layer0.1.running_var"])


def test_checkpoint_errors(tmp_path):
    src = _Tiny()
    sd = src.state_dict()
    fresh = _Tiny()
    before = fresh.cls[0].weight.clone()
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_checkpoint(fresh, tmp_path / "nope.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint\n")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        load_checkpoint(fresh, tmp_path / "text.pth")
    (tmp_path / "trunc.pth").write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(fresh, tmp_path / "trunc.pth")
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(ValueError, match="does not hold a state_dict"):
        load_checkpoint(fresh, tmp_path / "tensor.pth")
    torch.save({"epoch": 1}, tmp_path / "nostate.pth")
    with pytest.raises(ValueError, match="does not hold a state_dict"):
        load_checkpoint(fresh, tmp_path / "nostate.pth")
    torch.save({"model": sd, "args": _Tiny}, tmp_path / "pyobj.pth")
    with pytest.raises(ValueError, match="weights_only=False"):
        load_checkpoint(fresh, tmp_path / "pyobj.pth")
    load_checkpoint(fresh, tmp_path / "pyobj.pth", weights_only=False)
    assert torch.equal(fresh.cls[0].weight, sd["cls.0.weight"])
    fresh = _Tiny()
    before = fresh.cls[0].weight.clone()
    # missing and unexpected keys are named, and nothing is loaded
    bad = {k: v for k, v in sd.items() if not k.startswith("aux.")}
    bad["extra.weight"] = torch.zeros(1)
    torch.save({"state_dict": bad}, tmp_path / "keys.pth")
    with pytest.raises(ValueError, match=r"missing key.*aux\.0\.weight.*unexpected.*extra\.weight"):
        load_checkpoint(fresh, tmp_path / "keys.pth")
    assert torch.equal(fresh.cls[0].weight, before)
    with pytest.warns(UserWarning, match=r"aux\.0\.weight"):
        load_checkpoint(fresh, tmp_path / "keys.pth", strict=False)
    assert torch.equal(fresh.cls[0].weight, sd["cls.0.weight"])
    # a shape mismatch (another class count) is named, strict or not
    torch.save(_Tiny(classes=7).state_dict(), tmp_path / "c7.pth")
    for strict in (True, False):
        with pytest.raises(ValueError, match=r"cls\.0\.weight: checkpoint \(7, 4, 1, 1\)"):
            load_checkpoint(fresh, tmp_path / "c7.pth", strict=strict)
    with pytest.raises(TypeError, match="model"):
        load_checkpoint(sd, tmp_path / "c7.pth")


# ----------------------------------------------------------------------------------------------
# pretrained backbone
# ----------------------------------------------------------------------------------------------


def test_pretrained_without_file_warns_once(no_backbone_files):
    with pytest.warns(UserWarning) as rec:
        PSPNet(layers=50, pretrained=True)
    msgs = [str(w.message) for w in rec if "resnet50_v2.pth" in str(w.message)]
    assert len(msgs) == 1
    msg = msgs[0]
    assert os.path.join(str(no_backbone_files / "home"), "resnet50_v2.pth") in msg
    assert os.path.join(str(no_backbone_files / "user"), ".cache", "pspnet") in msg
    assert os.path.join("initmodel", "resnet50_v2.pth") in msg
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PSPNet(layers=50, pretrained=True)  # second time: silent


def test_pretrained_loads_backbone(no_backbone_files, tmp_path):
    torch.manual_seed(3)
    backbone = pspnet.resnet50()  # the undilated ImageNet layout, fc included
    randomize_batchnorm(backbone, seed=1)
    sd = backbone.state_dict()
    assert "fc.weight" in sd and "conv3.weight" in sd
    path = tmp_path / "r50.pth"
    torch.save(sd, path)

    def check(m):
        assert torch.equal(m.layer0[0].weight, sd["conv1.weight"])
        assert torch.equal(m.layer0[7].running_var, sd["bn3.running_var"])
        assert torch.equal(m.layer3[0].downsample[0].weight, sd["layer3.0.downsample.0.weight"])
        assert torch.equal(m.layer4[2].conv2.weight, sd["layer4.2.conv2.weight"])
        return m

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = check(PSPNet(pretrained=True, backbone_path=path))
        # found by name in $PSPNET_HOME, then in ./initmodel/
        home = no_backbone_files / "home"
        home.mkdir()
        os.link(path, home / "resnet50_v2.pth")
        check(PSPNet(pretrained=True))
        (home / "resnet50_v2.pth").unlink()
        (tmp_path / "initmodel").mkdir()
        os.link(path, tmp_path / "initmodel" / "resnet50_v2.pth")
        check(PSPNet(pretrained=True))
    # the stem computes what the ImageNet stem computes
    x = torch.randn(1, 3, 17, 17)
    m.eval()
    backbone.eval()
    b = backbone
    with torch.no_grad():
        s = b.relu(b.bn2(b.conv2(b.relu(b.bn1(b.conv1(x))))))
        s = b.maxpool(b.relu(b.bn3(b.conv3(s))))
        torch.testing.assert_close(m.layer0(x), s, rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="backbone_path"):
        PSPNet(backbone_path=tmp_path / "missing.pth")
    # the classifier may be absent from a backbone file; nothing else may
    torch.save({k: v for k, v in sd.items() if not k.startswith("fc.")}, tmp_path / "nofc.pth")
    check(PSPNet(backbone_path=tmp_path / "nofc.pth", pretrained=False))
    torch.save({k: v for k, v in sd.items() if k != "layer2.1.bn2.bias"}, tmp_path / "short.pth")
    with pytest.raises(ValueError, match=r"missing.*layer2\.1\.bn2\.bias"):
        PSPNet(backbone_path=tmp_path / "short.pth")


def test_resnet_options():
    a = pspnet.resnet50(replace_stride_with_dilation=[False, True, True])
    b = pspnet.resnet50(strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4))
    c = pspnet.resnet50()
    assert _shapes(a) == _shapes(b) == _shapes(c)
    convs_a = [(m.stride, m.padding, m.dilation) for m in a.modules() if isinstance(m, nn.Conv2d)]
    convs_b = [(m.stride, m.padding, m.dilation) for m in b.modules() if isinstance(m, nn.Conv2d)]
    assert convs_a == convs_b
    assert a.layer3[0].conv2.dilation == (2, 2) and a.layer4[0].conv2.dilation == (4, 4)
    assert c.layer3[0].conv2.stride == (2, 2) and c.layer4[0].downsample[0].stride == (2, 2)
    x = torch.randn(1, 3, 17, 17)
    with torch.no_grad():
        assert c.eval()(x).shape == (1, 1000)
        assert a.eval().forward_features(x).shape == (1, 2048, 3, 3)
        assert c.forward_features(x).shape == (1, 2048, 1, 1)
    with pytest.raises(ValueError, match="replace_stride_with_dilation"):
        pspnet.resnet50(replace_stride_with_dilation=[True])
    with pytest.raises(ValueError, match="not both"):
        pspnet.resnet50(replace_stride_with_dilation=[False, True, True], strides=(1, 2, 1, 1))
    with pytest.raises(ValueError, match="dilations"):
        pspnet.resnet50(dilations=(1, 1, 0, 4))
    with pytest.raises(ValueError, match="layers"):
        pspnet.ResNet(pspnet.Bottleneck, [3, 4, 6])


def test_resnet_classic_stem():
    m = pspnet.ResNet(pspnet.Bottleneck, [1, 1, 1, 1], deep_base=False, num_classes=10).eval()
    assert m.conv1.kernel_size == (7, 7) and not hasattr(m, "conv3")
    assert len(m.stem()) == 4
    with torch.no_grad():
        assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_resnet_width():
    m = pspnet.ResNet(pspnet.Bottleneck, [1, 1, 1, 1], width=4, num_classes=5).eval()
    assert (m.conv1.out_channels, m.conv3.out_channels) == (4, 8)
    assert [m.layer1[0].conv3.out_channels, m.layer4[0].conv3.out_channels] == [16, 128]
    with torch.no_grad():
        assert m.forward_features(torch.randn(1, 3, 33, 33)).shape == (1, 128, 2, 2)
    with pytest.raises(ValueError, match="width"):
        pspnet.ResNet(pspnet.Bottleneck, [1, 1, 1, 1], width=0)


def test_custom_backbone_arguments_build_the_tiny_model():
    from pspnet.model import TinyPSPNet

    torch.manual_seed(0)
    args = dict(blocks=(1, 1, 1, 1), width=4, head_channels=(16, 16), pretrained=False)
    custom = PSPNet(classes=3, **args)
    tiny = TinyPSPNet(classes=3, width=4)
    assert _shapes(custom) == _shapes(tiny)
    assert tiny.layer4[0].conv3.out_channels == 128 and len(tiny.layer3) == 1
    assert tiny.layer3[0].conv2.dilation == (2, 2) and tiny.layer4[0].conv2.dilation == (4, 4)
    assert tiny.ppm.features[0][1].out_channels == 32  # 128 // len(bins)
    assert (tiny.cls[0].in_channels, tiny.cls[0].out_channels) == (256, 16)
    assert (tiny.aux[0].in_channels, tiny.aux[0].out_channels) == (64, 16)
    tiny.load_state_dict(custom.state_dict())
    x = torch.randn(1, 3, 33, 33)
    with torch.no_grad():
        assert torch.equal(tiny.eval()(x), custom.eval()(x))
    with pytest.raises(ValueError, match="pretrained=False"):
        PSPNet(blocks=(1, 1, 1, 1))
    with pytest.raises(ValueError, match="pretrained=False"):
        PSPNet(width=32)
    with pytest.raises(ValueError, match="len\\(bins\\)"):
        PSPNet(width=4, bins=(1, 2, 3), pretrained=False)


# ----------------------------------------------------------------------------------------------
# torch.compile
# ----------------------------------------------------------------------------------------------


def test_compile_has_no_graph_breaks(pair50):
    torch._dynamo.reset()
    m, _ = pair50
    x = torch.randn(2, 3, 17, 17)
    y = torch.randint(0, 5, (2, 17, 17))
    try:
        m.eval()
        ex = torch._dynamo.explain(m)(x)
        assert ex.graph_break_count == 0 and ex.graph_count == 1, ex.break_reasons
        m.train()
        ex = torch._dynamo.explain(m)(x, y)
        assert ex.graph_break_count == 0 and ex.graph_count == 1, ex.break_reasons
    finally:
        m.eval()
        torch._dynamo.reset()
