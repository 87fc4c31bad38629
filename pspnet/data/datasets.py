"""File-backed segmentation datasets: list files, ADE20K, Cityscapes, PASCAL VOC 2012.

Every dataset returns ``(image, label)``: ``image`` float32 ``(3, H, W)`` RGB with values 0..255,
``label`` int64 ``(H, W)`` with class ids ``0..num_classes-1`` or ``ignore_index`` (255), then
passes them through the optional ``transform(image, label)``. Images are read with Pillow and
converted to RGB; labels are single-channel PNGs (mode ``L`` or ``P``; the raw indices are used,
never the palette colours).

Attributes: ``num_classes``, ``ignore_index``, ``class_names``, ``files`` (list of
``(image_path, label_path_or_None)``), ``len(ds)``.
"""

from __future__ import annotations

import glob
import os

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .cityscapes_labels import CITYSCAPES_CLASSES, id_to_train_id_lut
from .synthetic import SHAPE_CLASSES, SyntheticShapes

__all__ = [
    "ADE20K_CLASSES",
    "VOC_CLASSES",
    "CITYSCAPES_CLASSES",
    "DATASETS",
    "SegmentationDataset",
    "ListDataset",
    "ADE20K",
    "Cityscapes",
    "VOC",
    "build_dataset",
    "read_image",
    "read_label",
    "reduce_zero_label_lut",
]

ADE20K_CLASSES = [
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing",
    "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink",
    "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case",
    "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "television receiver", "airplane", "dirt track", "apparel", "pole", "land", "bannister",
    "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel",
    "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step",
    "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen",
    "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag",
]  # fmt: skip

VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
]  # fmt: skip

# What each dataset is: classes, the official crop (train_h = train_w) and test base size, the
# ignore label and the class names. The training recipes built on them live in pspnet.config.
DATASETS = {
    "ade20k": dict(
        classes=150, crop_size=473, base_size=512, ignore_index=255, class_names=ADE20K_CLASSES
    ),
    "cityscapes": dict(
        classes=19, crop_size=713, base_size=2048, ignore_index=255,
        class_names=CITYSCAPES_CLASSES,
    ),
    "voc": dict(
        classes=21, crop_size=473, base_size=512, ignore_index=255, class_names=VOC_CLASSES
    ),
    "synthetic": dict(
        classes=6, crop_size=65, base_size=65, ignore_index=255, class_names=SHAPE_CLASSES[:6]
    ),
}  # fmt: skip

_LABEL_MODES = ("L", "P", "I", "I;16", "I;16B", "I;16L", "1")


def read_image(path) -> torch.Tensor:
    """Read an image file as float32 ``(3, H, W)`` RGB, values 0..255.

    Raises FileNotFoundError (missing file) or ValueError (unreadable / corrupt file), naming it.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            arr = np.array(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from e
    return torch.from_numpy(arr).permute(2, 0, 1).float().contiguous()


def read_label(path) -> torch.Tensor:
    """Read a single-channel label PNG as int64 ``(H, W)`` (raw indices of an ``L`` or ``P``
    image, not palette colours). Raises FileNotFoundError / ValueError naming the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"label not found: {path}")
    try:
        with Image.open(path) as im:
            if im.mode not in _LABEL_MODES:
                raise ValueError(
                    f"label {path} has mode {im.mode!r}; labels must be single-channel images "
                    "of class indices (PNG mode 'L' or 'P')"
                )
            arr = np.array(im.convert("L") if im.mode == "1" else im)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"cannot read label {path}: {e}") from e
    if arr.ndim != 2:
        raise ValueError(f"label {path} is not single-channel (array shape {arr.shape})")
    return torch.from_numpy(arr.astype(np.int64))


def reduce_zero_label_lut(ignore_index: int = 255, size: int = 256) -> torch.Tensor:
    """Lookup table of ADE20K's "reduce zero label": 0 -> ignore, k -> k - 1, 255 stays ignore."""
    lut = torch.arange(size, dtype=torch.int64) - 1
    lut[0] = ignore_index
    if size > 255:
        lut[255] = ignore_index
    return lut


def _resolve_label_map(label_map, ignore_index):
    if label_map is None or callable(label_map) or isinstance(label_map, torch.Tensor):
        return label_map
    if label_map in ("reduce_zero_label", "ade20k"):
        return reduce_zero_label_lut(ignore_index)
    if label_map in ("cityscapes", "cityscapes_ids"):
        return id_to_train_id_lut(ignore_index)
    raise ValueError(
        "label_map must be None, a lookup tensor, a callable, 'reduce_zero_label' (ADE20K) or "
        f"'cityscapes' (labelIds -> trainIds), got {label_map!r}"
    )


class SegmentationDataset(torch.utils.data.Dataset):
    """Pairs of (image file, label file) with label mapping, checks and an optional transform.

    Args:
        files: list of ``(image_path, label_path or None)``; a missing label gives an all-ignore
            label of the image's size (for test lists).
        num_classes: number of classes (labels must be in ``[0, num_classes)`` or ignore).
        ignore_index: label value ignored by loss and metrics.
        class_names: list of names (default ``class0, class1, ...``).
        transform: optional ``t(image, label) -> (image, label)``.
        check_labels: raise ValueError, naming the file and the bad values, when a (mapped) label
            holds values outside ``[0, num_classes)`` other than ``ignore_index``.
        label_map: None, an int64 lookup tensor (``lut[raw] -> class``), a callable
            ``f(label) -> label``, or ``"reduce_zero_label"`` / ``"cityscapes"``.
        sources: optional list of strings describing where each entry came from (list file and
            line), used in error messages.
    """

    def __init__(
        self,
        files,
        num_classes,
        ignore_index=255,
        class_names=None,
        transform=None,
        check_labels=True,
        label_map=None,
        sources=None,
    ):
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.files = [(str(i), None if lab is None else str(lab)) for i, lab in files]
        self.num_classes = num_classes
        self.ignore_index = int(ignore_index)
        if class_names is None:
            class_names = [f"class{i}" for i in range(num_classes)]
        if len(class_names) != num_classes:
            raise ValueError(
                f"class_names has {len(class_names)} entries but num_classes is {num_classes}"
            )
        self.class_names = list(class_names)
        self.transform = transform
        self.check_labels = bool(check_labels)
        self.label_map = _resolve_label_map(label_map, self.ignore_index)
        self.sources = sources

    @property
    def has_labels(self) -> bool:
        """True when every entry has a label file."""
        return all(lab is not None for _, lab in self.files)

    def __len__(self):
        return len(self.files)

    def _where(self, index):
        src = f", {self.sources[index]}" if self.sources else ""
        return f" (sample {index} of {len(self)}{src})"

    def map_label(self, label: torch.Tensor, index: int) -> torch.Tensor:
        """Map raw label values to class ids (``label_map``); override for per-file rules."""
        lm = self.label_map
        if lm is None:
            return label
        if isinstance(lm, torch.Tensor):
            hi = int(label.max()) if label.numel() else 0
            if hi >= lm.numel() or (label.numel() and int(label.min()) < 0):
                raise ValueError(
                    f"label {self.files[index][1]}: value {hi} outside the label map's range "
                    f"[0, {lm.numel()}){self._where(index)}"
                )
            return lm[label]
        return lm(label)

    def load(self, index: int):
        """``(image, label)`` of entry ``index`` before the transform."""
        img_path, lab_path = self.files[index]
        try:
            image = read_image(img_path)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{e}{self._where(index)}") from None
        except ValueError as e:
            raise ValueError(f"{e}{self._where(index)}") from None
        h, w = image.shape[-2:]
        if lab_path is None:
            return image, torch.full((h, w), self.ignore_index, dtype=torch.int64)
        try:
            label = read_label(lab_path)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{e}{self._where(index)}") from None
        except ValueError as e:
            raise ValueError(f"{e}{self._where(index)}") from None
        if tuple(label.shape) != (h, w):
            raise ValueError(
                f"label {lab_path} is {label.shape[1]}x{label.shape[0]} (WxH) but image "
                f"{img_path} is {w}x{h}{self._where(index)}"
            )
        label = self.map_label(label, index)
        if self.check_labels:
            bad = (label != self.ignore_index) & ((label < 0) | (label >= self.num_classes))
            if bool(bad.any()):
                vals = torch.unique(label[bad]).tolist()
                shown = ", ".join(str(v) for v in vals[:10]) + (" ..." if len(vals) > 10 else "")
                raise ValueError(
                    f"label {lab_path}: values [{shown}] outside [0, {self.num_classes}) "
                    f"(ignore index {self.ignore_index}){self._where(index)}; "
                    "pass check_labels=False to skip this check"
                )
        return image, label

    def __getitem__(self, index):
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        image, label = self.load(index % len(self))
        if self.transform is not None:
            image, label = self.transform(image, label)
        return image, label

    def __repr__(self):
        return f"{type(self).__name__}({len(self)} samples, {self.num_classes} classes)"


class ListDataset(SegmentationDataset):
    """A dataset from a list file in the official format: one ``image_path label_path`` per line
    (or only ``image_path`` for unlabelled test lists), paths relative to ``root`` (default: the
    list file's folder) or absolute. Blank lines and lines starting with ``#`` are skipped.

    ``check_files=True`` checks at construction that every listed file exists and raises
    FileNotFoundError naming the path and the line number. Other arguments: see
    :class:`SegmentationDataset`.
    """

    def __init__(
        self,
        list_file,
        root=None,
        num_classes=None,
        transform=None,
        ignore_index=255,
        class_names=None,
        check_labels=True,
        label_map=None,
        check_files=True,
    ):
        list_file = os.fspath(list_file)
        if not os.path.isfile(list_file):
            raise FileNotFoundError(f"list file not found: {list_file}")
        if num_classes is None:
            raise ValueError("ListDataset: num_classes is required")
        root = os.path.dirname(os.path.abspath(list_file)) if root is None else os.fspath(root)
        files, sources = [], []
        with open(list_file, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                parts = line.split()
                if len(parts) > 2:
                    raise ValueError(
                        f"{list_file}, line {lineno}: expected 'image_path [label_path]', got "
                        f"{len(parts)} columns"
                    )
                img = os.path.join(root, parts[0])
                lab = os.path.join(root, parts[1]) if len(parts) == 2 else None
                where = f"{list_file}, line {lineno}"
                if check_files:
                    if not os.path.isfile(img):
                        raise FileNotFoundError(f"{where}: image not found: {img}")
                    if lab is not None and not os.path.isfile(lab):
                        raise FileNotFoundError(f"{where}: label not found: {lab}")
                files.append((img, lab))
                sources.append(where)
        self.list_file = list_file
        self.root = root
        super().__init__(
            files,
            num_classes,
            ignore_index=ignore_index,
            class_names=class_names,
            transform=transform,
            check_labels=check_labels,
            label_map=label_map,
            sources=sources,
        )


def _normalise_split(split, allowed, dataset):
    aliases = {"training": "train", "validation": "val", "valid": "val"}
    s = aliases.get(split, split)
    if s not in allowed:
        raise ValueError(f"{dataset}: split must be one of {allowed}, got {split!r}")
    return s


class ADE20K(SegmentationDataset):
    """ADE20K (SceneParsing, ADEChallengeData2016), 150 classes.

    Layout: ``root/ADEChallengeData2016/images/{training,validation}/*.jpg`` with
    ``root/ADEChallengeData2016/annotations/{training,validation}/<same name>.png`` (``root`` may
    also be the ``ADEChallengeData2016`` folder itself). Labels are reduced: 0 (other) -> ignore,
    k -> k - 1.
    """

    def __init__(self, root, split="train", transform=None, check_labels=True, ignore_index=255):
        split = _normalise_split(split, ("train", "val"), "ADE20K")
        root = os.fspath(root)
        sub = {"train": "training", "val": "validation"}[split]
        base = os.path.join(root, "ADEChallengeData2016")
        if not os.path.isdir(base) and os.path.isdir(os.path.join(root, "images")):
            base = root
        img_dir = os.path.join(base, "images", sub)
        ann_dir = os.path.join(base, "annotations", sub)
        if not os.path.isdir(img_dir):
            raise FileNotFoundError(
                f"ADE20K: expected images in {img_dir}/*.jpg and labels in {ann_dir}/*.png "
                f"(unzip ADEChallengeData2016.zip into {root})"
            )
        images = sorted(glob.glob(os.path.join(img_dir, "*.jpg")))
        if not images:
            raise FileNotFoundError(f"ADE20K: no *.jpg images in {img_dir}")
        files = []
        for img in images:
            ann = os.path.join(ann_dir, os.path.splitext(os.path.basename(img))[0] + ".png")
            if not os.path.isfile(ann):
                raise FileNotFoundError(f"ADE20K: label not found: {ann} (for image {img})")
            files.append((img, ann))
        self.root, self.split = root, split
        super().__init__(
            files,
            150,
            ignore_index=ignore_index,
            class_names=ADE20K_CLASSES,
            transform=transform,
            check_labels=check_labels,
            label_map=reduce_zero_label_lut(ignore_index),
        )


class Cityscapes(SegmentationDataset):
    """Cityscapes (fine annotations), 19 classes.

    Layout: ``root/leftImg8bit/{split}/<city>/<name>_leftImg8bit.png`` with
    ``root/gtFine/{split}/<city>/<name>_gtFine_labelTrainIds.png``; when the trainIds file is
    missing, ``<name>_gtFine_labelIds.png`` is read and converted on the fly (34 ids -> 19 train
    ids, the rest ignore). Split ``test`` has no public labels: its labels are all ignore.
    """

    def __init__(self, root, split="train", transform=None, check_labels=True, ignore_index=255):
        split = _normalise_split(split, ("train", "val", "test"), "Cityscapes")
        root = os.fspath(root)
        img_dir = os.path.join(root, "leftImg8bit", split)
        gt_dir = os.path.join(root, "gtFine", split)
        expected = (
            f"{img_dir}/<city>/*_leftImg8bit.png and "
            f"{gt_dir}/<city>/*_gtFine_labelTrainIds.png (or *_gtFine_labelIds.png)"
        )
        if not os.path.isdir(img_dir):
            raise FileNotFoundError(f"Cityscapes: expected {expected}; {img_dir} does not exist")
        images = sorted(glob.glob(os.path.join(img_dir, "*", "*_leftImg8bit.png")))
        if not images:
            raise FileNotFoundError(f"Cityscapes: no images found; expected {expected}")
        files, convert = [], []
        for img in images:
            city = os.path.basename(os.path.dirname(img))
            stem = os.path.basename(img)[: -len("_leftImg8bit.png")]
            train_ids = os.path.join(gt_dir, city, f"{stem}_gtFine_labelTrainIds.png")
            label_ids = os.path.join(gt_dir, city, f"{stem}_gtFine_labelIds.png")
            if os.path.isfile(train_ids):
                files.append((img, train_ids))
                convert.append(False)
            elif os.path.isfile(label_ids) and split != "test":
                files.append((img, label_ids))
                convert.append(True)
            elif split == "test":
                files.append((img, None))
                convert.append(False)
            else:
                raise FileNotFoundError(
                    f"Cityscapes: label not found: {train_ids} (nor {label_ids}) for image {img}"
                )
        self._convert = convert
        self._lut = id_to_train_id_lut(ignore_index)
        self.root, self.split = root, split
        super().__init__(
            files,
            19,
            ignore_index=ignore_index,
            class_names=CITYSCAPES_CLASSES,
            transform=transform,
            check_labels=check_labels,
        )

    def map_label(self, label, index):
        if self._convert[index]:
            return self._lut[label.clamp(0, self._lut.numel() - 1)]
        return label


class VOC(SegmentationDataset):
    """PASCAL VOC 2012 segmentation, 21 classes (255 = ignore, object borders).

    Layout: ``root/VOCdevkit/VOC2012/{JPEGImages/<id>.jpg, SegmentationClass/<id>.png,
    ImageSets/Segmentation/{train,val,trainval}.txt}`` (``root`` may also be the ``VOC2012``
    folder). With the SBD augmented set present (``SegmentationClassAug/<id>.png`` and a
    ``train_aug.txt`` list in ``ImageSets/SegmentationAug/``, ``ImageSets/Segmentation/`` or the
    VOC2012 folder), split ``train_aug`` uses it; ``split="train"`` uses it too when ``aug`` is
    None (auto) and it is present, as PSPNet trains on the 10582 train_aug images. ``aug=False``
    forces the plain 1464-image train set; ``aug=True`` requires SBD.
    """

    def __init__(
        self, root, split="train", transform=None, check_labels=True, ignore_index=255, aug=None
    ):
        split = _normalise_split(split, ("train", "val", "trainval", "train_aug", "test"), "VOC")
        root = os.fspath(root)
        base = os.path.join(root, "VOCdevkit", "VOC2012")
        if not os.path.isdir(base) and os.path.isdir(os.path.join(root, "JPEGImages")):
            base = root
        img_dir = os.path.join(base, "JPEGImages")
        seg_list_dir = os.path.join(base, "ImageSets", "Segmentation")
        if not os.path.isdir(img_dir) or not os.path.isdir(seg_list_dir):
            raise FileNotFoundError(
                f"VOC: expected {img_dir}/<id>.jpg, {base}/SegmentationClass/<id>.png and "
                f"{seg_list_dir}/{{train,val}}.txt (unpack VOCtrainval_11-May-2012.tar into {root})"
            )
        aug_dir = os.path.join(base, "SegmentationClassAug")
        aug_lists = [
            os.path.join(base, "ImageSets", "SegmentationAug", "train_aug.txt"),
            os.path.join(seg_list_dir, "train_aug.txt"),
            os.path.join(base, "train_aug.txt"),
        ]
        aug_list = next((p for p in aug_lists if os.path.isfile(p)), None)
        sbd = os.path.isdir(aug_dir) and aug_list is not None
        use_aug = split == "train_aug" or (
            split == "train" and (aug is True or (aug is None and sbd))
        )
        if use_aug and not sbd:
            raise FileNotFoundError(
                f"VOC: the SBD augmented set needs {aug_dir}/<id>.png and a train_aug.txt in "
                "one of " + ", ".join(aug_lists)
            )
        if use_aug:
            list_file, lab_dir = aug_list, aug_dir
        else:
            list_file = os.path.join(seg_list_dir, f"{split}.txt")
            lab_dir = os.path.join(base, "SegmentationClass")
            if not os.path.isfile(list_file):
                raise FileNotFoundError(f"VOC: split list not found: {list_file}")
        files, sources = [], []
        with open(list_file, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                parts = line.split()
                if not parts:
                    continue
                # an id per line; some train_aug lists hold "/JPEGImages/x.jpg /Seg.../x.png"
                name = os.path.splitext(os.path.basename(parts[0]))[0]
                img = os.path.join(img_dir, name + ".jpg")
                lab = None if split == "test" else os.path.join(lab_dir, name + ".png")
                where = f"{list_file}, line {lineno}"
                if not os.path.isfile(img):
                    raise FileNotFoundError(f"VOC: {where}: image not found: {img}")
                if lab is not None and not os.path.isfile(lab):
                    raise FileNotFoundError(f"VOC: {where}: label not found: {lab}")
                files.append((img, lab))
                sources.append(where)
        self.root, self.split, self.uses_sbd = root, split, use_aug
        self.list_file = list_file
        super().__init__(
            files,
            21,
            ignore_index=ignore_index,
            class_names=VOC_CLASSES,
            transform=transform,
            check_labels=check_labels,
            sources=sources,
        )


def build_dataset(name, root=None, split="train", transform=None, **kwargs):
    """Build a dataset by name.

    ``name``: ``"synthetic"`` (:class:`SyntheticShapes`, no files; ``root`` unused),
    ``"ade20k"``, ``"cityscapes"``, ``"voc"`` (``root`` = the data folder; see each class for the
    expected layout) or ``"list"`` (:class:`ListDataset`: ``list_file=...`` required, ``root`` =
    the folder the listed paths are relative to, ``num_classes=`` (or ``classes=``) required
    unless ``preset=`` names one of :data:`DATASETS`, which also sets the class names and, for
    ``preset="ade20k"``, the reduce-zero-label mapping).
    Extra keyword arguments go to the dataset's constructor.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    key = name.lower().replace("-", "").replace("_", "")
    key = {"pascalvoc": "voc", "voc2012": "voc", "ade": "ade20k"}.get(key, key)
    if key == "synthetic":
        split = _normalise_split(split, ("train", "val", "test"), "synthetic")
        if "classes" in kwargs:
            kwargs["num_classes"] = kwargs.pop("classes")
        return SyntheticShapes(split=split, transform=transform, **kwargs)
    if key == "list":
        if "list_file" not in kwargs:
            raise ValueError("build_dataset('list', ...) needs list_file=...")
        if "classes" in kwargs:
            kwargs["num_classes"] = kwargs.pop("classes")
        preset = kwargs.pop("preset", None)
        if preset is not None:
            if preset not in DATASETS:
                raise ValueError(f"preset must be one of {sorted(DATASETS)}, got {preset!r}")
            p = DATASETS[preset]
            kwargs.setdefault("num_classes", p["classes"])
            kwargs.setdefault("class_names", p["class_names"])
            if preset == "ade20k":
                kwargs.setdefault("label_map", "reduce_zero_label")
        return ListDataset(kwargs.pop("list_file"), root=root, transform=transform, **kwargs)
    classes = {"ade20k": ADE20K, "cityscapes": Cityscapes, "voc": VOC}
    if key not in classes:
        raise ValueError(
            f"unknown dataset {name!r}; expected one of 'synthetic', 'ade20k', 'cityscapes', "
            "'voc', 'list'"
        )
    if root is None:
        raise ValueError(f"build_dataset({name!r}): root (the data folder) is required")
    return classes[key](root, split=split, transform=transform, **kwargs)
