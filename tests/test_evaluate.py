"""Metrics on hand-made confusion matrices, and single/multi-scale, flip and sliding-window
inference (shapes, one window == whole image, exact averaging, flip symmetry)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from pspnet.config import Config
from pspnet.evaluate import evaluate, net_process, predict_probs, scaled_size, slide_inference
from pspnet.metrics import ConfusionMeter, compute_metrics, confusion_matrix, format_table
from pspnet.model import TinyPSPNet
from pspnet.testing import randomize_batchnorm

# one intra-op thread and the plain-PyTorch kernel paths (see conftest.plain_torch_cpu)
pytestmark = pytest.mark.usefixtures("plain_torch_cpu")


# -------------------------------------------------------------------------------- metrics


def test_metrics_hand_made_confusion_matrix():
    # rows: ground truth, columns: prediction
    cm = torch.tensor([[3, 1, 0, 0], [2, 4, 0, 0], [0, 0, 0, 0], [0, 2, 0, 0]])
    m = compute_metrics(cm, ["a", "b", "c", "d"])
    # class 0: I=3, U=4+5-3=6; class 1: I=4, U=6+7-4=9; class 2 absent everywhere: NaN;
    # class 3: in gt (2 px) never predicted: IoU 0, acc 0
    assert m["iou"][0] == pytest.approx(0.5)
    assert m["iou"][1] == pytest.approx(4 / 9)
    assert math.isnan(m["iou"][2]) and math.isnan(m["acc"][2])
    assert m["iou"][3] == 0.0 and m["acc"][3] == 0.0
    # present-class means (the classes that are not NaN) ...
    assert m["mIoU_present"] == pytest.approx((0.5 + 4 / 9 + 0.0) / 3)
    assert m["acc"][0] == pytest.approx(3 / 4) and m["acc"][1] == pytest.approx(4 / 6)
    assert m["mAcc_present"] == pytest.approx((3 / 4 + 4 / 6 + 0) / 3)
    # ... and the official ones (hszhao/semseg cal_acc): over all 4 classes, absent = 0
    assert m["mIoU"] == pytest.approx((0.5 + 4 / 9 + 0.0 + 0.0) / 4)
    assert m["mAcc"] == pytest.approx((3 / 4 + 4 / 6 + 0 + 0) / 4)
    assert m["absent_classes"] == [2] and m["absent_class_names"] == ["c"]
    assert m["allAcc"] == pytest.approx(7 / 12)
    table = format_table(m)
    assert "mIoU_present 0.3148" in table and "c" in table and "     -" in table
    assert "mIoU 0.2361" in table and "absent from the ground truth: 1 of 4: c (2)" in table


def test_metrics_predicted_but_absent_class_counts_as_zero_iou():
    cm = torch.tensor([[5, 1], [0, 0]])  # class 1 predicted once, never in gt
    m = compute_metrics(cm)
    assert m["iou"] == pytest.approx([5 / 6, 0.0])
    assert m["mIoU"] == pytest.approx(5 / 12)
    assert m["acc"][0] == pytest.approx(5 / 6) and math.isnan(m["acc"][1])
    assert m["mAcc_present"] == pytest.approx(5 / 6)
    assert m["mAcc"] == pytest.approx(5 / 12)  # official: class 1 (no gt pixel) counts 0


def test_metrics_empty_is_nan():
    m = compute_metrics(torch.zeros(3, 3, dtype=torch.int64))
    assert math.isnan(m["mIoU"]) and math.isnan(m["allAcc"])


def test_confusion_matrix_matches_loops_and_ignores_255():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (2, 9, 11), generator=g)
    target[0, :3] = 255
    pred = torch.randint(0, 4, (2, 9, 11), generator=g)
    cm = confusion_matrix(pred, target, 4, ignore_index=255)
    ref = torch.zeros(4, 4, dtype=torch.int64)
    for t, p in zip(target.flatten().tolist(), pred.flatten().tolist(), strict=True):
        if t != 255:
            ref[t, p] += 1
    assert torch.equal(cm, ref)
    assert int(cm.sum()) == target.numel() - 33
    meter = ConfusionMeter(4)
    meter.update(pred[:1], target[:1])
    meter.update(pred[1:], target[1:])
    assert torch.equal(meter.cm, ref)
    # another ignore index
    cm7 = confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([7, 1, 0]), 2, ignore_index=7)
    assert cm7.tolist() == [[0, 1], [0, 1]]


def test_confusion_matrix_bad_input():
    with pytest.raises(ValueError, match="shapes differ"):
        confusion_matrix(
            torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long), 2
        )
    with pytest.raises(TypeError):
        confusion_matrix(torch.zeros(4), torch.zeros(4, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(torch.tensor([5]), torch.tensor([0]), 2)


# ------------------------------------------------------------------------------ inference


class Pointwise(nn.Module):
    """A per-pixel model (1x1 conv): its output at a pixel depends on that pixel only, so any
    sliding-window tiling must reproduce whole-image inference exactly."""

    def __init__(self, classes=3):
        super().__init__()
        self.conv = nn.Conv2d(3, classes, 1)

    def forward(self, x):
        return self.conv(x)


class Stride2(nn.Module):
    """Logits at a coarser size than the input (like zoom_factor < 8): net_process resizes."""

    def __init__(self, classes=3):
        super().__init__()
        self.conv = nn.Conv2d(3, classes, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return randomize_batchnorm(TinyPSPNet(classes=3, width=4)).eval()  # non-trivial BN


@pytest.mark.parametrize("size", [(20, 27), (33, 33), (47, 38), (70, 41)])
def test_slide_pointwise_equals_whole(size):
    torch.manual_seed(1)
    model = Pointwise().eval()
    x = torch.randn(2, 3, *size)
    whole = net_process(model, x)
    slide = slide_inference(model, x, 3, crop_size=(25, 30), stride_rate=2 / 3)
    assert slide.shape == (2, 3, *size)
    torch.testing.assert_close(slide, whole, rtol=1e-6, atol=1e-6)


def test_slide_one_window_equals_whole(tiny):
    x = torch.randn(1, 3, 41, 35)
    whole = net_process(tiny, x)
    slide = slide_inference(tiny, x, 3, crop_size=(41, 35))
    torch.testing.assert_close(slide, whole, rtol=0, atol=0)
    # through predict_probs as well
    p = predict_probs(tiny, x, 3, mode="slide", crop_size=(41, 35))
    torch.testing.assert_close(p, whole, rtol=0, atol=0)


def test_slide_averages_overlapping_windows(tiny):
    """Windows overlap: check against an explicit official-style loop."""
    x = torch.randn(1, 3, 40, 52)
    crop, rate = (33, 33), 2 / 3
    got = slide_inference(tiny, x, 3, crop, rate)
    stride = math.ceil(33 * rate)
    acc = torch.zeros(1, 3, 40, 52)
    cnt = torch.zeros(40, 52)
    for ih in range(math.ceil((40 - 33) / stride) + 1):
        for iw in range(math.ceil((52 - 33) / stride) + 1):
            eh, ew = min(ih * stride + 33, 40), min(iw * stride + 33, 52)
            sh, sw = eh - 33, ew - 33
            acc[..., sh:eh, sw:ew] += tiny(x[..., sh:eh, sw:ew]).softmax(1)
            cnt[sh:eh, sw:ew] += 1
    assert int(cnt.max()) > 1  # the case does overlap
    torch.testing.assert_close(got, acc / cnt, rtol=1e-5, atol=1e-6)


def test_slide_pads_small_images_with_zero_mean(tiny):
    x = torch.randn(1, 3, 17, 22)
    got = slide_inference(tiny, x, 3, crop_size=(33, 33))
    assert got.shape == (1, 3, 17, 22)
    padded = torch.nn.functional.pad(x, (5, 6, 8, 8))  # (33-22)//2 left, (33-17)//2 top
    ref = tiny(padded).softmax(1)[..., 8:25, 5:27]
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_multiscale_output_shape_and_probabilities(tiny, mode):
    x = torch.randn(2, 3, 37, 29)
    p = predict_probs(
        tiny, x, 3, scales=(0.5, 0.75, 1.0, 1.5), flip=True, mode=mode, crop_size=(33, 33)
    )
    assert p.shape == (2, 3, 37, 29)
    torch.testing.assert_close(p.sum(1), torch.ones(2, 37, 29), rtol=1e-5, atol=1e-5)
    single = predict_probs(tiny, x, 3, scales=(1.0,), mode="whole")
    torch.testing.assert_close(single, net_process(tiny, x), rtol=0, atol=0)


def test_multiscale_is_mean_of_scales(tiny):
    x = torch.randn(1, 3, 32, 24)
    both = predict_probs(tiny, x, 3, scales=(0.5, 1.0))
    half = predict_probs(tiny, x, 3, scales=(0.5,))
    one = predict_probs(tiny, x, 3, scales=(1.0,))
    torch.testing.assert_close(both, (half + one) / 2, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(half, one, atol=1e-4)


def test_flip_averaging_is_symmetric(tiny):
    x = torch.randn(2, 3, 30, 26)
    a = net_process(tiny, x, flip=True)
    b = net_process(tiny, x.flip(3), flip=True)
    torch.testing.assert_close(a, b.flip(3), rtol=1e-6, atol=1e-7)
    no_flip = net_process(tiny, x)
    mirrored = net_process(tiny, x.flip(3)).flip(3)
    torch.testing.assert_close(a, (no_flip + mirrored) / 2, rtol=1e-6, atol=1e-7)
    s = predict_probs(tiny, x, 3, flip=True, mode="slide", crop_size=(20, 20))
    s2 = predict_probs(tiny, x.flip(3), 3, flip=True, mode="slide", crop_size=(20, 20))
    torch.testing.assert_close(s, s2.flip(3), rtol=1e-5, atol=1e-6)


def test_coarse_logits_are_resized():
    model = Stride2().eval()
    x = torch.randn(1, 3, 21, 18)
    assert net_process(model, x).shape == (1, 3, 21, 18)
    assert slide_inference(model, x, 3, (16, 16)).shape == (1, 3, 21, 18)


def test_scaled_size_official_rule():
    assert scaled_size(512, 683, 1.0, 512) == (384, 512)
    assert scaled_size(683, 512, 0.5, 512) == (256, 192)
    assert scaled_size(40, 30, 1.0) == (40, 30)
    assert scaled_size(40, 30, 1.5) == (60, 45)


def test_predict_probs_bad_arguments(tiny):
    x = torch.randn(1, 3, 9, 9)
    with pytest.raises(ValueError, match="mode"):
        predict_probs(tiny, x, 3, mode="tiles")
    with pytest.raises(ValueError, match="crop_size"):
        predict_probs(tiny, x, 3, mode="slide")
    with pytest.raises(ValueError):
        predict_probs(tiny, x[0], 3)


class _Oracle(nn.Module):
    """Logits = one-hot of a label map stored per input (looked up by the image's mean)."""

    def __init__(self, table):
        super().__init__()
        self.table = table
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        out = []
        for img in x:
            lab = self.table[round(float(img[0, 0, 0]))]
            out.append(nn.functional.one_hot(lab.clamp(0, 2), 3).permute(2, 0, 1).float() * 10)
        return torch.stack(out)


def test_evaluate_perfect_and_ignored_pixels():
    labels = [torch.randint(0, 3, (9, 10)) for _ in range(3)]
    labels[1][:2] = 255
    data = []
    for i, lab in enumerate(labels):
        img = torch.full((3, 9, 10), float(i))
        data.append((img, lab))
    model = _Oracle(dict(enumerate(labels)))
    cfg = Config(classes=3, val_batch_size=2, workers=0)
    m = evaluate(model, data, cfg)
    assert m["mIoU"] == pytest.approx(1.0) and m["allAcc"] == pytest.approx(1.0)
    assert m["pixels"] == 3 * 90 - 20


def test_evaluate_hand_made_predictions():
    """A known imperfect prediction through the whole evaluation: the confusion matrix is
    derived by hand, so are mIoU, mAcc and allAcc (every class present, so every mean agrees)."""
    gt0 = torch.zeros(9, 10, dtype=torch.long)
    gt0[:, 5:] = 1  # 45 px of class 0, 45 of class 1
    pred0 = torch.zeros(9, 10, dtype=torch.long)
    pred0[:, 4:] = 1  # column 4 (9 px of class 0) predicted as 1
    gt1 = torch.full((9, 10), 2, dtype=torch.long)
    gt1[0] = 255  # 80 labelled px of class 2
    pred1 = torch.full((9, 10), 2, dtype=torch.long)
    pred1[-1] = 0  # its last row (10 px) predicted as 0
    data = [(torch.full((3, 9, 10), float(i)), gt) for i, gt in enumerate((gt0, gt1))]
    model = _Oracle({0: pred0, 1: pred1})
    m = evaluate(model, data, Config(classes=3, val_batch_size=1, workers=0))
    # confusion (rows: truth): [[36, 9, 0], [0, 45, 0], [10, 0, 70]]
    iou = [36 / (45 + 46 - 36), 45 / (45 + 54 - 45), 70 / (80 + 70 - 70)]
    assert m["iou"] == pytest.approx(iou)
    assert m["mIoU"] == pytest.approx(sum(iou) / 3)
    assert m["mAcc"] == pytest.approx((36 / 45 + 45 / 45 + 70 / 80) / 3)
    assert m["allAcc"] == pytest.approx(151 / 170) and m["pixels"] == 170
