"""Tests of pspnet.data: synthetic dataset, file datasets and layouts, tensor augmentations."""

import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from pspnet.data import (
    DATASETS,
    MEAN,
    STD,
    ListDataset,
    SyntheticShapes,
    build_dataset,
    eval_transform,
    palette,
    train_transform,
)
from pspnet.data.transforms import (
    Compose,
    Crop,
    Normalize,
    RandomGaussianBlur,
    RandomHorizontalFlip,
    RandRotate,
    RandScale,
    gaussian_blur,
    rotate,
)

HAS_CUDA = torch.cuda.is_available()


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def _write_rgb(path, arr):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(arr, dtype=np.uint8), "RGB").save(path)


def _write_label(path, arr, mode="P"):
    """Single-channel label; mode P gets a palette whose colours differ from the indices."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    im = Image.fromarray(np.asarray(arr, dtype=np.uint8), "L")
    if mode == "P":
        im = im.convert("P")
        im.putpalette(palette(256).flip(1).flatten().tolist())
    im.save(path)


def _rand_rgb(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _rand_label(h, w, hi, seed):
    return np.random.default_rng(seed).integers(0, hi, (h, w), dtype=np.uint8)


# ------------------------------------------------------------------------------------------------
# synthetic dataset
# ------------------------------------------------------------------------------------------------


def test_synthetic_shapes_and_types():
    ds = SyntheticShapes(length=5, size=(33, 41), num_classes=5)
    assert len(ds) == 5 and ds.num_classes == 5 and ds.ignore_index == 255
    assert ds.files is None and ds.class_names[0] == "background" and len(ds.class_names) == 5
    image, label = ds[0]
    assert image.shape == (3, 33, 41) and image.dtype == torch.float32
    assert label.shape == (33, 41) and label.dtype == torch.int64
    assert 0 <= image.min() and image.max() <= 255
    for i in range(5):
        lab = ds[i][1]
        assert lab.min() >= 0 and lab.max() < 5
    with pytest.raises(IndexError):
        ds[5]
    assert torch.equal(ds[-1][1], ds[4][1])


def test_synthetic_default_preset():
    ds = build_dataset("synthetic", split="train")
    p = DATASETS["synthetic"]
    assert ds.num_classes == p["classes"] and ds[0][0].shape[-1] == p["crop_size"]
    assert isinstance(ds, SyntheticShapes) and ds.class_names == p["class_names"]


def test_synthetic_determinism():
    a = SyntheticShapes(length=6, seed=3)
    b = SyntheticShapes(length=6, seed=3, cache=False)
    order = [5, 0, 3, 1]  # access order must not matter
    for i in order:
        ia, la = a[i]
        ib, lb = b[i]
        assert torch.equal(ia, ib) and torch.equal(la, lb)
    c = SyntheticShapes(length=6, seed=4)
    v = SyntheticShapes(split="val", length=6, seed=3)
    for i in range(4):
        assert not torch.equal(a[i][0], c[i][0])
        assert not torch.equal(a[i][0], v[i][0])
    # neighbouring indices of neighbouring seeds must not coincide (no seed + index aliasing)
    assert not torch.equal(a[1][0], c[0][0])
    # cached samples are not corrupted by in-place edits of a returned tensor
    img, lab = a[0]
    img.zero_()
    lab.fill_(1)
    assert torch.equal(a[0][0], b[0][0]) and torch.equal(a[0][1], b[0][1])


def test_synthetic_masks_exact():
    ds = SyntheticShapes(length=12, size=49, num_classes=7, max_shapes=5)
    seen = set()
    for i in range(len(ds)):
        image, label, shapes = ds.sample(i)
        assert torch.equal(label, ds[i][1])
        assert 1 <= len(shapes) <= 5
        expected = torch.zeros_like(label)
        visible = []
        for cls, mask, colour in shapes:
            assert mask.dtype == torch.bool and mask.shape == label.shape
            assert bool(mask.any()), "every drawn shape covers some pixels"
            assert 1 <= cls < 7
            expected[mask] = cls
            visible = [(c, m & ~mask, col) for c, m, col in visible] + [(cls, mask, colour)]
            seen.add(cls)
        assert torch.equal(label, expected)
        # the image shows each shape's colour exactly where its label is (its visible region)
        for cls, vis, colour in visible:
            assert bool((label[vis] == cls).all())
            if vis.sum() >= 20:
                mean = image[:, vis].double().mean(1)
                assert torch.allclose(mean, colour.clamp(0, 255), atol=8), (mean, colour)
    assert len(seen) >= 4, "several shape classes appear"


def test_synthetic_class_subset_and_errors():
    ds = SyntheticShapes(length=8, num_classes=3)
    for i in range(8):
        assert ds[i][1].max() <= 2
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticShapes(num_classes=1)
    with pytest.raises(ValueError, match="split"):
        SyntheticShapes(split="bogus")


def test_synthetic_dataloader_with_transform():
    ds = build_dataset("synthetic", split="train", transform=train_transform(33), length=4)
    loader = torch.utils.data.DataLoader(ds, batch_size=4)
    x, y = next(iter(loader))
    assert x.shape == (4, 3, 33, 33) and y.shape == (4, 33, 33) and y.dtype == torch.int64
    ok = (y == 255) | ((y >= 0) & (y < ds.num_classes))
    assert bool(ok.all())


# ------------------------------------------------------------------------------------------------
# ListDataset
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def list_tree(tmp_path):
    """Two PNG samples, one JPG sample (absolute path), labels in P and L mode."""
    root = tmp_path / "data"
    imgs = [_rand_rgb(12, 16, 0), _rand_rgb(9, 7, 1), _rand_rgb(10, 10, 2)]
    labs = [_rand_label(12, 16, 5, 3), _rand_label(9, 7, 5, 4), _rand_label(10, 10, 5, 5)]
    labs[0][0, :3] = 255  # ignore is allowed
    _write_rgb(str(root / "img" / "a.png"), imgs[0])
    _write_label(str(root / "lab" / "a.png"), labs[0], "P")
    _write_rgb(str(root / "img" / "b.png"), imgs[1])
    _write_label(str(root / "lab" / "b.png"), labs[1], "L")
    _write_rgb(str(root / "img" / "c.jpg"), imgs[2])
    _write_label(str(root / "lab" / "c.png"), labs[2], "P")
    lst = root / "train.txt"
    lst.write_text(
        "# comment\n"
        "img/a.png lab/a.png\n"
        "\n"
        "img/b.png lab/b.png\n"
        f"{root / 'img' / 'c.jpg'} {root / 'lab' / 'c.png'}\n"
    )
    return root, lst, imgs, labs


def test_list_dataset_reads(list_tree):
    root, lst, imgs, labs = list_tree
    ds = ListDataset(str(lst), root=str(root), num_classes=5)
    assert len(ds) == 3 and ds.num_classes == 5 and ds.ignore_index == 255 and ds.has_labels
    assert ds.files[0] == (str(root / "img" / "a.png"), str(root / "lab" / "a.png"))
    for i in range(2):  # PNG: exact
        image, label = ds[i]
        assert image.dtype == torch.float32 and label.dtype == torch.int64
        assert torch.equal(image, torch.from_numpy(imgs[i]).permute(2, 0, 1).float())
        assert torch.equal(label, torch.from_numpy(labs[i]).long())  # raw indices, not palette
    image, label = ds[2]  # JPG: lossy, but right size and close
    assert image.shape == (3, 10, 10)
    assert torch.equal(label, torch.from_numpy(labs[2]).long())
    # root defaults to the list file's folder; build_dataset('list') with classes= alias
    ds2 = build_dataset("list", root=str(root), list_file=str(lst), classes=5)
    assert len(ds2) == 3 and torch.equal(ds2[1][1], ds[1][1])
    assert len(ListDataset(str(lst), num_classes=5)) == 3
    # a transform is applied
    ds3 = ListDataset(str(lst), num_classes=5, transform=eval_transform())
    assert torch.allclose(ds3[0][0], (ds[0][0] - torch.tensor(MEAN).view(3, 1, 1))
                          / torch.tensor(STD).view(3, 1, 1))  # fmt: skip


def test_list_dataset_single_column(tmp_path, list_tree):
    root, _, _, _ = list_tree
    lst = tmp_path / "test.txt"
    lst.write_text("img/a.png\nimg/b.png\n")
    ds = ListDataset(str(lst), root=str(root), num_classes=5)
    assert not ds.has_labels and ds.files[0][1] is None
    image, label = ds[1]
    assert label.shape == (9, 7) and bool((label == 255).all())


def test_list_dataset_errors(tmp_path, list_tree):
    root, lst, _, _ = list_tree
    with pytest.raises(FileNotFoundError, match="list file not found.*nope.txt"):
        ListDataset(str(tmp_path / "nope.txt"), num_classes=5)

    bad = tmp_path / "missing.txt"
    bad.write_text("img/a.png lab/a.png\nimg/zzz.png lab/a.png\n")
    with pytest.raises(FileNotFoundError, match=r"line 2.*zzz\.png"):
        ListDataset(str(bad), root=str(root), num_classes=5)
    bad.write_text("img/a.png lab/missing.png\n")
    with pytest.raises(FileNotFoundError, match=r"line 1.*missing\.png"):
        ListDataset(str(bad), root=str(root), num_classes=5)
    # without the construction-time check, loading names the file and line
    bad.write_text("img/zzz.png lab/a.png\n")
    ds = ListDataset(str(bad), root=str(root), num_classes=5, check_files=False)
    with pytest.raises(FileNotFoundError, match=r"zzz\.png.*line 1"):
        ds[0]

    bad.write_text("a b c\n")
    with pytest.raises(ValueError, match="line 1.*3 columns"):
        ListDataset(str(bad), root=str(root), num_classes=5)

    # corrupt image: garbage bytes, and a truncated PNG
    (root / "img" / "junk.png").write_bytes(b"this is not a png")
    data = (root / "img" / "a.png").read_bytes()
    (root / "img" / "trunc.png").write_bytes(data[: len(data) // 2])
    for name in ("junk.png", "trunc.png"):
        bad.write_text(f"img/{name} lab/a.png\n")
        ds = ListDataset(str(bad), root=str(root), num_classes=5)
        with pytest.raises(ValueError, match=rf"cannot read image .*{name}"):
            ds[0]

    # label size != image size
    bad.write_text("img/a.png lab/b.png\n")
    ds = ListDataset(str(bad), root=str(root), num_classes=5)
    with pytest.raises(ValueError, match=r"lab.b\.png is 7x9 .*img.a\.png is 16x12"):
        ds[0]

    # label values outside [0, classes) other than ignore: named file and values
    vals = np.full((12, 16), 2, np.uint8)
    vals[0, 0], vals[0, 1], vals[1, 1] = 7, 9, 255
    _write_label(str(root / "lab" / "oor.png"), vals, "P")
    bad.write_text("img/a.png lab/oor.png\n")
    ds = ListDataset(str(bad), root=str(root), num_classes=5)
    with pytest.raises(ValueError, match=r"oor\.png: values \[7, 9\] outside \[0, 5\)"):
        ds[0]
    ds = ListDataset(str(bad), root=str(root), num_classes=5, check_labels=False)
    assert ds[0][1][0, 0] == 255 and ds[0][1][0, 1] == 255  # unchecked: ignored, not passed on
    assert ds[0][1][0, 2] == 2
    assert ListDataset(str(bad), root=str(root), num_classes=10)[0][1][1, 1] == 255

    # an RGB label is rejected with a clear message
    _write_rgb(str(root / "lab" / "rgb.png"), _rand_rgb(12, 16, 9))
    bad.write_text("img/a.png lab/rgb.png\n")
    with pytest.raises(ValueError, match=r"rgb\.png has mode 'RGB'"):
        ListDataset(str(bad), root=str(root), num_classes=5)[0]

    with pytest.raises(ValueError, match="num_classes"):
        ListDataset(str(lst))
    with pytest.raises(ValueError, match="list_file"):
        build_dataset("list", root=str(root))


# ------------------------------------------------------------------------------------------------
# standard layouts
# ------------------------------------------------------------------------------------------------


def test_ade20k_layout(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    raw = np.array([[0, 1, 150], [2, 0, 75]], np.uint8)
    for sub, names in (("training", ["ADE_train_1", "ADE_train_2"]), ("validation", ["ADE_val_1"])):
        for k, n in enumerate(names):
            (base / "images" / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(_rand_rgb(2, 3, k)).save(base / "images" / sub / f"{n}.jpg")
            _write_label(str(base / "annotations" / sub / f"{n}.png"), raw, "L")
    ds = build_dataset("ade20k", root=str(tmp_path), split="train")
    assert len(ds) == 2 and ds.num_classes == 150 and len(ds.class_names) == 150
    assert ds.files[0][0].endswith(os.path.join("images", "training", "ADE_train_1.jpg"))
    assert ds.class_names[0] == "wall" and ds.class_names[-1] == "flag"
    image, label = ds[0]
    assert image.shape == (3, 2, 3)
    assert label.tolist() == [[255, 0, 149], [1, 255, 74]]
    val = build_dataset("ade20k", root=str(base), split="validation")  # the folder itself, alias
    assert len(val) == 1 and val[0][1].tolist() == label.tolist()

    os.remove(base / "annotations" / "training" / "ADE_train_2.png")
    with pytest.raises(FileNotFoundError, match="ADE_train_2.png"):
        build_dataset("ade20k", root=str(tmp_path))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"ADEChallengeData2016.images.training"):
        build_dataset("ade20k", root=str(empty))


def test_cityscapes_layout(tmp_path):
    ids = np.array([[7, 8, 26, 0], [33, 34, 24, 4]], np.uint8)
    expected = [[0, 1, 13, 255], [18, 255, 11, 255]]
    for split, city in (("train", "aachen"), ("val", "lindau")):
        for k in range(2):
            stem = f"{city}_000000_00001{k}"
            _write_rgb(str(tmp_path / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"),
                       _rand_rgb(2, 4, k))  # fmt: skip
            gt = tmp_path / "gtFine" / split / city
            _write_label(str(gt / f"{stem}_gtFine_labelIds.png"), ids, "L")
            if k == 1:  # the second one also has trainIds (used directly)
                _write_label(str(gt / f"{stem}_gtFine_labelTrainIds.png"),
                             np.array(expected, np.uint8), "L")  # fmt: skip
    ds = build_dataset("cityscapes", root=str(tmp_path), split="train")
    assert len(ds) == 2 and ds.num_classes == 19 and ds.class_names[0] == "road"
    assert ds.files[0][1].endswith("_gtFine_labelIds.png")
    assert ds.files[1][1].endswith("_gtFine_labelTrainIds.png")
    assert ds[0][1].tolist() == expected  # converted on the fly
    assert ds[1][1].tolist() == expected
    assert len(build_dataset("cityscapes", root=str(tmp_path), split="val")) == 2
    with pytest.raises(FileNotFoundError, match=r"leftImg8bit.test"):
        build_dataset("cityscapes", root=str(tmp_path), split="test")
    with pytest.raises(FileNotFoundError, match=r"nowhere.leftImg8bit.train"):
        build_dataset("cityscapes", root=str(tmp_path / "nowhere"))
    os.remove(tmp_path / "gtFine" / "val" / "lindau" / "lindau_000000_000010_gtFine_labelIds.png")
    with pytest.raises(FileNotFoundError, match="lindau_000000_000010_gtFine_labelTrainIds"):
        build_dataset("cityscapes", root=str(tmp_path), split="val")


def test_voc_layout(tmp_path):
    base = tmp_path / "VOCdevkit" / "VOC2012"
    lab = np.array([[0, 15, 255], [20, 1, 0]], np.uint8)
    names = ["2007_000032", "2007_000039", "2008_000001"]
    for k, n in enumerate(names):
        _write_rgb(str(base / "JPEGImages" / f"{n}.png"), _rand_rgb(2, 3, k))
        os.rename(base / "JPEGImages" / f"{n}.png", base / "JPEGImages" / f"{n}.jpg")
        _write_label(str(base / "SegmentationClass" / f"{n}.png"), lab, "P")
    sets = base / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("2007_000032\n2007_000039\n")
    (sets / "val.txt").write_text("2008_000001\n")
    ds = build_dataset("voc", root=str(tmp_path), split="train")
    assert len(ds) == 2 and ds.num_classes == 21 and not ds.uses_sbd
    assert ds.class_names[15] == "person"
    assert ds[0][1].tolist() == lab.tolist()  # 255 stays ignore, raw P indices
    assert len(build_dataset("voc", root=str(base), split="val")) == 1

    # SBD: SegmentationClassAug + train_aug list -> used for train by default
    aug = lab.copy()
    aug[0, 0] = 3
    for n in names:
        _write_label(str(base / "SegmentationClassAug" / f"{n}.png"), aug, "L")
    (sets / "train_aug.txt").write_text("\n".join(names) + "\n")
    ds = build_dataset("voc", root=str(tmp_path), split="train")
    assert ds.uses_sbd and len(ds) == 3 and ds[0][1][0, 0] == 3
    ds = build_dataset("voc", root=str(tmp_path), split="train", aug=False)
    assert not ds.uses_sbd and len(ds) == 2 and ds[0][1][0, 0] == 0
    assert not build_dataset("voc", root=str(tmp_path), split="val").uses_sbd

    (sets / "val.txt").write_text("2008_000001\n2009_999999\n")
    with pytest.raises(FileNotFoundError, match=r"line 2.*2009_999999\.jpg"):
        build_dataset("voc", root=str(tmp_path), split="val")
    with pytest.raises(FileNotFoundError, match=r"VOCdevkit.VOC2012.JPEGImages"):
        build_dataset("voc", root=str(tmp_path / "nothing"))


def test_build_dataset_errors_and_presets():
    with pytest.raises(ValueError, match="unknown dataset"):
        build_dataset("imagenet")
    with pytest.raises(ValueError, match="root"):
        build_dataset("ade20k")
    assert DATASETS["ade20k"]["classes"] == 150 and DATASETS["ade20k"]["crop_size"] == 473
    assert DATASETS["cityscapes"]["classes"] == 19 and DATASETS["cityscapes"]["crop_size"] == 713
    assert DATASETS["voc"]["classes"] == 21 and DATASETS["voc"]["crop_size"] == 473
    for p in DATASETS.values():
        assert p["ignore_index"] == 255 and len(p["class_names"]) == p["classes"]
    assert MEAN == [0.485 * 255, 0.456 * 255, 0.406 * 255]
    assert STD == [0.229 * 255, 0.224 * 255, 0.225 * 255]


def test_palette():
    p = palette(21)
    assert p.shape == (21, 3) and p.dtype == torch.uint8
    assert p[0].tolist() == [0, 0, 0] and p[1].tolist() == [128, 0, 0]
    assert p[2].tolist() == [0, 128, 0] and p[15].tolist() == [192, 128, 128]
    assert len({tuple(c) for c in palette(256).tolist()}) == 256


# ------------------------------------------------------------------------------------------------
# transforms
# ------------------------------------------------------------------------------------------------


def _sample(h=20, w=24, classes=4, seed=0, n=None):
    g = torch.Generator().manual_seed(seed)
    shape = (h, w) if n is None else (n, h, w)
    image = torch.rand(*shape[:-2], 3, h, w, generator=g) * 255
    label = torch.randint(0, classes, shape, generator=g)
    return image, label


@pytest.mark.parametrize("size", [(20, 24), (50, 9), (7, 5)])
def test_train_transform_output_size(size):
    t = train_transform((17, 13))
    image, label = _sample(*size)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        x, y = t(image, label, generator=g)
        assert x.shape == (3, 17, 13) and y.shape == (17, 13) and y.dtype == torch.int64
        assert bool(((y == 255) | ((y >= 0) & (y < 4))).all())
    xb, yb = t(*_sample(*size, n=3), generator=g)  # a batch
    assert xb.shape == (3, 3, 17, 13) and yb.shape == (3, 17, 13)


def test_crop_padding_uses_mean_and_ignore():
    image, label = _sample(6, 4)
    x, y = Crop((10, 8), "center")(image, label)
    assert x.shape == (3, 10, 8)
    assert torch.equal(y[2:8, 2:6], label) and torch.equal(x[:, 2:8, 2:6], image)
    pad = torch.ones(10, 8, dtype=torch.bool)
    pad[2:8, 2:6] = False
    assert bool((y[pad] == 255).all())
    for c in range(3):
        assert torch.allclose(x[c][pad], torch.tensor(MEAN[c]))
    # random crop of a padded small image keeps all its pixels (only padding can be cut)
    x, y = Crop((10, 8), "rand", ignore_index=7)(image, label, generator=torch.Generator())
    assert bool((y == 7).sum() == 80 - 24)
    # crops of a large image are windows of it
    image, label = _sample(30, 30)
    g = torch.Generator().manual_seed(1)
    x, y = Crop(11)(image, label, generator=g)
    found = any(torch.equal(label[i : i + 11, j : j + 11], y) for i in range(20) for j in range(20))
    assert found


def test_flip_consistent():
    image, label = _sample()
    x, y = RandomHorizontalFlip(p=1.0)(image, label)
    assert torch.equal(x, image.flip(-1)) and torch.equal(y, label.flip(-1))
    x, y = RandomHorizontalFlip(p=0.0)(image, label)
    assert torch.equal(x, image) and torch.equal(y, label)
    xb, yb = _sample(n=16)
    g = torch.Generator().manual_seed(0)
    x, y = RandomHorizontalFlip()(xb, yb, generator=g)
    flipped = []
    for i in range(16):
        f = torch.equal(y[i], yb[i].flip(-1))
        assert torch.equal(x[i], xb[i].flip(-1) if f else xb[i])
        assert f or torch.equal(y[i], yb[i])
        flipped.append(f)
    assert 0 < sum(flipped) < 16, "per-sample decisions"


def test_rotation():
    image, label = _sample(16, 16)
    # 90 degrees counter-clockwise on a square image is exactly rot90
    x, y = rotate(image[None], label[None], [90.0])
    assert torch.equal(y[0], torch.rot90(label, 1, (-2, -1)))
    assert torch.allclose(x[0], torch.rot90(image, 1, (-2, -1)), atol=1e-3)
    # 45 degrees: corners come from outside -> mean / ignore fill; labels stay in the valid set
    x, y = rotate(image[None], label[None], [45.0], ignore_index=255)
    assert y[0, 0, 0] == 255 and y[0, -1, -1] == 255
    assert torch.allclose(x[0, :, 0, 0], torch.tensor(MEAN))
    assert set(y.unique().tolist()) <= {0, 1, 2, 3, 255}
    # random rotation within +-10 deg: labels only valid values, centre pixel unchanged
    g = torch.Generator().manual_seed(0)
    t = RandRotate((-10, 10), p=1.0)
    image, label = _sample(21, 31, classes=6)
    for _ in range(5):
        x, y = t(image, label, generator=g)
        assert x.shape == image.shape and y.shape == label.shape
        assert set(y.unique().tolist()) <= set(range(6)) | {255}
        assert y[10, 15] == label[10, 15]
        assert (y == 255).sum() < 0.25 * y.numel()
    x, y = RandRotate(p=0.0)(image, label)
    assert torch.equal(x, image) and torch.equal(y, label)


def test_scale_range():
    image, label = _sample(40, 30)
    t = RandScale((0.5, 2.0))
    g = torch.Generator().manual_seed(0)
    hs = []
    for _ in range(40):
        x, y = t(image, label, generator=g)
        h, w = x.shape[-2:]
        assert y.shape == (h, w) and 20 <= h <= 80 and 15 <= w <= 60
        assert abs(h / 40 - w / 30) < 0.05  # same factor on both axes
        assert set(y.unique().tolist()) <= {0, 1, 2, 3}
        hs.append(h)
    assert min(hs) < 30 and max(hs) > 65, "the range is actually covered"
    # factor 2: nearest-neighbour labels are exact 2x2 replicas, image bilinear
    x, y = RandScale((2.0, 2.0))(image, label)
    assert torch.equal(y, label.repeat_interleave(2, 0).repeat_interleave(2, 1))
    assert x.shape == (3, 80, 60)


def test_blur():
    image, label = _sample()
    const = torch.full_like(image, 77.0)
    x, y = RandomGaussianBlur(p=1.0)(const, label)
    assert torch.allclose(x, const) and torch.equal(y, label)  # normalised kernel, labels untouched
    x, _ = RandomGaussianBlur(p=1.0)(image, label)
    assert x.shape == image.shape and x.var() < 0.5 * image.var()
    # separable 5x5 kernel equals a direct 2-D Gaussian convolution in the interior
    k = torch.exp(-((torch.arange(5.0) - 2) ** 2) / (2 * 1.1**2))
    k2 = torch.outer(k, k) / torch.outer(k, k).sum()
    direct = torch.nn.functional.conv2d(image[:, None], k2[None, None])[:, 0]
    assert torch.allclose(gaussian_blur(image[None])[0, :, 2:-2, 2:-2], direct, atol=1e-3)


def test_normalize_and_eval_transform():
    image, label = _sample()
    x, y = eval_transform()(image, label)
    ref = (image - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    assert torch.allclose(x, ref) and torch.equal(y, label)
    x, y = Normalize()(image.to(torch.uint8), None)  # uint8 in, label None passes through
    assert x.dtype == torch.float32 and y is None


def test_generator_reproducibility():
    t = train_transform(15)
    image, label = _sample(19, 23)
    outs = [t(image, label, generator=torch.Generator().manual_seed(s)) for s in (5, 5, 6)]
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    assert not torch.equal(outs[0][0], outs[2][0])
    xb, yb = _sample(19, 23, n=4)
    a = t(xb, yb, generator=torch.Generator().manual_seed(1))
    b = t(xb, yb, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0][0], a[0][1])  # per-sample randomness (different crops/scales)


def test_batch_and_single_agree_for_size_preserving_ops():
    xb, yb = _sample(n=3)
    for t in (Normalize(), RandomHorizontalFlip(p=1.0), RandomGaussianBlur(p=1.0),
              RandRotate((7, 7), p=1.0), Crop((9, 11), "center")):  # fmt: skip
        bx, by = t(xb, yb)
        for i in range(3):
            sx, sy = t(xb[i], yb[i])
            assert torch.allclose(bx[i], sx, atol=1e-4) and torch.equal(by[i], sy), repr(t)


def test_transform_errors():
    image, label = _sample()
    with pytest.raises(ValueError, match="label shape"):
        Normalize()(image, label[:5])
    with pytest.raises(TypeError, match="integer"):
        Normalize()(image, label.float())
    with pytest.raises(ValueError, match="image must be"):
        Normalize()(image[0], None)
    with pytest.raises(ValueError, match="scale"):
        RandScale((2.0, 1.0))
    with pytest.raises(ValueError, match="size"):
        Crop(0)
    with pytest.raises(ValueError, match="different sizes"):
        Compose([RandScale((0.5, 2.0))])(*_sample(n=4), generator=torch.Generator())
    assert math.isclose(MEAN[0], 123.675)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_transforms_on_cuda():
    xb, yb = _sample(30, 26, n=4)
    xb, yb = xb.cuda(), yb.cuda()
    t = train_transform(21)
    g = torch.Generator(device="cuda").manual_seed(0)
    x, y = t(xb, yb, generator=g)
    assert x.is_cuda and y.is_cuda and x.shape == (4, 3, 21, 21) and y.shape == (4, 21, 21)
    g = torch.Generator(device="cuda").manual_seed(0)
    x2, y2 = t(xb, yb, generator=g)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    cx, cy = t(xb.cpu(), yb.cpu(), generator=torch.Generator().manual_seed(3))
    assert cx.shape == x.shape and cy.dtype == y.dtype
